"""Rotation prediction (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by
Predicting Image Rotations", sec. 3): every image of the batch in all four rotations (0, 90, 180, 270
degrees) in one pass of the backbone on the batch's own device, an MLP head classifies the rotation
(4-way cross-entropy). The paper found that showing all four rotations of an image in the same batch
beats one random rotation per image (sec. 3.2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.methods._tiles import positive_int
from fastssl.methods.base import Method, register
from fastssl.models import MLPHead

ROTATIONS = 4


def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, S, S) -> (4B, C, S, S) = [x, rot90(x), rot180(x), rot270(x)] (counter-clockwise), labels (4B,)
    int64 = the number of quarter turns."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


@register("rotation")
class Rotation(Method):
    recipe = "rotation"
    # Demo defaults (64 px, 4 x 128 images per step), measured: docs/methods/rotation.md.
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=128, epochs=8, optimizer="sgd",
                    lr=0.1, weight_decay=5e-4, warmup_epochs=1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("rotation")
        g.add_argument("--head-hidden", type=positive_int, default=512, help="classifier MLP hidden width")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = MLPHead(self.backbone.feature_dim, cfg["head_hidden"], ROTATIONS, num_layers=2)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rotated, target = rotate_all(x)
        return self.head(self.backbone(rotated.contiguous(memory_format=torch.channels_last))), target

    def forward(self, views, labels):
        logits, target = self.logits(views[0])
        logits = logits.float()
        loss = F.cross_entropy(logits, target)
        with torch.no_grad():
            acc = (logits.argmax(1) == target).float().mean()
        return loss, {"acc": acc}

    def visualize(self, views, labels, path, epoch):
        from fastssl.base.viz import denormalize, save_grid

        x = views[0][:6]
        logits, _ = self.logits(x)
        pred = logits.argmax(1).view(ROTATIONS, -1).cpu()
        rotated = denormalize(rotate_all(x)[0]).view(ROTATIONS, x.shape[0], *x.shape[1:])
        rows = [[rotated[k, b] for k in range(ROTATIONS)] for b in range(x.shape[0])]
        titles = ["pred " + " ".join(str(90 * int(pred[k, b])) for k in range(ROTATIONS)) for b in range(x.shape[0])]
        save_grid(rows, path, row_titles=titles, col_titles=[f"epoch {epoch}: 0", "90", "180", "270"])
