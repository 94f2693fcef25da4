"""``train.embed`` whose loss becomes NaN from step ``NAN_FROM_STEP`` on, on rank ``NAN_RANK`` only: every rank
must stop together (exit 4) instead of the others waiting in the next collective."""

import os
import sys

from accelerate import PartialState

from lorasmith.process import run_main
from train.embed import main
from train.embed.trainer import ContrastiveTrainer

compute_loss = ContrastiveTrainer.compute_loss


def nan_on_one_rank(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    result = compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
    late = self.state.global_step + 1 >= int(os.environ["NAN_FROM_STEP"])
    if late and PartialState().process_index == int(os.environ["NAN_RANK"]):
        return result * float("nan") if not return_outputs else (result[0] * float("nan"), result[1])
    return result


ContrastiveTrainer.compute_loss = nan_on_one_rank
sys.exit(run_main(main, sys.argv[1:]))
