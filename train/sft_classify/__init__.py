"""Prompt classification with TRL's ``SFTTrainer``: ``python -m train.sft_classify`` (``__main__.py``)."""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
