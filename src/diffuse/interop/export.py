"""A diffusion run as a diffusers pipeline folder that diffusers loads with its own classes.

    diffuse export RUN --to diffusers OUT

Exact where the maths allows, refused with the options that stand in the way where it does not.
What diffusers can hold: a UNet2DModel fed x_t unscaled and told the timestep, with a DDPM-family
scheduler on the same betas or a flow-matching scheduler. So a run exports when

  process          discrete (--process ddpm, or any VP.from_betas schedule) or flow (velocity)
  preconditioning  none (diffusers' DDPM schedulers feed the network x_t as it is)
  noise_input      timestep (the network reads n = N t - 1, or 1000 t on the flow path, not c_noise)
  prediction       eps, v or x0 (epsilon / v_prediction / sample); velocity on the flow path
  network          a U-Net with middle_blocks=2 (res-attention-res), time_features="timestep",
                   one attention width, and no text (cross-attention) or position code

Its EMA weights are mapped tensor for tensor (the attention's fused qkv 1x1 convolution split into
to_q / to_k / to_v), the scheduler is a DDPMScheduler with the run's betas (by name where they are
a named schedule, else trained_betas), no clipping, the trailing spacing, or for a flow model
FlowMatchEulerDiscreteScheduler with shift 1; a class model's null
class and class names go to diffuse.json beside them (diffusers ignores it, from_diffusers reads
it). The folder is written into a temporary folder beside OUT and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..denoiser import FLOW_TIMESTEPS
from ..files import write_text_atomic
from ..process import DiscreteVP, Flow, named_betas
from .diffusers import DIFFUSE_JSON

PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample", "velocity": "flow_prediction"}


def obstacles(pipeline) -> list[str]:
    """What keeps this run from being written as a diffusers folder, each with the option to change."""
    model, found = pipeline.model, []
    net = getattr(model, "net", None)
    config = getattr(net, "config", None)
    if not isinstance(pipeline.process, (DiscreteVP, Flow)):
        found.append(f"the process {pipeline.process!r} is neither discrete nor the flow path, the two that "
                     "diffusers' schedulers describe (train with --process ddpm or --process flow)")
    elif isinstance(pipeline.process, Flow) and pipeline.prediction != "velocity":
        found.append("a flow model exports predicting the velocity, as diffusers' flow-matching schedulers read it "
                     "(--prediction velocity)")
    if getattr(model, "preconditioning", None) != "none":
        found.append("preconditioning 'edm' scales the network's input and output, which a UNet2DModel under a DDPM "
                     "scheduler does not (--preconditioning none)")
    if getattr(model, "noise_input", None) != "timestep":
        found.append("the network reads c_noise; a diffusers network reads the timestep (--noise-input timestep)")
    if pipeline.prediction not in PREDICTION_TYPES:
        found.append(f"prediction {pipeline.prediction!r} has no diffusers prediction_type (eps, v, x0, velocity)")
    elif pipeline.prediction == "velocity" and not isinstance(pipeline.process, Flow):
        found.append("a velocity prediction exports on the flow path only (diffusers' flow-matching schedulers)")
    if pipeline.codec is not None:
        found.append("a latent model's autoencoder is ours, not a diffusers AutoencoderKL")
    if type(net).__name__ != "UNet" or config is None:
        found.append(f"the network is a {type(net).__name__}; only our U-Net maps onto a diffusers class "
                     "(a DiT has no diffusers pipeline without a diffusers VAE)")
        return found
    if config.middle_blocks != 2:
        found.append("the U-Net's middle has one block; UNet2DModel's has two around its attention "
                     "(network middle_blocks=2)")
    if config.time_features != "timestep":
        found.append("the U-Net codes the noise level with log-spaced frequencies; UNet2DModel with DDPM's "
                     "timestep code (network time_features=\"timestep\")")
    if config.context_dim is not None or config.position_code:
        found.append("a text U-Net (cross-attention, position code) has no UNet2DModel form")
    if config.channels % 2:
        found.append(f"channels={config.channels} is odd; UNet2DModel's timestep code has as many features as the "
                     "first level's width, ours one more")
    widths = {config.level_widths[level] for level in config.attention_levels}
    if len(widths) > 1:
        found.append(f"attention at widths {sorted(widths)} with {config.num_heads} heads each; UNet2DModel has one "
                     "head width (attention at one level, or levels of one width)")
    return found


def unet2d_config(config) -> dict:
    """Our UNetConfig as UNet2DModel's arguments."""
    widths, levels = config.level_widths, len(config.level_widths)
    attention = set(config.attention_levels)
    head_dim = widths[min(attention)] // config.num_heads if attention else None
    return dict(
        in_channels=config.in_channels, out_channels=config.out_channels, block_out_channels=tuple(widths),
        layers_per_block=config.num_res_blocks, norm_num_groups=config.groups, norm_eps=1e-5,
        attn_norm_num_groups=config.groups,  # (with scale_shift its middle attention has none otherwise)
        down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(levels)),
        up_block_types=tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(levels))),
        add_attention=(levels - 1) in attention, attention_head_dim=head_dim or widths[-1],
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        time_embedding_dim=2 * config.channels, resnet_time_scale_shift="scale_shift", dropout=config.dropout,
        num_class_embeds=None if config.num_classes is None else config.num_classes + 1,
        downsample_padding=1, act_fn="silu",
    )


def _stage(state: dict, ours: str, resnet: str, attention: str | None) -> dict:
    """One residual block (and its self-attention) of ours under diffusers' names."""
    out = {}
    for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("film.1", "time_emb_proj"), ("norm2", "norm2"),
                 ("conv2", "conv2"), ("skip", "conv_shortcut")):
        for kind in ("weight", "bias"):
            if f"{ours}.res.{a}.{kind}" in state:
                out[f"{resnet}.{b}.{kind}"] = state[f"{ours}.res.{a}.{kind}"]
    if attention is not None:
        for kind in ("weight", "bias"):
            out[f"{attention}.group_norm.{kind}"] = state[f"{ours}.attention.norm.{kind}"]
            q, k, v = state[f"{ours}.attention.qkv.{kind}"].chunk(3, dim=0)
            for name, value in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"{attention}.{name}.{kind}"] = value.flatten(1) if kind == "weight" else value
            proj = state[f"{ours}.attention.proj.{kind}"]
            out[f"{attention}.to_out.0.{kind}"] = proj.flatten(1) if kind == "weight" else proj
    return out


def unet2d_state(net) -> dict:
    """Our U-Net's weights under UNet2DModel's names, walking both in the same order."""
    config, state = net.config, net.state_dict()
    attention = set(config.attention_levels)
    out = {"conv_in.weight": state["input.weight"], "conv_in.bias": state["input.bias"],
           "conv_norm_out.weight": state["output_norm.weight"], "conv_norm_out.bias": state["output_norm.bias"],
           "conv_out.weight": state["output.weight"], "conv_out.bias": state["output.bias"]}
    for ours, theirs in (("condition.noise.mlp.0", "time_embedding.linear_1"),
                         ("condition.noise.mlp.2", "time_embedding.linear_2")):
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"]
    if config.num_classes is not None:
        out["class_embedding.weight"] = state["condition.classes.table.weight"]
    index, levels = 0, len(config.level_widths)
    for level in range(levels):
        for j in range(config.num_res_blocks):
            out.update(_stage(state, f"down.{index}", f"down_blocks.{level}.resnets.{j}",
                              f"down_blocks.{level}.attentions.{j}" if level in attention else None))
            index += 1
        if level != levels - 1:
            for kind in ("weight", "bias"):
                out[f"down_blocks.{level}.downsamplers.0.conv.{kind}"] = state[f"down.{index}.conv.{kind}"]
            index += 1
    middle_attention = "mid_block.attentions.0" if levels - 1 in attention else None
    out.update(_stage(state, "middle", "mid_block.resnets.0", middle_attention))
    out.update(_stage(state, "middle2", "mid_block.resnets.1", None))
    index = 0
    for block, level in enumerate(reversed(range(levels))):
        for j in range(config.num_res_blocks + 1):
            out.update(_stage(state, f"up.{index}", f"up_blocks.{block}.resnets.{j}",
                              f"up_blocks.{block}.attentions.{j}" if level in attention else None))
            index += 1
        if level != 0:
            for kind in ("weight", "bias"):
                out[f"up_blocks.{block}.upsamplers.0.conv.{kind}"] = state[f"up.{index}.conv.{kind}"]
            index += 1
    return out


def scheduler(process, prediction: str, diffusers):
    """The diffusers scheduler that equals the process: FlowMatchEulerDiscreteScheduler (shift 1)
    for the flow path, else a DDPMScheduler on its betas."""
    if isinstance(process, Flow):
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=FLOW_TIMESTEPS, shift=1.0)
    return diffusers.DDPMScheduler(**scheduler_config(process, prediction))


def scheduler_config(process: DiscreteVP, prediction: str) -> dict:
    """A DDPMScheduler config for the process: its betas by name where they are a named schedule."""
    betas, n = process.betas, process.num_steps
    first, last = float(betas[0]), float(betas[-1])
    config = {"num_train_timesteps": n, "prediction_type": PREDICTION_TYPES[prediction], "clip_sample": False,
              "timestep_spacing": "trailing", "variance_type": "fixed_small"}
    for name, start, end in (("linear", first, last), ("scaled_linear", first, last), ("squaredcos_cap_v2", 1e-4, 0.02)):
        if torch.allclose(named_betas(name, n, start, end), betas, rtol=0, atol=1e-12):
            return {**config, "beta_schedule": name, "beta_start": start, "beta_end": end}
    return {**config, "trained_betas": betas.tolist()}


def export_diffusers(pipeline, out, *, overwrite: bool = False) -> Path:
    """Write a run's pipeline (`diffuse.load(run)`: its EMA weights) as a diffusers pipeline folder
    at out."""
    from .diffusers import _diffusers, _quiet

    diffusers = _diffusers()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; give another folder or overwrite=True (--overwrite)")
    found = obstacles(pipeline)
    if found:
        raise ValueError("this run cannot be written as a diffusers pipeline: " + "; ".join(found))
    net = pipeline.model.net
    unet = diffusers.UNet2DModel(sample_size=tuple(pipeline.shape[1:]), **unet2d_config(net.config))
    unet.load_state_dict(unet2d_state(net), strict=True)
    chosen = scheduler(pipeline.process, pipeline.prediction, diffusers)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet(diffusers):
            diffusers.DDPMPipeline(unet=unet, scheduler=chosen).save_pretrained(scratch)
        # What diffusers' configs have no place for (it ignores the file): the class embedding's last
        # row is the null class of classifier-free guidance, and the classes' names.
        if net.config.num_classes is not None:
            write_text_atomic(scratch / DIFFUSE_JSON, json.dumps(
                {"null_class": net.config.num_classes, "class_names": pipeline.info.class_names}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out
