"""The training loop behind `python -m fastssl.train`: data -> method -> loss -> optimizer, with
checkpoint/resume, logging and multi-process (DDP) support.

Run folder (``--out``; only rank 0 writes):
  config.json     the resolved flags (``--config config.json`` reproduces the run)
  metrics.jsonl   one JSON line per logged step and per epoch
  tb/             TensorBoard event log
  last.pt         every epoch and every ``--ckpt-every`` steps: model, optimizer, scheduler, grad
                  scaler, epoch and position inside it, global step, RNG states, config, and the
                  schedule facts (process count, training images, steps per epoch); plain data only
                  (fastssl.base.checkpoint), opened with weights_only=True
  best.pt         the epoch with the lowest mean training loss so far
  eval.json       the final kNN accuracy (learned and random init), with k, T and the image counts
  viz/epoch_NNN.png  the method's picture of its task (methods with a visualize hook): before
                  training (000) and after each epoch

metrics.jsonl records (TensorBoard gets the same numbers): per logged step ``step``, ``epoch``,
``loss`` (the global-batch loss: the mean of the ranks' losses), ``lr`` (the rate this step's update
used), the method's metrics (averaged over ranks), ``data_s`` (waiting for the batch) and ``step_s``
(forward, backward, update); per epoch ``epoch_loss`` (mean step loss over the whole epoch),
``images`` and ``epoch_s`` (trained this session in this epoch, wall seconds) and ``img_per_s``
(their ratio); after training ``knn_top1``/``knn_top5`` (learned) and ``*_random_init``.
Checkpoints are written atomically (temp file + rename). ``--resume`` (a file, a run folder or
``auto``) continues exactly: the data loader re-creates the same epoch and skips the batches already
done, so on CPU a run killed with SIGKILL and resumed ends with bit-identical weights to an
uninterrupted run. A resume is refused (one line naming what differs) when a config key outside
fastssl.engine.runconfig.RUNTIME_KEYS changed, or the process count, the number of training images or the
steps per epoch did (the data order and the LR schedule depend on them). SIGINT/SIGTERM
checkpoint at the end of the current step, then exit (130/143).
A non-finite loss stops the run before the optimizer step, with a message; no checkpoint is written
from that state, so the last good one stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fastssl.base import checkpoint as ckpt_io
from fastssl.base.atomic import atomic_write_text
from fastssl.base.errors import ConfigError, TrainError
from fastssl.base.progress import Progress
from fastssl.engine.gradcache import Embedder, GradCache
from fastssl.engine.optim import build_optimizer, build_scheduler, scaled_lr
from fastssl.engine.parallel import convert_global_bn, setup_distributed
from fastssl.engine.runconfig import config_differences, schedule_differences
from fastssl.methods import Method, build_method
from fastssl.models import to_channels_last

_clock = time.perf_counter  # every duration the trainer reports (tests substitute a controlled clock)
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "state", "rng", "config", "schedule")


class _Stop:
    """SIGINT/SIGTERM -> finish the step, checkpoint, exit."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _resolve_resume(cfg: dict) -> Path | None:
    r = cfg["resume"]
    if not r:
        return None
    if r == "auto":
        if not cfg["out"]:
            raise ConfigError("--resume auto needs --out (the run folder to continue)")
        path = Path(cfg["out"]) / "last.pt"
        return path if path.is_file() else None
    path = Path(r)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}")
    return path


def _check_compatible(cfg: dict, saved: dict, path: Path) -> None:
    diff = config_differences(saved, cfg)
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume {path}: the run's config differs ({lines}); resume with the same "
                          "flags (or --config <run>/config.json), or start a new --out")


def _check_schedule(saved: dict, now: dict, path: Path) -> None:
    diff = schedule_differences(saved, now)
    if diff:
        lines = ", ".join(f"{k.replace('_', ' ')}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
        raise ConfigError(f"--resume {path}: the data order and learning-rate schedule would change ({lines}); "
                          "resume with the same number of processes and the same images, or start a new --out")


def _data_sources(cfg: dict):
    """(train, val or None) sources; fills cfg["data"] with the demo root when no --data was given."""
    from fastssl.data import dataset_splits, demo_root

    if cfg["data"] is None:
        cfg["data"] = str(demo_root(seed=0))
    return dataset_splits(Path(cfg["data"]), on_bad=cfg.get("on_bad", "error"), val_list=cfg.get("val_list"))


def _autocast(cfg: dict, device: torch.device):
    prec = cfg["precision"]
    if prec == "auto":
        prec = "bf16" if device.type == "cuda" else "fp32"
    if prec == "fp32":
        return contextlib.nullcontext(), False
    dtype = torch.bfloat16 if prec == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), prec == "fp16"


def _build_model(cfg: dict):
    torch.manual_seed(cfg["seed"])  # same init on every rank and for the random-init baseline
    return build_method(cfg["method"], cfg)


class _Logger:
    """metrics.jsonl + TensorBoard, rank 0 only."""

    def __init__(self, out: Path | None):
        self.out = out
        self.tb = None
        if out is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.file = (out / "metrics.jsonl").open("a")
            self.tb = SummaryWriter(str(out / "tb"))

    def log(self, record: dict, step: int, prefix: str) -> None:
        if self.out is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.out is not None:
            self.file.close()
            self.tb.close()


def train(cfg: dict) -> int:
    d = setup_distributed(cfg["device"])
    try:
        return Trainer(cfg, d).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """One run: set-up (data, model, optimizer, resume) in __init__, the loop in run()."""

    def __init__(self, cfg: dict, d, sources=None):
        """``sources``: (train, val or None) to use instead of ``cfg["data"]``'s (the dry run's)."""
        self.cfg, self.d = cfg, d
        device, ws = d.device, d.world_size
        resume_path = _resolve_resume(cfg)
        if cfg["out"] is None:
            cfg["out"] = str(resume_path.parent if resume_path is not None else
                             Path("runs") / f"{cfg['method']}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.out = out = Path(cfg["out"])
        if resume_path is None and (out / "last.pt").exists():
            raise ConfigError(f"run folder {out} already holds a checkpoint; continue it with --resume auto, "
                              "or choose another --out")
        self.train_src, self.val_src = sources or _data_sources(cfg)
        no_probe = probe_skip_reason(self.train_src, self.val_src)
        if cfg.get("eval_every") and no_probe:
            raise ConfigError(f"--eval-every {cfg['eval_every']}: {no_probe}")
        if cfg["batch_size"] % ws:
            raise ConfigError(f"--batch-size {cfg['batch_size']} is not divisible by the {ws} processes")
        local_bs = cfg["batch_size"] // ws
        per_shard = -(-len(self.train_src) // ws)
        if local_bs > per_shard:
            raise ConfigError(f"--batch-size {cfg['batch_size']} is larger than the dataset "
                              f"({len(self.train_src)} images in {self.train_src.root}"
                              f"{f' over {ws} processes' if ws > 1 else ''})")
        self.steps_per_epoch = per_shard // local_bs
        total_steps = self.steps_per_epoch * cfg["epochs"]
        self.schedule = {"world_size": ws, "train_images": len(self.train_src),
                         "steps_per_epoch": self.steps_per_epoch, "total_steps": total_steps}
        ckpt = None
        if resume_path is not None:
            ckpt = ckpt_io.load(resume_path, required=CHECKPOINT_KEYS)
            _check_compatible(cfg, ckpt["config"], resume_path)
            _check_schedule(ckpt["schedule"], self.schedule, resume_path)

        # NHWC: tensor cores on GPU; on CPU (oneDNN) it measured 1.4-1.6x faster for the demo ResNet.
        self.method = method = to_channels_last(convert_global_bn(_build_model(cfg), device).to(device))
        # --chunk-size: gradient caching (fastssl.engine.gradcache); DDP and torch.compile wrap method.embed.
        self.gradcache = (GradCache(method, cfg["chunk_size"], local_bs, ws, device) if cfg.get("chunk_size")
                          else None)
        model = method if self.gradcache is None else Embedder(method)
        if ws > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = torch.compile(model) if cfg["compile"] else model

        lr = scaled_lr(cfg["lr"], cfg["batch_size"])
        self.optimizer = build_optimizer(cfg["optimizer"], method, lr, cfg["weight_decay"], cfg["momentum"])
        self.scheduler = build_scheduler(self.optimizer, total_steps,
                                         round(cfg["warmup_epochs"] * self.steps_per_epoch))
        self.autocast, use_scaler = _autocast(cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_loss": float("inf"),
                      "epoch_loss_sum": 0.0, "epoch_loss_count": 0}
        if ckpt is not None:
            method.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.state.update(ckpt["state"])
            ckpt_io.set_rng_state(ckpt["rng"])
            if d.is_main:
                print(f"fastssl.train: resumed from {resume_path} at epoch {self.state['epoch']} step "
                      f"{self.state['step_in_epoch']}/{self.steps_per_epoch} (global step "
                      f"{self.state['global_step']})", file=sys.stderr)
        else:
            torch.manual_seed(cfg["seed"] + 1 + d.rank)

        self.loader_args = dict(recipe=method.recipe, batch_size=local_bs, seed=cfg["seed"], shard_id=d.rank,
                                num_shards=ws, device=device, image_size=cfg["image_size"],
                                num_threads=cfg["workers"],
                                recipe_options={**method.recipe_options(), **(cfg["recipe_options"] or {})})
        if d.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            print(f"fastssl.train: {cfg['method']} on {self.train_src} | {cfg['arch']} | global batch "
                  f"{cfg['batch_size']} over {ws} process(es) on {device} | {self.steps_per_epoch} steps/epoch "
                  f"x {cfg['epochs']} epochs | lr {lr:.4g} ({cfg['optimizer']}) | run folder {out}",
                  file=sys.stderr)
        self.logger = _Logger(out if d.is_main else None)
        self.progress = Progress(total_steps, cfg["batch_size"], start_step=self.state["global_step"],
                                 enabled=d.is_main and not cfg["quiet"], clock=_clock)

    def save(self, name: str = "last.pt") -> None:
        if self.d.is_main:
            ckpt_io.atomic_save({"model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                                 "state": dict(self.state), "rng": ckpt_io.rng_state(), "config": dict(self.cfg),
                                 "schedule": dict(self.schedule)},
                                self.out / name)

    def visualize(self, epoch: int) -> None:
        """The method's picture hook (rank 0): fixed images, eval mode, global RNG untouched."""
        from fastssl.data import make_loader

        m = self.method
        if not self.d.is_main or type(m).visualize is Method.visualize:
            return
        src = self.val_src or self.train_src
        n = min(m.viz_images, len(src))
        loader = make_loader(src, m.viz_recipe or m.recipe, batch_size=n, epoch=0, seed=self.cfg["seed"],
                             device=self.d.device, image_size=self.cfg["image_size"], num_threads=1,
                             recipe_options=self.loader_args["recipe_options"] if m.viz_recipe is None else None)
        views, labels = next(iter(loader))
        was_training = m.training
        with torch.random.fork_rng(devices=[self.d.device] if self.d.device.type == "cuda" else []), \
                torch.no_grad():
            m.eval()
            try:
                m.visualize(views, labels, self.out / "viz" / f"epoch_{epoch:03d}.png", epoch)
            finally:
                m.train(was_training)

    def run(self) -> int:
        try:
            if self.state["global_step"] == 0:
                self.visualize(0)
            with _Stop() as stop:
                while self.state["epoch"] < self.cfg["epochs"]:
                    signum = self._epoch(stop)
                    if signum:
                        return 128 + signum
            self.progress.close()
            sps, ips = self.progress.rates(self.state["global_step"])
            if self.d.is_main:
                gs = self.state["global_step"]
                here = gs - self.progress.start_step
                print(f"fastssl.train: done at global step {gs}"
                      f"{f' ({here} this session)' if here != gs else ''}, {ips:.0f} img/s ({sps:.2f} step/s) "
                      f"this session; checkpoint {self.out / 'last.pt'}", file=sys.stderr)
                if self.cfg["eval"] == "knn":
                    _final_knn(self.cfg, self.method, self.train_src, self.val_src, self.d.device, self.out,
                               self.logger, self.state["global_step"])
            if self.d.world_size > 1:
                dist.barrier()
            return 0
        finally:
            self.progress.close()
            self.logger.close()

    def loader(self, epoch: int, skip_batches: int = 0, local_batch: int | None = None):
        """The training loader of ``epoch`` (this rank's shard), skipping ``skip_batches`` batches;
        ``local_batch``: a per-process batch other than the run's (the dry run's)."""
        from fastssl.data import make_loader

        args = dict(self.loader_args)
        if local_batch is not None:
            args["batch_size"] = local_batch
        return make_loader(self.train_src, epoch=epoch, skip_batches=skip_batches, **args)

    def step(self, views, labels, stop_requested: bool = False) -> tuple[float, bool, dict, float]:
        """One training step: forward, NaN check, backward, update. Returns (loss over all ranks, whether
        any rank asked to stop, metrics averaged over ranks, the learning rate this update used).
        ``stop_requested``: this rank received SIGINT/SIGTERM (shared with the other ranks in the same
        all-reduce as the loss, so every rank stops at the same step)."""
        ws = self.d.world_size
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        if self.gradcache is not None:
            loss, metrics = self.gradcache.forward(self.model, views, labels, self.autocast)
        else:
            with self.autocast:
                loss, metrics = self.model(views, labels)
        # One all-reduce carries the loss (for logging and the NaN check), the method's metrics and the
        # stop flag, so every rank logs and decides the same.
        names = sorted(metrics)
        vals = [torch.as_tensor(metrics[k], device=loss.device).detach().float().reshape(()) for k in names]
        shared = torch.stack([loss.detach().float(), *vals,
                              torch.tensor(float(stop_requested), device=loss.device)])
        if ws > 1:
            dist.all_reduce(shared)
            shared[:-1] /= ws
        values = shared.tolist()
        loss_value = values[0]
        metrics = dict(zip(names, values[1:-1]))
        if not torch.isfinite(shared[0]):
            last = self.out / "last.pt"
            st = self.state
            raise TrainError(
                f"loss is {loss_value} at epoch {st['epoch']} step {st['step_in_epoch']} (global step "
                f"{st['global_step']}); stopping before the update. The last good checkpoint "
                f"{'is ' + str(last) if last.exists() else 'does not exist yet'}. Lower --lr (or use "
                "--precision fp32) and --resume from it.")
        lr = self.optimizer.param_groups[0]["lr"]  # what this update uses (the scheduler moves it after)
        self.optimizer.zero_grad(set_to_none=True)
        if self.gradcache is not None:
            self.gradcache.backward(self.model, self.scaler.scale(loss), self.autocast)
        else:
            self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss_value, values[-1] > 0, metrics, lr

    def _epoch(self, stop: _Stop) -> int:
        """Train the rest of the current epoch; returns the signal number if stopped by one, else 0."""
        cfg, st = self.cfg, self.state
        kill_at = int(os.environ.get("FASTSSL_DEBUG_SIGKILL_AT_STEP", "0"))  # resume tests only
        epoch = st["epoch"]
        t_epoch = t_data = _clock()
        steps_here = 0
        for views, labels in self.loader(epoch, skip_batches=st["step_in_epoch"]):
            t0 = _clock()
            loss_value, stop_now, metrics, lr = self.step(views, labels, stop_requested=stop.signum > 0)
            t1 = _clock()
            steps_here += 1
            st["global_step"] += 1
            st["step_in_epoch"] += 1
            st["epoch_loss_sum"] += loss_value
            st["epoch_loss_count"] += 1
            gs = st["global_step"]
            if gs % cfg["log_every"] == 0 or st["step_in_epoch"] == self.steps_per_epoch:
                self.logger.log({"step": gs, "epoch": epoch, "loss": loss_value, "lr": lr, **metrics,
                                 "data_s": t0 - t_data, "step_s": t1 - t0}, gs, "train")
            self.progress.update(gs, prefix=f"epoch {epoch + 1}/{cfg['epochs']} ", loss=loss_value, lr=lr)
            if cfg["ckpt_every"] and gs % cfg["ckpt_every"] == 0:
                self.save()
            if stop_now:
                self.save()
                signum = int(stop.signum or signal.SIGTERM)
                if self.d.is_main:
                    self.progress.close()
                    print(f"fastssl.train: stopped by signal {signum} at global step {gs}; checkpoint "
                          f"{self.out / 'last.pt'} (continue with --resume auto --out {self.out})",
                          file=sys.stderr)
                return signum
            if kill_at and gs == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            t_data = _clock()
        epoch_s = _clock() - t_epoch
        images = steps_here * cfg["batch_size"]
        epoch_loss = st["epoch_loss_sum"] / max(st["epoch_loss_count"], 1)
        self.logger.log({"epoch": epoch, "epoch_loss": epoch_loss, "images": images, "epoch_s": epoch_s,
                         "img_per_s": images / epoch_s if epoch_s > 0 else float("nan")}, st["global_step"], "epoch")
        st.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
        is_best = epoch_loss < st["best_loss"]
        if is_best:
            st["best_loss"] = epoch_loss
        self.save()
        if is_best:
            self.save("best.pt")
        self.visualize(epoch + 1)
        if cfg.get("eval_every") and (epoch + 1) % cfg["eval_every"] == 0:
            self.eval_curve(epoch)
        return 0

    def eval_curve(self, epoch: int) -> None:
        """``--eval-every``: the kNN of the method's default taps on the val split (rank 0; learned weights
        only: the random-init baseline is the final evaluation's), logged as ``knn_top1_<tap>`` records with
        its cost ``eval_s`` and ``epoch`` = the 0-based index of the epoch just finished (as the ``epoch`` of
        that epoch's loss records). Eval mode and a forked RNG: training computes exactly what it would
        without it."""
        if not self.d.is_main or self.val_src is None:
            return
        from fastssl.evaluation.layers import evaluate_layers
        from fastssl.evaluation.taps import default_taps

        m, cfg = self.method, self.cfg
        t0 = _clock()
        with torch.random.fork_rng(devices=[self.d.device] if self.d.device.type == "cuda" else []):
            res = evaluate_layers({"learned": m.backbone}, self.train_src, self.val_src,
                                  default_taps(m.backbone, m.eval_taps), "knn", image_size=cfg["image_size"],
                                  device=self.d.device, num_classes=len(self.train_src.classes),
                                  num_threads=cfg["workers"], knn_k=KNN_K, knn_t=KNN_T)
        record = {"epoch": epoch, **{f"knn_top1_{n}": r["learned"]["top1"] for n, r in res["taps"].items()},
                  "eval_s": _clock() - t0}
        self.logger.log(record, self.state["global_step"], "eval_curve")
        if not cfg["quiet"]:
            shown = ", ".join(f"{n} {r['learned']['top1']:.1f}" for n, r in res["taps"].items())
            self.progress.write(f"after epoch {epoch + 1}/{cfg['epochs']}: kNN top-1 (val) {shown} "
                                f"[{record['eval_s']:.0f} s]")


KNN_K, KNN_T = 20, 0.07


def probe_skip_reason(train_src, val_src) -> str | None:
    """Why the run's kNN (final or ``--eval-every``) cannot say anything, or None: no val/ split, or fewer
    than 2 classes (a single class folder of unlabelled images trains fine, but every probe would read 100%)."""
    if val_src is None:
        return "the data has no val/ split to evaluate on"
    if len(train_src.classes) < 2:
        return (f"the data has {len(train_src.classes)} class ({', '.join(train_src.classes) or 'none'}); "
                "a kNN probe needs at least 2 labelled classes")
    return None


def _final_knn(cfg, method, train_src, val_src, device, out: Path, logger, step: int) -> None:
    """kNN at the method's default taps (fastssl.evaluation.taps.default_taps), learned next to the run's
    own random initialization: a table on stdout, ``eval.json`` (its top-level ``learned`` / ``random_init``
    are the pooled output's, as before taps existed; ``layers`` holds every tap: fastssl.evaluation.layers)."""
    from fastssl.evaluation.layers import evaluate_layers, format_table
    from fastssl.evaluation.taps import default_taps

    no_probe = probe_skip_reason(train_src, val_src)
    if no_probe:
        print(f"fastssl.train: {no_probe}, skipping the kNN evaluation", file=sys.stderr)
        return
    n_cls = len(train_src.classes)
    random_init = to_channels_last(_build_model(cfg).to(device))
    names = default_taps(method.backbone, method.eval_taps)
    t0 = _clock()
    layers = evaluate_layers({"learned": method.backbone, "random_init": random_init.backbone}, train_src, val_src,
                             names, "knn", image_size=cfg["image_size"], device=device, num_classes=n_cls,
                             num_threads=cfg["workers"],
                             knn_k=KNN_K, knn_t=KNN_T)
    layers["seconds"] = _clock() - t0
    pool = layers["taps"]["pool"]
    results = {"learned": pool["learned"], "random_init": pool["random_init"], "k": KNN_K, "temperature": KNN_T,
               "train_images": len(train_src), "val_images": len(val_src), "classes": n_cls, "layers": layers}
    atomic_write_text(out / "eval.json", json.dumps(results, indent=2) + "\n")
    learned, rand = results["learned"], results["random_init"]
    record = {"knn_top1": learned["top1"], "knn_top5": learned["top5"], "knn_top1_random_init": rand["top1"],
              "knn_top5_random_init": rand["top5"]}
    for name, r in layers["taps"].items():  # pool too: the same names as the --eval-every curve's
        record.update({f"knn_top1_{name}": r["learned"]["top1"],
                       f"knn_top1_{name}_random_init": r["random_init"]["top1"]})
    logger.log(record, step, "eval")
    print(f"kNN (k=20) on {len(val_src)} val images, {n_cls} classes:\n"
          f"  learned      top-1 {learned['top1']:6.2f}%  top-5 {learned['top5']:6.2f}%\n"
          f"  random init  top-1 {rand['top1']:6.2f}%  top-5 {rand['top5']:6.2f}%\n"
          + format_table(layers) + f"\n  ({layers['seconds']:.0f} s for every tap of both networks)")
