"""``python -m fastssl.train --config imagenet/simclr --dry-run N``: prove a full-size run before the data.

Builds everything the real run builds, at the config's size (the full model on the device, DDP under
``torchrun``, optimizer, schedule, autocast, the real DALI pipeline and view recipe at ``--image-size``),
then times N training steps through the trainer's own step (``Trainer.step``) and prints, per step, the
step time and the wait for data, then the mean step time (steps 2..N; step 1 carries the warm-up), the
images/s, the peak memory (CPU: the process's peak resident set; CUDA: ``torch.cuda.max_memory_allocated``)
and a projection of the time per ImageNet epoch at that rate, labelled as such. The same numbers follow as
one JSON line on stdout (``{"dry_run": {...}}``).

Data: ``--data ROOT`` (the real dataset; its start-up checks run as in training), else a generated
ImageNet-layout folder of full-size JPEGs (fastssl.data.synthetic: 320 images of 500x375 px in 1000 class
folders, generated once and cached). When a step needs more images than the folder has, its file list is
repeated (each copy decoded and augmented anew, so the cost per image is real).

Per-step batch: the config's global ``--batch-size``, unless
- ``--dry-run-batch B`` sets it;
- on a CPU: at most ``CPU_BATCH`` (a CPU cannot train a GPU batch of thousands in useful time);
- on a GPU (one process): halved after each out-of-memory until a step fits.
A reduced batch is said plainly in the output, with the config's batch beside it. With ``--chunk-size C``
(gradient caching, where the method supports it) each step processes its batch in chunks of C: the config's
full batch on a GPU (the step then costs what the real run's step costs), 2 chunks per process on a CPU,
or ``--dry-run-batch B`` (a multiple of C per process, else a one-line error).

Run folder: none is left behind: the trainer works in a temporary folder, removed at exit (also on
Ctrl-C or SIGTERM, which exit 130 / 143); with ``--out``
the folder is kept with ``config.json``, the steps' ``metrics.jsonl`` and ``dryrun.json`` (no checkpoint).

Methods may supply what a preset cannot hold through ``Method.dry_run_config`` (bow: without ``--teacher``
a randomly initialized rotation network of the same arch stands in, cached by
``fastssl.methods.bow.stand_in_teacher``: the cost is the real one, the targets are meaningless).
"""

from __future__ import annotations

import gc
import json
import math
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from fastssl.base.atomic import atomic_write_text
from fastssl.base.errors import ConfigError, TrainError

CPU_BATCH = 8
IMAGENET_TRAIN_IMAGES = 1_281_167
_clock = time.perf_counter


def _say(d, text: str) -> None:
    if d.is_main:
        print(f"fastssl.train: dry run: {text}", file=sys.stderr, flush=True)


def _repeated(src, min_images: int):
    """``src`` with its file list repeated until it holds at least ``min_images`` entries."""
    from fastssl.data.folders import ImageFolderSource

    k = max(1, math.ceil(min_images / len(src)))
    if k == 1:
        return src
    rep = ImageFolderSource.__new__(ImageFolderSource)
    rep._init(src.root, src.files * k, src.labels * k, src.classes, validate=False, on_bad="error")
    return rep


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def dry_run(cfg: dict) -> int:
    """Run the dry run for a parsed config (``cfg["dry_run"]`` = N steps); see the module docstring."""
    from fastssl.engine.parallel import setup_distributed

    if cfg["resume"]:
        raise ConfigError("--dry-run times a freshly built model: drop --resume")

    def stop(signum, frame):  # SIGTERM: unwind (the temporary run folder is removed), exit 128 + N
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    d = setup_distributed(cfg["device"])
    try:
        return _DryRun(cfg, d).run()
    finally:
        signal.signal(signal.SIGTERM, old)
        if dist.is_initialized():
            dist.destroy_process_group()


class _DryRun:
    def __init__(self, cfg: dict, d):
        self.cfg, self.d = cfg, d
        self.steps = int(cfg.pop("dry_run"))
        self.step_batch_flag = cfg.pop("dry_run_batch", None)

    def _sources(self):
        from fastssl.data import dataset_splits
        from fastssl.data.synthetic import imagenet_like_root

        cfg = self.cfg
        generated = cfg["data"] is None
        if generated:
            cfg["data"] = str(imagenet_like_root(progress=self.d.is_main and not cfg["quiet"]))
            self.data_note = "a generated ImageNet-layout folder of 500x375 JPEGs"
        else:
            self.data_note = f"--data {cfg['data']}"
        with warnings.catch_warnings():
            if generated:  # its 1000 class folders are mostly empty by design (320 images)
                warnings.filterwarnings("ignore", message=r".*class folder\(s\) in .* hold no image files")
            return dataset_splits(Path(cfg["data"]), on_bad=cfg["on_bad"], val_list=cfg.get("val_list"))

    def _step_batch(self) -> tuple[int, str | None]:
        """(global per-step batch, why it differs from the config's batch or None)."""
        cfg, d = self.cfg, self.d
        want = cfg["batch_size"]
        chunk = cfg.get("chunk_size")
        if chunk:  # whole chunks per process: the step then costs what the real run's step costs per image
            per_step = chunk * d.world_size
            if self.step_batch_flag:
                b = self.step_batch_flag
                if b % per_step:
                    raise ConfigError(f"--dry-run-batch {b} is not a whole number of --chunk-size {chunk} chunks "
                                      f"per process ({d.world_size} process(es)): use a multiple of {per_step}")
                return b, (None if b == want else f"--dry-run-batch {b}")
            if d.device.type == "cpu" and want > 2 * per_step:
                return 2 * per_step, (f"on a CPU a chunked dry run measures 2 chunks of {chunk} per process per "
                                      "step (--dry-run-batch B to choose)")
            return want, None
        if self.step_batch_flag:
            b = self.step_batch_flag
            return b, (None if b == want else f"--dry-run-batch {b}")
        if d.device.type == "cpu" and want > CPU_BATCH * d.world_size:
            return CPU_BATCH * d.world_size, (f"on a CPU the dry run measures at most {CPU_BATCH} images per process "
                                               "per step (--dry-run-batch B to choose)")
        return want, None

    def run(self) -> int:
        from fastssl.engine.trainer import Trainer

        cfg, d = self.cfg, self.d
        preset_batch = cfg["batch_size"]
        train_src, val_src = self._sources()
        step_batch, reason = self._step_batch()
        ws = d.world_size
        if step_batch % ws:
            raise ConfigError(f"--dry-run-batch {step_batch} is not divisible by the {ws} processes")
        keep = cfg["out"] is not None
        tmp = None if keep else tempfile.mkdtemp(prefix="fastssl-dryrun-")
        if not keep:
            cfg["out"] = tmp
        cfg.update(eval="none", batch_size=step_batch)
        try:
            # Enough images for every step even after halving the batch down to 1 (the list is only repeated).
            sources = (_repeated(train_src, (self.steps + 1) * step_batch), val_src)
            _say(d, f"{cfg['method']} | {cfg['arch']} at {cfg['image_size']} px | data: {self.data_note} "
                 f"({len(train_src)} images, {len(train_src.classes)} classes) | "
                 + ("nothing is kept (temporary run folder)" if not keep else f"kept in {cfg['out']}"))
            trainer = Trainer(cfg, d, sources=sources)  # set-up progress (colorize, bow) shows unless --quiet
            trainer.progress.enabled = False  # the training bar: the dry run prints its own lines
            if trainer.progress.bar is not None:
                trainer.progress.bar.leave = False
            trainer.progress.close()
            try:
                result = self._measure(trainer, step_batch, preset_batch, reason)
            finally:
                trainer.logger.close()
            if d.is_main:
                self._report(result, keep)
            return 0
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _measure(self, trainer, step_batch: int, preset_batch: int, reason: str | None) -> dict:
        cfg, d = self.cfg, self.d
        cuda = d.device.type == "cuda"
        can_halve = cuda and d.world_size == 1 and not cfg.get("chunk_size") and not self.step_batch_flag
        while True:
            local = step_batch // d.world_size
            if cuda:
                torch.cuda.synchronize(d.device)
                torch.cuda.reset_peak_memory_stats(d.device)
            records = []
            try:
                loader = trainer.loader(epoch=0, local_batch=local)
                it = iter(loader)
                for s in range(self.steps):
                    t0 = _clock()
                    views, labels = next(it)
                    t1 = _clock()
                    loss, _, metrics, lr = trainer.step(views, labels)
                    if cuda:
                        torch.cuda.synchronize(d.device)
                    t2 = _clock()
                    records.append({"step": s + 1, "step_s": t2 - t1, "data_s": t1 - t0, "loss": loss, **metrics})
                    trainer.logger.log({**records[-1], "lr": lr, "dry_run": True}, s + 1, "dry_run")
                    _say(d, f"step {s + 1}/{self.steps}: {t2 - t1:.3f} s (waited {t1 - t0:.3f} s for data), "
                         f"loss {loss:.4g}")
                del it, loader
                break
            except torch.cuda.OutOfMemoryError:
                if not can_halve or step_batch == 1:
                    raise TrainError(f"out of GPU memory at a per-step batch of {step_batch} "
                                     f"({cfg['arch']} at {cfg['image_size']} px); pass --dry-run-batch B"
                                     + (" or a smaller --chunk-size" if cfg.get("chunk_size") else "")) from None
                trainer.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                _say(d, f"a per-step batch of {step_batch} does not fit in this GPU's memory; halving it")
                step_batch //= 2
                reason = "the config's batch does not fit in this GPU's memory (halved until a step fit)"
        timed = records[1:] if len(records) > 1 else records
        mean_step = sum(r["step_s"] for r in timed) / len(timed)
        mean_data = sum(r["data_s"] for r in timed) / len(timed)
        return {
            "method": cfg["method"], "arch": cfg["arch"], "image_size": cfg["image_size"], "device": str(d.device),
            "device_name": torch.cuda.get_device_name(d.device) if cuda else "cpu",
            "world_size": d.world_size, "config_batch_size": preset_batch, "step_batch_size": step_batch,
            "reduced_because": reason if step_batch != preset_batch else None, "chunk_size": cfg.get("chunk_size"),
            "steps": self.steps, "step_s": [r["step_s"] for r in records], "data_s": [r["data_s"] for r in records],
            "loss": [r["loss"] for r in records], "mean_step_s": mean_step, "mean_data_s": mean_data,
            "timed_steps": f"{records.index(timed[0]) + 1}-{len(records)}",
            "img_per_s": step_batch / mean_step, "img_per_s_with_data_wait": step_batch / (mean_step + mean_data),
            "peak_rss_gib": _peak_rss_gib(),
            "peak_cuda_gib": torch.cuda.max_memory_allocated(d.device) / 2**30 if cuda else None,
            "data": cfg["data"], "generated_data": not self.data_note.startswith("--data"),
            "torch_threads": torch.get_num_threads(),
        }

    def _report(self, r: dict, keep: bool) -> None:
        cfg = self.cfg
        batch = f"per-step batch {r['step_batch_size']}"
        if r["reduced_because"]:
            batch += (f" -- SMALLER than the config's {r['config_batch_size']}: {r['reduced_because']}; the "
                      "numbers below are for this batch, not the config's")
        elif r["chunk_size"]:
            batch += f" (the config's), in chunks of {r['chunk_size']} (--chunk-size)"
        else:
            batch += " (the config's)"
        per_epoch = IMAGENET_TRAIN_IMAGES / r["img_per_s_with_data_wait"]
        mem = f"CPU peak RSS {r['peak_rss_gib']:.2f} GiB"
        if r["peak_cuda_gib"] is not None:
            mem = f"CUDA max allocated {r['peak_cuda_gib']:.2f} GiB ({r['device_name']}), " + mem
        first = r["step_s"][0]
        print(f"dry run: {r['method']}, {r['arch']} at {r['image_size']} px on {r['device']} x{r['world_size']}, "
              f"{batch}\n"
              f"  step time   {r['mean_step_s']:.3f} s (mean of steps {r['timed_steps']}; step 1: {first:.3f} s"
              f" incl. warm-up), data wait {r['mean_data_s']:.3f} s/step\n"
              f"  throughput  {r['img_per_s']:.2f} img/s (steps only), {r['img_per_s_with_data_wait']:.2f} img/s "
              "with the data wait\n"
              f"  peak memory {mem}\n"
              f"  projection at this rate (not a measurement of a real run): one ImageNet epoch "
              f"({IMAGENET_TRAIN_IMAGES:,} images) {_fmt_duration(per_epoch)}, the config's {cfg['epochs']} epochs "
              f"{_fmt_duration(per_epoch * cfg['epochs'])}")
        print(json.dumps({"dry_run": r}))
        if keep:
            atomic_write_text(Path(cfg["out"]) / "dryrun.json", json.dumps(r, indent=2) + "\n")
