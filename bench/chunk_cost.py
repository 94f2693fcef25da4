"""What one more encoder forward costs, in token slots: the constant behind ``collator.FORWARD_COST_TOKENS``.

    python bench/chunk_cost.py [--model minilm] [--repeats 5]

Times forward + backward (LoRA r=16 on query/key/value/dense, mean pooling, fp32, the grads a training step takes)
of a random ``(n, T)`` chunk for n in 2..32 texts and T in 16..128 tokens, and fits
``seconds = per_slot x n x T + attention x n x T^2 + per_forward`` by least squares on relative error.
``per_forward / per_slot`` is the fixed cost of a call expressed as padded token slots:
:func:`train.embed.collator.length_sorted_chunks` cuts a step's texts where the padding it saves exceeds
it. Prints the grid, the fit and the ratio. Run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.report import format_table  # noqa: E402

TEXTS, TOKENS = (2, 4, 8, 16, 32), (16, 32, 64, 128)


def seconds_per_step(model, n: int, width: int, repeats: int) -> float:
    """Median seconds of forward + backward of ``n`` random texts of ``width`` tokens."""
    import torch

    input_ids = torch.randint(1000, 20000, (n, width))
    chunk = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        model([chunk]).sum().backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    from train.common.args import ModelArguments
    from train.embed.model import build_embedding_model

    torch.manual_seed(0)
    model_args = ModelArguments(model_name_or_path=args.model, use_peft=True, lora_r=16, lora_alpha=32,
                                lora_dropout=0.05, lora_target_modules=["query", "key", "value", "dense"])  # fmt: skip
    model = build_embedding_model(model_args, "mean", True).train()
    grid = {(n, t): seconds_per_step(model, n, t, args.repeats) for n in TEXTS for t in TOKENS}
    # seconds = per_slot x nT + attention x nT^2 + per_forward, fitted on relative error (small chunks count)
    terms = torch.tensor([[n * t, n * t * t, 1.0] for n, t in grid], dtype=torch.float64)
    seconds = torch.tensor(list(grid.values()), dtype=torch.float64)
    weights = 1 / seconds.unsqueeze(1)
    fit = torch.linalg.lstsq(terms * weights, seconds.unsqueeze(1) * weights).solution.squeeze(1).tolist()
    per_slot, _, per_forward = fit
    rows = [[f"{n} texts", *(1000 * grid[n, t] for t in TOKENS)] for n in TEXTS]
    print(format_table(["ms per forward+backward", *(f"T={t}" for t in TOKENS)], rows))
    print(f"\nfit: {1e6 * per_slot:.1f} us per token slot + {1000 * per_forward:.1f} ms per forward "
          f"-> one forward costs {per_forward / per_slot:.0f} token slots ({args.model}, {torch.get_num_threads()} "
          "threads)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
