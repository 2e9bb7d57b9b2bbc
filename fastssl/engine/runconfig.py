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


# Flags added after runs were saved: what a saved config WITHOUT the key computed (the value the method's code
# reads for a missing key). Such a run resumes with the flag at that value and is refused with any other:
# norm_pix / input_norm (denoise, inpaint) at their defaults; tile_norm (jigsaw, context) only with
# ``--tile-norm tiles``, not today's default 'input' (fastssl.methods._tiles.tile_norm: a missing key meant 'tiles').
MISSING_MEANS = {"norm_pix": 0, "input_norm": "none", "tile_norm": "tiles"}


def config_differences(saved: dict, now: dict) -> dict:
    """{key: (saved value, current value)} for every non-runtime key whose values differ (a key missing from
    ``saved`` and listed in ``MISSING_MEANS`` counts as that value)."""
    def old(k):
        return saved[k] if k in saved else MISSING_MEANS.get(k)
    return {k: (old(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if k not in RUNTIME_KEYS and old(k) != now.get(k)}


def schedule_differences(saved: dict, now: dict) -> dict:
    """{fact: (saved, now)} for the SCHEDULE_KEYS facts that differ."""
    return {k: (saved.get(k), now.get(k)) for k in SCHEDULE_KEYS if saved.get(k) != now.get(k)}
