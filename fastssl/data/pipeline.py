"""The one DALI pipeline: read an explicit file list -> recipe views -> flip/normalize/NCHW.

The device is chosen at build time: ``device="cpu"`` builds it with ``device_id=None`` and CPU
decode; ``device="cuda"`` builds the same graph with ``device="mixed"`` decode (nvJPEG, fused
random-crop decode where the recipe uses it), so every operator after the decoder runs on the GPU.

The reader gets this rank's files for one epoch, already permuted and sharded in Python
(folders.epoch_shard), with ``random_shuffle=False`` and no DALI-side sharding: one pipeline covers
exactly one epoch, so DALI's epoch-boundary behaviour never matters. Augmentation randomness comes
from the pipeline ``seed``, which the loader derives from (seed, epoch, shard_id); DALI's random
operators draw from per-sample generators, so the batches do not depend on ``num_threads``.
Conditionals are enabled (recipes apply rare augmentations under a per-sample ``if``).
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .recipes import Ctx, Recipe

READER_NAME = "Reader"


@pipeline_def(enable_conditionals=True)
def ssl_pipeline(files: list[str], labels: list[int], recipe: Recipe, decode_device: str, image_size: int,
                 opts: dict, output: str):
    encoded, label = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                     pad_last_batch=True, name=READER_NAME)
    ctx = Ctx(decode_device=decode_device, image_size=image_size, opts=opts)
    views = recipe.build(encoded, ctx)
    if output == "float":
        norm = dict(dtype=types.FLOAT, mean=[255.0 * m for m in opts["mean"]],
                    std=[255.0 * s for s in opts["std"]])
    else:
        norm = dict(dtype=types.UINT8)
    outs = []
    for image, mirror in views:
        kw = dict(norm)
        if mirror is not None:
            kw["mirror"] = mirror
        outs.append(fn.crop_mirror_normalize(image, output_layout="CHW", device=ctx.dev, **kw))
    return (*outs, label)


def build_pipeline(files: list[str], labels: list[int], recipe: Recipe, opts: dict, *, device: str,
                   device_index: int | None, image_size: int, output: str, batch_size: int,
                   num_threads: int, seed: int, prefetch_queue_depth: int = 2):
    """Build (not yet run) the pipeline for one rank and one epoch."""
    if output not in ("float", "uint8"):
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    gpu = device == "cuda"
    pipe = ssl_pipeline(files=files, labels=labels, recipe=recipe, decode_device="mixed" if gpu else "cpu",
                        image_size=int(image_size), opts=opts, output=output,
                        batch_size=batch_size, num_threads=num_threads,
                        device_id=(device_index or 0) if gpu else None, seed=seed,
                        prefetch_queue_depth=prefetch_queue_depth)
    pipe.build()
    return pipe
