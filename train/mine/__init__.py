"""Hard-negative mining for ``python -m train.mine`` (entrypoint: ``train/mine/__main__.py``).

One file per concern, each testable without a model:

- ``inputs``: pairs + corpus texts -> distinct queries, distinct documents, which pair row asks which query,
  and the (query, document) pairs that may never be negatives (known positives, the query's own text).
- ``candidates``: exact top-k of every query over the corpus, in corpus chunks with a running top-k merge,
  query blocks shared out over processes.
- ``filters``: rank window, score and margin filters, top / seeded random sampling, all pure functions
  on score tensors.
- ``output``: the triplets rows, the atomic JSONL write, the end-of-run summary.
"""

from train import entrypoint_attributes

__getattr__ = entrypoint_attributes(__name__)
