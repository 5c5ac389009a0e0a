"""Named recipes: complete run configs, the one place the CLI, the benchmarks and the docs start from.

    digits   class-conditional 8x8 digits: EDM (x0 target, EDM weighting, log-normal noise levels,
             preconditioning), a 32/64-channel U-Net with attention at 4x4, batch 128, AdamW 2e-3
             with 200 warmup steps and a cosine decay to 0 at the step budget, EMA 0.999; it
             reaches the real-data floor of FD in 10 CPU-minutes (docs/results.md)
    fashion  class-conditional 28x28 Fashion-MNIST: a pixel DiT-XS with 4x4 patches, batch 64,
             AdamW 1e-3, the latent benchmark's best pixel model per CPU-second (docs/latent.md)
    shapes   captioned 32x32 shapes: a narrow U-Net cross-attending at 8x8 to a causal text
             encoder kept at its random initialisation, noise levels drawn around sigma = 1.6,
             batch 64, EMA 0.998 (docs/shapes.md says why each choice)
    ring     the 2-D ring of 8 Gaussians with a residual MLP: the smallest thing that trains
    pusht    Diffusion Policy (Chi et al. 2023) on the Push-T demonstrations: 16 actions denoised
             given 2 observations by a FiLM-conditioned temporal U-Net (64/128/256 channels, a
             quarter of the paper's width), DDPM's 100-step squaredcos_cap_v2 betas, eps target,
             no condition dropout, EMA 0.999, AdamW 3e-4 with weight decay 1e-6, batch 64;
             DDIM with 10 steps at run time (the paper: 256/512/1024, batch 256, lr 1e-4); the
             estimate of the actions clipped to their range [-1, 1] at every step, as the paper's
             code does (clip_sample): at the top of the cosine betas alpha is ~1e-4, so an eps
             model's x0 = (x - sigma eps) / alpha magnifies any error in eps ten-thousandfold
             (unclipped, the policy's samples missed the data by an MSE of 0.75 instead of 0.04)

`recipe(name)` returns a fresh RunConfig; `PROCESSES` are what a choice of process implies for the
rest of the diffusion task when only the process is given (`diffuse train --process vp`).
"""

from __future__ import annotations

import copy

from .models import dit_config
from .process import VP, get_process
from .training import DiffusionTaskConfig, RunConfig, TrainConfig

# What a process implies when only the process is named: the usual recipe for that family.
_EDM_FAMILY = dict(prediction="x0", preconditioning="edm", weighting="edm", time_sampling="log_normal",
                   sampler="heun", sample_steps=18)
_EPS_FAMILY = dict(prediction="eps", preconditioning="none", weighting="simple", time_sampling="uniform",
                   sampler="dpmpp_2m", sample_steps=25)
PROCESSES = {
    "edm": _EDM_FAMILY,
    "ve": _EDM_FAMILY,
    "vp": _EPS_FAMILY,
    "vp-cosine": _EPS_FAMILY,
    "ddpm": {**_EPS_FAMILY, "sample_schedule": "trailing"},
    "flow": dict(prediction="velocity", preconditioning="none", weighting="simple", time_sampling="logit_normal",
                 sampler="heun", sample_steps=18),
}


def process_fields(name: str) -> dict:
    """The diffusion task's fields for process `name` (a key of PROCESSES) and its family's recipe."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    return {**PROCESSES[name], "process": get_process(name).config()}


SHAPES_NETWORK = {"kind": "text", "causal": True,
                  "denoiser": {"kind": "unet", "channels": 16, "channel_mults": [1, 2, 4], "num_res_blocks": 1,
                               "attention_levels": [2], "norm_groups": 8, "pooled_context": True,
                               "position_code": True}}


def sized_by_the_data(network: dict) -> dict:
    """A network description without the sizes the data decide (channels, image size)."""
    return {k: v for k, v in network.items() if k not in ("in_channels", "out_channels", "image_size")}


_RECIPES = {
    "digits": RunConfig(DiffusionTaskConfig(cond="class"), "digits", TrainConfig()),
    "fashion": RunConfig(DiffusionTaskConfig(cond="class", network=sized_by_the_data(
                             dit_config("DiT-XS", patch_size=4, num_classes=10))),
                         "fashion", TrainConfig(batch_size=64, lr=1e-3, warmup_steps=50)),
    "shapes": RunConfig(DiffusionTaskConfig(cond="text", network=SHAPES_NETWORK, text_lr_scale=0.0,
                                            time_options={"p_mean": 0.5, "p_std": 1.5}),
                        "shapes", TrainConfig(batch_size=64, lr=2e-3, ema_decay=0.998, steps=3000)),
    "ring": RunConfig(DiffusionTaskConfig(), "ring", TrainConfig(batch_size=256, lr=1e-3, steps=2000)),
    "pusht": RunConfig(DiffusionTaskConfig(cond="obs", network={"kind": "temporal_unet", "channels": [64, 128, 256]},
                                           **{**PROCESSES["ddpm"], "sampler": "ddim", "sample_steps": 10},
                                           process=VP.from_betas("squaredcos_cap_v2", 100).config(),
                                           label_dropout=0.0, clip_denoised=1.0),
                       "pusht", TrainConfig(batch_size=64, lr=3e-4, weight_decay=1e-6, warmup_steps=100,
                                            steps=3000, checkpoint_every=500)),
}
RECIPES = tuple(_RECIPES)


def recipe(name: str) -> RunConfig:
    """A fresh copy of the named recipe's run config."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {list(RECIPES)}")
    return copy.deepcopy(_RECIPES[name])
