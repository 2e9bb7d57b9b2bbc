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
import sys
from pathlib import Path

from fastssl.errors import ConfigError, TrainError
from fastssl.methods import METHODS
from fastssl.models import ARCHS
from fastssl.optim import OPTIMIZERS

# Flags that may differ between a run and its --resume (they don't change what is computed).
RUNTIME_KEYS = {"out", "resume", "workers", "log_every", "ckpt_every", "compile", "device", "config", "eval",
                "quiet"}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout and show each flag's default (the method's, if it sets one)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _base_parser(add_help: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastssl.train", description=__doc__, add_help=add_help,
                                formatter_class=_HelpFormatter)
    names = ", ".join(sorted(METHODS)) or "(none registered)"
    p.add_argument("--method", default=None, help=f"SSL method: {names}")
    p.add_argument("--config", default=None, help="JSON/YAML file of flag values (e.g. a run's config.json)")
    p.add_argument("--data", default=None, help="ImageNet-layout root (train/ [+ val/] of class folders); "
                   "default: the built-in demo dataset")
    p.add_argument("--arch", default="resnet18", help=f"backbone: {', '.join(ARCHS)}")
    p.add_argument("--width", type=int, default=64, help="ResNet base width (64 = standard)")
    p.add_argument("--image-size", type=int, default=224, help="view size in pixels")
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size (all processes)")
    p.add_argument("--lr", type=float, default=0.3, help="base learning rate for a batch of 256")
    p.add_argument("--optimizer", default="lars", choices=OPTIMIZERS)
    p.add_argument("--weight-decay", type=float, default=1e-6, help="not applied to biases and norms")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD/LARS momentum")
    p.add_argument("--warmup-epochs", type=float, default=10, help="linear warmup, then cosine to 0")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0, help="init, data order and augmentation")
    p.add_argument("--out", default=None, help="run folder (default: runs/<method>-<time>)")
    p.add_argument("--resume", default=None, help="checkpoint file, run folder, or 'auto' (<out>/last.pt if any)")
    p.add_argument("--workers", type=int, default=2, help="DALI threads per process")
    p.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch)")
    p.add_argument("--log-every", type=int, default=1, help="write metrics every N steps")
    p.add_argument("--recipe-options", default=None, type=json.loads,
                   help='JSON overrides of the view recipe, e.g. \'{"gray_p": 0.5}\'')
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--eval", default="knn", choices=["knn", "none"], help="evaluation after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _read_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of flag names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_parser(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The full parser for the method named in argv/config, with defaults layered (see module doc)."""
    pre, _ = _base_parser(add_help=False).parse_known_args(argv)
    file_cfg = _read_config(pre.config) if pre.config else {}
    method = pre.method or file_cfg.get("method")
    parser = _base_parser(add_help=True)
    if method is not None:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
        METHODS[method].add_args(parser)
        parser.set_defaults(**METHODS[method].defaults)
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(file_cfg) - known)
    if unknown:
        raise ConfigError(f"config file {pre.config}: unknown keys {unknown}")
    parser.set_defaults(**file_cfg)
    return parser, file_cfg


def parse_config(argv: list[str] | None = None) -> dict:
    parser, _ = build_parser(argv)
    cfg = vars(parser.parse_args(argv))
    if cfg["method"] is None:
        raise ConfigError(f"choose a method with --method ({', '.join(sorted(METHODS))})")
    if cfg["arch"] not in ARCHS:
        raise ConfigError(f"unknown arch {cfg['arch']!r}; available: {', '.join(ARCHS)}")
    for key in ("epochs", "batch_size", "image_size", "width", "workers", "log_every"):
        if cfg[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg['lr']}")
    METHODS[cfg["method"]].check_config(cfg)
    if cfg["data"] is not None:
        cfg["data"] = str(Path(cfg["data"]).expanduser().resolve())
        if not Path(cfg["data"]).exists():
            raise ConfigError(f"--data path does not exist: {cfg['data']}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except (ConfigError, json.JSONDecodeError) as e:
        print(f"fastssl.train: error: {e}", file=sys.stderr)
        return 2
    from fastssl.trainer import train

    try:
        return train(cfg)
    except (TrainError, ConfigError) as e:
        print(f"fastssl.train: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
