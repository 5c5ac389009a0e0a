import pytest
import torch

from diffuse import PREDICTIONS, convert
from diffuse.parameterization import PathCoefficients, from_x0_eps, to_x0_eps, x0_error_scale

from conftest import all_processes


def _batch(process, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(16, generator=g, dtype=torch.float64)
    t = t.clamp(max=process.t_max)
    return x0, eps, t, process.add_noise(x0, t, eps)


@pytest.mark.parametrize("process", all_processes())
def test_round_trip_through_every_parameterisation(process):
    x0, eps, t, x_t = _batch(process)
    chain = ["eps", "x0", "v", "score", "velocity", "eps"]
    value = eps
    for source, target in zip(chain, chain[1:]):
        value = convert(value, source, target, x_t, t, process)
    torch.testing.assert_close(value, eps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("process", all_processes())
def test_every_pair_converts_exactly(process):
    x0, eps, t, x_t = _batch(process, seed=1)
    c = PathCoefficients.at(process, t)
    targets = {kind: from_x0_eps(kind, x0, eps, c) for kind in PREDICTIONS}
    for source in PREDICTIONS:
        got_x0, got_eps = to_x0_eps(source, targets[source], x_t, c)
        torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-8)
        torch.testing.assert_close(got_eps, eps, rtol=0, atol=1e-8)
        for target in PREDICTIONS:
            torch.testing.assert_close(convert(targets[source], source, target, x_t, t, process),
                                       targets[target], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("process", all_processes())
def test_definitions(process):
    x0, eps, t, x_t = _batch(process, seed=2)
    c = PathCoefficients.at(process, t)
    a, s = c.alpha.reshape(-1, 1, 1, 1), c.sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(from_x0_eps("v", x0, eps, c), a * eps - s * x0)
    torch.testing.assert_close(from_x0_eps("score", x0, eps, c), -eps / s)
    # velocity is the time derivative of the path at fixed (x0, eps)
    h = 1e-6
    finite = (process.add_noise(x0, t + h, eps) - process.add_noise(x0, t - h, eps)) / (2 * h)
    torch.testing.assert_close(from_x0_eps("velocity", x0, eps, c), finite, rtol=1e-5, atol=1e-6)


def test_flow_velocity_is_eps_minus_x0():
    from diffuse import Flow
    process = Flow()
    x0, eps, t, x_t = _batch(process, seed=3)
    c = PathCoefficients.at(process, t)
    torch.testing.assert_close(from_x0_eps("velocity", x0, eps, c), eps - x0)


@pytest.mark.parametrize("process", all_processes())
def test_x0_error_scale_is_the_jacobian(process):
    x0, eps, t, x_t = _batch(process, seed=4)
    c = PathCoefficients.at(process, t)
    for kind in PREDICTIONS:
        prediction = from_x0_eps(kind, x0, eps, c)
        bumped, _ = to_x0_eps(kind, prediction + 1e-3, x_t, c)
        change = (bumped - x0).flatten(1).mean(1) / 1e-3
        torch.testing.assert_close(change.abs(), x0_error_scale(kind, c).abs(), rtol=1e-6, atol=1e-9)


def test_unknown_prediction():
    from diffuse import VP
    with pytest.raises(ValueError, match="unknown prediction"):
        convert(torch.zeros(1, 2), "epsilon", "x0", torch.zeros(1, 2), torch.tensor([0.5]), VP())
