"""Latent diffusion end to end: an autoencoder, a U-Net or DiT trained on its latents, and sampling
that decodes back to pixels; a missing or changed autoencoder is a clear error."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dataclasses

import diffuse
from _tiny import UNET, run_config
from safetensors.torch import save_file

from diffuse.checkpoint import CheckpointError, latest_checkpoint, load_json, load_tensors
from diffuse.cli import main
from diffuse.data import load_dataset
from diffuse.latent import fingerprint, load_autoencoder
from diffuse.models import DiT, UNet, build_network
from diffuse.pipeline import Pipeline
from diffuse.training import Engine, default_network, network_for_shape

torch.set_num_threads(1)

# in_channels is left out on purpose: the trainer fills it in from the latent shape
LATENT_UNET = {k: v for k, v in UNET.items() if k != "in_channels"}
LATENT_DIT = {"kind": "dit", "patch_size": 2, "hidden": 32, "depth": 1, "num_heads": 2}


def run_main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def train(out, *options) -> tuple[int, str, str]:
    return run_main(["train", "--out", out, "--quiet", "--steps", 3, "--batch-size", 16, "--checkpoint-every", 3,
                     "--sample-steps", 2, "--warmup-steps", 1, *options])


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A factor-2 autoencoder on digits (8x8 -> 4x4x4), trained a few steps."""
    run = tmp_path_factory.mktemp("ae")
    code, _, err = run_main(["train", "--task", "autoencoder", "--data", "digits", "--out", run, "--quiet",
                             "--steps", 3, "--batch-size", 32, "--factor", 2, "--network", json.dumps({"channels": 8})])
    assert code == 0, err
    return run


@pytest.fixture(scope="module", params=["unet", "dit"])
def latent_run(request, autoencoder, tmp_path_factory):
    """A latent diffusion run through the CLI; no --data: it comes from the autoencoder."""
    run = tmp_path_factory.mktemp(f"latent-{request.param}")
    network = LATENT_UNET if request.param == "unet" else LATENT_DIT
    code, out, err = train(run, "--latent", autoencoder, "--network", json.dumps(network))
    assert code == 0, err
    return request.param, run


def test_latent_training_writes_a_run_that_references_its_autoencoder(latent_run, autoencoder):
    kind, run = latent_run
    pipeline = diffuse.load(run)
    model, config = pipeline.model, pipeline.config
    assert isinstance(model.net, UNet if kind == "unet" else DiT)
    assert config.task.network["kind"] == kind and config.task.network["in_channels"] == 4
    assert config.task.latent == str(autoencoder) and config.data.name == "digits"
    assert pipeline.shape == (1, 8, 8) and pipeline.draw_shape == (4, 4, 4)
    stored = load_json(latest_checkpoint(run) / "config.json")["state"]["latent"]
    ae_folder = latest_checkpoint(autoencoder)
    assert stored["checkpoint"] == str(ae_folder.resolve())
    assert stored["fingerprint"] == fingerprint(ae_folder) and stored["fingerprint"].startswith("sha256:")
    _, ae_stored = load_autoencoder(autoencoder)
    assert stored["scale_factor"] == ae_stored.state["latent"]["scale_factor"]
    # the autoencoder is not part of the diffusion model's weights
    assert not any(k.startswith("latent_decoder") for k in model.state_dict())
    with Image.open(run / "samples.png") as grid:  # decoded images: 10x10 cells of 8x8 pixels, enlarged
        assert grid.size == (10 * (8 * 8 + 1) + 1,) * 2


def test_sample_writes_images_in_the_pixel_shape(latent_run, tmp_path):
    _, run = latent_run
    code, out, err = run_main(["sample", run, "--n", 6, "--steps", 2, "--out", tmp_path / "x.npz"])
    assert code == 0, err
    with np.load(tmp_path / "x.npz") as f:
        images = f["images"]
    assert images.shape == (6, 8, 8) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    code, _, err = run_main(["sample", run, "--n", 6, "--steps", 2, "--out", tmp_path / "x.png"])
    assert code == 0, err
    assert (tmp_path / "x.png").is_file()


def test_the_engine_trains_on_scaled_posterior_means(autoencoder, tmp_path):
    config = run_config(data="digits", latent=str(autoencoder), network=dict(LATENT_UNET), batch_size=16, steps=1,
                        grid_size=2, sample_steps=2)
    engine = Engine(config, tmp_path, progress=False)
    model, stored = load_autoencoder(autoencoder)
    images = load_dataset("digits", "train").data
    with torch.no_grad():
        expected = model.encode(images)[0] * stored.state["latent"]["scale_factor"]
    torch.testing.assert_close(engine.examples.data, expected)
    assert engine.examples.shape == (4, 4, 4) and engine.info.shape == (1, 8, 8)
    # the scale factor makes the latents' spread one, so sigma_data comes out near one
    assert engine.config.task.sigma_data == pytest.approx(1.0, abs=1e-3)
    # sampling decodes: images of the data's shape, equal to decoding the latent samples by hand
    pipeline = engine.task.pipeline(engine.ema)
    images = pipeline.sample(3, steps=2)
    latents = Pipeline(engine.ema, dataclasses.replace(engine.info, shape=(4, 4, 4)), sampler=pipeline.sampler,
                       schedule=pipeline.schedule).sample(3, steps=2)  # the same model, not decoded
    assert images.shape == (3, 1, 8, 8)
    torch.testing.assert_close(images, engine.task.codec.decode(latents))


def test_dit_and_unet_are_interchangeable_and_resume(autoencoder, tmp_path):
    for network in (LATENT_UNET, LATENT_DIT):
        out = tmp_path / network["kind"]
        config = run_config(data="digits", latent=str(autoencoder), network=dict(network), batch_size=16, steps=1,
                            checkpoint_every=1, grid_size=2, sample_steps=2)
        Engine(config, out, progress=False).fit()
        resumed = Engine(config.replace(train=dataclasses.replace(config.train, steps=2)), out, resume=True,
                         progress=False)
        assert resumed.step == 1
        assert resumed.task.codec.reference["fingerprint"] == fingerprint(latest_checkpoint(autoencoder))
        resumed.fit()
        assert latest_checkpoint(out).name == "step-00000002"


def test_a_missing_autoencoder_is_a_clear_error(tmp_path):
    code, _, err = train(tmp_path / "run", "--data", "digits", "--latent", tmp_path / "nowhere")
    assert code == 1 and "Traceback" not in err
    assert "nowhere" in err
    with pytest.raises(CheckpointError, match="autoencoder run .*nowhere does not exist"):
        Engine(run_config(latent=str(tmp_path / "nowhere")), tmp_path / "run2", progress=False)


def test_a_moved_or_changed_autoencoder_is_detected(autoencoder, tmp_path):
    ae = shutil.copytree(autoencoder, tmp_path / "ae")
    run = tmp_path / "run"
    assert train(run, "--latent", ae, "--network", json.dumps(LATENT_UNET), "--steps", 1)[0] == 0
    # moved: sampling says where it looked, and load_model takes the new place
    moved = tmp_path / "ae-moved"
    ae.rename(moved)
    code, _, err = run_main(["sample", run, "--n", 2, "--steps", 2, "--out", tmp_path / "x.png"])
    assert code == 1 and "does not exist" in err and str(ae) in err
    pipeline = diffuse.load(run, autoencoder=moved)
    assert pipeline.codec.reference["checkpoint"] == str(latest_checkpoint(moved).resolve())
    # changed: other weights under the same name are refused by their fingerprint
    moved.rename(ae)
    weights = latest_checkpoint(ae) / "model.safetensors"
    tensors = load_tensors(weights)
    tensors["decoder.layers.0.bias"] = tensors["decoder.layers.0.bias"] + 1
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="has changed since this model was trained"):
        diffuse.load(run)


def test_latent_networks_are_fitted_to_odd_latent_grids():
    # 28x28 images at factor 4 give 7x7 latents: the default U-Net keeps a single level
    network = default_network("image", (4, 7, 7), None)
    assert network["channel_mults"] == [1] and network["in_channels"] == 4
    net = build_network(network)
    assert net(torch.zeros(2, 4, 7, 7), torch.zeros(2)).shape == (2, 4, 7, 7)
    assert default_network("image", (1, 28, 28), None)["channel_mults"] == [1, 2, 2]  # pixels: unchanged
    assert default_network("image", (4, 14, 14), None)["channel_mults"] == [1, 2]
    assert network_for_shape(LATENT_DIT, (4, 7, 7))["image_size"] == 7
    with pytest.raises(ValueError, match="in_channels is 1, not 4"):
        network_for_shape(UNET, (4, 4, 4))
    with pytest.raises(ValueError, match="image_size is 8"):
        network_for_shape({**LATENT_DIT, "image_size": 8}, (4, 4, 4))
