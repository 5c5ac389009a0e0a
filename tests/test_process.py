import math

import pytest
import torch

import diffuse
from diffuse import EDM, VE, VP, DiscreteVP, Flow, GaussianPath, process_from_config
from diffuse.process import named_betas

from conftest import all_processes

T = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)


@pytest.mark.parametrize("process", all_processes())
def test_log_snr_is_strictly_decreasing_and_inverts(process):
    t = T[T <= process.t_max]
    lam = process.log_snr(t)
    assert torch.all(lam[1:] < lam[:-1])
    torch.testing.assert_close(process.t_from_log_snr(lam), t, rtol=0, atol=1e-9)
    rho = process.sigma(t) / process.alpha(t)
    torch.testing.assert_close(process.t_from_sigma_ratio(rho), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("process", all_processes())
def test_log_snr_matches_alpha_and_sigma(process):
    expected = torch.log(process.alpha(T) ** 2 / process.sigma(T) ** 2)
    torch.testing.assert_close(process.log_snr(T), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("process", all_processes())
def test_derivatives_match_finite_differences(process):
    # off the knots of the discrete schedules, where the derivative jumps
    t = torch.tensor([0.1305, 0.3705, 0.6105, 0.8905], dtype=torch.float64)
    da, ds = process.derivatives(t)
    h = 1e-6
    torch.testing.assert_close(da, (process.alpha(t + h) - process.alpha(t - h)) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ds, (process.sigma(t + h) - process.sigma(t - h)) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("process", all_processes())
def test_prior_matches_the_noised_marginal_scale(process):
    draw = process.prior((100_000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(draw.std()) == pytest.approx(process.prior_std, rel=0.01)
    # the prior is N(0, sigma(t_max)^2 + alpha(t_max)^2 Var(x0)) for unit-variance data, up to
    # the data's share, which every process makes negligible at t_max
    a, s = float(process.alpha(process.t_max)), float(process.sigma(process.t_max))
    assert process.prior_std == pytest.approx((a**2 + s**2) ** 0.5, rel=0.01)


@pytest.mark.parametrize("process", [VP("linear"), VP("cosine"), VP.from_betas("linear")])
def test_variance_preserving(process):
    torch.testing.assert_close(process.alpha(T) ** 2 + process.sigma(T) ** 2, torch.ones_like(T))
    assert process.prior_std == 1.0


def test_closed_forms():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    vp = VP("linear", beta_min=0.1, beta_max=20)
    torch.testing.assert_close(vp.alpha(t) ** 2, torch.exp(-(0.1 * t + 0.5 * 19.9 * t**2)))
    ve = VE(0.01, 50)
    torch.testing.assert_close(ve.sigma(t), 0.01 * 5000.0**t)
    edm = EDM(0.002, 80, 0.5)
    torch.testing.assert_close(edm.sigma(t), 80 * t)
    assert edm.t_min == pytest.approx(0.002 / 80)
    flow = Flow()
    torch.testing.assert_close(flow.alpha(t), 1 - t)
    torch.testing.assert_close(flow.sigma(t), t)
    cos = VP("cosine")
    s = 0.008
    expected = math.cos((0.25 + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)
    assert float(cos.alpha(0.25)) == pytest.approx(expected, rel=1e-12)


def test_discrete_schedule_hits_alphas_cumprod_exactly():
    betas = named_betas("linear", 1000)
    process = VP.from_betas(betas)
    n = torch.arange(1000)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(process.alpha(process.timestep_to_t(n)) ** 2, alphas_cumprod, rtol=1e-12, atol=0)
    torch.testing.assert_close(process.t_to_timestep(process.timestep_to_t(n)), n.double())
    assert float(process.alpha(0.0)) == 1.0 and float(process.sigma(0.0)) == 0.0
    # between two steps log alpha_bar is linear in t
    mid = process.timestep_to_t(torch.tensor([10.5]))
    expected = 0.5 * (torch.log(alphas_cumprod[10]) + torch.log(alphas_cumprod[11]))
    torch.testing.assert_close(torch.log(process.alpha(mid) ** 2), expected.reshape(1))


def test_named_betas():
    torch.testing.assert_close(named_betas("linear", 4, 0.1, 0.4), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    torch.testing.assert_close(named_betas("scaled_linear", 2, 0.01, 0.04), torch.tensor([0.01, 0.04], dtype=torch.float64))
    cos = named_betas("squaredcos_cap_v2", 1000)
    assert cos.max() <= 0.999 and cos[-1] == pytest.approx(0.999)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        named_betas("quadratic")


def test_zero_terminal_snr_rescaling():
    process = VP.from_betas("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012,
                            rescale_zero_terminal_snr=True)
    original = VP.from_betas("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)
    assert float(process.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-20)
    assert float(process.alphas_cumprod[0]) == pytest.approx(float(original.alphas_cumprod[0]), rel=1e-12)
    assert float(process.alpha(1.0)) == 0.0 and float(process.sigma(1.0)) == 1.0
    assert torch.isfinite(process.log_snr(torch.tensor([0.5, 0.999]))).all()
    assert float(process.log_snr(1.0)) == -math.inf


def test_generic_inverse_by_bisection():
    class Custom(GaussianPath):  # a user-defined path needs only alpha and sigma
        def alpha(self, t):
            return torch.cos(torch.as_tensor(t, dtype=torch.float64) * 1.5)

        def sigma(self, t):
            return torch.sin(torch.as_tensor(t, dtype=torch.float64) * 1.5)

    process = Custom()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(t)), t, atol=1e-12, rtol=0)
    da, ds = process.derivatives(t)
    torch.testing.assert_close(da, -1.5 * torch.sin(1.5 * t))


@pytest.mark.parametrize("process", all_processes())
def test_q_sample_moments(process):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    t = 0.4
    x_t, eps = process.q_sample(x0, t, generator=g)
    torch.testing.assert_close(x_t, process.alpha(t) * x0 + process.sigma(t) * eps)
    a, s = float(process.alpha(t)), float(process.sigma(t))
    assert float(x_t.mean()) == pytest.approx(0.7 * a, abs=4 * s / math.sqrt(200_000))
    assert float(x_t.std()) == pytest.approx(s, rel=0.01)


def test_add_noise_per_sample_times_and_shape_check():
    process = VP()
    x0 = torch.randn(3, 2, 4, 4)
    eps = torch.randn_like(x0)
    t = torch.tensor([0.1, 0.5, 0.9])
    out = process.add_noise(x0, t, eps)
    for i in range(3):
        torch.testing.assert_close(out[i], float(process.alpha(t[i])) * x0[i] + float(process.sigma(t[i])) * eps[i])
    with pytest.raises(ValueError, match="noise shape"):
        process.add_noise(x0, t, eps[:, :1])


@pytest.mark.parametrize("process", all_processes())
def test_config_round_trip(process):
    import json
    rebuilt = process_from_config(json.loads(json.dumps(process.config())))
    assert type(rebuilt) is type(process)
    torch.testing.assert_close(rebuilt.alpha(T), process.alpha(T))
    torch.testing.assert_close(rebuilt.sigma(T), process.sigma(T))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown VP schedule"):
        VP("sigmoid")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VE(1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        EDM(sigma_data=0)
    with pytest.raises(ValueError, match="betas"):
        DiscreteVP([0.1, 1.5])
    with pytest.raises(ValueError, match="unknown process"):
        diffuse.get_process("subvp")
    with pytest.raises(ValueError, match="unknown process kind"):
        process_from_config({"kind": "nope"})
