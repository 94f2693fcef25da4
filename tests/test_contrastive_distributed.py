"""2 gloo processes x local batch give the single-process big-batch loss and gradient for every contrastive loss."""

from __future__ import annotations

import re

import pytest
from multiproc import run_multiprocess

CASES = [
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
]


@pytest.mark.slow
def test_gathered_objective_matches_the_single_process_big_batch():
    result = run_multiprocess(["tests/scripts/contrastive_exactness.py"])
    passed = set(re.findall(r"^(\S+): PASSED", result.stdout, flags=re.MULTILINE))
    assert passed == set(CASES), result.stdout
    assert f"0 of {len(CASES)} cases failed on 2 processes" in result.stdout
