"""Prompt classification with TRL's ``SFTTrainer``: ``python -m train.sft_classify`` (``__main__.py``).

``config`` (the recipe fields), ``data`` (labeled rows -> conversational prompt / completion rows),
``trainer`` (label scoring during evaluation), ``export`` (the output folder)."""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
