"""`python -m fastssl.train --method simclr`: self-supervised pre-training.

With no ``--data`` it trains on the built-in demo dataset (generated on first use), then prints the
kNN accuracy of the learned backbone next to that of the same network at random initialization.

Flag precedence: built-in defaults < the method's defaults < ``--config FILE`` (JSON or YAML, e.g. a
run's saved config.json) < command-line flags. ``--lr`` is the base rate for a global batch of 256
(scaled by batch_size/256); ``--batch-size`` is the global batch over all processes.
Multi-process: ``torchrun --nproc_per_node N -m fastssl.train ...`` (NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastssl.base import argtypes as at
from fastssl.base.argtypes import OneLineErrorParser
from fastssl.base.errors import ConfigError, FastSSLError, cli_warnings, print_line
from fastssl.engine import gradcache
from fastssl.engine.optim import OPTIMIZERS
from fastssl.engine.runconfig import RUNTIME_KEYS  # noqa: F401 (kept importable from here)
from fastssl.methods import METHODS
from fastssl.methods.base import check_backbone
from fastssl.models import ARCHS


def _arch(text) -> str:
    if text not in ARCHS:
        raise argparse.ArgumentTypeError(f"unknown arch {text!r}; available: {', '.join(ARCHS)}")
    return str(text)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout and show each flag's default (the method's, if it sets one)."""

    def _get_help_string(self, action):
        # `is`, not `in (None, False)`: 0.0 == False, so a default of 0.0 (--drop-p) was hidden
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _base_parser(add_help: bool) -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m fastssl.train", description=__doc__, add_help=add_help,
                                formatter_class=_HelpFormatter)
    names = ", ".join(sorted(METHODS)) or "(none registered)"
    p.add_argument("--method", default=None, help=f"SSL method: {names}")
    p.add_argument("--config", default=None, help="JSON/YAML file of flag values (e.g. a run's config.json), or a "
                   "packaged preset: imagenet/<method> (docs/imagenet.md)")
    p.add_argument("--data", default=None, help="ImageNet-layout root (train/ [+ val/] of class folders); "
                   "default: the built-in demo dataset")
    p.add_argument("--arch", type=_arch, default="resnet18", help=f"backbone: {', '.join(ARCHS)}")
    p.add_argument("--width", type=at.positive_int, default=64, help="ResNet base width (64 = standard)")
    p.add_argument("--image-size", type=at.positive_int, default=224, help="view size in pixels")
    p.add_argument("--epochs", type=at.positive_int, default=100, help="training epochs")
    p.add_argument("--batch-size", type=at.positive_int, default=256, help="global batch size (all processes)")
    p.add_argument("--chunk-size", type=at.positive_int, default=None,
                   help="images per backbone pass per process: gradient-cached step (docs/training.md 'Batches larger "
                   "than memory'); must divide the per-process batch")
    p.add_argument("--lr", type=at.positive_float, default=0.3, help="base learning rate for a batch of 256")
    p.add_argument("--optimizer", default="lars", choices=OPTIMIZERS)
    p.add_argument("--weight-decay", type=at.nonneg_float, default=1e-6, help="not applied to biases and norms")
    p.add_argument("--momentum", type=at.momentum, default=0.9, help="SGD/LARS momentum, in [0, 1)")
    p.add_argument("--warmup-epochs", type=at.nonneg_float, default=10, help="linear warmup, then cosine to 0")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=at.seed, default=0, help="init, data order and augmentation")
    p.add_argument("--out", default=None, help="run folder (default: runs/<method>-<time>)")
    p.add_argument("--resume", default=None, help="checkpoint file, run folder, or 'auto' (<out>/last.pt if any)")
    p.add_argument("--workers", type=at.positive_int, default=2, help="DALI threads per process")
    p.add_argument("--ckpt-every", type=at.nonneg_int, default=0, help="also checkpoint every N steps (0: per epoch)")
    p.add_argument("--log-every", type=at.positive_int, default=1, help="write metrics every N steps")
    p.add_argument("--recipe-options", default=None, type=at.json_object,
                   help='JSON overrides of the view recipe, e.g. \'{"gray_p": 0.5}\'')
    p.add_argument("--device", type=at.device, default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--eval", default="knn", choices=["knn", "none"],
                   help="evaluation after training: kNN at the method's default taps, learned vs random init")
    p.add_argument("--eval-every", type=at.nonneg_int, default=0,
                   help="also run the kNN of the method's default taps on the val split every K epochs and log it "
                   "beside the loss (a learning curve; 0: off)")
    p.add_argument("--on-bad", default="error", choices=["error", "skip"],
                   help="bad image files (unreadable, not an image, truncated, corrupt body): stop with their "
                   "paths, or leave them out with a warning")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--val-list", default=None, help="labels of a flat val folder (the official layout: "
                   "<data>/val/*.JPEG): '<file> <wnid>' lines or Kaggle's LOC_val_solution.csv")
    p.add_argument("--dry-run", type=at.positive_int, default=None, metavar="N",
                   help="build everything at the config's full size and time N training steps on a generated "
                   "ImageNet-layout folder (or --data), then exit; no run folder is left unless --out is given")
    p.add_argument("--dry-run-batch", type=at.positive_int, default=None, metavar="B",
                   help="global per-step batch of --dry-run (default: the config's; on CPU at most 8; on a GPU "
                   "halved until it fits)")
    return p


def _read_config(path: str) -> dict:
    from fastssl.cli.presets import resolve_config

    p = resolve_config(path)  # a file, else a packaged preset (imagenet/simclr); ConfigError if neither
    try:
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)  # plain data only: no tags that build objects
        else:
            data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"--config {p}: cannot read it: {' '.join(str(e).split())}") from None
    except Exception as e:  # noqa: BLE001 (yaml.YAMLError; yaml is imported lazily)
        raise ConfigError(f"--config {p}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p} must hold a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_file_values(parser: argparse.ArgumentParser, file_cfg: dict, path: str) -> dict:
    """Apply each flag's validator and choices to the config file's values (argparse checks only
    command-line text), so a file cannot carry a value the command line would refuse."""
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in file_cfg.items():
        a = actions[key]
        flag = a.option_strings[0] if a.option_strings else key
        if value is not None:
            try:
                if a.type is not None:
                    value = a.type(value)
            except argparse.ArgumentTypeError as e:
                raise ConfigError(f"--config {path}: {key} ({flag}): {e}") from None
            if a.choices is not None and value not in a.choices:
                raise ConfigError(f"--config {path}: {key} ({flag}): {value!r} is not one of "
                                  f"{', '.join(map(str, a.choices))}")
            if a.const is True and not isinstance(value, bool):  # store_true flags
                raise ConfigError(f"--config {path}: {key} ({flag}): expected true or false, got {value!r}")
        out[key] = value
    return out


def build_parser(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The full parser for the method named in argv/config, with defaults layered (see module doc)."""
    pre, _ = _base_parser(add_help=False).parse_known_args(argv)
    file_cfg = _read_config(pre.config) if pre.config else {}
    method = pre.method or file_cfg.get("method")
    parser = _base_parser(add_help=True)
    if method is not None:
        if method not in METHODS:
            raise ConfigError(f"--method: unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
        METHODS[method].add_args(parser)
        parser.set_defaults(**METHODS[method].defaults)
    else:
        _mark_method_defaults(parser)
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(file_cfg) - known)
    if unknown:
        other = file_cfg.get("method")
        why = (f" (it is a config for --method {other}, and this run is --method {method})"
               if other and other != method else "")
        raise ConfigError(f"--config {pre.config}: unknown keys {unknown}{why}")
    parser.set_defaults(**_check_file_values(parser, file_cfg, pre.config))
    return parser, file_cfg


def _mark_method_defaults(parser: argparse.ArgumentParser) -> None:
    """Without a method, ``--help`` must not show a built-in default that every run replaces: the flags
    a method sets its own default for say so (their values: ``--method M --help``)."""
    keys = {k for cls in METHODS.values() for k in cls.defaults}
    for a in parser._actions:
        if a.dest in keys:
            a.help = f"{a.help or ''} (default: set by the method; see --method M --help)".lstrip()
    parser.epilog = ("Defaults: every method sets its own defaults for the flags marked 'set by the method'\n"
                     "(its demo run); `python -m fastssl.train --method M --help` shows the values a run of M\n"
                     "would use, and M's own flags.")


def parse_config(argv: list[str] | None = None) -> dict:
    """The run's config (a plain dict), every flag validated; ConfigError (one line, naming the flag)
    for a bad combination. argparse itself exits 2 with one error line for a bad single value."""
    parser, _ = build_parser(argv)
    cfg = vars(parser.parse_args(argv))
    if cfg["method"] is None:
        hint = (f"; to continue a run with its own flags: --config {cfg['out'] or 'RUN'}/config.json --resume auto"
                if cfg.get("resume") else "")
        raise ConfigError(f"choose a method with --method ({', '.join(sorted(METHODS))}){hint}")
    if cfg["dry_run"]:  # values a dry run supplies that a preset cannot hold (bow: a stand-in teacher)
        cfg.update(METHODS[cfg["method"]].dry_run_config(cfg))
    if cfg["dry_run_batch"] is not None and not cfg["dry_run"]:
        raise ConfigError(f"--dry-run-batch {cfg['dry_run_batch']} sets the batch of a dry run and needs --dry-run N; "
                          "a training run's batch is --batch-size")
    _check_precision(cfg)
    METHODS[cfg["method"]].check_config(cfg)
    check_backbone(METHODS[cfg["method"]], cfg)  # the network's own size rules, for every method and arch
    if cfg["eval_every"] > cfg["epochs"]:
        raise ConfigError(f"--eval-every {cfg['eval_every']} is more than --epochs {cfg['epochs']}: no point of the "
                          "learning curve would be logged; use --eval-every "
                          + ("1" if cfg["epochs"] == 1 else f"1..{cfg['epochs']}") + " (or 0: off)")
    if cfg["warmup_epochs"] > cfg["epochs"]:
        raise ConfigError(f"--warmup-epochs {cfg['warmup_epochs']:g} is longer than --epochs {cfg['epochs']}: "
                          "the learning rate would never reach its peak; lower --warmup-epochs")
    gradcache.check_config(METHODS[cfg["method"]], cfg)
    _check_recipe_options(cfg)
    if cfg["val_list"] is not None:
        cfg["val_list"] = str(Path(cfg["val_list"]).expanduser().resolve())
        if Path(cfg["val_list"]).is_dir():
            raise ConfigError(f"--val-list {cfg['val_list']} is a folder; give the label file ('<file> <wnid>' "
                              "lines or LOC_val_solution.csv), the images go in <data>/val")
        if not Path(cfg["val_list"]).is_file():
            raise ConfigError(f"--val-list: file not found: {cfg['val_list']}")
    if cfg["data"] is not None:
        cfg["data"] = str(Path(cfg["data"]).expanduser().resolve())
        if not Path(cfg["data"]).is_dir():
            raise ConfigError(f"--data: not a folder (or does not exist): {cfg['data']}")
    _check_run_folder(cfg)
    return cfg


def _check_precision(cfg: dict) -> None:
    """``--precision fp16`` is refused on a CPU: CPU autocast has no fast fp16 kernels and the loss scaling
    fp16 needs (GradScaler) skips the first steps' updates while it searches for a scale, which only costs
    time there (and makes PyTorch warn about the scheduler). bf16 needs no scaling; fp32 is the CPU default."""
    if cfg["precision"] != "fp16":
        return
    import torch

    device = cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    if not str(device).startswith("cuda"):
        raise ConfigError("--precision fp16 needs a CUDA device (on a CPU it is slow and needs loss scaling); "
                          "use --precision bf16 or fp32 (auto: fp32 on a CPU)")


def _check_recipe_options(cfg: dict) -> None:
    from fastssl.data.recipes import get_recipe

    opts = cfg["recipe_options"]
    if opts:
        try:
            get_recipe(METHODS[cfg["method"]].recipe).options(opts)
        except ValueError as e:
            raise ConfigError(f"--recipe-options: {e}") from None


def _check_run_folder(cfg: dict) -> None:
    """--resume / --out facts that need no data: refused before anything is created."""
    out, resume = cfg["out"], cfg["resume"]
    if resume == "auto":
        if not out:
            raise ConfigError("--resume auto needs --out (the run folder to continue)")
    elif resume:
        path = Path(resume)
        if not (path / "last.pt" if path.is_dir() else path).is_file():
            raise ConfigError(f"--resume: no checkpoint at {path / 'last.pt' if path.is_dir() else path}")
    if out and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file, not a run folder")
    if not resume and out and (Path(out) / "last.pt").exists():
        raise ConfigError(f"--out {out} already holds a checkpoint; continue it with --resume auto, "
                          "or choose another --out")


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 2 for a bad command line or config (ConfigError: one line, nothing written);
    1 for bad data or a run that cannot go on (DataError, TrainError: one line); 128 + N when stopped by
    signal N."""
    with cli_warnings("fastssl.train"):
        try:
            cfg = parse_config(argv)
        except FastSSLError as e:
            print_line(f"fastssl.train: error: {e}")
            return 2
        from fastssl.engine.trainer import train

        dry = bool(cfg["dry_run"])
        try:
            if dry:
                from fastssl.engine.dryrun import dry_run

                return dry_run(cfg)
            return train(cfg)
        except ConfigError as e:
            print_line(f"fastssl.train: error: {e}")
            return 2
        except FastSSLError as e:
            print_line(f"fastssl.train: error: {e}")
            return 1
        except OSError as e:  # a run folder or checkpoint that cannot be written (permissions, disk full)
            out = cfg.get("out")
            if out and e.filename and str(e.filename).startswith(str(out)):
                print_line(f"fastssl.train: error: --out {out}: cannot write the run folder ({e.strerror or e}: "
                           f"{e.filename})")
            else:
                print_line(f"fastssl.train: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "))
            return 1
        except KeyboardInterrupt:  # Ctrl-C outside the training loop (set-up, data checks, final kNN)
            out = cfg.get("out")
            where = f"; checkpoint, if one was written: {Path(out) / 'last.pt'}" if out and not dry else ""
            print_line(f"fastssl.train: interrupted (SIGINT) outside the training loop{where}")
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
