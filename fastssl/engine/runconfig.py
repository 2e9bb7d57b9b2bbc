"""Which run settings matter for ``--resume`` (no CLI, no engine imports: both import this).

A resumed run must compute exactly what the uninterrupted run would have. The checkpoint stores the
run's config (a plain dict) and the schedule facts below; on ``--resume`` every config key outside
``RUNTIME_KEYS`` must be equal, and so must every ``SCHEDULE_KEYS`` fact, or the resume is refused
with a message naming what differs.
"""

from __future__ import annotations

# Flags that may differ between a run and its --resume: they don't change what is computed.
RUNTIME_KEYS = frozenset({"out", "resume", "workers", "log_every", "ckpt_every", "compile", "device", "config",
                          "eval", "eval_every", "quiet", "on_bad", "val_list", "dry_run", "dry_run_batch"})

# What the data order and the learning-rate schedule depend on besides the config: the number of
# processes (shard padding), the number of training images and the steps per epoch they give.
SCHEDULE_KEYS = ("world_size", "train_images", "steps_per_epoch", "total_steps")


def config_differences(saved: dict, now: dict) -> dict:
    """{key: (saved value, current value)} for every non-runtime key whose values differ."""
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if k not in RUNTIME_KEYS and saved.get(k) != now.get(k)}


def schedule_differences(saved: dict, now: dict) -> dict:
    """{fact: (saved, now)} for the SCHEDULE_KEYS facts that differ."""
    return {k: (saved.get(k), now.get(k)) for k in SCHEDULE_KEYS if saved.get(k) != now.get(k)}
