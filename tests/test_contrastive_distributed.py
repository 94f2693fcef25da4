"""2 gloo processes x local batch give the single-process big-batch loss and gradient for every contrastive loss,
alone and under Matryoshka widths, encoded in one forward, in length-sorted chunks and with the gradient cache."""

from __future__ import annotations

import re

import pytest
from multiproc import run_multiprocess

BASE_CASES = [
    "simcse_unsup/infonce",
    "pairs/infonce",
    "pairs/infonce_symmetric",
    "pairs_uneven/infonce_symmetric",
    "triplets/infonce",
    "tags/infonce",
    "scored_pairs/cosent",
    "scored_pairs/angle",
    "scored_pairs/cosine_mse",
    "scored_pairs/ibn",
    "scored_pairs/cosent+ibn+angle",
    "scored_pairs_uneven/cosent+ibn+angle",
    # Matryoshka widths 8/4/2 (weights 1/0.5/0.25): gathered once at full width, truncated per width
    "matryoshka/pairs/infonce_symmetric",
    "matryoshka/tags/infonce",
    "matryoshka/triplets/infonce",
    "matryoshka/scored_pairs/cosent+ibn+angle",
]
# every case also encoded in length-sorted chunks and with the gradient cache; one more with dropout replayed
CASES = [f"{case}{variant}" for case in BASE_CASES for variant in ("", " [chunked]", " [cached]")]
CASES.append("simcse_unsup/infonce [cached, dropout 0.3]")


@pytest.mark.slow
def test_gathered_objective_matches_the_single_process_big_batch():
    result = run_multiprocess(["tests/scripts/contrastive_exactness.py"])
    passed = set(re.findall(r"^(.+): PASSED", result.stdout, flags=re.MULTILINE))
    assert passed == set(CASES), result.stdout
    assert f"0 of {len(CASES)} cases failed on 2 processes" in result.stdout
