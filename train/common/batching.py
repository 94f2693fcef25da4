"""Global-batch arithmetic shared by the entrypoints' start-up (``launch.global_batch_accumulation``) and the SLURM
launcher's dry run (``slurm/plan_launch.py``). Pure Python on purpose: the launcher imports it without torch.

global batch = per_device_train_batch_size x gradient_accumulation_steps x world size (sequences per optimizer step).
"""

from __future__ import annotations


def gradient_accumulation_for(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """The accumulation steps that make ``per_device x steps x world_size == global_batch_size`` exactly.

    Raises:
        ValueError: it does not divide; the message lists per-device batch sizes that would fit this world size.
    """
    per_step = per_device_batch_size * world_size
    if global_batch_size % per_step:
        fits = [b for b in range(1, global_batch_size + 1) if global_batch_size % (b * world_size) == 0]
        raise ValueError(
            f"global_batch_size {global_batch_size} is not a multiple of per_device_train_batch_size "
            f"{per_device_batch_size} x world size {world_size}; per_device_train_batch_size values that fit this "
            f"launch: {fits[-6:] or 'none (change global_batch_size)'}"
        )
    return global_batch_size // per_step
