"""Fitted step schedules (diffuse.samplers.optimize) on exact Gaussian mixtures.

The fit is judged the way it would be used: on noise it has not seen. Its reference, the exact
probability-flow ODE endpoint, is checked against an independent solver first.
"""

import math

import pytest
import torch

import diffuse
from diffuse import EDM, VP, Flow, GaussianMixture
from diffuse.samplers import make_times
from diffuse.samplers.optimize import ode_endpoint, optimize_schedule, rms_distance

F64 = torch.float64
PROCESS = VP.from_betas("linear")
# 6 sharp modes on a circle of radius 1: few-step samplers are far from the ODE here
_ANGLE = torch.arange(6, dtype=F64) * 2 * math.pi / 6
RING = GaussianMixture(torch.stack([_ANGLE.cos(), _ANGLE.sin()], 1), 0.05)


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def data():
    model = RING.denoiser(PROCESS)
    train, held_out = noise(128, 0), noise(512, 1)
    ends = (float(PROCESS.t_max), float(PROCESS.t_min))
    return model, train, held_out, ode_endpoint(model, PROCESS, train, *ends), \
        ode_endpoint(model, PROCESS, held_out, *ends)


def held_out_error(data, sampler, times, **options):
    model, _, held_out, _, reference = data
    x = diffuse.sample(model, PROCESS, held_out, sampler=sampler, schedule=times, **options)
    return rms_distance(x, reference)


def test_ode_endpoint_matches_an_independent_solver():
    """y = x/alpha against log(rho) with scipy's DOP853, then the same final denoising step."""
    from scipy.integrate import solve_ivp

    class RhoPath:  # alpha = 1, sigma = rho: the mixture's denoiser in y coordinates
        def alpha(self, rho):
            return torch.ones_like(rho)

        def sigma(self, rho):
            return rho

    denoise = RING.denoiser(RhoPath())
    x = noise(4, 2)
    first, last = 0.9, 0.002
    rho = lambda t: float(PROCESS.sigma(t) / PROCESS.alpha(t))  # noqa: E731
    expected = []
    for y0 in x / float(PROCESS.alpha(first)):
        def rhs(log_rho, y):
            y = torch.from_numpy(y)[None]
            return (y - denoise(y, torch.tensor([math.exp(log_rho)], dtype=F64))).numpy().ravel()
        sol = solve_ivp(rhs, (math.log(rho(first)), math.log(rho(last))), y0.numpy(), method="DOP853",
                        rtol=1e-12, atol=1e-12)
        expected.append(denoise(torch.from_numpy(sol.y[:, -1])[None], torch.tensor([rho(last)], dtype=F64)))
    ours = ode_endpoint(RING.denoiser(PROCESS), PROCESS, x, first, last, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, torch.cat(expected), rtol=0, atol=1e-7)


def test_ode_endpoint_is_the_limit_of_the_samplers(data):
    model, _, held_out, _, reference = data
    error = {steps: held_out_error(data, "dpmpp_3m", make_times(PROCESS, "log_snr", steps)) for steps in (25, 100)}
    # observed 5.8e-3 -> 4.0e-4: second order overall (the multistep start-up steps are lower order)
    assert error[100] < 1e-3 and error[100] < error[25] / 8, error


@pytest.mark.parametrize("sampler, steps, options", [
    ("dpmpp_2m", 6, {}),
    ("unipc", 6, {"order": 3}),
    ("heun", 4, {}),
])
def test_fitted_schedule_is_valid_and_beats_its_start_on_held_out_noise(data, sampler, steps, options):
    model, train, _, train_reference, _ = data
    init = make_times(PROCESS, "log_snr", steps)
    fit = lambda: optimize_schedule(model, PROCESS, sampler, steps, train, reference=train_reference,  # noqa: E731
                                    init="log_snr", iterations=60, **options)
    times = fit()
    assert times.dtype == F64 and times.shape == (steps,)
    assert (times[1:] < times[:-1]).all()
    assert times[0] == init[0] and times[-1] == init[-1]
    torch.testing.assert_close(make_times(PROCESS, times), times, rtol=0, atol=0)  # a valid explicit schedule
    assert torch.equal(fit(), times)  # deterministic
    before, after = held_out_error(data, sampler, init, **options), held_out_error(data, sampler, times, **options)
    assert after < 0.8 * before, (before, after)


def test_free_last_may_stop_earlier_and_still_improves(data):
    model, train, _, train_reference, _ = data
    init = make_times(PROCESS, "log_snr", 5)
    times = optimize_schedule(model, PROCESS, "dpmpp_2m", 5, train, reference=train_reference,
                              iterations=60, free_last=True)
    assert times[0] == init[0] and times[-1] >= init[-1] and (times[1:] < times[:-1]).all()
    assert held_out_error(data, "dpmpp_2m", times) < held_out_error(data, "dpmpp_2m", init)


def test_reference_is_computed_when_not_given_and_other_processes_and_predictions_work():
    process = EDM()
    x0_model = RING.denoiser(process)

    def eps_model(x, t):
        return diffuse.convert(x0_model(x, t), "x0", "eps", x, t, process)

    train = noise(32, 3)
    a = optimize_schedule(eps_model, process, "dpmpp_2m", 5, train, init="karras", iterations=25, prediction="eps")
    b = optimize_schedule(x0_model, process, "dpmpp_2m", 5, train, init="karras", iterations=25)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert (a[1:] < a[:-1]).all() and a[0] == make_times(process, "karras", 5)[0]


def test_no_iterations_returns_the_initial_schedule(data):
    model, train, _, train_reference, _ = data
    times = optimize_schedule(model, PROCESS, "ddim", 7, train, reference=train_reference, init="karras", iterations=0)
    assert torch.equal(times, make_times(PROCESS, "karras", 7))


def test_bad_inputs_raise(data):
    model, train, _, train_reference, _ = data
    fit = lambda **kw: optimize_schedule(**{"model": model, "process": PROCESS, "sampler": "dpmpp_2m",  # noqa: E731
                                            "steps": 5, "noise": train, "reference": train_reference,
                                            "iterations": 3, **kw})
    for sampler in ("ddpm", "sde", "euler_ancestral", "adaptive", "nope"):
        with pytest.raises(ValueError, match="deterministic"):
            fit(sampler=sampler)
    with pytest.raises(ValueError, match="stochastic"):
        fit(sampler="ddim", eta=0.5)
    with pytest.raises(ValueError, match="stochastic"):
        fit(sampler="heun", churn=1.0)
    with pytest.raises(ValueError, match="no option"):
        fit(order=3)  # dpmpp_2m has no order
    for steps in (2, 0, 4.5, True):
        with pytest.raises(ValueError, match="steps"):
            fit(steps=steps)
    for iterations in (-1, 2.5):
        with pytest.raises(ValueError, match="iterations"):
            fit(iterations=iterations)
    with pytest.raises(ValueError, match="max_params"):
        fit(max_params=0)
    with pytest.raises(ValueError, match="noise"):
        fit(noise=train.numpy())
    with pytest.raises(ValueError, match="noise"):
        fit(noise=torch.zeros(0, 2, dtype=F64))
    with pytest.raises(ValueError, match="reference"):
        fit(reference=train_reference[:5])
    with pytest.raises(ValueError, match="unknown schedule"):
        fit(init="cosine")
    with pytest.raises(ValueError, match="explicit schedule of 4 times"):
        fit(init=make_times(PROCESS, "log_snr", 4))
    with pytest.raises(ValueError, match="say what the model predicts"):
        fit(model=lambda x, t: x)
    with pytest.raises(ValueError, match="log-SNR must be finite"):
        optimize_schedule(RING.denoiser(Flow()), Flow(), "dpmpp_2m", 5, train, iterations=3, init="uniform")
    with pytest.raises(ValueError, match="later time"):
        ode_endpoint(model, PROCESS, train, 0.1, 0.5)
