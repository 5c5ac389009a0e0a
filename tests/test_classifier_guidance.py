"""Classifier guidance end to end: exact guidance on a Gaussian mixture, the noise-aware classifier
networks, the classifier task (checkpoints, resume, EMA, accuracy), sampling with a classifier and
`diffuse train --task classifier` / `diffuse sample --classifier`.

tests/test_guidance.py already checks that s = 1 with an exact classifier samples the class on
every process and prediction; here the exact case is tied to the class-conditional model itself
and to the guidance scale."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

import diffuse
from _tiny import MLP, digits_config, ring_config, run_config, states_equal, unet_json
from diffuse import EDM, VP, Flow, GaussianMixture
from diffuse.checkpoint import CheckpointError, latest_checkpoint, load_json
from diffuse.classifier import NoiseAwareClassifier
from diffuse.data.toy import RING_MODES, RING_RADIUS, RING_STD
from diffuse.cli import main
from diffuse.denoiser import Denoiser
from diffuse.guidance import ClassifierFreeGuidance, ClassifierGuidance
from diffuse.models import build_classifier, build_network, classifier_config, default_classifier
from diffuse.pipeline import Pipeline
from diffuse.runs import load_classifier
from diffuse.training import Engine
from diffuse.training.tasks.diffusion import DiffusionTask

torch.set_num_threads(1)

# Two classes, one component each, overlapping: the class-conditional distribution puts
# Phi(1/0.6) = 95.2% of its samples nearer its own mean, so the scale has room to act both ways.
MIXTURE = GaussianMixture([[1.0, 0.0], [-1.0, 0.0]], [0.6, 0.6])
OWN_MODE = 0.5 * (1 + math.erf(1 / 0.6 / math.sqrt(2)))

TINY_UNET_CLASSIFIER = {"kind": "unet_classifier", "channels": 16, "channel_mults": [1, 2],
                        "num_res_blocks": 1, "attention_levels": []}
TINY_MLP_CLASSIFIER = {"kind": "mlp_classifier", "hidden": 32, "depth": 2}


def exact_classifier(process):
    """log p(y | x_t) up to a constant: the mixture's log joint of component y and x_t."""
    return lambda x, t: MIXTURE._noised(x, t, process)[3]


def run_main(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def ring_classifier_config(**overrides):
    settings = dict(data="ring", network=dict(TINY_MLP_CLASSIFIER), batch_size=16, steps=4,
                    checkpoint_every=2, warmup_steps=2)
    return run_config("classifier", **{**settings, **overrides})


# -- exact guidance on a Gaussian mixture --------------------------------------------------------------

@pytest.mark.parametrize("process", [EDM(), VP("linear"), Flow()], ids=["edm", "vp", "flow"])
def test_exact_guidance_at_scale_one_is_the_class_conditional_model(process):
    # grad log p_t(x) + grad log p(y | x_t) = grad log p_t(x | y): the guided unconditional model
    # and the exact model of class 0 alone define the same ODE, so from the same noise the same
    # sampler lands on the same points, to rounding.
    guided = ClassifierGuidance(MIXTURE.denoiser(process), exact_classifier(process), process, scale=1.0)
    conditional = GaussianMixture(MIXTURE.means[:1], [0.6]).denoiser(process)
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # at zero SNR (flow at t = 1) the guided score says nothing about x0, so start just below it
    schedule = torch.linspace(0.995, 1e-3, 20, dtype=torch.float64) if isinstance(process, Flow) \
        else diffuse.samplers.make_times(process, "log_snr", 20)
    x = diffuse.sample(guided, process, noise, sampler="heun", schedule=schedule,
                       cond={"labels": torch.zeros(200, dtype=torch.long)})
    expected = diffuse.sample(conditional, process, noise, sampler="heun", schedule=schedule)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-10)


def test_the_share_of_samples_in_the_class_mode_grows_with_the_scale():
    process = EDM()
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    schedule = diffuse.samplers.make_times(process, "log_snr", 20)
    shares = []
    for scale in (0.0, 0.5, 1.0, 2.0):
        guided = ClassifierGuidance(MIXTURE.denoiser(process), exact_classifier(process), process, scale)
        x = diffuse.sample(guided, process, noise, sampler="heun", schedule=schedule,
                           cond={"labels": torch.zeros(1000, dtype=torch.long)})
        shares.append(float((torch.cdist(x, MIXTURE.means).argmin(1) == 0).double().mean()))
    assert shares == sorted(shares) and len(set(shares)) == 4, shares
    assert abs(shares[0] - 0.5) < 0.05                  # s = 0: the unconditional mixture
    assert abs(shares[2] - OWN_MODE) < 0.02             # s = 1: the class-conditional distribution
    assert shares[3] > 0.99                             # s > 1: sharper than the class itself


# -- the networks and the wrapper ------------------------------------------------------------------

@pytest.mark.parametrize("config, x_shape", [
    ({**TINY_UNET_CLASSIFIER, "num_classes": 10, "in_channels": 1}, (3, 1, 8, 8)),
    ({**TINY_UNET_CLASSIFIER, "num_classes": 4, "in_channels": 3, "channel_mults": [1, 2, 2],
      "attention_levels": [2]}, (3, 3, 28, 28)),
    ({**TINY_MLP_CLASSIFIER, "num_classes": 8, "dim": 2}, (3, 2)),
])
def test_classifier_networks_round_trip_through_json_and_give_logits(config, x_shape):
    torch.manual_seed(0)
    net = build_classifier(config)
    described = classifier_config(net)
    assert json.loads(json.dumps(described)) == described and described["kind"] == config["kind"]
    rebuilt = build_classifier(described)
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(x_shape)
    logits = net(x, torch.linspace(-2, 2, 3))
    assert logits.shape == (3, config["num_classes"])
    assert torch.equal(logits, torch.zeros_like(logits))  # a fresh head says uniform
    torch.nn.init.normal_(net.head.weight)
    a, b = net(x, torch.zeros(3)), net(x, torch.ones(3))
    assert not torch.allclose(a, b)  # it is told the noise level


def test_classifier_registry_is_separate_and_checks_fields():
    with pytest.raises(ValueError, match="unknown network kind 'unet_classifier'"):
        build_network({"kind": "unet_classifier", "num_classes": 10})
    with pytest.raises(ValueError, match="unknown classifier kind 'unet'"):
        build_classifier(json.loads(unet_json(10)))
    with pytest.raises(ValueError, match=r"missing required field\(s\) for 'unet_classifier': \['num_classes'\]"):
        build_classifier({"kind": "unet_classifier"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) for 'mlp_classifier': \['width'\]"):
        build_classifier({"kind": "mlp_classifier", "dim": 2, "num_classes": 3, "width": 4})
    with pytest.raises(ValueError, match="UNetClassifier input 6x6"):
        build_classifier({**TINY_UNET_CLASSIFIER, "num_classes": 2, "channel_mults": [1, 2, 2]})(
            torch.zeros(1, 1, 6, 6), torch.zeros(1))
    assert default_classifier("vector", (2,), 8)["kind"] == "mlp_classifier"
    assert default_classifier("image", (1, 28, 28), 10)["channel_mults"] == [1, 2, 2]


@pytest.mark.parametrize("process", [EDM(), VP("linear"), Flow()], ids=["edm", "vp", "flow"])
def test_the_wrapper_feeds_unit_variance_inputs_and_the_denoisers_noise_level(process):
    seen = {}

    class Recorder(torch.nn.Module):
        config = type("Config", (), {"num_classes": 2})

        def forward(self, x, noise_level):
            seen["x"], seen["noise_level"] = x, noise_level
            return torch.zeros(len(x), 2)

    sd = 0.7
    classifier = NoiseAwareClassifier(Recorder(), process, sigma_data=sd)
    x0 = sd * torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (process.t_min, 0.05, 0.5, 1.0):
        times = torch.full((len(x0),), t, dtype=torch.float64)
        x_t, _ = process.q_sample(x0, times, generator=torch.Generator().manual_seed(1))
        classifier(x_t, times)
        assert abs(float(seen["x"].std()) - 1) < 0.02, t
        torch.testing.assert_close(seen["noise_level"], Denoiser(torch.nn.Identity(), process).noise_level(times))
    classifier(x_t[:3], 0.5)  # one time for the whole batch
    assert seen["noise_level"].shape == (3,)


# -- the task -------------------------------------------------------------------------------------

def test_the_task_writes_a_classifier_run_that_loads(tmp_path):
    engine = Engine(ring_classifier_config(), tmp_path, progress=False)
    last = engine.fit()
    assert last == latest_checkpoint(tmp_path) and last.name == "step-00000004"
    stored = load_json(last / "config.json")
    assert stored["kind"] == "classifier" and stored["data"]["num_classes"] == 8
    assert stored["run"]["task"]["network"] == {**TINY_MLP_CLASSIFIER, "dim": 2, "num_classes": 8, "time_dim": 64}
    assert {p.name for p in last.iterdir()} == {"config.json", "model.safetensors", "ema.safetensors",
                                                "trainer.safetensors", "trainer.json"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4] and {"loss", "accuracy", "lr"} <= set(records[0])
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert set(metrics["accuracy_at_noise"]) == {"0.1", "0.5", "1.0", "2.0", "5.0"}

    classifier = load_classifier(tmp_path)
    config = classifier.run
    assert config.to_dict() == engine.config.to_dict()
    assert config.task.process == EDM().config() == classifier.process.config()
    assert config.task.sigma_data == round(float(engine.examples.data.std()), 4) == classifier.sigma_data
    assert classifier.shape == (2,) and classifier.num_classes == 8
    assert not classifier.training and not any(p.requires_grad for p in classifier.parameters())
    assert states_equal(classifier.state_dict(), engine.ema.state_dict())
    assert states_equal(load_classifier(tmp_path, ema=False).state_dict(), engine.model.state_dict())
    x = torch.randn(5, 2)
    assert classifier(x, torch.full((5,), 0.1)).shape == (5, 8)


def test_resume_continues_bit_for_bit(tmp_path):
    straight = Engine(ring_classifier_config(steps=6, checkpoint_every=3), tmp_path / "a", progress=False)
    straight.fit()
    Engine(ring_classifier_config(steps=3, checkpoint_every=3), tmp_path / "b", progress=False).fit()
    resumed = Engine(ring_classifier_config(steps=6, checkpoint_every=3), tmp_path / "b", resume=True,
                     progress=False)
    assert resumed.step == 3 and resumed.config.to_dict() == straight.config.to_dict()
    resumed.fit()
    assert states_equal(resumed.model.state_dict(), straight.model.state_dict())
    assert states_equal(resumed.ema.state_dict(), straight.ema.state_dict())
    a, b = (load_classifier(tmp_path / run).state_dict() for run in "ab")
    assert states_equal(a, b)
    other = Engine(ring_classifier_config(steps=3, seed=1), tmp_path / "c", progress=False)
    other.fit()
    assert not states_equal(other.model.state_dict(), straight.model.state_dict())


def test_without_ema_the_trained_weights_are_loaded(tmp_path):
    engine = Engine(ring_classifier_config(ema_decay=None, steps=2), tmp_path, progress=False)
    engine.fit()
    assert engine.ema is None and not (latest_checkpoint(tmp_path) / "ema.safetensors").exists()
    assert states_equal(load_classifier(tmp_path).state_dict(), engine.model.state_dict())


@pytest.mark.parametrize("overrides, message", [
    (dict(data="moons"), "needs a labelled data set"),
    (dict(network={**TINY_MLP_CLASSIFIER, "num_classes": 3}), "the data have 8 classes"),
    (dict(network=dict(TINY_UNET_CLASSIFIER)), r"a unet_classifier takes images; the data have shape \(2,\)"),
    (dict(time_sampling="sometimes"), "time_sampling must be one of"),
    (dict(ema_decay=1.5), "ema_decay must be a finite number in"),
])
def test_bad_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        Engine(ring_classifier_config(**overrides), tmp_path, progress=False)


def test_loaders_tell_classifier_and_diffusion_runs_apart(tmp_path):
    Engine(ring_classifier_config(steps=1), tmp_path / "clf", progress=False).fit()
    Engine(ring_config(steps=1), tmp_path / "diffusion", progress=False).fit()
    with pytest.raises(CheckpointError, match="is a classifier run, not a diffusion run"):
        diffuse.load(tmp_path / "clf")
    with pytest.raises(CheckpointError, match="is not a classifier checkpoint"):
        load_classifier(tmp_path / "diffusion")


def test_a_short_training_classifies_lightly_noised_digits(tmp_path):
    # 150 steps of a 16-channel encoder: about 3 s of CPU; chance is 10%.
    config = run_config("classifier", data="digits", network=dict(TINY_UNET_CLASSIFIER), batch_size=64,
                        steps=150, lr=3e-3, warmup_steps=10, checkpoint_every=150, log_every=50)
    engine = Engine(config, tmp_path, progress=False)
    engine.fit()
    accuracy = engine.test_metrics["accuracy_at_noise"]
    assert accuracy["0.1"] > 0.6, accuracy
    assert accuracy["0.1"] > accuracy["5.0"]  # noise takes the class away
    # the loaded classifier is the one measured
    classifier = load_classifier(tmp_path)
    test = engine.task.test_data()
    t = float(classifier.process.t_from_sigma_ratio(torch.tensor(0.1, dtype=torch.float64)))
    eps = torch.randn(test.data.shape, generator=torch.Generator().manual_seed(0))
    x_t = classifier.process.add_noise(test.data, t, eps)
    with torch.no_grad():
        right = float((classifier(x_t, t).argmax(1) == test.labels).double().mean())
    assert right == pytest.approx(accuracy["0.1"], abs=1e-4)


def test_a_trained_classifier_guides_the_exact_ring_model_to_the_requested_mode(tmp_path):
    # The ring is a mixture of 8 Gaussians, so its exact denoiser stands in for a trained model and
    # the only learned part is the classifier (100 steps, about 2 s of CPU): what is tested is that
    # its process, time and input conventions give the gradient guidance needs.
    config = run_config("classifier", data="ring", network={"kind": "mlp_classifier", "hidden": 32, "depth": 2},
                        batch_size=128, steps=100, lr=3e-3, warmup_steps=10, checkpoint_every=100)
    Engine(config, tmp_path, progress=False).fit()
    classifier = load_classifier(tmp_path)
    process = classifier.process
    angles = torch.arange(RING_MODES, dtype=torch.float64) * 2 * math.pi / RING_MODES
    centres = RING_RADIUS * torch.stack([angles.cos(), angles.sin()], 1)
    ring = GaussianMixture(centres, [RING_STD])
    labels = torch.arange(400) % RING_MODES
    noise = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    schedule = diffuse.samplers.make_times(process, "log_snr", 20)
    shares = []
    for scale in (0.0, 1.0, 2.0):
        guided = ClassifierGuidance(ring.denoiser(process), classifier, process, scale)
        x = diffuse.sample(guided, process, noise, sampler="heun", schedule=schedule, cond={"labels": labels})
        shares.append(float((torch.cdist(x.double(), centres).argmin(1) == labels).double().mean()))
    assert shares[0] < 0.3 and shares[1] > 0.75 and shares[2] > 0.95, shares  # chance is 1/8


# -- sampling with a classifier ---------------------------------------------------------------------

def untrained_classifier(process, shape=(1, 8, 8), num_classes=10) -> NoiseAwareClassifier:
    torch.manual_seed(0)
    net = build_classifier({**TINY_UNET_CLASSIFIER, "num_classes": num_classes, "in_channels": shape[0]})
    torch.nn.init.normal_(net.head.weight)  # a classifier with an opinion, so guidance moves samples
    return NoiseAwareClassifier(net, process, 0.75, shape)


def untrained_pipeline(cond: str = "none") -> Pipeline:
    """A digits model of the tiny U-Net, untrained, behind its sampling pipeline."""
    config = digits_config(cond=cond, sigma_data=0.75)
    task = DiffusionTask(config.task, diffuse.data.load_dataset("digits").info())
    return task.pipeline(task.build())


def test_classifier_guidance_wraps_classifier_free_guidance(monkeypatch):
    from diffuse import pipeline as pipeline_module

    pipeline = untrained_pipeline("class")
    model = pipeline.model
    classifier = untrained_classifier(model.process)
    seen = []
    real = pipeline_module.sample
    monkeypatch.setattr(pipeline_module, "sample", lambda wrapped, *a, **k:
                        seen.append((wrapped, classifier.training, model.training)) or real(wrapped, *a, **k))
    labels = torch.tensor([3, 4])
    both = pipeline.sample(2, labels=labels, guidance=2.0, classifier=classifier, classifier_scale=3.0, steps=2)
    outer, classifier_training, model_training = seen[-1]
    assert not classifier_training and not model_training  # dropout off while sampling
    assert classifier.training and model.training  # and the caller's modes back afterwards
    assert isinstance(outer, ClassifierGuidance) and outer.scale == 3.0 and outer.conditional_model
    assert isinstance(outer.model, ClassifierFreeGuidance) and outer.model.scale == 2.0
    cfg_only = pipeline.sample(2, labels=labels, guidance=2.0, steps=2)
    assert torch.isfinite(both).all() and not torch.equal(both, cfg_only)
    assert torch.equal(cfg_only, pipeline.sample(2, labels=labels, guidance=2.0, classifier=classifier,
                                                 classifier_scale=0.0, steps=2))


def test_a_classifier_guides_an_unconditional_model_and_is_checked():
    pipeline = untrained_pipeline()
    model = pipeline.model
    labels = torch.tensor([1, 2, 3])
    plain = pipeline.sample(3, steps=2)
    guided = pipeline.sample(3, labels=labels, steps=2, classifier=untrained_classifier(model.process))
    assert torch.isfinite(guided).all() and not torch.equal(plain, guided)
    checks = [
        (dict(classifier=untrained_classifier(VP("linear"))), "needs the model's own process"),
        (dict(classifier=untrained_classifier(model.process, shape=(1, 16, 16))), "trained on data of shape"),
        (dict(classifier=untrained_classifier(model.process, num_classes=3)), r"labels must lie in 0..2"),
        (dict(classifier=exact_classifier(model.process)), "must declare the process"),
        (dict(classifier=untrained_classifier(model.process), guidance=2.0), "needs a class-conditional model"),
    ]
    for options, message in checks:
        with pytest.raises(ValueError, match=message):
            pipeline.sample(3, labels=labels, steps=2, **options)
    with pytest.raises(ValueError, match="classifier guidance needs labels"):
        pipeline.sample(3, steps=2, classifier=untrained_classifier(model.process))
    with pytest.raises(ValueError, match="unconditional; it takes no labels"):
        pipeline.sample(3, labels=labels, steps=2)
    conditional = untrained_pipeline("class")
    with pytest.raises(ValueError, match="the classifier has 3 classes, the model 10"):
        conditional.sample(3, labels=labels, steps=2, classifier=untrained_classifier(model.process, num_classes=3))


# -- the command line ----------------------------------------------------------------------------------

def train_classifier_cli(out, *options):
    return run_main(["train", "--task", "classifier", "--out", out, "--quiet", "--steps", 3, "--batch-size", 16,
                     "--checkpoint-every", 3, "--warmup-steps", 1, *options])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An unconditional ring model, ring classifiers on its process and another, a class-conditional
    digits model and a digits classifier: every run trained through the CLI."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--quiet", "--steps", 3, "--batch-size", 16, "--checkpoint-every", 3, "--sample-steps", 2,
              "--warmup-steps", 1]
    code, _, err = run_main(["train", "--out", root / "ring", "--data", "ring", "--network", json.dumps(MLP), *common])
    assert code == 0, err
    code, _, err = run_main(["train", "--out", root / "digits", "--data", "digits", "--cond", "class",
                             "--network", unet_json(10), *common])
    assert code == 0, err
    code, printed, err = train_classifier_cli(root / "ring-clf", "--data", "ring", "--network",
                                              json.dumps(TINY_MLP_CLASSIFIER))
    assert code == 0, err
    code, _, err = train_classifier_cli(root / "ring-clf-vp", "--data", "ring", "--process", "vp",
                                        "--network", json.dumps(TINY_MLP_CLASSIFIER))
    assert code == 0, err
    code, _, err = train_classifier_cli(root / "digits-clf", "--data", "digits", "--network",
                                        json.dumps(TINY_UNET_CLASSIFIER), "--time-sampling", "log_normal")
    assert code == 0, err
    return root, printed


def test_train_classifier_writes_a_run_with_the_options_given(runs):
    root, printed = runs
    assert "trained 3 steps" in printed and "test accuracy at noise" in printed and "chance 0.125" in printed
    classifier = load_classifier(root / "ring-clf")
    config = classifier.run
    assert (config.train.steps, config.train.batch_size, config.train.warmup_steps, config.data.name) == \
        (3, 16, 1, "ring")
    assert config.task.network["hidden"] == 32 and classifier.num_classes == 8
    assert load_classifier(root / "ring-clf-vp").run.task.process == VP("linear").config()
    assert load_classifier(root / "digits-clf").run.task.time_sampling == "log_normal"
    code, out, err = run_main(["train", "--out", root / "ring-clf", "--resume", "--steps", 4, "--quiet"])
    assert code == 0 and "trained 4 steps" in out, err


def test_sample_with_a_classifier(runs, tmp_path):
    root, _ = runs

    def draw(run, name, *options):
        code, _, err = run_main(["sample", root / run, "--n", 6, "--steps", 2, "--out", tmp_path / name, *options])
        assert code == 0, err
        with np.load(tmp_path / name) as f:
            return f["points" if run == "ring" else "images"], f["labels"]

    plain, _ = draw("ring", "a.npz")
    guided, labels = draw("ring", "b.npz", "--labels", "0-7", "--classifier", root / "ring-clf",
                          "--classifier-scale", 4)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7][:6] and np.isfinite(guided).all()
    assert not np.array_equal(plain, guided)
    cfg, _ = draw("digits", "c.npz", "--labels", "0-9", "--guidance", 2)
    both, _ = draw("digits", "d.npz", "--labels", "0-9", "--guidance", 2, "--classifier", root / "digits-clf")
    assert np.isfinite(both).all() and not np.array_equal(cfg, both)


@pytest.mark.parametrize("run, classifier, options, message", [
    ("ring", "ring-clf-vp", ["--labels", "0-7"], "needs the model's own process"),
    ("ring", "digits-clf", ["--labels", "0-7"], "trained on data of shape (1, 8, 8)"),
    ("ring", "ring-clf", [], "classifier guidance needs labels"),
    ("ring", "digits", ["--labels", "0-7"], "is not a classifier checkpoint"),
])
def test_sample_with_an_unfit_classifier_exits_1(runs, tmp_path, run, classifier, options, message):
    root, _ = runs
    code, out, err = run_main(["sample", root / run, "--n", 4, "--steps", 2, "--out", tmp_path / "x.npz",
                               "--classifier", root / classifier, *options])
    assert code == 1 and out == "" and err.startswith("diffuse sample: error:") and message in err
    assert not (tmp_path / "x.npz").exists()


def test_eval_passes_the_classifier_and_test_labels(runs, tmp_path, monkeypatch):
    import diffuse.metrics

    root, _ = runs
    seen = {}

    def fake_evaluate(images, labels, spec):
        seen.update(images=images, labels=labels, spec=spec)
        return {"fd": 1.0}

    monkeypatch.setattr(diffuse.metrics, "evaluate", fake_evaluate)
    monkeypatch.setattr(diffuse.metrics, "floor", lambda spec: {"fd": 0.5})
    code, out, err = run_main(["eval", root / "ring", "--n", 5, "--steps", 2, "--classifier", root / "ring-clf",
                               "--classifier-scale", 2, "--out", tmp_path / "scores.json"])
    assert code == 0, err
    test = diffuse.data.load_dataset("ring", "test")
    assert seen["spec"].name == "ring" and torch.equal(seen["labels"], test.labels[:5])
    assert seen["images"].shape == (5, 2) and "fd" in out
    code, _, err = run_main(["eval", root / "ring", "--n", 5, "--steps", 2, "--classifier", root / "ring-clf-vp"])
    assert code == 1 and "needs the model's own process" in err
