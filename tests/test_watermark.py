"""Watermarks in the initial noise: the keys' numerics (exact Gaussianity, only the masked Fourier
coefficients changed, valid p-values), detection through DDIM inversion of an exact mixture model,
the attacks, the Pipeline's given noise, and `diffuse watermark` end to end on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from _tiny import unet_json
from test_cli import run_main, train

from diffuse.analytic import GaussianMixture
from diffuse.data import DataInfo
from diffuse.pipeline import Pipeline
from diffuse.process import EDM
from diffuse.samplers import Generators
from diffuse.watermark import (ATTACKS, GaussianShadingKey, TreeRingKey, attack, binomial_upper_tail,
                               calibrated_threshold, detect, key_from_dict, load_key, noncentral_chi2_cdf,
                               sample_watermarked, save_key)
from diffuse.watermark.attacks import DEFAULTS

SHAPE = (1, 8, 8)


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counting half."""
    diff = positive[:, None] - negative[None]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


# -- keys ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits_per_element", [1, 2])
def test_gaussian_shading_noise_is_exactly_standard_normal(bits_per_element):
    """Over random keys each element is N(0, 1): the buckets are uniform and the place in a bucket is kept."""
    draws = []
    for seed in range(1500):
        key = GaussianShadingKey.create((1, 4, 4), message_bits=4, seed=seed, bits_per_element=bits_per_element)
        draws.append(key.embed(torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed))))
    values = torch.cat(draws).flatten().double().numpy()
    assert stats.kstest(values, "norm").pvalue > 0.01
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    # the test has power: the same draws with every bucket forced to the lowest are far from normal
    assert stats.kstest(-np.abs(values), "norm").pvalue < 1e-10


def test_gaussian_shading_with_nonces_finds_each_noise_its_stream():
    key = GaussianShadingKey.create(SHAPE, seed=3, nonces=64)
    noise = torch.randn(300, *SHAPE, generator=torch.Generator().manual_seed(0))
    nonce = torch.randint(64, (300,), generator=torch.Generator().manual_seed(1))
    marked = key.test(key.embed(noise, nonce))
    assert torch.equal(marked["nonce"], nonce) and (marked["bit_accuracy"] == 1).all()
    assert (marked["p_value"] < 1e-15).all()
    # the best of 64 streams: the p-value pays for the search (Bonferroni), so it stays valid
    null = key.test(noise)
    assert float((null["p_value"] <= 0.1).double().mean()) <= 0.1
    assert float(null["statistic"].mean()) > 0.55  # the best of 64 agrees more than one stream would
    # pictures of different nonces differ in sign where their streams do: the diversity nonces buy
    signs = key.embed(noise[:2], torch.tensor([0, 1])).sign()
    assert not torch.equal(signs[0], signs[1])
    with pytest.raises(ValueError, match=r"nonce must be in 0..63"):
        key.embed(noise[:1], 64)


def test_gaussian_shading_reads_its_bits_back_and_only_its_own():
    key = GaussianShadingKey.create(SHAPE, message_bits=16, seed=3, bits_per_element=2, nonces=1)
    noise = torch.randn(200, *SHAPE, generator=torch.Generator().manual_seed(0))
    marked = key.test(key.embed(noise))
    assert (marked["bit_accuracy"] == 1).all() and (marked["statistic"] == 1).all()
    assert (marked["p_value"] < 1e-30).all()
    null = key.test(noise)
    assert 0.4 < float(null["statistic"].mean()) < 0.6
    # valid p-values: P(p <= alpha) <= alpha up to sampling error (discrete, so not uniform)
    assert float((null["p_value"] <= 0.1).double().mean()) < 0.1 + 3 * (0.1 * 0.9 / 200) ** 0.5
    other = GaussianShadingKey.create(SHAPE, message_bits=16, seed=4, bits_per_element=2, nonces=1)
    assert float(other.test(key.embed(noise))["statistic"].mean()) < 0.6


@pytest.mark.parametrize("pattern", ["ring", "zero", "random"])
def test_tree_ring_changes_only_the_masked_coefficients_of_its_channel(pattern):
    key = TreeRingKey.create((2, 8, 8), pattern, radius=3, channel=1, seed=5)
    noise = torch.randn(10, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    marked = key.embed(noise)
    assert marked.dtype == noise.dtype and torch.equal(marked[:, 0], noise[:, 0])
    before, after = torch.fft.fft2(noise[:, 1]), torch.fft.fft2(marked[:, 1])
    mask = key.mask()
    assert torch.allclose(after[:, mask], key.values()[mask].expand(10, -1), atol=1e-9)
    assert torch.allclose(after[:, ~mask], before[:, ~mask], atol=1e-9)
    assert int(mask.sum()) == 29 and not mask[4].any() and not mask[:, 4].any()  # the Nyquist row stays out
    if pattern == "ring":  # one value per ring: rotating the noise by 90 degrees keeps the key's magnitudes
        rotated = torch.fft.fft2(marked[:, 1].rot90(1, (-2, -1)))  # (a rotation about the centre: a phase shift)
        assert torch.allclose(rotated[:, mask].abs(), after[:, mask].abs(), atol=1e-9)


def test_tree_ring_p_values_are_uniform_under_the_null_and_tiny_when_marked():
    key = TreeRingKey.create(SHAPE, "ring")
    noise = torch.randn(3000, *SHAPE, generator=torch.Generator().manual_seed(2))
    null = key.test(noise)
    assert stats.kstest(null["p_value"].numpy(), "uniform").pvalue > 0.01
    assert abs(float(null["evidence"].mean())) < 0.1 and abs(float(null["evidence"].std()) - 1) < 0.1
    marked = key.test(key.embed(noise))
    assert (marked["p_value"] < 1e-20).all() and (marked["distance"] < 1e-5).all()


def test_the_tail_probabilities_match_scipy():
    x, noncentrality = torch.tensor([0.5, 7.0, 20.0, 60.0]), torch.tensor([0.0, 3.0, 25.0, 40.0])
    assert np.allclose(noncentral_chi2_cdf(x, 7, noncentrality).numpy(),
                       stats.ncx2.cdf(x.numpy(), 7, np.maximum(noncentrality.numpy(), 1e-12)), atol=1e-9)
    k = torch.tensor([0, 30, 45, 64])
    assert np.allclose(binomial_upper_tail(k, 64).numpy(), stats.binom.sf(k.numpy() - 1, 64, 0.5), rtol=1e-9)


def test_the_radius_is_capped_to_the_noise_with_a_warning():
    with pytest.warns(UserWarning, match="capped to 13"):
        assert TreeRingKey.create((1, 28, 28), radius=20).radius == 13
    # the paper's 10 of 64 scaled to the side
    assert [TreeRingKey.create((1, side, side)).radius for side in (8, 28, 64, 200)] == [1, 4, 10, 31]
    with pytest.raises(ValueError, match="1..3"):
        TreeRingKey(SHAPE, radius=4)
    with pytest.raises(ValueError, match="no room"):
        TreeRingKey.create((1, 2, 2))


def test_keys_round_trip_json(tmp_path):
    keys = [TreeRingKey.create((3, 16, 16), "random", radius=5, channel=2, seed=9),
            GaussianShadingKey.create(SHAPE, message_bits=8, seed=7, bits_per_element=3, nonces=5)]
    for k, key in enumerate(keys):
        save_key(key, tmp_path / f"{k}.json")
        loaded = load_key(tmp_path / f"{k}.json")
        ones = torch.ones(1, *key.shape)
        assert loaded == key and torch.equal(loaded.embed(ones), key.embed(ones))


@pytest.mark.parametrize("data, match", [
    ({"kind": "spiral"}, "kind must be one of"),
    ({"kind": "tree-ring", "shape": [1, 8, 8], "radius": 3, "colour": 1}, "unknown: colour"),
    ({"kind": "tree-ring", "shape": [1, 8, 8]}, "missing: radius"),
    ({"kind": "tree-ring", "shape": [1, 8, 8], "radius": 3, "pattern": "star"}, "pattern must be one of"),
    ({"kind": "tree-ring", "shape": [1, 8, 8], "radius": 3, "channel": 1}, "channel must be in 0..0"),
    ({"kind": "gaussian-shading", "shape": [1, 8, 8], "bits": "0101", "repetition": 3},
     "message length must divide 64"),
    ({"kind": "gaussian-shading", "shape": [1, 8, 8], "bits": "01x1", "repetition": 16}, "string of 0s and 1s"),
    ({"kind": "gaussian-shading", "shape": [8, 8], "bits": "0101", "repetition": 16}, r"\[C, H, W\]"),
])
def test_bad_keys_raise_clear_errors(data, match):
    with pytest.raises(ValueError, match=match):
        key_from_dict(data)


def test_a_key_for_other_noise_is_refused():
    with pytest.raises(ValueError, match=r"noise \[n, 1, 8, 8\]"):
        TreeRingKey.create(SHAPE).embed(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"noise \[n, 1, 8, 8\]"):
        GaussianShadingKey.create(SHAPE).test(torch.randn(2, 3, 8, 8))


# -- detection through an exact model ---------------------------------------------------------------

def mixture_pipeline() -> Pipeline:
    """An exact Gaussian mixture of 8x8 'images' (no training error) behind a Pipeline."""
    means = torch.rand(4, 64, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    model = GaussianMixture(means, 0.25).denoiser(EDM())
    info = DataInfo("mixture", "image", SHAPE, None, ("x",), {"name": "python"})
    return Pipeline(model, info, sampler="ddim", steps=30)


@pytest.mark.parametrize("key", [TreeRingKey.create(SHAPE, "ring", seed=1), TreeRingKey.create(SHAPE, "zero"),
                                 GaussianShadingKey.create(SHAPE, seed=1, nonces=1),
                                 GaussianShadingKey.create(SHAPE, seed=1, nonces=256)],
                         ids=["ring", "zero", "shading", "shading-nonces"])
def test_detection_separates_watermarked_from_plain_samples_of_an_exact_model(key):
    pipeline = mixture_pipeline()
    marked = sample_watermarked(pipeline, key, 30, seed=0, steps=30)
    plain = pipeline.sample(30, seed=100, sampler="ddim", steps=30)
    scores = detect(pipeline, torch.cat([marked, plain]), key, steps=30, fixed_point=1)
    evidence = scores["evidence"]
    assert auc(evidence[:30], evidence[30:]) >= 0.99
    assert float(scores["p_value"][:30].max()) < 1e-3
    # a key never embedded finds nothing in the marked samples (a random-pattern key: a ring key of radius 3
    # has only 3 random values, so two of them can be alike)
    other = TreeRingKey.create(SHAPE, "random", seed=2) if key.kind == "tree-ring" else \
        GaussianShadingKey.create(SHAPE, seed=2)
    assert float(detect(pipeline, marked, other, steps=30)["p_value"].min()) > 1e-3


def test_a_given_noise_is_the_drawn_one_bit_for_bit_and_is_checked():
    pipeline = mixture_pipeline()
    own = Generators.seeded(4, 0, 6).randn(SHAPE)
    for sampler in ("ddim", "ddpm"):  # ddpm: the generators' later draws are unchanged
        assert torch.equal(pipeline.sample(6, seed=4, sampler=sampler, steps=5, batch_size=4),
                           pipeline.sample(6, seed=4, sampler=sampler, steps=5, batch_size=4, noise=own))
    assert not torch.equal(pipeline.sample(6, seed=4, steps=5, noise=-own), pipeline.sample(6, seed=4, steps=5))
    with pytest.raises(ValueError, match=r"noise must be \[n=6, 1, 8, 8\]"):
        pipeline.sample(6, noise=torch.randn(5, *SHAPE))


def test_a_calibrated_threshold_lets_through_at_most_its_share_of_the_null():
    null = torch.randn(200, generator=torch.Generator().manual_seed(0))
    for fpr in (0.01, 0.05, 0.5):
        assert int((null > calibrated_threshold(null, fpr)).sum()) == int(fpr * 200)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        calibrated_threshold(null, 0)


def test_detection_refuses_a_key_for_other_noise():
    with pytest.raises(ValueError, match="the key was made for noise"):
        detect(mixture_pipeline(), torch.zeros(2, *SHAPE), TreeRingKey.create((1, 16, 16)))


# -- attacks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_keep_shape_and_range_and_are_deterministic(name):
    pictures = torch.rand(4, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    out = attack(pictures, name, seed=1)
    assert out.shape == pictures.shape and out.dtype == pictures.dtype
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(out, attack(pictures, name, seed=1)) and not torch.equal(out, pictures)
    if name in ("noise", "crop"):
        assert not torch.equal(out, attack(pictures, name, seed=2))


def test_attack_parameters_do_what_they_say():
    pictures = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(attack(pictures, "rotation:0"), pictures, atol=1e-6)
    assert torch.allclose(attack(pictures, "rotation:90"), pictures.rot90(1, (-2, -1)), atol=1e-5)
    assert torch.equal(attack(pictures, "brightness:1"), pictures)
    assert torch.allclose(attack(pictures, "crop:1"), pictures, atol=1e-6)
    errors = [float((attack(pictures, f"jpeg:{q}") - pictures).abs().mean()) for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2]
    assert float(attack(pictures, "blur:2").std()) < float(attack(pictures, "blur:0.5").std()) < float(pictures.std())
    assert DEFAULTS.keys() == ATTACKS.keys()
    for spec, match in [("sharpen", "unknown attack"), ("jpeg:x", "must be a number"), ("jpeg:0", "1..95"),
                        ("crop:1.5", r"\(0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            attack(pictures, spec)


# -- the command line -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    code, _, err = train(folder, "--data", "digits", "--network", unet_json())
    assert code == 0, err
    return folder


def test_cli_makes_a_key_embeds_attacks_and_detects(run, tmp_path):
    key = tmp_path / "key.json"
    code, out, err = run_main(["watermark", "key", "--kind", "tree-ring", "--run", run, "--radius", 6, "--out", key])
    assert code == 0, err
    assert "capped to 3" in out and load_key(key).shape == SHAPE
    marked = tmp_path / "marked.npz"
    code, out, err = run_main(["watermark", "embed", run, "--key", key, "--n", 3, "--steps", 4, "--out", marked])
    assert code == 0, err
    with np.load(marked) as f:
        assert f["images"].shape == (3, 8, 8)
    attacked = tmp_path / "attacked.npz"
    code, out, err = run_main(["watermark", "attack", "--input", marked, "--attack", "jpeg:50", "--attack", "blur",
                               "--out", attacked])
    assert code == 0, err
    scores = tmp_path / "scores.json"
    code, out, err = run_main(["watermark", "detect", run, "--key", key, "--input", attacked, "--steps", 4,
                               "--json", scores])
    assert code == 0, err
    report = json.loads(scores.read_text())
    assert len(report["images"]) == 3 and all(0 <= r["p_value"] <= 1 for r in report["images"])
    assert out.count("\n") == 5  # a header, three images, the summary
    code, out, err = run_main(["watermark", "detect", run, "--key", key, "--input", marked, "--steps", 4,
                               "--calibrate", 20, "--alpha", 0.1])
    assert code == 0, err
    assert "which 0.1 of 20 unwatermarked samples exceed at most" in out
    # a Gaussian-shading key of the wrong shape is refused before any sampling
    other = tmp_path / "other.json"
    assert run_main(["watermark", "key", "--kind", "gaussian-shading", "--shape", "1,4,4", "--out", other])[0] == 0
    code, _, err = run_main(["watermark", "embed", run, "--key", other, "--out", tmp_path / "x.npz"])
    assert code == 1 and "made for noise [1, 4, 4]" in err
    code, _, err = run_main(["watermark", "embed", run, "--key", key, "--sampler", "ddpm", "--out", tmp_path / "x.npz"])
    assert code == 1 and "deterministic sampler" in err
