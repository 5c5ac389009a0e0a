"""The KL autoencoder: shapes for every factor, the KL against closed forms, configs that round-trip
through JSON, and `diffuse train-autoencoder` writing a loadable, safetensors-only run."""

from __future__ import annotations

import contextlib
import io
import json
import pickle

import pytest
import torch

import diffuse
from _tiny import run_config, states_equal
from diffuse.checkpoint import CheckpointError, latest_checkpoint, load_json
from diffuse.cli import main
from diffuse.data import TensorDataset, load_dataset
from diffuse.latent import latent_scale, load_autoencoder
from diffuse.models import AutoencoderConfig, AutoencoderKL, autoencoder_config, build_autoencoder
from diffuse.training import AutoencoderTaskConfig, Engine, RunConfig
from diffuse.image_metrics import psnr

torch.set_num_threads(1)

TINY = {"channels": 8, "num_res_blocks": 1, "latent_channels": 3}


def run_main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# -- shapes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_encode_decode_shapes(factor, size):
    torch.manual_seed(0)
    model = AutoencoderKL(AutoencoderConfig.for_factor(factor, in_channels=2, **TINY))
    assert model.factor == factor
    x = torch.randn(3, 2, size, size)
    if size % factor:  # 28 at factor 8: refused, naming the factors that fit
        with pytest.raises(ValueError, match=r"28x28 images are not divisible .* factor 8.*\[1, 2, 4\]"):
            model.encode(x)
        return
    mean, logvar = model.encode(x)
    latent = (3, size // factor, size // factor)
    assert mean.shape == logvar.shape == (3, *latent)
    assert model.latent_shape((2, size, size)) == latent
    z = model.sample_latent(mean, logvar, torch.Generator().manual_seed(0))
    assert z.shape == mean.shape
    assert model.decode(z).shape == x.shape
    recon, m, lv = model(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and torch.equal(m, mean) and torch.equal(lv, logvar)


def test_bad_inputs_are_refused():
    model = AutoencoderKL(AutoencoderConfig(**TINY))
    with pytest.raises(ValueError, match="1-channel images, got 3"):
        model.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"latents \[B, 3, h, w\]"):
        model.decode(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="power of two"):
        AutoencoderConfig.for_factor(3)
    with pytest.raises(ValueError, match="not divisible by 8 GroupNorm groups"):
        AutoencoderConfig(channels=12)


# -- the posterior ----------------------------------------------------------------------------------

def test_kl_matches_the_closed_form_of_torch_distributions():
    torch.manual_seed(0)
    mean, logvar = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert AutoencoderKL.kl(mean, logvar).shape == (5,)
    torch.testing.assert_close(AutoencoderKL.kl(mean, logvar), expected)
    # one dimension by hand: KL(N(1, e^2) || N(0, 1)) = (1 + e^2 - 1 - 2) / 2
    one = AutoencoderKL.kl(torch.ones(1, 1), torch.full((1, 1), 2.0))
    torch.testing.assert_close(one, torch.tensor([(1 + torch.e**2 - 3) / 2]))


def test_kl_is_zero_for_the_prior_itself():
    zeros = torch.zeros(4, 3, 2, 2)
    assert torch.equal(AutoencoderKL.kl(zeros, zeros), torch.zeros(4))


def test_posterior_samples_have_the_posterior_moments_and_follow_the_generator():
    mean, logvar = torch.full((20_000, 1), 1.5), torch.full((20_000, 1), -1.0)
    z = AutoencoderKL.sample_latent(mean, logvar, torch.Generator().manual_seed(0))
    assert abs(float(z.mean()) - 1.5) < 0.02 and abs(float(z.var()) - torch.e**-1) < 0.02
    again = AutoencoderKL.sample_latent(mean, logvar, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def test_psnr_in_the_unit_range():
    x = torch.zeros(2, 1, 4, 4)  # mid grey in [-1, 1]
    # an error of 0.2 in [-1, 1] is 0.1 in [0, 1]: PSNR = -10 log10(0.01) = 20 dB
    torch.testing.assert_close(psnr(x, x + 0.2), torch.full((2,), 20.0))
    assert float(psnr(x, x)[0]) == pytest.approx(100.0)


# -- configs ------------------------------------------------------------------------------------------

def test_config_round_trips_through_json():
    model = build_autoencoder(AutoencoderConfig.for_factor(4, in_channels=3, **TINY))
    described = autoencoder_config(model)
    loaded = json.loads(json.dumps(described))
    assert loaded == described and loaded["channel_mults"] == [1, 2, 2]
    rebuilt = build_autoencoder(loaded)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # the same parameter layout
    with pytest.raises(ValueError, match=r"unknown autoencoder field\(s\) \['depth'\]"):
        build_autoencoder({**loaded, "depth": 3})
    run = RunConfig(AutoencoderTaskConfig(network=loaded, kl_weight=1e-5), "digits")
    assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert run.train.lr == 1e-3 and run.train.ema_decay is None  # the autoencoder's own defaults


# -- training -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ae")
    code, out, err = run_main(["train", "--task", "autoencoder", "--data", "digits", "--out", run, "--quiet",
                               "--steps", 4, "--batch-size", 32, "--checkpoint-every", 2,
                               "--network", json.dumps({"channels": 8}), "--set", "task.network.latent_channels=3",
                               "--warmup-steps", 1])
    assert code == 0, err
    return run, out


def test_train_autoencoder_writes_a_loadable_run(ae_run):
    run, printed = ae_run
    assert "trained 4 steps" in printed and "step-00000004" in printed
    folder = latest_checkpoint(run)
    assert folder.name == "step-00000004"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors",
                                                        "trainer.json", "trainer.safetensors"]
    model, stored = load_autoencoder(run)
    assert isinstance(model, AutoencoderKL) and not model.training
    assert stored.config["task"]["network"] == autoencoder_config(model)
    assert model.config == AutoencoderConfig(channels=8, latent_channels=3, channel_mults=(1, 2))
    assert stored.config["data"]["name"] == "digits" and stored.data["shape"] == [1, 8, 8]
    assert stored.config["train"]["steps"] == 4
    for name in ("reconstructions.png", "loss.png", "metrics.jsonl", "test_metrics.json"):
        assert (run / name).is_file()


def test_psnr_is_reported_and_stored(ae_run):
    run, printed = ae_run
    metrics = load_json(run / "test_metrics.json")
    assert metrics["split"] == "test" and metrics["examples"] == 360
    assert 0 < metrics["psnr"] < 100
    assert f"test reconstruction PSNR {metrics['psnr']:.2f} dB over 360 images" in printed
    # and it is the PSNR of the stored weights' deterministic reconstructions
    model, _ = load_autoencoder(run)
    x = load_dataset("digits", "test").data
    with torch.no_grad():
        assert float(psnr(x, model.decode(model.encode(x)[0])).mean()) == pytest.approx(metrics["psnr"], abs=1e-3)


def test_scale_factor_is_one_over_the_std_of_the_latent_means(ae_run):
    run, printed = ae_run
    model, stored = load_autoencoder(run)
    latent = stored.state["latent"]
    assert latent["shape"] == [3, 4, 4] and latent["posterior"] == "mean"
    assert latent["scale_examples"] == 1437  # every training image: fewer than scale_examples
    train = load_dataset("digits", "train").data
    with torch.no_grad():
        std = float(model.encode(train)[0].double().std(unbiased=False))
    assert latent["scale_factor"] == pytest.approx(1 / std, rel=1e-5)
    assert latent["scale_factor"] == pytest.approx(latent_scale(model, train, "cpu"), rel=1e-6)
    assert f"scale factor {latent['scale_factor']:.4g}" in printed


def test_a_disguised_pickle_is_refused(ae_run, tmp_path):
    import shutil
    run = shutil.copytree(ae_run[0], tmp_path / "run")
    weights = latest_checkpoint(run) / "model.safetensors"
    weights.write_bytes(pickle.dumps({"encoder.layers.0.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_autoencoder(run)


def test_an_autoencoder_run_is_not_a_diffusion_model(ae_run, tmp_path):
    run, _ = ae_run
    with pytest.raises(CheckpointError, match="is an autoencoder run.*--latent"):
        diffuse.load(run)
    code, _, err = run_main(["sample", run, "--out", tmp_path / "x.png"])
    assert code == 1 and "is an autoencoder run" in err
    with pytest.raises(CheckpointError, match="not an autoencoder checkpoint"):
        load_autoencoder(_diffusion_like(tmp_path))


def _diffusion_like(tmp_path):
    """A checkpoint folder whose config.json is a diffusion run's, not an autoencoder's."""
    folder = tmp_path / "ck"
    folder.mkdir()
    stored = {"kind": "diffusion", "run": {"task": {"kind": "diffusion"}}, "data": {}, "state": {}, "history": []}
    (folder / "config.json").write_text(json.dumps(stored))
    (folder / "trainer.json").write_text(json.dumps({"step": 1}))
    return folder


def test_resume_continues_bit_for_bit(tmp_path):
    digits = load_dataset("digits", "train").subset(torch.arange(64), "digits-64")
    test = load_dataset("digits", "test").subset(torch.arange(8), "digits-8")

    def engine(steps, out, resume=False):
        config = run_config("autoencoder", network=dict(TINY), batch_size=16, steps=steps, checkpoint_every=2,
                            warmup_steps=2, grid_size=4)
        return Engine(config, out, resume=resume, dataset=digits, test_dataset=test, progress=False)

    straight = engine(4, tmp_path / "a")
    straight.fit()
    engine(2, tmp_path / "b").fit()
    resumed = engine(4, tmp_path / "b", resume=True)
    assert resumed.step == 2
    resumed.fit()
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.task.state["latent"] == resumed.task.state["latent"]


def test_sizes_the_factor_does_not_divide_fail_before_training(tmp_path):
    images = TensorDataset(torch.zeros(8, 1, 28, 28), None, None, "blank28", modality="image")
    config = run_config("autoencoder", network={**TINY, "channel_mults": [1, 2, 2, 2]}, batch_size=4)
    with pytest.raises(ValueError, match="28x28 images are not divisible .* factor 8"):
        Engine(config, tmp_path, dataset=images, test_dataset=images, progress=False)
    code, _, err = run_main(["train", "--task", "autoencoder", "--data", "digits", "--out", tmp_path / "r",
                             "--factor", 3])
    assert code == 1 and "power of two" in err
    code, _, err = run_main(["train", "--task", "autoencoder", "--data", "ring", "--out", tmp_path / "r", "--quiet"])
    assert code == 1 and "an autoencoder takes images" in err


def test_images_given_in_python_without_a_test_split_train_and_preview(tmp_path):
    images = TensorDataset(torch.rand(32, 1, 8, 8) * 2 - 1, None, None, "mine", modality="image")
    engine = Engine(run_config("autoencoder", network=dict(TINY), batch_size=8, steps=2, checkpoint_every=2,
                               grid_size=4), tmp_path, dataset=images, progress=False)
    engine.fit()
    assert engine.test_metrics is None and not (tmp_path / "test_metrics.json").exists()
    assert (tmp_path / "reconstructions.png").is_file()  # of training images, for want of test ones
    assert engine.task.report(None) == []
