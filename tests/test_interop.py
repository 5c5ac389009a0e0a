"""Pretrained diffusers models through our samplers: tiny random models and pipelines are built
here, saved with save_pretrained, read back with diffuse.from_diffusers, and sampled by our code
and by diffusers' own pipelines from the same noise (and prompt) to float tolerance.

The tolerance: both sides run the same float32 network on the same inputs; what differs is the
arithmetic of the updates (ours in float64 coefficients, diffusers' float32 tables), observed
at ~1e-6, so 1e-4 is far below any real discrepancy (a wrong timestep or guidance sign moves a
sample of these random networks by 1e-2 or more).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffuse
from diffuse.guidance import ClassifierFreeGuidance
from diffuse.interop import FlowMatchSchedule, read_scheduler, scheduler_times
from diffuse.interop.diffusers import SD3, Flux
from diffuse.likelihood import log_likelihood
from diffuse.samplers import Generators

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

TOL = dict(rtol=1e-4, atol=1e-4)
WORDS = ["a", "photo", "of", "red", "blue", "cat", "dog", "circle"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_clip(folder, projection: bool = False):
    """A CLIP tokenizer over WORDS (with the merges that spell each word) and a random 2-layer
    CLIP text encoder, both written to `folder` as a model hub would hold them."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        for p in parts:
            vocab.setdefault(p, len(vocab))
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=32)
    encoder = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return tokenizer, encoder.eval()


def tiny_vae():
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8),
                                   latent_channels=4, norm_num_groups=2, sample_size=16)


def ddpm_config(**changes) -> dict:
    return {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
            "num_train_timesteps": 1000, **changes}


def config_of(sched) -> dict:
    """A scheduler's config as its scheduler_config.json holds it."""
    return {**sched.config, "_class_name": type(sched).__name__}


def y_units(sched) -> float:
    """What diffusers' loop multiplies our VP start x ~ N(0, I) by to get its own start.

    Euler-type schedulers keep y = x / alpha and start from noise * init_noise_sigma, which with
    the trailing and linspace spacings is sigma_max rather than the prior's sqrt(1 + sigma_max^2)
    (y = x0 / 1 + sigma eps, the data's part dropped): a 0.2% smaller start on SD's schedule.
    The tests give diffusers the start that is ours, (noise / alpha_max) / init_noise_sigma.
    """
    sched.set_timesteps(2)
    if type(sched).__name__ != "EulerDiscreteScheduler":
        return 1.0
    sigma_max = float(sched.sigmas[0])
    return (1 + sigma_max**2) ** 0.5 / float(sched.init_noise_sigma)


def diffusers_loop(net_call, sched, noise, steps: int):
    """The denoising loop every diffusers pipeline runs (scale_model_input, network, step), from
    our start `noise`."""
    noise = noise * y_units(sched)
    sched.set_timesteps(steps)
    x = noise * getattr(sched, "init_noise_sigma", 1.0)  # (flow matching: the state is x itself)
    scale = getattr(sched, "scale_model_input", lambda x, t: x)
    for t in sched.timesteps:
        x = sched.step(net_call(scale(x, t), t), t, x).prev_sample
    return x


# ------------------------------------------------------------------------------------------------
# Scheduler configs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
])
def test_ddpm_family_configs_are_the_discrete_process(config):
    sched = diffusers.DDIMScheduler(**config)
    spec = read_scheduler(config_of(sched))
    torch.testing.assert_close(spec.process.alphas_cumprod, sched.alphas_cumprod.double(), rtol=1e-5, atol=1e-6)
    assert spec.prediction == "eps" and spec.name == "DDIMScheduler"
    # the network's timestep for our t = (n + 1) / N is n
    n = torch.tensor([0.0, 17.0, 999.0], dtype=torch.float64)
    assert torch.equal(spec.timestep(spec.process.timestep_to_t(n)), n)
    if config.get("rescale_betas_zero_snr"):
        assert spec.process.default_schedule == "trailing"


def test_scheduler_config_options():
    betas = torch.linspace(1e-4, 0.02, 50, dtype=torch.float64)
    spec = read_scheduler(config_of(diffusers.DDPMScheduler(trained_betas=betas.numpy(), num_train_timesteps=50,
                                                            prediction_type="v_prediction", clip_sample=True,
                                                            clip_sample_range=2.0)))
    torch.testing.assert_close(spec.process.betas, betas)
    assert (spec.prediction, spec.clip_sample) == ("v", 2.0)
    assert read_scheduler(ddpm_config(_class_name="X", prediction_type="sample")).prediction == "x0"
    with pytest.raises(ValueError, match="thresholding"):
        read_scheduler(ddpm_config(_class_name="DDPMScheduler", thresholding=True))
    with pytest.raises(ValueError, match="prediction_type"):
        read_scheduler(ddpm_config(_class_name="DDPMScheduler", prediction_type="score"))
    with pytest.raises(ValueError, match="neither"):
        read_scheduler({"_class_name": "ScoreSdeVeScheduler", "sigma_max": 10})
    with pytest.raises(ValueError, match="_class_name"):
        read_scheduler({"beta_schedule": "linear"})


@pytest.mark.parametrize("options, mu, flux", [
    (dict(shift=1.0), None, False),
    (dict(shift=3.0), None, False),                    # SD3
    (dict(shift=3.0, shift_terminal=0.1), None, False),
    (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), 0.8, True),  # Flux
])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_flow_match_schedule_is_diffusers_sigmas(options, mu, flux, steps):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(**options)
    base = np.linspace(1.0, 1 / steps, steps) if flux else None
    sched.set_timesteps(steps, sigmas=base, mu=mu)
    seq_len = None
    if mu is not None:  # the sequence length whose linear map gives this mu
        seq_len = 256 + (mu - 0.5) / (1.15 - 0.5) * (4096 - 256)
    spec = read_scheduler(config_of(sched), image_seq_len=seq_len, pipeline="FluxPipeline" if flux else "")
    assert isinstance(spec.process, diffuse.Flow) and spec.prediction == "velocity"
    times = diffuse.samplers.make_times(spec.process, spec.schedule, steps)
    if torch.isnan(sched.sigmas).any():  # diffusers divides by zero stretching a single step
        assert steps == 1 and times.tolist() == [1.0]
        return
    torch.testing.assert_close(times, sched.sigmas[:-1].double(), rtol=1e-6, atol=1e-6)
    assert float(sched.sigmas[-1]) == 0.0  # as our final step
    torch.testing.assert_close(spec.timestep(times).float(), sched.timesteps, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Pixel-space U-Net: DDIM, Euler, DPM-Solver++(2M)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8)
    folder = tmp_path_factory.mktemp("ddpm")
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**ddpm_config())).save_pretrained(folder)
    return folder


SOLVERS = {
    # ours, diffusers' scheduler; the spacing is trailing, where both visit the same integer timesteps
    "ddim": lambda c: diffusers.DDIMScheduler.from_config(c, timestep_spacing="trailing", set_alpha_to_one=True),
    "euler": lambda c: diffusers.EulerDiscreteScheduler.from_config(c, timestep_spacing="trailing"),
    "dpmpp_2m": lambda c: diffusers.DPMSolverMultistepScheduler.from_config(c, timestep_spacing="trailing"),
}


@pytest.mark.parametrize("sampler", list(SOLVERS))
@pytest.mark.parametrize("steps", [4, 10])
def test_unet2d_samples_match_diffusers(unet_folder, sampler, steps):
    pipeline = diffuse.from_diffusers(unet_folder)
    assert pipeline.shape == (3, 8, 8) and pipeline.prediction == "eps" and pipeline.codec is None
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = diffuse.sample(pipeline.model, pipeline.process, noise, sampler=sampler, steps=steps, schedule="trailing")
    unet = pipeline.model.net
    sched = SOLVERS[sampler](diffusers.DDPMScheduler.from_pretrained(unet_folder / "scheduler").config)
    theirs = diffusers_loop(lambda x, t: unet(x, t).sample, sched, noise, steps)
    torch.testing.assert_close(ours, theirs, **TOL)


def test_ddim_with_diffusers_own_spacing_and_pipeline_sample(unet_folder):
    """DDIM's leading spacing (which keeps timestep 0) as explicit times; Pipeline.sample draws
    sample k from Generators.seeded(seed, k) alone."""
    pipeline = diffuse.from_diffusers(unet_folder)
    sched = diffusers.DDIMScheduler.from_pretrained(unet_folder / "scheduler", set_alpha_to_one=True)
    sched.set_timesteps(6)
    times = scheduler_times(pipeline.process, sched.timesteps)
    noise = Generators.seeded(3, 0, 2).randn((3, 8, 8))
    ours = pipeline.sample(2, sampler="ddim", schedule=times, steps=6, seed=3)
    unet = pipeline.model.net
    theirs = diffusers_loop(lambda x, t: unet(x, t).sample, sched, noise, 6)
    torch.testing.assert_close(ours, theirs, **TOL)


# ------------------------------------------------------------------------------------------------
# Stable-Diffusion-style: text through CLIP, latents through the VAE, classifier-free guidance
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sd")
    tokenizer, encoder = tiny_clip(folder / "raw-tokenizer")
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2)
    config = ddpm_config(timestep_spacing="trailing")
    config.pop("clip_sample")
    sched = diffusers.EulerDiscreteScheduler(**config)
    pipe = diffusers.StableDiffusionPipeline(vae=tiny_vae(), text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=sched, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


@pytest.mark.parametrize("sampler, scheduler", [
    ("euler", diffusers.EulerDiscreteScheduler),
    ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler),
    ("ddim", diffusers.DDIMScheduler),
])
@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_stable_diffusion_matches_its_pipeline(sd_folder, sampler, scheduler, guidance):
    pipeline = diffuse.from_diffusers(sd_folder)
    assert pipeline.shape == (3, 16, 16) and pipeline.draw_shape == (4, 8, 8)
    prompts = ["a photo of a red cat", "a blue dog"]
    ours = pipeline.sample(2, prompt=prompts, guidance=guidance, sampler=sampler, steps=5, schedule="trailing",
                           seed=4)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                           **({"set_alpha_to_one": True, "clip_sample": False} if scheduler is diffusers.DDIMScheduler else {}))
    pipe.set_progress_bar_config(disable=True)
    noise = Generators.seeded(4, 0, 2).randn(pipeline.draw_shape)
    latents = pipe(prompts, num_inference_steps=5, guidance_scale=1 + guidance, latents=noise * y_units(pipe.scheduler),
                   output_type="latent").images
    theirs = pipeline.codec.decode(latents)
    torch.testing.assert_close(ours, theirs, **TOL)
    if guidance:  # guidance changed the samples, and the prompt matters
        plain = pipeline.sample(2, prompt=prompts, sampler=sampler, steps=5, schedule="trailing", seed=4)
        assert (plain - ours).abs().max() > 1e-3
    other = pipeline.sample(2, prompt="a circle", guidance=guidance, sampler=sampler, steps=5, schedule="trailing",
                            seed=4)
    assert (other - ours).abs().max() > 1e-3
    # no prompt is the empty prompt, as a text model always reads text
    torch.testing.assert_close(pipeline.sample(2, sampler=sampler, steps=5, seed=4),
                               pipeline.sample(2, prompt="", sampler=sampler, steps=5, seed=4))


def test_stable_diffusion_codec_round_trip_and_errors(sd_folder, tmp_path):
    pipeline = diffuse.from_diffusers(sd_folder)
    vae = pipeline.codec.vae
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(pipeline.codec.decode(z), vae.decode(z / vae.config.scaling_factor).sample)
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        diffuse.from_diffusers(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        diffuse.from_diffusers(tmp_path)


# ------------------------------------------------------------------------------------------------
# DiT (class labels), SD3 and Flux (flow matching)
# ------------------------------------------------------------------------------------------------


def test_dit_matches_its_pipeline(tmp_path):
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                          out_channels=8, num_layers=1, sample_size=8, patch_size=2,
                                          num_embeds_ada_norm=1000, norm_num_groups=1)  # DiTPipeline's null is 1000
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", timestep_spacing="trailing")
    diffusers.DiTPipeline(transformer=dit, vae=tiny_vae(), scheduler=sched).save_pretrained(tmp_path)
    pipeline = diffuse.from_diffusers(tmp_path)
    assert pipeline.num_classes == 1000 and pipeline.draw_shape == (4, 8, 8)
    labels = torch.tensor([3, 7])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    model = ClassifierFreeGuidance(pipeline.model, 1.5, null_label=1000)
    ours = diffuse.sample(model, pipeline.process, noise, sampler="dpmpp_2m", steps=6, schedule="trailing",
                          cond={"labels": labels})
    pipe = diffusers.DiTPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(class_labels=labels.tolist(), guidance_scale=2.5, num_inference_steps=6,
                  generator=torch.Generator().manual_seed(5), output_type="pt").images
    # the pipeline returns (decoded / 2 + 0.5).clamp(0, 1); the tiny random VAE stays inside (0, 1)
    mine = (pipeline.codec.decode(ours) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(mine, theirs, **TOL)


def flux_packed(latents: torch.Tensor) -> torch.Tensor:
    """[1, 4, 8, 8] latents as the Flux pipeline's sequence of 2x2 patches, [1, 16, 16]."""
    return latents.view(1, 4, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 16, 16)


def flux_unpacked(packed: torch.Tensor) -> torch.Tensor:
    return packed.view(1, 4, 4, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 4, 8, 8)


def flow_pipeline_output(pipe, steps, noise, embeds, pooled, guidance, **extra):
    null = torch.zeros_like(embeds), torch.zeros_like(pooled)
    return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=null[0],
                negative_pooled_prompt_embeds=null[1], num_inference_steps=steps, guidance_scale=1 + guidance,
                latents=noise, output_type="latent", **extra).images


def test_sd3_transformer_matches_its_pipeline():
    net = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                          caption_projection_dim=16, pooled_projection_dim=24, out_channels=4,
                                          pos_embed_max_size=16).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = diffusers.StableDiffusion3Pipeline(transformer=net, scheduler=sched, vae=tiny_vae(), text_encoder=None,
                                              tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                              text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    spec = read_scheduler(config_of(sched))
    model = SD3(net, spec)
    embeds, pooled = torch.randn(2, 7, 32), torch.randn(2, 24)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    guided = ClassifierFreeGuidance(model, 2.0, null={"encoder_hidden_states": torch.zeros(7, 32),
                                                      "pooled_projections": torch.zeros(24)})
    ours = diffuse.sample(guided, spec.process, noise, sampler="euler", steps=5, schedule=spec.schedule,
                          cond={"encoder_hidden_states": embeds, "pooled_projections": pooled})
    theirs = flow_pipeline_output(pipe, 5, noise, embeds, pooled, 2.0)
    torch.testing.assert_close(ours, theirs, **TOL)


def test_flux_transformer_matches_its_pipeline():
    net = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=24, axes_dims_rope=(2, 2, 4),
                                           guidance_embeds=True).eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = diffusers.FluxPipeline(transformer=net, scheduler=sched, vae=tiny_vae(), text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    # the pipeline's latents are 8x8 (16x16 images, VAE factor 2): 4x4 = 16 tokens of 2x2 patches
    spec = read_scheduler(config_of(sched), image_seq_len=16, pipeline="FluxPipeline")
    assert isinstance(spec.schedule, FlowMatchSchedule) and spec.schedule.end == "steps"
    model = Flux(net, spec)
    embeds, pooled = torch.randn(1, 7, 32), torch.randn(1, 24)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    ours = diffuse.sample(model, spec.process, noise, sampler="euler", steps=4, schedule=spec.schedule,
                          cond={"encoder_hidden_states": embeds, "pooled_projections": pooled})
    packed = flux_packed(noise)
    theirs = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=4, guidance_scale=3.5,
                  latents=packed, height=16, width=16, output_type="latent").images
    theirs = flux_unpacked(theirs)
    torch.testing.assert_close(ours, theirs, **TOL)


# ------------------------------------------------------------------------------------------------
# The command line and diffuse.load
# ------------------------------------------------------------------------------------------------


def test_cli_samples_a_diffusers_folder(tmp_path, capsys):
    from diffuse.cli import main
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                 layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, num_class_embeds=10)
    folder = tmp_path / "peer"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    assert diffuse.load(folder).num_classes == 10
    assert main(["sample", str(folder), "--n", "6", "--labels", "0-9", "--steps", "3", "--sampler", "unipc",
                 "--out", str(tmp_path / "grid.npz")]) == 0
    stored = np.load(tmp_path / "grid.npz")
    assert stored["images"].shape == (6, 8, 8) and stored["labels"].tolist() == [0, 1, 2, 3, 4, 5]
    # the same samples as the library's call with the same seed
    again = diffuse.load(folder).sample(6, labels=torch.arange(6), steps=3, sampler="unipc")
    np.testing.assert_allclose(stored["images"], ((again[:, 0] + 1) / 2).clamp(0, 1).numpy(), atol=1e-6)
    assert main(["eval", str(folder), "--n", "4"]) == 1
    assert "give --data NAME" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Single-file checkpoints
# ------------------------------------------------------------------------------------------------


def ldm_keys(unet: dict, vae: dict, text: dict, layers: int, levels: int, vae_levels: int,
             attention_levels: set) -> dict:
    """A diffusers SD pipeline's weights under the original latent-diffusion key names, to make a
    single-file checkpoint in the test (what such files on disk hold): the U-Net's blocks as
    input_blocks / middle_block / output_blocks, the VAE's as down / mid / up (its up blocks
    numbered in reverse, its attention as 1x1 convolutions), the CLIP text model under text_model."""
    def renamed(state, renames):
        out = {}
        for key, value in state.items():
            for new, old in renames:
                key = key.replace(old, new)
            out[key] = value
        return out

    resnet = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
              ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
    blocks = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
              ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
              ("middle_block.1.", "mid_block.attentions.0.")]
    blocks += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    for i in range(levels):
        for j in range(layers):
            blocks.append((f"input_blocks.{i * (layers + 1) + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            blocks.append((f"input_blocks.{i * (layers + 1) + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        blocks.append((f"input_blocks.{(i + 1) * (layers + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        for j in range(layers + 1):
            blocks.append((f"output_blocks.{i * (layers + 1) + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            blocks.append((f"output_blocks.{i * (layers + 1) + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        upsampler = 2 if (levels - 1 - i) in attention_levels else 1
        blocks.append((f"output_blocks.{i * (layers + 1) + layers}.{upsampler}.", f"up_blocks.{i}.upsamplers.0."))
    unet = {**renamed({k: v for k, v in unet.items() if "resnets" in k}, resnet),
            **{k: v for k, v in unet.items() if "resnets" not in k}}
    unet = renamed(unet, blocks)

    vae_names = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0."),
                 ("mid.attn_1.norm.", "mid.attn_1.group_norm."), ("mid.attn_1.q.", "mid.attn_1.to_q."),
                 ("mid.attn_1.k.", "mid.attn_1.to_k."), ("mid.attn_1.v.", "mid.attn_1.to_v."),
                 ("mid.attn_1.proj_out.", "mid.attn_1.to_out.0.")]
    vae_names += [(f"mid.block_{j + 1}.", f"mid_block.resnets.{j}.") for j in range(2)]
    for i in range(vae_levels):
        vae_names += [(f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.") for j in range(layers)]
        vae_names += [(f"decoder.up.{vae_levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.")
                      for j in range(layers + 1)]
        vae_names += [(f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."),
                      (f"up.{vae_levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0.")]
    vae = renamed(vae, vae_names)
    vae = {k: v[:, :, None, None] if "mid.attn_1." in k and k.endswith("weight") and v.ndim == 2 else v
           for k, v in vae.items()}
    return {**{"model.diffusion_model." + k: v for k, v in unet.items()},
            **{"first_stage_model." + k: v for k, v in vae.items()},
            # SD 1's files hold transformers' older CLIPTextModel layout, all under text_model.
            **{"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
               for k, v in text.items()}}


def test_single_file_checkpoint_loads_through_the_same_path(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    tokenizer, encoder = tiny_clip(tmp_path / "raw-tokenizer")
    # Stable Diffusion 1's layout, narrow: 4 levels, 2 layers, cross-attention on the first three
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=2)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8),
                                  latent_channels=4, norm_num_groups=2, sample_size=16, layers_per_block=2)
    config = ddpm_config(timestep_spacing="trailing")
    config.pop("clip_sample")
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=diffusers.EulerDiscreteScheduler(**config), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "folder")
    state = ldm_keys(unet.state_dict(), vae.state_dict(), encoder.state_dict(), layers=2, levels=4, vae_levels=2,
                     attention_levels={0, 1, 2})
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")

    single = diffuse.from_diffusers(tmp_path / "model.safetensors", config=tmp_path / "folder")
    folder = diffuse.from_diffusers(tmp_path / "folder")
    ours = single.sample(2, prompt="a red cat", guidance=2.0, sampler="dpmpp_2m", steps=4, seed=2)
    torch.testing.assert_close(ours, folder.sample(2, prompt="a red cat", guidance=2.0, sampler="dpmpp_2m",
                                                   steps=4, seed=2), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="give config=FOLDER"):
        diffuse.from_diffusers(tmp_path / "model.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickled"):
        diffuse.from_diffusers(tmp_path / "model.ckpt", config=tmp_path / "folder")


def test_every_sampler_and_the_likelihood_run_on_a_diffusers_model(tmp_path):
    """The wrapped network is a model like any other: every sampler samples it (the ODE samplers
    converging to one endpoint as their steps grow) and the probability-flow likelihood of our
    own core integrates it (exact divergence, 16 dimensions), and a schedule fitted to it is valid."""
    unet = diffusers.UNet2DModel(sample_size=4, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                 layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(clip_sample=False)).save_pretrained(tmp_path)
    pipeline = diffuse.from_diffusers(tmp_path)
    for sampler in diffuse.samplers.available():
        x = pipeline.sample(3, sampler=sampler, steps=4, seed=1)
        assert x.shape == (3, 1, 4, 4) and torch.isfinite(x).all(), sampler
        assert torch.equal(x, pipeline.sample(3, sampler=sampler, steps=4, seed=1)), sampler
    for schedule in diffuse.samplers.SCHEDULES:
        assert torch.isfinite(pipeline.sample(2, sampler="dpmpp_2m", steps=4, schedule=schedule)).all(), schedule
    # a schedule fitted to this model (few iterations) is a valid schedule that does no worse
    # than the one it starts from, on the batch it was fitted to
    from diffuse.samplers.optimize import ode_endpoint, optimize_schedule, rms_distance
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    reference = ode_endpoint(pipeline.model, pipeline.process, noise, pipeline.process.t_max,
                             pipeline.process.t_min, rtol=1e-4, atol=1e-4)
    start = diffuse.samplers.make_times(pipeline.process, "log_snr", 4)
    fitted = optimize_schedule(pipeline.model, pipeline.process, "dpmpp_2m", 4, noise, reference=reference,
                               iterations=12)
    error = lambda times: rms_distance(diffuse.sample(pipeline.model, pipeline.process, noise,  # noqa: E731
                                                      sampler="dpmpp_2m", schedule=times), reference)
    assert fitted.shape == (4,) and error(fitted) <= error(start) + 1e-9
    # An untrained network's x0 estimates are in the hundreds (eps / alpha at the top): the ODE
    # samplers agree at 150 steps to a small part of that scale (first-order DDIM: 4e-3; at 50
    # steps it is 1.2e-2 off).
    ends = {s: pipeline.sample(2, sampler=s, steps=150, seed=1) for s in ("ddim", "dpmpp_2m", "unipc", "heun")}
    scale = float(ends["dpmpp_2m"].abs().max())
    for s, x in ends.items():
        assert float((x - ends["dpmpp_2m"]).abs().max()) < 6e-3 * scale, s
    images = pipeline.sample(2, sampler="dpmpp_2m", steps=20, seed=3)
    out = log_likelihood(pipeline.model, pipeline.process, images, divergence="exact", rtol=1e-3, atol=1e-3)
    assert out["log_prob"].shape == (2,) and torch.isfinite(out["log_prob"]).all()


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def exportable_run(tmp_path):
    """A class-conditional digits run with the options a diffusers UNet2DModel + DDPM scheduler
    can hold, trained a few steps (so that no weight is still at its zero initialisation)."""
    from _tiny import UNET, digits_config
    from diffuse.recipes import process_fields
    from diffuse.training import Engine
    network = {**UNET, "channels": 16, "num_classes": 10, "middle_blocks": 2, "time_features": "timestep",
               "norm_groups": 8}
    config = digits_config("class", network=network, noise_input="timestep", steps=3, **process_fields("ddpm"))
    Engine(config, tmp_path / "run", progress=False).fit()
    return tmp_path / "run"


def test_export_gives_our_samples_back_in_diffusers(tmp_path, capsys):
    from diffuse.cli import main
    run = exportable_run(tmp_path)
    assert main(["export", str(run), "--to", "diffusers", str(tmp_path / "out")]) == 0
    ours = diffuse.load(run)
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "out" / "unet").eval()
    labels = torch.tensor([0, 3, 9])
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    # the network itself, at a few timesteps
    for n in (0, 500, 999):
        t = ours.process.timestep_to_t(torch.full((3,), float(n)))
        with torch.no_grad():
            torch.testing.assert_close(unet(noise, torch.full((3,), n), class_labels=labels).sample,
                                       ours.model(noise, t, labels=labels), rtol=1e-4, atol=1e-5)
    # the samples, from the same noise: ours against diffusers' own loop and scheduler
    mine = diffuse.sample(ours.model, ours.process, noise, sampler="dpmpp_2m", steps=6, cond={"labels": labels})
    sched = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path / "out" / "scheduler")
    with torch.no_grad():
        theirs = diffusers_loop(lambda x, t: unet(x, t, class_labels=labels).sample, sched, noise, 6)
    torch.testing.assert_close(mine, theirs, **TOL)
    # and back through from_diffusers: the same pipeline as the run's
    again = diffuse.from_diffusers(tmp_path / "out")
    assert again.num_classes == 10 and again.info.class_names == ours.info.class_names
    torch.testing.assert_close(again.sample(4, labels=torch.arange(4), steps=5, sampler="unipc", guidance=1.5),
                               ours.sample(4, labels=torch.arange(4), steps=5, sampler="unipc", guidance=1.5), **TOL)
    assert main(["export", str(run), str(tmp_path / "out")]) == 1  # exists
    assert "exists" in capsys.readouterr().err


def test_export_names_what_stands_in_the_way(tmp_path, capsys):
    from _tiny import digits_config
    from diffuse.cli import main
    from diffuse.training import Engine
    Engine(digits_config(steps=1), tmp_path / "run", progress=False).fit()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 1
    message = capsys.readouterr().err
    for option in ("--process ddpm", "--preconditioning none", "--noise-input timestep", "middle_blocks=2",
                   'time_features="timestep"'):
        assert option in message, option
    assert not (tmp_path / "out").exists()


def test_timestep_noise_input_needs_a_discrete_process():
    from _tiny import digits_config
    from diffuse.denoiser import Denoiser
    with pytest.raises(ValueError, match="discrete process"):
        Denoiser(torch.nn.Identity(), diffuse.VP(), noise_input="timestep")
    with pytest.raises(ValueError, match="discrete process"):
        digits_config(noise_input="timestep")  # the default process is EDM's
    model = Denoiser(lambda x, n, labels=None: n[:, None].expand_as(x), diffuse.VP.from_betas("linear"),
                     noise_input="timestep")
    t = model.process.timestep_to_t(torch.tensor([0.0, 999.0]))
    assert model(torch.zeros(2, 1), t)[:, 0].tolist() == [0.0, 999.0]


def test_fp16_variant_loads_and_runs_in_float32(tmp_path):
    unet = diffusers.UNet2DModel(sample_size=4, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                 layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    pipe = diffusers.DDPMPipeline(unet=unet.half(), scheduler=diffusers.DDPMScheduler(clip_sample=False))
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipeline = diffuse.from_diffusers(tmp_path)
    assert all(p.dtype == torch.float32 for p in pipeline.model.net.parameters())
    # the float32 copy holds exactly the half-precision weights
    for mine, saved in zip(pipeline.model.net.parameters(), unet.parameters()):
        assert torch.equal(mine, saved.float())
    assert torch.isfinite(pipeline.sample(2, steps=3)).all()


def tiny_t5(width: int = 32):
    """A T5 tokenizer whose pieces are WORDS (a Unigram model, as T5's sentencepiece) and a random
    1-layer T5 encoder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    words = Tokenizer(models.Unigram(pieces, unk_id=2))
    words.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer = T5TokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                extra_ids=0)
    encoder = T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=width, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    return tokenizer, encoder.eval()


def test_flux_pipeline_with_its_text_encoders(tmp_path):
    """A whole Flux folder (CLIP for the pooled vector, T5 for the sequence) through from_diffusers:
    prompts encoded by the pipeline's own encode_prompt, latents packed, the VAE decoding."""
    clip_tokenizer, clip = tiny_clip(tmp_path / "raw-tokenizer")
    t5_tokenizer, t5 = tiny_t5()
    net = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                           pooled_projection_dim=32, axes_dims_rope=(2, 2, 4), guidance_embeds=True)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = diffusers.FluxPipeline(transformer=net, scheduler=sched, vae=tiny_vae(), text_encoder=clip,
                                  tokenizer=clip_tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer)
    pipe.save_pretrained(tmp_path / "flux")
    pipeline = diffuse.from_diffusers(tmp_path / "flux", height=16, width=16)
    assert pipeline.draw_shape == (4, 8, 8) and pipeline.prediction == "velocity"
    ours = pipeline.sample(1, prompt="a red cat", sampler="euler", steps=4, seed=5)
    pipe = diffusers.FluxPipeline.from_pretrained(tmp_path / "flux")
    pipe.set_progress_bar_config(disable=True)
    noise = Generators.seeded(5, 0, 1).randn(pipeline.draw_shape)
    packed = flux_packed(noise)
    latents = pipe("a red cat", num_inference_steps=4, guidance_scale=3.5, latents=packed, height=16, width=16,
                   output_type="latent").images
    latents = flux_unpacked(latents)
    torch.testing.assert_close(ours, pipeline.codec.decode(latents), **TOL)
    assert (pipeline.sample(1, prompt="a blue dog", sampler="euler", steps=4, seed=5) - ours).abs().max() > 1e-3


def test_sd3_pipeline_with_its_text_encoders(tmp_path):
    """A whole SD3 folder: two CLIP encoders with projections (their penultimate states and pooled
    projections, concatenated) and T5, through the pipeline's own encode_prompt; guidance against
    the empty prompt's embedding, as StableDiffusion3Pipeline does."""
    (tok_l, clip_l), (tok_g, clip_g) = (tiny_clip(tmp_path / f"raw-{n}", projection=True) for n in "lg")
    t5_tokenizer, t5 = tiny_t5(width=64)  # wide enough for the two CLIP sequences side by side
    net = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                          caption_projection_dim=16, pooled_projection_dim=64, out_channels=4,
                                          pos_embed_max_size=16)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=net, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(),
        text_encoder=clip_l, tokenizer=tok_l, text_encoder_2=clip_g, tokenizer_2=tok_g, text_encoder_3=t5,
        tokenizer_3=t5_tokenizer)
    pipe.save_pretrained(tmp_path / "sd3")
    pipeline = diffuse.from_diffusers(tmp_path / "sd3", height=16, width=16)
    ours = pipeline.sample(2, prompt=["a red cat", "a blue dog"], guidance=2.0, sampler="euler", steps=4, seed=6)
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3")
    pipe.set_progress_bar_config(disable=True)
    noise = Generators.seeded(6, 0, 2).randn(pipeline.draw_shape)
    latents = pipe(["a red cat", "a blue dog"], num_inference_steps=4, guidance_scale=3.0, latents=noise,
                   height=16, width=16, output_type="latent").images
    torch.testing.assert_close(ours, pipeline.codec.decode(latents), **TOL)


def test_export_of_a_flow_run(tmp_path):
    """A flow run (velocity, the network told 1000 t) exports with a flow-matching scheduler, whose
    Euler loop in diffusers gives our Euler's samples."""
    from _tiny import UNET, digits_config
    from diffuse.recipes import process_fields
    from diffuse.training import Engine
    network = {**UNET, "channels": 16, "num_classes": 10, "middle_blocks": 2, "time_features": "timestep",
               "norm_groups": 8}
    config = digits_config("class", network=network, noise_input="timestep", steps=3, **process_fields("flow"))
    Engine(config, tmp_path / "run", progress=False).fit()
    diffuse.interop.export.export_diffusers(diffuse.load(tmp_path / "run"), tmp_path / "out")
    stored = json.loads((tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert stored["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    ours = diffuse.load(tmp_path / "run")
    labels = torch.tensor([1, 2])
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    mine = diffuse.sample(ours.model, ours.process, noise, sampler="euler", steps=6, cond={"labels": labels})
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "out" / "unet").eval()
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "out" / "scheduler")
    with torch.no_grad():
        theirs = diffusers_loop(lambda x, t: unet(x, t, class_labels=labels).sample, sched, noise, 6)
    torch.testing.assert_close(mine, theirs, **TOL)
    again = diffuse.from_diffusers(tmp_path / "out")
    torch.testing.assert_close(again.sample(2, labels=labels, sampler="euler", steps=6),
                               ours.sample(2, labels=labels, sampler="euler", steps=6, schedule="uniform"), **TOL)
