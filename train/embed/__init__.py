"""Contrastive fine-tuning of embedding models: ``python -m train.embed`` (``__main__.py``); one concern per
module (the README's Code layout lists them)."""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
