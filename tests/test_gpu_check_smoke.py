"""bench/gpu_check.py runs end to end with ``--smoke`` (tiny shapes, fp32, CPU): the GPU script cannot rot unseen."""

from __future__ import annotations

import re
import subprocess
import sys

import multiproc


def test_gpu_check_smoke_prints_its_tables():
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke"], cwd=multiproc.REPO, env=multiproc.test_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA embed step (BERT-base)" in result.stdout
    assert "LoRA SFT step (1.1B Llama)" in result.stdout
    # the 4-bit decoder embedding step ran (bitsandbytes' CPU backend): smoke batch 8, a time in ms
    assert re.search(r"QLoRA embed step \(1\.1B Llama, nf4, cache\) +8 +\d+\.\d ms", result.stdout), result.stdout
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith(("plain", "cached"))}
    assert lines["plain"][1] == "8" and lines["cached"][1] == "32"  # smoke batches: plain 8, cached 32
