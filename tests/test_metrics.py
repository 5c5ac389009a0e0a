"""Sample metrics: closed forms, brute-force references (scipy) and the feature network."""

import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg
from scipy.spatial.distance import cdist

from diffuse.checkpoint import CheckpointError
from diffuse.data import load_dataset
from diffuse.metrics import (FeatureConfig, FeatureNetwork, cached_meta, evaluate, feature_network, floor,
                             frechet_distance, gaussian_frechet_distance, load_feature_network, memorisation, mmd,
                             precision_recall_density_coverage, sliced_wasserstein, train_feature_network)
from diffuse.metrics import features as features_module
from diffuse.models.features import FeatureNetworkConfig
from diffuse.metrics.distances import _wasserstein2_1d_sq

TINY = dict(channels=4, features=8, epochs=1, batch_size=32, train_size=64)


def gaussian_with_exact_moments(n, mean, cov, seed=0):
    """n samples whose sample mean and (N-1)-covariance are exactly `mean` and `cov`."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return np.asarray(mean) + z @ np.linalg.cholesky(cov).T


def random_spd(d, seed):
    a = np.random.default_rng(seed).standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# -- Fréchet distance --------------------------------------------------------------------------------

def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert abs(frechet_distance(x, x)) < 1e-9


def test_frechet_distance_diagonal_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    mu_a, mu_b = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 2.0])
    x = gaussian_with_exact_moments(200, mu_a, np.diag(a), seed=1)
    y = gaussian_with_exact_moments(300, mu_b, np.diag(b), seed=2)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_full_covariances_match_scipy_sqrtm_and_are_symmetric():
    d = 6
    s1, s2 = random_spd(d, 3), random_spd(d, 4)
    mu1, mu2 = np.arange(d) / d, -np.ones(d)
    x = gaussian_with_exact_moments(400, mu1, s1, seed=5)
    y = gaussian_with_exact_moments(150, mu2, s2, seed=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(y, x) == pytest.approx(frechet_distance(x, y), rel=1e-12)
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_stable_for_singular_covariances():
    # Rank-deficient covariances (more features than samples, a constant feature) are the norm
    # for small sample sets; the symmetric eigen-formulation must stay finite and exact.
    s1, s2 = np.diag([1.0, 0.0, 4.0]), np.diag([0.0, 0.0, 1.0])
    assert gaussian_frechet_distance(np.zeros(3), s1, np.zeros(3), s2) == pytest.approx(1.0 + 1.0, abs=1e-12)
    x = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    value = frechet_distance(x, x + 0.5)
    assert math.isfinite(value) and value == pytest.approx(64 * 0.25, rel=1e-6)


# -- precision / recall / density / coverage -------------------------------------------------------

def reference_prdc(real, fake, k):
    """A direct transcription of the definitions, on the full scipy distance matrices."""
    rr, ff, fr = cdist(real, real), cdist(fake, fake), cdist(fake, real)
    r_real = np.sort(rr, axis=1)[:, k]
    r_fake = np.sort(ff, axis=1)[:, k]
    return {
        "precision": np.mean((fr <= r_real[None]).any(1)),
        "recall": np.mean((fr.T <= r_fake[None]).any(1)),
        "density": (fr <= r_real[None]).sum() / (k * len(fake)),
        "coverage": np.mean(fr.min(0) <= r_real),
    }


def test_prdc_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((120, 5)), rng.standard_normal((90, 5)) * 1.3 + 0.3
    got = precision_recall_density_coverage(real, fake, k=3)
    want = reference_prdc(real, fake, 3)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_prdc_identical_sets_are_perfect_and_far_apart_sets_score_zero():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    same = precision_recall_density_coverage(x, x.clone(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    # Summed over the fakes, ball memberships count every real point's own ball once plus its
    # k neighbours: density is exactly (k + 1) / k when the sets coincide (and have no ties).
    assert same["density"] == pytest.approx(6 / 5, rel=1e-12)
    far = precision_recall_density_coverage(x, x + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


# -- sliced Wasserstein -------------------------------------------------------------------------------

def test_one_dimensional_w2_with_unequal_sizes_is_exact():
    # Repeating every sample of a (size n) m times and of b n times gives two equal-size sets
    # with the same empirical measures, whose W2^2 is the mean squared gap of sorted values.
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(7), rng.standard_normal(5) + 1
    expected = np.mean((np.sort(np.repeat(a, 5)) - np.sort(np.repeat(b, 7))) ** 2)
    got = _wasserstein2_1d_sq(torch.tensor(a)[:, None], torch.tensor(b)[:, None])
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_sliced_wasserstein_of_a_translation_is_the_projected_shift():
    x = torch.randn(200, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = torch.linspace(-1, 1, 10, dtype=torch.float64)
    got = sliced_wasserstein(x, x + v, projections=64, generator=torch.Generator().manual_seed(3))
    theta = torch.randn(10, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    theta = theta / theta.norm(dim=0)
    assert got == pytest.approx(float((v @ theta).square().mean().sqrt()), rel=1e-9)


def test_sliced_wasserstein_and_mmd_are_near_zero_for_one_distribution_and_grow_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 6, generator=g), torch.randn(400, 6, generator=g)
    sw = [sliced_wasserstein(x, y + s) for s in (0.0, 0.5, 2.0)]
    # The 1-D W2 of two 400-point samples of one Gaussian is about 0.1; a shift of 0.5 per axis
    # projects to about 0.5 on average.
    assert sw[0] < 0.2 and 3 * sw[0] < sw[1] < sw[2]
    for kernel in ("rbf", "polynomial"):
        values = [mmd(x, y + s, kernel=kernel) for s in (0.0, 0.5, 2.0)]
        assert abs(values[0]) < 0.01 and values[0] < values[1] < values[2], kernel
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)    # fixed default directions


def reference_mmd(x, y, k):
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_mmd_matches_the_unbiased_estimator_with_the_median_bandwidth():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((40, 4)) + 0.3
    z = np.vstack([x, y])
    d = cdist(z, z)
    h = np.median(d[~np.eye(len(z), dtype=bool)])
    rbf = mmd(x, y)
    assert rbf == pytest.approx(reference_mmd(x, y, lambda p, q: np.exp(-cdist(p, q) ** 2 / (2 * h * h))), rel=1e-9)
    assert mmd(x, y, bandwidth=2.0) == pytest.approx(
        reference_mmd(x, y, lambda p, q: np.exp(-cdist(p, q) ** 2 / 8)), rel=1e-9)
    assert mmd(x, y, kernel="polynomial") == pytest.approx(
        reference_mmd(x, y, lambda p, q: (p @ q.T / 4 + 1) ** 3), rel=1e-9)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, y, kernel="laplace")


# -- memorisation -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def test_copies_of_training_images_are_memorised_and_fresh_samples_are_not(digits):
    train, test = digits
    copies = train.data[100:400]
    m = memorisation(copies, train.data)
    assert m["ratio_rate"] == 1.0 and m["normalised_rate"] == 1.0
    assert torch.equal(m["nearest_index"], torch.arange(100, 400))
    assert float(m["nearest_distance"].max()) == 0.0
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fresh = memorisation(noise, train.data)
    assert fresh["ratio_rate"] == 0.0 and fresh["normalised_rate"] == 0.0
    held_out = memorisation(test.data, train.data)   # real, unseen digits: almost never flagged
    assert held_out["ratio_rate"] <= 0.02 and held_out["normalised_rate"] <= 0.02


def test_memorisation_neighbours_match_brute_force_and_a_duplicated_image_still_counts():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((300, 20)).astype(np.float32)
    pool[7] = pool[3]                                     # a training image that appears twice
    queries = np.vstack([rng.standard_normal((40, 20)), pool[3:4]]).astype(np.float32)
    m = memorisation(queries, pool, n_neighbours=10)
    d = np.sort(cdist(queries.astype(np.float64), pool.astype(np.float64)), axis=1)
    np.testing.assert_allclose(m["nearest_distance"].numpy(), d[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m["nn_ratio"][:-1].numpy(), d[:-1, 0] / d[:-1, 1], rtol=1e-10)
    np.testing.assert_allclose(m["normalised_l2"][:-1].numpy(), d[:-1, 0] / d[:-1, :10].mean(1), rtol=1e-10)
    assert float(m["nn_ratio"][-1]) == 0.0 and float(m["normalised_l2"][-1]) == 0.0
    assert int(m["nearest_index"][-1]) in (3, 7)


# -- the feature network -----------------------------------------------------------------------------

def test_feature_network_training_is_deterministic_and_leaves_the_global_rng_alone(digits, tmp_path):
    train, _ = digits
    before = torch.get_rng_state()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)      # raises on any op without a deterministic kernel
    try:
        a = train_feature_network(train, FeatureConfig(**TINY, shift=1), tmp_path / "a")
        b = train_feature_network(train, FeatureConfig(**TINY, shift=1), tmp_path / "b")
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    assert torch.equal(before, torch.get_rng_state())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train_feature_network(train, FeatureConfig(**TINY, shift=1, seed=1), tmp_path / "c")
    assert not torch.equal(sa["head.weight"], c.state_dict()["head.weight"])
    # trained by the engine: a run folder, read back as such
    assert states_equal(load_feature_network(tmp_path / "a").state_dict(), sa)
    feats = a.features(train.data[:10])
    assert feats.shape == (10, TINY["features"]) and a.logits(train.data[:10]).shape == (10, 10)
    with pytest.raises(ValueError, match="expected images"):
        a.features(torch.zeros(2, 1, 28, 28))


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_feature_network_architecture_fits_common_image_sizes(shape):
    model = FeatureNetwork(FeatureNetworkConfig(image_shape=shape, num_classes=3, channels=4, features=8))
    x = torch.zeros(2, *shape)
    assert model(x).shape == (2, 3) and model.features(x).shape == (2, 8)


def test_feature_network_cache_round_trip(tmp_path, monkeypatch):
    first = feature_network("digits", cache_dir=tmp_path, **TINY)
    entries = list(tmp_path.iterdir())
    assert [p.name for p in entries] == [first.cache_path.name] and first.cache_path.name.startswith("digits-")
    assert {"checkpoints", "metrics.jsonl", "meta.json"} <= {p.name for p in first.cache_path.iterdir()}
    assert cached_meta(first)["train_size"] == TINY["train_size"]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached network should have been loaded, not retrained")

    monkeypatch.setattr(features_module, "train_feature_network", no_training)
    second = feature_network("digits", cache_dir=tmp_path, **TINY)
    x = load_dataset("digits", "test").data[:50]
    assert torch.equal(first.features(x), second.features(x))
    # Another config is another entry; DIFFUSE_CACHE moves the default location.
    monkeypatch.setattr(features_module, "train_feature_network", train_feature_network)
    monkeypatch.setenv("DIFFUSE_CACHE", str(tmp_path / "env"))
    third = feature_network("digits", **{**TINY, "seed": 1})
    assert third.cache_path.parent == tmp_path / "env" / "features"
    assert third.cache_path.name != first.cache_path.name


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def test_a_pickle_disguised_as_the_cached_weights_is_refused(tmp_path):
    model = feature_network("digits", cache_dir=tmp_path, **TINY)
    marker = tmp_path / "pickle-was-run"
    weights = next(model.cache_path.glob("checkpoints/step-*/model.safetensors"))
    weights.write_bytes(pickle.dumps(_Trap(marker), protocol=2))
    with pytest.raises(CheckpointError, match="pickle"):
        feature_network("digits", cache_dir=tmp_path, **TINY)
    torch.save({"head.weight": torch.zeros(1)}, weights)
    with pytest.raises(CheckpointError):
        load_feature_network(model.cache_path)
    assert not marker.exists()


# -- the real digits feature network, evaluate and floor ----------------------------------------------------

@pytest.fixture(scope="module")
def digits_network(tmp_path_factory):
    start = time.perf_counter()
    model = feature_network("digits", cache_dir=tmp_path_factory.mktemp("features"))
    model.train_seconds = time.perf_counter() - start
    return model


def test_digits_network_is_accurate_and_quick(digits_network, digits):
    _, test = digits
    assert digits_network.accuracy(test.data, test.labels) >= 0.97
    assert digits_network.train_seconds < 60


def test_floor_and_evaluate_on_digits(digits_network, digits):
    train, test = digits
    ref = floor("digits", digits_network)
    assert ref["n_generated"] == ref["n_reference"] == len(test)
    assert ref["accuracy"] > 0.97 and ref["classifier_test_accuracy"] >= 0.97
    assert ref["precision"] > 0.9 and ref["recall"] > 0.9 and ref["coverage"] > 0.9
    assert ref["memorised_ratio"] <= 0.02 and ref["memorised_normalised"] <= 0.02
    small = floor("digits", digits_network, n=100)   # to compare with 100 generated images
    assert small["n_generated"] == 100 and small["fd"] > ref["fd"]   # FD's bias grows as n shrinks
    with pytest.raises(ValueError, match="n must lie"):
        floor("digits", digits_network, n=len(train) + 1)

    noise = torch.rand(len(test), *test.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bad = evaluate(noise, test.labels, "digits", digits_network)
    assert bad["fd"] > 10 * ref["fd"] and bad["sw"] > 5 * ref["sw"] and bad["mmd"] > 0.1
    assert bad["recall"] < 0.1 and bad["accuracy"] < 0.5

    copies = evaluate(train.data[:len(test)], None, "digits", digits_network)
    assert "accuracy" not in copies
    assert copies["memorised_ratio"] == 1.0 and copies["memorised_normalised"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        evaluate(torch.zeros(4, 1, 28, 28), None, "digits", digits_network)
