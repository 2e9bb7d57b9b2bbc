"""Denoising autoencoder (Vincent et al. 2008, "Extracting and Composing Robust Features with Denoising
Autoencoders"): corrupt the input, reconstruct the clean image, L2 loss.

Corruption (on the device, inside ``forward``), in pixel units (images in [0, 1]):
- additive Gaussian noise of standard deviation ``--noise-std`` (Vincent et al. 2010, Sec. 4.2), and
- masking noise: a fraction ``--mask-frac`` of the pixels, drawn independently per image, set to 0
  (black, all three channels; Vincent et al. 2008, Sec. 2.3).
The encoder is the backbone (a ResNet's last feature map); a ConvDecoder (fastssl.models.decoder) maps
it back to the image; the loss is the mean squared error against the clean normalized view, over
all pixels. ``--norm-pix P``: against the clean view's P x P patches, each standardized (MAE's norm_pix_loss;
``fastssl.methods.generative.reconstruction_loss``). ``--input-norm image``: the encoder standardizes each image
per channel first (``StandardizedInput``), at evaluation too. Both off by default (docs/methods/denoise.md).
"""

from __future__ import annotations

import torch

from fastssl.base.errors import ConfigError
from fastssl.base.viz import denormalize, save_grid
from fastssl.methods.base import Method, register
from fastssl.methods.generative import (
    add_input_norm_arg,
    add_norm_pix_arg,
    check_norm_pix,
    from_pixels,
    image_decoder,
    non_negative,
    reconstruction_loss,
    require_resnet,
    to_pixels,
    unit_interval,
    unnormalize_patches,
    wrap_input,
)


@register("denoise")
class Denoise(Method):
    recipe = "crop"
    # Demo defaults (a 2-core CPU): see docs/methods/denoise.md.
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=128, epochs=12, optimizer="adamw",
                    lr=2e-3, weight_decay=0.05, warmup_epochs=0.1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("denoise")
        g.add_argument("--noise-std", type=non_negative, default=0.1,
                       help="std of the additive Gaussian noise, in pixel units (images in [0, 1])")
        g.add_argument("--mask-frac", type=unit_interval, default=0.25,
                       help="fraction of pixels set to black (masking noise), in [0, 1)")
        add_norm_pix_arg(g, default=0)
        add_input_norm_arg(g, default="none")

    @classmethod
    def check_config(cls, cfg):
        require_resnet(cfg, "denoise")
        check_norm_pix(cfg)
        if cfg["noise_std"] == 0 and cfg["mask_frac"] == 0:
            raise ConfigError("--noise-std 0 and --mask-frac 0: no corruption, the task is the identity")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.backbone = wrap_input(self.backbone, cfg)
        self.decoder = image_decoder(self.backbone, cfg["image_size"])
        self.noise_std, self.mask_frac = cfg["noise_std"], cfg["mask_frac"]
        self.norm_pix = cfg.get("norm_pix", 0)  # runs saved before --norm-pix reconstructed raw pixels

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalized views ``[B, 3, H, W]`` -> corrupted normalized views (same shape and dtype)."""
        pix = to_pixels(x)
        if self.noise_std > 0:
            pix = pix + self.noise_std * torch.randn(pix.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.mask_frac > 0:
            b, _, h, w = x.shape
            keep = torch.rand((b, 1, h, w), generator=generator, device=x.device) >= self.mask_frac
            pix = pix * keep.to(pix.dtype)
        return from_pixels(pix)

    def reconstruct(self, x_noisy: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone.forward_features(x_noisy))

    def forward(self, views, labels):
        x = views[0]
        recon = self.reconstruct(self.corrupt(x))
        loss = reconstruction_loss(recon, x, None, self.norm_pix)
        return loss, {}

    def visualize(self, views, labels, path, epoch):
        x = views[0]
        gen = torch.Generator(device=x.device).manual_seed(0)  # the same corruption every epoch
        noisy = self.corrupt(x, gen)
        recon = unnormalize_patches(self.reconstruct(noisy), x, self.norm_pix)
        rows = [[denormalize(a), denormalize(b), denormalize(c)] for a, b, c in zip(x, noisy, recon)]
        save_grid(rows, path, col_titles=["clean", "corrupted", f"recon ep{epoch}"
                                                               + (" (true patch stats)" if self.norm_pix else "")])
