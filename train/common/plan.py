"""The start-up plan every entrypoint prints (and ``--dry_run`` stops after)."""

from __future__ import annotations

from accelerate import PartialState


def print_plan(title: str, plan: dict) -> None:
    """Print ``plan`` (name -> value) as an aligned block on the main process only."""
    if not PartialState().is_main_process:
        return
    width = max(len(k) for k in plan)
    lines = [f"== {title} =="] + [f"  {k.ljust(width)} : {v}" for k, v in plan.items()]
    print("\n".join(lines), flush=True)
