"""SimCLR (Chen et al. 2020): two augmented views -> backbone -> MLP projector -> fused NT-Xent.

Across processes the negatives of all ranks are used (``nt_xent(..., gather=True)``), with gradient,
and batch norm is global (SyncBatchNorm on GPU, fastssl.engine.parallel.GlobalBatchNorm on CPU), as in the
paper.
"""

from __future__ import annotations

import torch

from fastssl.base.argtypes import fraction, positive_float, positive_int, probability
from fastssl.base.errors import ConfigError
from fastssl.methods.base import Method, register
from fastssl.models import MLPHead
from fastssl.ops import nt_xent


@register("simclr")
class SimCLR(Method):
    recipe = "simclr"
    eval_taps = "output"  # contrastive features peak at the output (layer4, pool)
    chunkable = True  # --chunk-size (fastssl.engine.gradcache): the loss needs only the per-image embeddings
    # Tuned for the built-in demo (a 2-core CPU, ~7 minutes, kNN 54.8% vs 18.1% at random init): see
    # docs/methods/simclr.md. ImageNet wants width 64, 224 px, --min-scale 0.08.
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=256, epochs=35, optimizer="lars",
                    lr=1.2, weight_decay=1e-6, warmup_epochs=1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("simclr")
        g.add_argument("--temperature", type=positive_float, default=0.2, help="NT-Xent temperature tau (> 0)")
        g.add_argument("--proj-hidden", type=positive_int, default=2048, help="projector hidden width")
        g.add_argument("--proj-dim", type=positive_int, default=128, help="projector output width")
        g.add_argument("--jitter", type=probability, default=0.8,
                       help="colour jitter strength in [0, 1] (brightness/contrast/saturation; hue = jitter/4)")
        g.add_argument("--min-scale", type=fraction, default=0.5,
                       help="smallest random-resized-crop area (the paper: 0.08 on ImageNet)")

    @classmethod
    def check_config(cls, cfg):
        # With one image per batch a view's only candidate is its positive: the loss is exactly 0.
        if cfg["batch_size"] < 2:
            raise ConfigError(f"--batch-size {cfg['batch_size']}: simclr contrasts each view with the other "
                              "images of the global batch, so it needs a global batch of at least 2")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.projector = MLPHead(self.backbone.feature_dim, cfg["proj_hidden"], cfg["proj_dim"], num_layers=2)
        self.temperature = cfg["temperature"]
        self.gather = torch.distributed.is_available() and torch.distributed.is_initialized()

    def recipe_options(self):
        s = self.cfg["jitter"]
        return {"jitter": s, "hue": min(s / 4, 0.5), "scale": (self.cfg["min_scale"], 1.0)}

    def embed(self, views):
        """``[n,3,H,W]`` x 2 -> projections ``[2n, proj_dim]`` fp32, view-major (rows of view 1, then view 2)."""
        x = torch.cat(views)  # one pass over both views: batch norm sees all 2n
        return self.projector(self.backbone(x)).float()

    def loss_from_embeddings(self, z):
        """NT-Xent over ``z = embed(views)``: (loss, {"pos_cos"})."""
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.temperature, gather=self.gather)
        with torch.no_grad():
            # Positive-pair alignment (cosine) as a cheap monitor of learning.
            align = torch.nn.functional.cosine_similarity(z1, z2).mean()
        return loss, {"pos_cos": align}

    def forward(self, views, labels):
        return self.loss_from_embeddings(self.embed(views))
