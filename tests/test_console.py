"""lorasmith.console: library noise (pooler LOAD REPORT, bitsandbytes kernels warning, weight-loading bar) is
silenced on our consoles while our own lines and a report naming real problems stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lorasmith.console import is_pooler_only_load_report
from lorasmith.embedded_models import embedded_model_files

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("LOAD REPORT", "Failed to load CPU gemm_4bit_forward", "Loading weights")

REPORT = """BertModel LOAD REPORT from: model
Key                 | Status     |  |
--------------------+------------+--+-
pooler.dense.weight | UNEXPECTED |  |
{extra}
Notes:
- UNEXPECTED:\tcan be ignored when loading from different task/architecture."""


def run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_pooler_only_report_is_noise_and_a_missing_weight_is_not():
    assert is_pooler_only_load_report(REPORT.format(extra="pooler.dense.bias   | UNEXPECTED |  |"))
    missing_pooler = REPORT.replace("UNEXPECTED", "MISSING").format(extra="pooler.dense.bias | MISSING |  |")
    assert is_pooler_only_load_report(missing_pooler)
    assert not is_pooler_only_load_report(REPORT.format(extra="encoder.layer.0.weight | MISSING |  |"))
    assert not is_pooler_only_load_report("some other warning")


def test_entrypoint_console_has_our_lines_and_no_library_noise():
    done = run(
        "import lorasmith.process as process\n"
        "import peft  # logs the bitsandbytes kernels warning when imported unfiltered\n"
        "from transformers import AutoModel\n"
        "from lorasmith.embedded_models import embedded_model_files\n"
        "def main():\n"
        "    print('plan: our own line', flush=True)\n"
        "    AutoModel.from_pretrained(str(embedded_model_files('minilm')[0]), add_pooling_layer=False)\n"
        "    print('saved: our own line', flush=True)\n"
        "raise SystemExit(process.run_main(main))\n"
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "plan: our own line" in output and "saved: our own line" in output
    assert not [noise for noise in NOISE if noise in output], output


def test_unfiltered_the_same_load_is_noisy():
    """The check above is not vacuous: without lorasmith (importing it installs lorasmith.console's filters) the
    same load prints the noise."""
    folder = str(embedded_model_files("minilm")[0])
    done = run(f"from transformers import AutoModel\nAutoModel.from_pretrained({folder!r}, add_pooling_layer=False)\n")
    assert "LOAD REPORT" in done.stderr and "Loading weights" in done.stderr


def test_eval_cli_prints_its_table_without_the_weight_loading_bar():
    done = subprocess.run(
        [sys.executable, "-m", "eval.sts", "--model", "minilm", "--data", "data_utils/samples/sts_eval.tsv", "--no-progress"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "spearman x100" in done.stdout
    assert not [noise for noise in NOISE if noise in output], output
