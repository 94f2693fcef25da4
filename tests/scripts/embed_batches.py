"""``python -m train.embed`` with test hooks, for the multi-dataset resume and 2-process tests.

Environment: ``EMBED_BATCH_LOG=path`` makes every rank append one line per collated training batch to
``path.rank<r>``: the dataset index, then the anchors' content ids (the loader prefetches one more batch than it
trains on); ``EMBED_KILL_AT_STEP=k`` SIGKILLs rank 0 at the end of optimizer step k (before any save of step k).
"""

from __future__ import annotations

import os
import signal
import sys

from accelerate import PartialState
from transformers import TrainerCallback

from lorasmith.process import run_main
from train import embed
from train.common import run
from train.embed.sampling import MixCollator


class KillAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and int(os.environ.get("EMBED_KILL_AT_STEP", -1)) == state.global_step:
            os.kill(os.getpid(), signal.SIGKILL)


def logged_call(collate):
    def call(self, items):
        batch = collate(self, items)
        with open(f"{os.environ['EMBED_BATCH_LOG']}.rank{PartialState().process_index}", "a") as stream:
            stream.write(" ".join(map(str, [int(batch["dataset"]), *batch["anchor_ids"].tolist()])) + "\n")
        return batch

    return call


if __name__ == "__main__":
    MixCollator.__call__ = logged_call(MixCollator.__call__)
    lifecycle_callbacks = run.lifecycle_callbacks
    run.lifecycle_callbacks = lambda: [*lifecycle_callbacks(), KillAtStep()]
    sys.exit(run_main(embed.main))
