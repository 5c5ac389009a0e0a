"""The autoencoder of latent diffusion, trained as a task.

An :class:`~diffuse.models.AutoencoderKL` is fitted on a per-pixel reconstruction error (L1 or
L2) plus `kl_weight` times the KL of the posterior to N(0, I) (Rombach et al. 2022, appendix G:
no perceptual or adversarial terms here). Both terms are divided by the number of pixels, so the
balance is that of summing both over an image, the convention in which a weight of 1e-6 is
usually quoted, while the loss stays near unit scale.

Each checkpoint stores the latent scale factor (1 / the standard deviation of the encoder's
posterior means over up to `scale_examples` training images; diffuse.latent), recomputed from its
weights so that every checkpoint is usable on its own. The pictures: test images (odd rows) above
their reconstructions (even rows). After training: reconstruction PSNR on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...configs import check_choices, option, whole_number
from ...data import Dataset
from ...image_metrics import psnr
from ...latent import latent_scale
from ...models.autoencoder import AutoencoderConfig, AutoencoderKL, build_autoencoder
from ..task import Task, TaskConfig, register


@dataclass
class AutoencoderTaskConfig(TaskConfig):
    kind = "autoencoder"
    network: dict | None = option(None, help='the autoencoder as JSON (AutoencoderConfig), e.g. \'{"channels": 16, '
                                             '"latent_channels": 4}\'; in_channels comes from the data')
    factor: int | None = option(None, help="the downsampling factor, a power of two (sets channel_mults; default 2)")
    loss: str = option("l1", choices=("l1", "l2"), help="the reconstruction error")
    kl_weight: float = option(1e-6, help="the weight of the KL term")
    grid_size: int = option(32, help="test images in each checkpoint's picture")
    scale_examples: int | None = option(10_000, help="training images the latent scale is measured on (none: all)")

    def __post_init__(self):
        check_choices(self)
        if not (isinstance(self.kl_weight, (int, float)) and self.kl_weight >= 0):
            raise ValueError(f"kl_weight must be non-negative, got {self.kl_weight}")
        whole_number("grid_size", self.grid_size, 1)
        if self.scale_examples is not None:
            whole_number("scale_examples", self.scale_examples, 1)
        if self.factor is not None:
            AutoencoderConfig.for_factor(self.factor)  # a power of two, or a clear error


@register
class AutoencoderTask(Task):
    Config = AutoencoderTaskConfig
    train_defaults = {"batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "steps": 2000, "lr_schedule": "constant",
                      "ema_decay": None}

    def __init__(self, config, info, state=None, device=None):
        super().__init__(config, info, state, device)
        if info.modality != "image":
            raise ValueError(f"an autoencoder takes images; {info.name!r} holds {info.modality}s of shape {info.shape}")
        c = self.config
        shape = dict(c.network or {})
        if c.factor is not None:
            shape["channel_mults"] = list(AutoencoderConfig.for_factor(c.factor).channel_mults)
        network = AutoencoderConfig.from_dict({"in_channels": info.shape[0], **shape})
        c.network = network.to_dict()
        self.latent_shape = network.latent_shape(info.shape)  # raises now if the factor does not divide
        self.scale_images = None

    def examples(self, data: Dataset) -> Dataset:
        n = self.config.scale_examples
        index = torch.arange(len(data)) if n is None or n >= len(data) else \
            torch.randperm(len(data), generator=torch.Generator().manual_seed(2))[:n].sort().values
        self.scale_images = data.__getitems__(index.tolist())["x"]
        return data

    def build(self) -> AutoencoderKL:
        return build_autoencoder(self.config.network)

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict:
        x = batch["x"]
        recon, mean, logvar = model(x, generator=generator)
        error = (recon - x).abs() if self.config.loss == "l1" else (recon - x).pow(2)
        pixels = x[0].numel()
        reconstruction = error.flatten(1).mean(1).mean()
        kl = AutoencoderKL.kl(mean, logvar).mean() / pixels
        return {"loss": reconstruction + self.config.kl_weight * kl, "reconstruction": reconstruction,
                "kl": kl * pixels}

    @torch.no_grad()
    def reconstruct(self, model: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean decoded, in eval mode."""
        mode = model.training
        model.eval()
        try:
            return model.decode(model.encode(x.to(self.device))[0]).float().cpu()
        finally:
            model.train(mode)

    def stored(self, model: AutoencoderKL) -> dict:
        mode = model.training
        model.eval()
        try:
            scale = latent_scale(model, self.scale_images, self.device)
        finally:
            model.train(mode)
        self.state["latent"] = {"shape": list(self.latent_shape), "scale_factor": scale,
                                "scale_examples": len(self.scale_images), "posterior": "mean"}
        return self.state

    def preview(self, model: AutoencoderKL) -> dict:
        from ...plotting import save_image_grid
        test = self.test_data()  # None for data given in Python without a test split: training images then
        x = (test.data if test is not None else self.scale_images)[:self.config.grid_size]
        recon = self.reconstruct(model, x)
        cols = min(8, len(x))
        rows = []
        for i in range(0, len(x), cols):
            original, rebuilt = x[i:i + cols], recon[i:i + cols]
            blank = torch.full((cols - len(original), *original.shape[1:]), -1.0)  # a short last row is padded
            rows += [torch.cat([original, blank]), torch.cat([rebuilt, blank])]
        grid = torch.cat(rows)
        return {"reconstructions": lambda path: save_image_grid(grid, path, nrow=cols)}

    def evaluate(self, model: AutoencoderKL, batch_size: int = 500) -> dict | None:
        """Reconstruction quality on the test split: the posterior mean decoded, in [0, 1]."""
        test = self.test_data()
        if test is None:
            return None
        values = torch.cat([psnr(x, self.reconstruct(model, x)) for x in test.data.split(batch_size)]).double()
        spread = float(values.std()) if len(values) > 1 else 0.0
        # psnr: the mean over test images of each image's PSNR
        return {"split": "test", "examples": len(values), "psnr": round(float(values.mean()), 4),
                "psnr_std": round(spread, 4)}

    def report(self, metrics: dict | None) -> list[str]:
        if metrics is None:
            return []
        latent, factor = self.state["latent"], AutoencoderConfig.from_dict(self.config.network).factor
        return [f"test reconstruction PSNR {metrics['psnr']:.2f} dB over {metrics['examples']} images (in [0, 1])",
                f"latents {tuple(latent['shape'])} per image (factor {factor}); scale factor {latent['scale_factor']:.4g}"]
