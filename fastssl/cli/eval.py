"""`python -m fastssl.eval`: kNN and linear probe of a learned backbone on frozen features.

    python -m fastssl.eval knn    --checkpoint RUN_OR_CKPT [--data ROOT] [--k 20] [--temperature 0.07]
    python -m fastssl.eval linear --checkpoint RUN_OR_CKPT [--data ROOT] [--epochs 100]
    python -m fastssl.eval knn    --checkpoint RUN --export backbone.safetensors   # backbone + metadata
    python -m fastssl.eval knn    --checkpoint backbone.safetensors --data ROOT    # an exported backbone
    python -m fastssl.eval linear --checkpoint RUN --random-init   # the baseline: the run's network at init
    python -m fastssl.eval linear --checkpoint RUN --layers all    # every tap, learned vs random init, a table
    python -m fastssl.eval knn    --checkpoint RUN --layers layer2,layer3,pool
    python -m fastssl.eval knn    --checkpoint RUN --data IMAGENET --val-list LOC_val_solution.csv  # flat val/

Features are extracted once per split with the ``eval`` recipe (resize + center crop, no shuffling);
val labels use the train split's class-to-index map. kNN: cosine similarity, the k nearest training
features vote with weight exp(sim / T) (InstDisc / DINO monitor, k=20, T=0.07); only classes with a
vote can be top-5 hits. Linear probe: features standardized with the training split's mean/std, a
linear classifier trained by SGD with momentum and a cosine schedule. Both print top-1 / top-5 (%)
on the val split, then the same as one JSON line. Checkpoints are opened safely (tensors and plain
data only; fastssl.base.checkpoint). Errors are one line ``fastssl.eval: error: ...``, exit 2.

``--layers all|default|TAP,TAP,...``: the probe at each named tap (ResNet stem, layer1..layer4, pool; ViT
blockK at quarter depths, norm, pool; ``default``: the method's own taps; fastssl.evaluation.taps), each
next to the run's own random initialization, printed as one table with the best tap marked, then the
same as one JSON line (schema: fastssl.evaluation.layers; its top-level top1/top5 are the pooled output's
when ``pool`` is among the taps). Features of all taps come from one pass per split and network.

The computations live in fastssl.evaluation (shared with the trainer's final kNN); this module is
the command line only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastssl.base import argtypes as at
from fastssl.base.argtypes import OneLineErrorParser
from fastssl.base.errors import DataError, FastSSLError, cli_warnings, print_line
from fastssl.data import dataset_splits as data_splits  # (kept importable here under its old name)
from fastssl.evaluation import (  # noqa: F401 (the names this module always offered)
    backbone_from_checkpoint,
    extract_features,
    knn_classify,
    linear_probe,
)

load_backbone = backbone_from_checkpoint  # the old name (an exported backbone: fastssl.models.load_backbone)


def _build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m fastssl.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=["knn", "linear"])
    p.add_argument("--checkpoint", required=True,
                   help="run folder (uses last.pt), training checkpoint, or exported .safetensors backbone")
    p.add_argument("--data", default=None, help="dataset root (default: the run's data)")
    p.add_argument("--k", type=at.positive_int, default=20, help="kNN neighbours")
    p.add_argument("--temperature", type=at.positive_float, default=0.07, help="kNN vote temperature (> 0)")
    p.add_argument("--epochs", type=at.positive_int, default=100, help="linear probe epochs")
    p.add_argument("--lr", type=at.positive_float, default=0.1, help="linear probe learning rate")
    p.add_argument("--batch-size", type=at.positive_int, default=256, help="feature extraction batch")
    p.add_argument("--workers", type=at.positive_int, default=2, help="DALI threads")
    p.add_argument("--device", type=at.device, default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--on-bad", default="error", choices=["error", "skip"],
                   help="bad image files: stop with their paths, or leave them out with a warning")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate the run's network at the initialization it started from (same arch and "
                   "seed, weights not loaded): the baseline for the learned numbers")
    p.add_argument("--val-list", default=None,
                   help="labels of a flat val folder (<data>/val/*.JPEG): '<file> <wnid>' lines or Kaggle's "
                   "LOC_val_solution.csv (default: the run's --val-list when --data is not given)")
    p.add_argument("--layers", type=_layers, default=None,
                   help="per-layer table: 'all', 'default' (the method's taps) or a comma list of taps "
                   "(ResNet: stem,layer1..layer4,pool; ViT: blockK,norm,pool), learned vs random init")
    p.add_argument("--weight-decay", type=at.nonneg_float, default=0.0, help="linear probe weight decay")
    p.add_argument("--export", default=None,
                   help="also write the backbone with its metadata (arch, every constructor argument, its input "
                   "conversion, image size) as safetensors; rebuild it with fastssl.models.load_backbone(path)")
    return p


def _layers(text: str) -> str | list[str]:
    """``all`` / ``default`` / a comma list of tap names (checked against the backbone once it is loaded)."""
    text = text.strip()
    if text in ("all", "default"):
        return text
    names = [n.strip() for n in text.split(",")]
    if not text or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"expected 'all', 'default' or a comma list of tap names, got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a tap is named twice in {text!r}")
    return names


def _tap_list(spec, backbone, cfg: dict) -> list[str]:
    from fastssl.evaluation.taps import default_taps, tap_names

    valid = tap_names(backbone)
    if spec == "all":
        return valid
    if spec == "default":
        from fastssl.methods import METHODS

        kind = METHODS[cfg["method"]].eval_taps if cfg.get("method") in METHODS else "intermediate"
        return default_taps(backbone, kind)
    words = [n for n in spec if n in ("all", "default")]
    if words:
        raise DataError(f"--layers: '{words[0]}' stands alone; give it without tap names, or list the taps "
                        f"({', '.join(valid)})")
    bad = [n for n in spec if n not in valid]
    if bad:
        raise DataError(f"--layers: unknown tap(s) {', '.join(bad)}; the taps of this {cfg.get('arch')} are: "
                        f"{', '.join(valid)} (or 'all', 'default')")
    return spec


def _load(path: str, random_init: bool = False) -> tuple[torch.nn.Module, dict]:
    """(backbone, run config-like dict) from a run folder, a training checkpoint or an exported backbone."""
    if str(path).endswith(".safetensors"):
        if random_init:
            raise DataError("--random-init needs a run folder or training checkpoint (its config and seed), "
                            "not an exported backbone")
        from fastssl.models import load_backbone

        model, meta = load_backbone(path)
        return model, {"arch": meta["arch"], "image_size": meta.get("image_size"), "data": meta.get("data"),
                       "method": meta.get("method"), "exported": True}
    return backbone_from_checkpoint(path, random_init=random_init)


def _export(backbone, cfg: dict, path: str) -> None:
    """Write ``backbone`` as it was built (fastssl.models.save_backbone describes it from the module: every
    constructor argument and its input conversion), so ``load_backbone`` computes the features this run's
    evaluation computes. DataError (nothing written) for a folder that is not there or a network that cannot
    be described, or a file name that does not end in ``.safetensors``."""
    from fastssl.data.recipes import IMAGENET_MEAN, IMAGENET_STD
    from fastssl.models import save_backbone

    if cfg.get("exported"):
        raise DataError("--export: the --checkpoint is already an exported backbone")
    if not path.strip():
        raise DataError("--export needs a file name, e.g. --export backbone.safetensors")
    if Path(path).expanduser().is_dir():
        raise DataError(f"--export {path}: is a folder; give a file name, e.g. {Path(path) / 'backbone.safetensors'}")
    if Path(path).suffix != ".safetensors":  # it is safetensors whatever the name; torch.load could not read a .pt
        raise DataError(f"--export {path}: the backbone is written as safetensors; name the file "
                        f"{Path(path).with_suffix('.safetensors').name}")
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise DataError(f"--export {path}: {parent} is not a folder")
    try:
        save_backbone(backbone, path, image_size=cfg["image_size"], method=cfg["method"], mean=list(IMAGENET_MEAN),
                      std=list(IMAGENET_STD), data=cfg.get("data"))
    except ValueError as e:
        raise DataError(f"--export: the {cfg['method']} backbone cannot be exported: {e}") from None
    print(f"backbone ({cfg['arch']}, {cfg['method']}) written to {path}")


def run(args: argparse.Namespace) -> int:
    from fastssl.data import demo_root

    if args.random_init and args.layers:
        raise DataError("--layers already shows the random initialization next to the learned weights; "
                        "drop --random-init")
    if args.random_init and args.export is not None:
        raise DataError("--export with --random-init would export untrained weights; drop one of them")
    backbone, cfg = _load(args.checkpoint, args.random_init)
    if not cfg.get("image_size"):
        raise DataError(f"{args.checkpoint}: no image_size recorded")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone.to(device)
    root = Path(args.data or cfg.get("data") or demo_root())
    if not root.is_dir():
        raise DataError(f"--data: not a folder (or does not exist): {root}")
    val_list = args.val_list or (cfg.get("val_list") if args.data is None else None)
    train_src, val_src = data_splits(root, on_bad=args.on_bad, val_list=val_list)
    if val_src is None:
        raise DataError(f"--data {root} has no val/ split to evaluate on (expected {root}/train and {root}/val)")
    if len(train_src.classes) < 2:
        raise DataError(f"--data {root} has {len(train_src.classes)} class ({', '.join(train_src.classes)}); "
                        "a kNN or linear probe needs at least 2 labelled classes (train/<class>/ folders)")
    if args.protocol == "knn" and args.k > len(train_src):
        raise DataError(f"--k {args.k} is larger than the {len(train_src)} training images of {root}")
    names = _tap_list(args.layers, backbone, cfg) if args.layers else None
    if args.export is not None:  # after every input check: a command that fails leaves no file behind
        _export(backbone, cfg, args.export)
    kw = dict(image_size=cfg["image_size"], device=device, batch_size=args.batch_size, num_threads=args.workers)
    if names is not None:
        return _run_layers(args, backbone, cfg, names, train_src, val_src, kw)
    print(f"extracting features: {len(train_src)} train, {len(val_src)} val images ...", file=sys.stderr)
    tr_f, tr_y = extract_features(backbone, train_src, **kw)
    va_f, va_y = extract_features(backbone, val_src, **kw)
    n_cls = len(train_src.classes)
    if args.protocol == "knn":
        res = knn_classify(tr_f, tr_y, va_f, va_y, args.k, args.temperature, n_cls)
        params = {"k": args.k, "temperature": args.temperature}
    else:
        res = linear_probe(tr_f, tr_y, va_f, va_y, epochs=args.epochs, lr=args.lr, num_classes=n_cls,
                           weight_decay=args.weight_decay)
        params = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay}
    which = " (random init)" if args.random_init else ""
    print(f"{args.protocol}{which}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"({len(va_y)} val images, {n_cls} classes)")
    print(json.dumps({"protocol": args.protocol, **res, **params, "random_init": args.random_init,
                      "train_images": len(tr_y),
                      "val_images": len(va_y), "classes": n_cls}))
    return 0


def _run_layers(args, backbone, cfg: dict, names: list[str], train_src, val_src, kw: dict) -> int:
    """``--layers``: the per-layer table, learned next to the run's random initialization."""
    from fastssl.evaluation.layers import evaluate_layers, format_table

    backbones = {"learned": backbone}
    if cfg.get("exported"):
        print("fastssl.eval: an exported backbone has no recorded initialization: the random-init column is "
              "empty", file=sys.stderr)
    else:
        backbones["random_init"] = backbone_from_checkpoint(args.checkpoint, random_init=True)[0].to(kw["device"])
    n_cls = len(train_src.classes)
    print(f"extracting {len(names)} taps of {len(backbones)} network(s): {len(train_src)} train, {len(val_src)} "
          "val images ...", file=sys.stderr)
    params = ({"k": args.k, "temperature": args.temperature} if args.protocol == "knn" else
              {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay})
    res = evaluate_layers(backbones, train_src, val_src, names, args.protocol, num_classes=n_cls, **kw,
                          knn_k=args.k, knn_t=args.temperature,
                          linear_kw={"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay})
    print(format_table(res))
    top = {"top1": res["taps"]["pool"]["learned"]["top1"], "top5": res["taps"]["pool"]["learned"]["top5"]} \
        if "pool" in names else {}
    print(json.dumps({"protocol": args.protocol, **top, **params, "layers": res, "train_images": len(train_src),
                      "val_images": len(val_src), "classes": n_cls}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    with cli_warnings("fastssl.eval"):
        try:
            return run(args)
        except FastSSLError as e:
            print_line(f"fastssl.eval: error: {e}")
            return 2
        except OSError as e:  # e.g. --export into a folder that cannot be written
            print_line(f"fastssl.eval: error: {e}")
            return 1
        except KeyboardInterrupt:
            print_line("fastssl.eval: interrupted (SIGINT)")
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
