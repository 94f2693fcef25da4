"""Sequence-classification heads with a label map: ``python -m train.seq_classify`` (``__main__.py``).

``config`` (the recipe fields), ``data`` (labeled rows -> tokenized inputs), ``chunks`` (long documents),
``model`` (the head and its pooling), ``trainer``, ``export`` (the output folder)."""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
