import subprocess
import sys

import pytest
import torch

import diffuse
from diffuse import EDM, VP, DenoisingLoss, Denoiser, Flow, GaussianMixture, convert, sample_times

from conftest import all_processes

MIXTURE = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [0.2, 0.3])


def _as(kind, process):
    """The mixture's exact model, re-expressed as a `kind` prediction."""
    base = MIXTURE.denoiser(process)
    return lambda x, t: convert(base(x, t), "x0", kind, x, t, process)


@pytest.mark.parametrize("process", all_processes())
@pytest.mark.parametrize("weighting", ["min_snr", "edm"])
def test_weighted_loss_is_the_same_whatever_the_model_predicts(process, weighting):
    """Weightings are stated on the x0 error, so the same model in any parameterisation has the
    same weighted loss, sample by sample."""
    x0, _ = MIXTURE.sample(64, torch.Generator().manual_seed(0))
    losses = {}
    for kind in diffuse.PREDICTIONS:
        loss = DenoisingLoss(process, prediction=kind, weighting=weighting)
        losses[kind] = loss(_as(kind, process), x0, generator=torch.Generator().manual_seed(1), per_sample=True)
    for kind in diffuse.PREDICTIONS:
        torch.testing.assert_close(losses[kind], losses["x0"], rtol=1e-4, atol=1e-6)


def test_simple_loss_is_the_plain_mse_of_each_target():
    process = VP.from_betas("linear")
    x0 = torch.randn(8, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    t = sample_times(process, 8, "uniform", g)
    eps = torch.randn(8, 3, generator=g, dtype=torch.float64)
    x_t = process.add_noise(x0, t, eps)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    loss = DenoisingLoss(process, prediction="eps")(model, x0, generator=torch.Generator().manual_seed(3), per_sample=True)
    torch.testing.assert_close(loss, (eps ** 2).mean(1))
    loss_v = DenoisingLoss(process, prediction="v")(model, x0, generator=torch.Generator().manual_seed(3), per_sample=True)
    a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
    torch.testing.assert_close(loss_v, ((a * eps - s * x0) ** 2).mean(1))
    assert torch.allclose(x_t, a * x0 + s * eps)


def test_min_snr_on_eps_is_the_clamped_snr_ratio():
    process = VP("linear")
    x0 = torch.randn(256, 2, dtype=torch.float64)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    simple = DenoisingLoss(process, "eps", "simple")(zero, x0, generator=torch.Generator().manual_seed(4), per_sample=True)
    weighted = DenoisingLoss(process, "eps", "min_snr", gamma=5.0)(zero, x0, generator=torch.Generator().manual_seed(4), per_sample=True)
    t = sample_times(process, 256, "uniform", torch.Generator().manual_seed(4))
    snr = torch.exp(process.log_snr(t))
    torch.testing.assert_close(weighted, simple * (snr.clamp(max=5) / snr))


def test_edm_preconditioned_loss_has_unit_weight_on_the_network_target():
    """EDM: lambda(sigma) c_out^2 = 1, so the loss of a network F is ||F - F_target||^2 exactly."""
    process = EDM(sigma_data=0.5)
    net_out = []

    class Zero(torch.nn.Module):
        def forward(self, x, noise, labels=None):
            net_out.append(x)
            return torch.zeros_like(x)

    model = Denoiser(Zero(), process, prediction="x0", preconditioning="edm", sigma_data=0.5)
    x0 = 0.5 * torch.randn(4096, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = DenoisingLoss(process, "x0", "edm", "log_normal")(model, x0, generator=torch.Generator().manual_seed(6))
    # the effective target (x0 - c_skip x)/c_out has unit variance when the data has std sigma_data
    assert float(loss) == pytest.approx(1.0, rel=0.05)
    assert float(net_out[0].std()) == pytest.approx(1.0, rel=0.05)  # c_in makes the input unit-variance too


def test_time_sampling():
    g = torch.Generator().manual_seed(7)
    edm = EDM()
    t = sample_times(edm, 100_000, "log_normal", g, p_mean=-1.2, p_std=1.2)
    log_rho = torch.log(edm.sigma(t))
    assert float(log_rho.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_rho.std()) == pytest.approx(1.2, abs=0.02)
    t = sample_times(Flow(), 100_000, "logit_normal", g)
    assert float(torch.logit(t).mean()) == pytest.approx(0.0, abs=0.02)
    discrete = VP.from_betas("linear", 1000)
    t = sample_times(discrete, 10_000, "uniform", g)
    n = discrete.t_to_timestep(t)
    torch.testing.assert_close(n, n.round())
    assert int(n.min()) == 0 and int(n.max()) == 999
    t = sample_times(VP(), 10_000, "uniform", g)
    assert float(t.min()) >= VP().t_min and float(t.max()) <= 1


def test_time_options_move_the_noise_levels_a_loss_trains_at():
    process, seen = EDM(), []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    x0 = torch.zeros(50_000, 1)
    for p_mean in (-1.2, 0.5):
        DenoisingLoss(process, "x0", "edm", "log_normal", time_options={"p_mean": p_mean})(
            model, x0, generator=torch.Generator().manual_seed(9))
        assert float(torch.log(process.sigma(seen[-1])).mean()) == pytest.approx(p_mean, abs=0.03)
    logit = DenoisingLoss(Flow(), "velocity", time_sampling="logit_normal",
                          time_options={"logit_mean": 1.0, "logit_std": 0.5})
    logit(model, x0, generator=torch.Generator().manual_seed(10))
    assert float(torch.logit(seen[-1]).mean()) == pytest.approx(1.0, abs=0.02)
    assert float(torch.logit(seen[-1]).std()) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("method, options, message", [
    ("log_normal", {"logit_mean": 0.0}, "'log_normal' has no option(s) ['logit_mean']"),
    ("uniform", {"p_mean": 0.0}, "it takes none"),
    ("log_normal", {"p_std": 0.0}, "p_std must be a positive number"),
    ("logit_normal", {"logit_mean": float("inf")}, "logit_mean must be a finite number"),
    ("log_normal", {"p_mean": True}, "p_mean must be a finite number"),
    ("log_normal", [("p_mean", 0.0)], "time_options must be a dict"),
])
def test_bad_time_options_are_refused(method, options, message):
    with pytest.raises(ValueError) as error:
        DenoisingLoss(EDM(), "x0", "edm", method, time_options=options)
    assert message in str(error.value)


def test_uniform_log_snr_time_sampling_covers_the_process_range_evenly():
    g = torch.Generator().manual_seed(8)
    for process in (EDM(), VP(), Flow()):
        t = sample_times(process, 100_000, "uniform_log_snr", g)
        assert float(t.min()) >= process.t_min and float(t.max()) <= process.t_max
        ends = process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64)).clamp(-15, 15)
        low, high = float(ends[0]), float(ends[1])
        # uniform on [low, high]: every quarter of the range holds a quarter of the draws
        quarters = ((process.log_snr(t) - low) / (high - low) * 4).floor().clamp(0, 3).long()
        torch.testing.assert_close(torch.bincount(quarters, minlength=4) / len(t),
                                   torch.full((4,), 0.25), atol=0.01, rtol=0)
    assert float(Flow().log_snr(sample_times(Flow(), 1000, "uniform_log_snr", g)).min()) >= -15 - 1e-9


def test_loss_is_a_pure_function_of_its_generator():
    process = Flow()
    net = torch.nn.Linear(2, 2)
    model = lambda x, t: net(x.float()).double()  # noqa: E731
    loss = DenoisingLoss(process, "velocity", time_sampling="logit_normal")
    x0 = torch.randn(32, 2, dtype=torch.float64)
    a = loss(model, x0, generator=torch.Generator().manual_seed(8))
    b = loss(model, x0, generator=torch.Generator().manual_seed(8))
    c = loss(model, x0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_a_mask_leaves_padding_out_of_the_loss():
    # Sequences of 3 and 5 real elements padded to 8. The model works element by element, so with
    # the mask the padding's values cannot reach the loss; without it they do.
    process = EDM()
    model = lambda x, t: 0.5 * x  # noqa: E731
    loss = DenoisingLoss(process, "x0", weighting="edm", time_sampling="log_normal")
    mask = torch.zeros(2, 1, 8, dtype=torch.bool)
    mask[0, :, :3], mask[1, :, :5] = True, True
    x0 = torch.randn(2, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    other = torch.where(mask, x0, torch.full_like(x0, 100.0))
    per = lambda x, m: loss(model, x, generator=torch.Generator().manual_seed(1), mask=m, per_sample=True)  # noqa: E731
    torch.testing.assert_close(per(x0, mask), per(other, mask), rtol=0, atol=0)
    assert not torch.allclose(per(x0, None), per(other, None))
    torch.testing.assert_close(per(x0, torch.ones_like(mask)), per(x0, None))
    # each sample's error is the mean over its own real elements, times its weight
    g = torch.Generator().manual_seed(1)
    t = sample_times(process, 2, "log_normal", g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = x0 + process.sigma(t)[:, None, None] * eps
    squared = (0.5 * x_t - x0) ** 2
    rho2 = process.sigma(t) ** 2
    weight = (rho2 + 0.25) / (rho2 * 0.25)
    expected = weight * torch.stack([squared[0, 0, :3].mean(), squared[1, 0, :5].mean()])
    torch.testing.assert_close(per(x0, mask), expected)
    with pytest.raises(ValueError, match="does not broadcast"):
        per(x0, torch.ones(2, 1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="of x0's rank"):
        per(x0, torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="no real element"):
        per(x0, torch.zeros_like(mask))


def test_bad_options():
    with pytest.raises(ValueError, match="unknown weighting"):
        DenoisingLoss(VP(), weighting="p2")
    with pytest.raises(ValueError, match="unknown time sampling"):
        DenoisingLoss(VP(), time_sampling="cosine")
    with pytest.raises(ValueError, match="unknown prediction"):
        DenoisingLoss(VP(), prediction="noise")
    with pytest.raises(ValueError, match="output shape"):
        DenoisingLoss(VP())(lambda x, t: x[:, :1], torch.randn(4, 2))
    with pytest.raises(ValueError, match="EDM preconditioning"):
        Denoiser(torch.nn.Identity(), EDM(), prediction="eps", preconditioning="edm")


def test_import_cost_on_top_of_torch():
    code = ("import time, torch; t0 = time.perf_counter(); import diffuse; "
            "print(time.perf_counter() - t0)")
    seconds = min(float(subprocess.check_output([sys.executable, "-c", code])) for _ in range(3))
    assert seconds < 0.5, f"import diffuse took {seconds:.3f} s on top of torch"
