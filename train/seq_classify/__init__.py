"""Sequence-classification heads with a label map: ``python -m train.seq_classify`` (``__main__.py``)."""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
