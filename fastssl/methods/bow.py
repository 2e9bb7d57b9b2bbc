"""BoWNet (Gidaris et al. 2020, "Learning Representations by Predicting Bags of Visual Words").

A frozen teacher (the backbone of another fastssl run, ``--teacher RUN``) gives local feature vectors
(its feature map after ResNet stage ``--teacher-layer``, one vector per position); a vocabulary of
``--vocab-size`` K visual words is fit on them by k-means (on the device, k-means++ seeding with a
fixed seed, progress bar; cached under ``$FASTSSL_CACHE/bow``). Each image's target is its
bag-of-words: the histogram of the nearest word of every local feature of the teacher's view,
normalized to sum 1 (``--assign hard``, the default), or the mean of every local feature's soft
assignment over the words (``--assign soft``, :func:`soft_bow_histogram`). The student (the
backbone being trained) sees a differently augmented view of the same image (two views of the
``simclr`` recipe: the teacher gets the first, the student the second) and predicts the histogram
with a cosine-similarity linear layer with a learned scale (Sec. 3.2) trained by soft cross-entropy
``-sum_k y_k log softmax(s)_k``.

Make a teacher first, e.g. ``python -m fastssl.train --method rotation --out runs/teacher`` (any
fastssl run with the same ``--arch``), then ``python -m fastssl.train --method bow --teacher runs/teacher``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.base.argtypes import positive_int, ranged
from fastssl.base.cache import cache_dir
from fastssl.base.errors import ConfigError
from fastssl.base.viz import denormalize, save_grid
from fastssl.methods._cached_pass import CachedPass
from fastssl.methods.base import Method, build_method, register
from fastssl.methods.kmeans import assign, kmeans

HOW_TO_TEACHER = ("make one first, e.g. `python -m fastssl.train --method rotation --out runs/teacher` (any fastssl "
                  "run with the same --arch), then pass --teacher runs/teacher")


def teacher_path(teacher: str | None) -> Path:
    """The checkpoint file of ``--teacher`` (a run folder -> its last.pt); ConfigError if missing."""
    if not teacher:
        raise ConfigError(f"--teacher is required: bow learns from a frozen teacher network; {HOW_TO_TEACHER}")
    path = Path(teacher).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise ConfigError(f"--teacher {teacher}: no checkpoint at {path}; {HOW_TO_TEACHER}")
    return path


def load_teacher_checkpoint(teacher: str | None) -> dict:
    from fastssl.base import checkpoint as ckpt_io

    path = teacher_path(teacher)
    try:  # opened safely: plain data only, nothing in a handed-over file runs (issue 8, kind 5)
        ckpt = ckpt_io.load(path)
    except ckpt_io.CheckpointError as e:
        raise ConfigError(f"--teacher {teacher}: {e}") from None
    if not {"model", "config"} <= set(ckpt) or not isinstance(ckpt["config"], dict) or "method" not in ckpt["config"]:
        raise ConfigError(f"--teacher {teacher}: {path} is not a fastssl training checkpoint (no model/config)")
    return ckpt


def stand_in_teacher(cfg: dict, method: str = "rotation") -> Path:
    """A cached checkpoint ``{"model", "config"}`` of a randomly initialized (seed 0) ``method`` run with
    ``cfg``'s arch, width and image size: the stand-in teacher of a dry run without ``--teacher``.
    Returns its path (under ``$FASTSSL_CACHE/dryrun``)."""
    from fastssl.base import checkpoint as ckpt_io

    tcfg = {"method": method, "arch": cfg["arch"], "width": cfg["width"], "image_size": cfg["image_size"],
            "head_hidden": 512, "seed": 0}
    path = cache_dir() / "dryrun" / f"standin-{method}-{cfg['arch']}-w{cfg['width']}-{cfg['image_size']}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        ckpt_io.atomic_save({"model": build_method(method, tcfg).state_dict(), "config": tcfg}, path)
    return path


def stage_features(backbone: nn.Module, x: torch.Tensor, layer: int) -> torch.Tensor:
    """A ResNet backbone's feature map after stage ``layer`` (1-4): ``[B, C, h, w]``. Backbones that wrap a
    ResNet and convert their input (colorize's LuminanceInput: ``net`` + ``luminance``) are unwrapped."""
    if hasattr(backbone, "net") and hasattr(backbone, "luminance"):
        x, backbone = backbone.luminance(x).to(x.dtype), backbone.net
    m = backbone
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    for i in range(1, layer + 1):
        x = getattr(m, f"layer{i}")(x)
    return x


def soft_bow_histogram(features: torch.Tensor, vocab: torch.Tensor, inv_delta: float = 15.0) -> torch.Tensor:
    """Soft bag-of-words: local features ``[B, L, C]`` and words ``[K, C]`` -> ``[B, K]`` float32, rows sum to 1.

    Each feature u gets the codes softmax_k(-(inv_delta / mu) ||u - v_k||^2), with mu the mean over the batch's
    features of the squared distance to their nearest word (so inv_delta is scale-free); the histogram is the
    mean of the codes over the L positions. As inv_delta -> inf (temperature -> 0) the codes become one-hot on
    the nearest word and the histogram equals :func:`bow_histogram` of the hard assignment.

    Source: the soft assignment of the authors' code, OBoW (Gidaris et al. 2021, valeoai/obow
    ``BoWExtractor.forward``: ``softmax(-inv_delta / min_distance_mean * dist)``, inv_delta 15 for ImageNet);
    OBoW tracks mu with an exponential moving average because its vocabulary changes online, ours is fixed, so
    the batch's own mean is used. OBoW max-pools the codes; here they are averaged, as the hard histogram.
    """
    b, n, c = features.shape
    f = features.reshape(-1, c).float()
    dist = torch.cdist(f, vocab.float(), compute_mode="donot_use_mm_for_euclid_dist").pow(2)  # [B*L, K]
    nearest = dist.min(dim=1, keepdim=True).values
    mu = nearest.mean().clamp_min(torch.finfo(torch.float32).tiny)
    # Shifted by each feature's nearest distance (the same softmax) with a finite scale: when every feature sits
    # on a word (mu -> 0, e.g. a dead teacher layer) inv_delta / mu overflows, and inf * 0 made the codes NaN;
    # this way the nearest word's logit is exactly 0 and the codes tend to the hard assignment, as they should.
    scale = (inv_delta / mu).clamp(max=torch.finfo(torch.float32).max)
    codes = torch.softmax(-(dist - nearest) * scale, dim=1)
    return codes.view(b, n, -1).mean(dim=1)


def bow_histogram(words: torch.Tensor, k: int) -> torch.Tensor:
    """Word indices ``[B, L]`` (int64) -> normalized histograms ``[B, k]`` (float32, each row sums to 1)."""
    b, n = words.shape
    hist = torch.zeros(b, k, device=words.device).scatter_add_(1, words, torch.ones(b, n, device=words.device))
    return hist / n


@register("bow")
class BoW(Method):
    recipe = "simclr"
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=128, epochs=12, optimizer="adamw",
                    lr=2e-3, weight_decay=0.05, warmup_epochs=0.1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("bow")
        g.add_argument("--teacher", default=None,
                       help="run folder (or checkpoint) of a fastssl run: the frozen teacher")
        g.add_argument("--vocab-size", type=ranged(int, 2), default=256, help="K, the number of visual words")
        g.add_argument("--teacher-layer", type=int, choices=[2, 3, 4], default=3,
                       help="ResNet stage whose feature map gives the local features")
        g.add_argument("--vocab-images", type=positive_int, default=2000,
                       help="training images whose teacher features the k-means vocabulary is fit on")
        g.add_argument("--kmeans-iters", type=positive_int, default=30, help="Lloyd iterations")
        g.add_argument("--min-scale", type=float, default=0.35, help="smallest random-resized-crop area")
        g.add_argument("--assign", choices=["hard", "soft"], default="hard",
                       help="word assignment of each local feature: nearest word (hard) or softmax over the words "
                            "(soft, see --inv-delta)")
        g.add_argument("--inv-delta", type=ranged(float, 0, lo_open=True), default=15.0,
                       help="--assign soft: inverse temperature, relative to the mean squared distance to the "
                            "nearest word (the authors' OBoW code: 15)")

    @classmethod
    def check_config(cls, cfg):
        ckpt = load_teacher_checkpoint(cfg["teacher"])
        t_arch = ckpt["config"].get("arch")
        if t_arch != cfg["arch"] or not str(t_arch).startswith("resnet"):
            raise ConfigError(f"--teacher {cfg['teacher']}: its arch is {t_arch!r}, the student's --arch is "
                              f"{cfg['arch']!r}; bow needs a ResNet teacher of the same arch")

    @classmethod
    def dry_run_config(cls, cfg):
        """``--dry-run`` without ``--teacher``: a randomly initialized rotation network of the same arch
        stands in (cached; the cost is the real one, the targets are meaningless)."""
        if cfg["teacher"]:
            return {}
        path = stand_in_teacher(cfg)
        print(f"fastssl.train: dry run: bow has no --teacher; a randomly initialized rotation {cfg['arch']} stands in "
              f"(same cost, meaningless targets): {path}", file=sys.stderr)
        return {"teacher": str(path)}

    def recipe_options(self):
        return {"scale": (self.cfg["min_scale"], 1.0)}

    def __init__(self, cfg):
        super().__init__(cfg)
        ckpt = load_teacher_checkpoint(cfg["teacher"])
        t_cfg = dict(ckpt["config"])
        teacher = build_method(t_cfg["method"], t_cfg)
        teacher.load_state_dict(ckpt["model"])
        self.teacher = teacher.backbone
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        k = cfg["vocab_size"]
        self.register_buffer("vocab", self._fit_vocab(cfg, teacher_path(cfg["teacher"])))
        d = self.backbone.feature_dim
        self.word_weight = nn.Parameter(torch.randn(k, d) * 0.01)
        self.scale = nn.Parameter(torch.tensor(10.0))  # learned kappa of the cosine classifier

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: batch norm keeps its statistics
        return self

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher local features of views ``x``: ``[B, h*w, C]`` (float32)."""
        with torch.no_grad():
            f = stage_features(self.teacher, x, self.cfg["teacher_layer"]).float()
        return f.flatten(2).transpose(1, 2)

    def _fit_vocab(self, cfg: dict, path: Path) -> torch.Tensor:
        st = path.stat()
        key = ("bow-vocab", str(path.resolve()), st.st_size, st.st_mtime_ns, cfg["vocab_size"], cfg["teacher_layer"],
               cfg["kmeans_iters"])
        cp = CachedPass(cfg, "bow", "vocab", key, max_images=cfg["vocab_images"])
        vocab = cp.cached()
        if vocab is not None:
            return vocab
        self.teacher.to(cp.device)
        what = f"teacher features for k-means K={cfg['vocab_size']}"
        feats = [self._local(x).flatten(0, 1) for x in cp.batches(what)]
        x = torch.cat(feats)
        if x.shape[0] < cfg["vocab_size"]:
            raise ConfigError(f"--vocab-size {cfg['vocab_size']} exceeds the {x.shape[0]} teacher features of "
                              f"{cp.n} images (--vocab-images)")
        vocab = kmeans(x, cfg["vocab_size"], iters=cfg["kmeans_iters"], seed=0, progress=not cfg.get("quiet"),
                       what=f"the teacher's features of {cp.n} images (--vocab-images)", k_name="--vocab-size")
        self.teacher.cpu()
        return cp.save(vocab)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized BoW histograms ``[B, K]`` of the teacher's view ``x``."""
        f = self._local(x)
        if self.cfg.get("assign", "hard") == "soft":
            return soft_bow_histogram(f, self.vocab, self.cfg.get("inv_delta", 15.0))
        b, n, c = f.shape
        words = assign(f.reshape(-1, c), self.vocab.float()).view(b, n)
        return bow_histogram(words, self.vocab.shape[0])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Student logits ``[B, K]``: scale * cos(features, word weights)."""
        f = F.normalize(self.backbone(x).float(), dim=1)
        return self.scale * f @ F.normalize(self.word_weight.float(), dim=1).T

    def forward(self, views, labels):
        y = self.targets(views[0])
        logp = torch.log_softmax(self.predict(views[1]), dim=1)
        loss = -(y * logp).sum(1).mean()
        with torch.no_grad():
            top_match = (logp.argmax(1) == y.argmax(1)).float().mean()
        return loss, {"top_word_acc": top_match}

    def visualize(self, views, labels, path, epoch):
        y = self.targets(views[0])
        p = torch.softmax(self.predict(views[1]), dim=1)

        def bars(h: torch.Tensor, height: int = 48) -> torch.Tensor:
            h = h.float().cpu()
            level = (h / h.max().clamp_min(1e-12) * height).round()
            rows = torch.arange(height, 0, -1).view(height, 1).float()
            return (rows <= level.view(1, -1)).float().mul(0.8)[None].expand(3, -1, -1) * -1 + 1

        rows = [[denormalize(a), denormalize(b), bars(t), bars(q)] for a, b, t, q in zip(views[0], views[1], y, p)]
        save_grid(rows, path, col_titles=["teacher view", "student view", "target BoW", f"predicted ep{epoch}"])
