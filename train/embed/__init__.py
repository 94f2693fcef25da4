"""Contrastive fine-tuning of embedding models: ``python -m train.embed`` (``__main__.py``).

One concern per module: ``config`` (the recipe fields), ``tasks`` (the rows of each task), ``collator`` /
``batch`` / ``packing`` (texts -> tokenized chunks), ``model`` (encoder + pooling), ``losses`` / ``loss_spec`` /
``objective`` / ``matryoshka`` (the loss), ``gather`` / ``cached`` (cross-device negatives, the gradient cache),
``sampling`` (several training datasets), ``trainer``, ``evaluation``, ``rotation`` (the Matryoshka rotation
extension), ``export`` (the output folder)."""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
