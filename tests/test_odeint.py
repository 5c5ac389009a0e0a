import math

import torch

from diffuse.odeint import _A, _C, _E, dopri5


def test_dormand_prince_tableau_and_accuracy():
    for c, row in zip(_C, _A):
        assert math.isclose(sum(row), c, abs_tol=1e-14)
    assert math.isclose(sum(_E), 0.0, abs_tol=1e-15)
    # y' = y cos(t), y(t0) = y0  =>  y(t1) = y0 exp(sin t1 - sin t0), with per-sample start times.
    t0 = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    y0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for tol in (1e-6, 1e-10):
        (y,), nfe = dopri5(lambda t, y: (y[0] * torch.cos(t),), (y0,), t0, 6.0, tol, tol)
        exact = y0 * torch.exp(math.sin(6.0) - torch.sin(t0))
        assert (y - exact).abs().max() < 50 * tol, (tol, y - exact)
        assert nfe > 2


def test_each_sample_keeps_its_own_steps():
    """A sample's result does not depend on the batch it is solved in."""
    rhs = lambda t, y: (torch.cos(3 * t) * y[0] - 0.5 * y[0] ** 3,)  # noqa: E731
    y0 = torch.tensor([0.3, 2.0, -1.5], dtype=torch.float64)
    t0 = torch.zeros(3, dtype=torch.float64)
    (together,), _ = dopri5(rhs, (y0,), t0, 2.0, 1e-7, 1e-7)
    for i in range(3):
        (alone,), _ = dopri5(rhs, (y0[i:i + 1],), t0[i:i + 1], 2.0, 1e-7, 1e-7)
        assert float(alone[0]) == float(together[i])
