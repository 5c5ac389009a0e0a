"""Exact parity with diffusers' DDIM and DDPM schedulers (the test peer).

Both sides sample the same exact model: a Gaussian mixture whose noise prediction eps(x, n) is
computed in closed form at diffusers' own discrete alphas_cumprod[n]. Our samplers call it at the
discrete timestep their continuous time maps to (t = (n + 1) / N); diffusers' loop calls it at its
integer timesteps. Both loops start from the same noise and draw their per-step noise from
identically seeded generators, so the samples must agree to rounding.

Random draws: diffusers draws variance noise with randn_tensor on the generator once per step
(DDIM with eta > 0: every step, the last one with zero weight; DDPM: every step whose timestep is
> 0). Ours draws torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype) once per step
except the last step to clean data. So the draws line up one for one up to the last step.

Two precision modes:
- "as_is": diffusers untouched. It keeps betas and alphas_cumprod in float32 and forms its step
  coefficients from those float32 scalars; our process is built the way a user would, from the
  same betas converted to float64. Differences of ~1e-6..1e-5 remain: e.g. 1 - alphas_cumprod[0]
  = beta_0 = 1e-4 is off by 1.7e-4 (relative) in float32, and a 1000-step chain accumulates the
  rounding of its float32 coefficients. The tolerances are set above that and far below any real
  discrepancy (a wrong timestep, variance or noise draw moves samples by 1e-2 or more).
- "float64": the scheduler's alphas_cumprod (and its terminal 1) are cast to float64 and our
  process is built from exactly those alphas_cumprod; then both sides do float64 arithmetic on
  identical tables and must agree to ~1e-13.
"""

from __future__ import annotations

import pytest
import torch

import diffuse
from diffuse import VP, GaussianMixture
from diffuse.interop.schedulers import scheduler_times
from diffuse.process import named_betas
from diffuse.samplers import make_times

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

F64, F32 = torch.float64, torch.float32
BATCH = 64
N_TRAIN = 1000

# (rtol, atol) for assert_close, by precision mode and sample dtype.
TOL = {
    ("as_is", F64): dict(rtol=1e-5, atol=1e-5),
    ("as_is", F32): dict(rtol=1e-4, atol=1e-4),
    ("float64", F64): dict(rtol=1e-11, atol=1e-11),
}
# A 1000-step chain on diffusers' float32 tables drifts further (observed max |diff| 5.5e-5).
TOL_AS_IS_LONG = dict(rtol=2e-4, atol=2e-4)

# Beta schedules as diffusers configures them.
SCHEDULE_KWARGS = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}



@pytest.fixture(autouse=True)
def _single_thread():
    """The tensors here are tiny ([64, 16]); intra-op threads only add synchronisation, which
    costs milliseconds per op on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# The shared exact model
# ------------------------------------------------------------------------------------------------


def mixture(dim: int) -> GaussianMixture:
    """A small mixture with narrow components, so the exact denoiser is strongly non-linear in x
    (a linear model would hide errors in how x0 and eps are recombined)."""
    g = torch.Generator().manual_seed(1234 + dim)
    k = 4 if dim == 2 else 3
    means = 1.5 * (torch.rand(k, dim, generator=g, dtype=F64) * 2 - 1)
    stds = torch.tensor([0.05, 0.1, 0.2, 0.3][:k], dtype=F64)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1][:k], dtype=F64)
    return GaussianMixture(means, stds, weights)


class _TabulatedVP:
    """A process indexed by the integer timestep n: alpha = sqrt(abar[n]), sigma = sqrt(1 - abar[n]).

    It provides only what the mixture's exact denoiser reads (alpha and sigma).
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod.to(F64)

    def alpha(self, n):
        return self.alphas_cumprod[n.round().long()].sqrt()

    def sigma(self, n):
        return (1 - self.alphas_cumprod[n.round().long()]).sqrt()


def eps_model(mix: GaussianMixture, alphas_cumprod: torch.Tensor):
    """f(x, n): the exact E[eps | x_n] at alphas_cumprod[n], for n an int, a 0-d or a [B] tensor."""
    table = _TabulatedVP(alphas_cumprod)
    denoise = mix.denoiser(table)

    def f(x: torch.Tensor, n) -> torch.Tensor:
        n = torch.as_tensor(n).long()
        if n.ndim == 0:
            n = n.expand(x.shape[0])
        x64 = x.to(F64)
        x0 = denoise(x64, n)
        a = table.alpha(n.to(F64))[:, None]
        s = table.sigma(n.to(F64))[:, None]
        return ((x64 - a * x0) / s).to(x.dtype)

    return f


def ours_model(f, process):
    """The same model called our way: continuous time t -> discrete timestep n."""
    return lambda x, t: f(x, process.t_to_timestep(t).round().long())


def start_noise(dim: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(BATCH, dim, generator=g, dtype=F64).to(dtype)


# ------------------------------------------------------------------------------------------------
# The two sides
# ------------------------------------------------------------------------------------------------


def ddim_scheduler(kind: str = "linear", spacing: str = "leading", steps_offset: int = 0) -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=N_TRAIN, clip_sample=False, set_alpha_to_one=True,
                         timestep_spacing=spacing, steps_offset=steps_offset,
                         prediction_type="epsilon", **SCHEDULE_KWARGS[kind])


def ddpm_scheduler(kind: str, variance_type: str, spacing: str = "leading") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=N_TRAIN, clip_sample=False, variance_type=variance_type,
                         timestep_spacing=spacing, prediction_type="epsilon",
                         **SCHEDULE_KWARGS[kind])


def setup(sched, steps: int, mode: str):
    """Set the scheduler's timesteps, apply the precision mode, and build our process."""
    sched.set_timesteps(steps)
    if mode == "as_is":
        return VP.from_betas(torch.tensor(sched.betas.numpy(), dtype=F64))
    assert mode == "float64"
    sched.alphas_cumprod = sched.alphas_cumprod.to(F64)
    for terminal in ("final_alpha_cumprod", "one"):  # DDIM's and DDPM's alpha_bar of clean data
        if hasattr(sched, terminal):
            setattr(sched, terminal, getattr(sched, terminal).to(F64))
    abar = sched.alphas_cumprod
    process = VP.from_betas(1 - abar / torch.cat([torch.ones(1, dtype=F64), abar[:-1]]))
    torch.testing.assert_close(process.alphas_cumprod, abar, rtol=1e-14, atol=0)
    return process


def run_diffusers(sched, f, noise, seed: int, **step_kwargs) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = noise.clone()
    for n in sched.timesteps:
        x = sched.step(f(x, n), n, x, generator=g, **step_kwargs).prev_sample
    return x


def run_ours(process, f, noise, seed: int, **kwargs) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return diffuse.sample(ours_model(f, process), process, noise.clone(), prediction="eps",
                          generator=g, **kwargs)


def our_timesteps(process, times: torch.Tensor) -> torch.Tensor:
    return process.t_to_timestep(times).round().long()


def assert_same_samples(ours: torch.Tensor, theirs: torch.Tensor, tol: dict):
    assert ours.dtype == theirs.dtype
    assert torch.isfinite(ours).all()
    # The samples have moved far from the start noise: agreement is not trivial.
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, **tol)


# ------------------------------------------------------------------------------------------------
# The model itself
# ------------------------------------------------------------------------------------------------


def test_shared_model_is_called_at_the_same_timestep_and_is_exact():
    """Our wrapper hits each integer timestep exactly, our process has alpha_bar = alphas_cumprod[n]
    at t = (n + 1) / N, and f is the mixture's exact eps there."""
    sched = ddim_scheduler("linear")
    process = setup(sched, 10, "float64")
    mix = mixture(2)
    f = eps_model(mix, sched.alphas_cumprod)
    n = torch.arange(N_TRAIN)
    assert torch.equal(process.t_to_timestep(process.timestep_to_t(n)).round().long(), n)
    torch.testing.assert_close(process.alpha(process.timestep_to_t(n)) ** 2, sched.alphas_cumprod,
                               rtol=1e-14, atol=0)

    x = start_noise(2, F64)
    for step in (0, 10, 500, 999):
        t = process.timestep_to_t(torch.full((BATCH,), step))
        x0 = mix.denoiser(process)(x, t)
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        torch.testing.assert_close(f(x, step), (x - a * x0) / s, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours_model(f, process)(x, t), f(x, step), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# DDIM
# ------------------------------------------------------------------------------------------------

CASES = [  # (precision mode, dim, sample dtype)
    pytest.param("as_is", 2, F64, id="as_is-2d-f64"),
    pytest.param("as_is", 16, F64, id="as_is-16d-f64"),
    pytest.param("as_is", 16, F32, id="as_is-16d-f32"),
    pytest.param("float64", 16, F64, id="float64-16d-f64"),
]


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("mode, dim, dtype", CASES)
def test_ddim_matches_diffusers(kind, steps, eta, mode, dim, dtype):
    sched = ddim_scheduler(kind)
    process = setup(sched, steps, mode)
    times = scheduler_times(process, sched.timesteps)  # DDIM's own leading spacing keeps timestep 0
    assert torch.equal(our_timesteps(process, times), sched.timesteps)

    f = eps_model(mixture(dim), sched.alphas_cumprod)
    noise = start_noise(dim, dtype)
    theirs = run_diffusers(sched, f, noise, seed=11, eta=eta)
    ours = run_ours(process, f, noise, seed=11, sampler="ddim", steps=steps, schedule=times, eta=eta)
    assert_same_samples(ours, theirs, TOL[mode, dtype])


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("mode", ["as_is", "float64"])
def test_ddim_matches_diffusers_with_steps_offset(eta, mode):
    """diffusers' steps_offset=1 (Stable Diffusion's DDIM config), its timesteps as our times."""
    steps = 20
    sched = ddim_scheduler("scaled_linear", steps_offset=1)
    process = setup(sched, steps, mode)
    times = scheduler_times(process, sched.timesteps)
    assert torch.equal(our_timesteps(process, times), sched.timesteps)

    f = eps_model(mixture(16), sched.alphas_cumprod)
    noise = start_noise(16, F64)
    theirs = run_diffusers(sched, f, noise, seed=5, eta=eta)
    ours = run_ours(process, f, noise, seed=5, sampler="ddim", steps=steps, schedule=times, eta=eta)
    assert_same_samples(ours, theirs, TOL[mode, F64])


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("mode", ["as_is", "float64"])
def test_ddim_trailing_matches_diffusers_when_steps_divide(steps, eta, mode):
    """When the step count divides 1000, diffusers' DDIM stride (1000 // steps) lands on the next
    of its own trailing timesteps, so the samples must agree. (For other counts, and for linspace
    spacing, its previous timestep is not the next one in its list; no equality is asserted.)"""
    sched = ddim_scheduler("linear", spacing="trailing")
    process = setup(sched, steps, mode)
    assert torch.equal(our_timesteps(process, make_times(process, "trailing", steps)), sched.timesteps)

    f = eps_model(mixture(16), sched.alphas_cumprod)
    noise = start_noise(16, F64)
    theirs = run_diffusers(sched, f, noise, seed=3, eta=eta)
    ours = run_ours(process, f, noise, seed=3, sampler="ddim", steps=steps, schedule="trailing", eta=eta)
    assert_same_samples(ours, theirs, TOL[mode, F64])


# ------------------------------------------------------------------------------------------------
# DDPM
# ------------------------------------------------------------------------------------------------

VARIANCES = [pytest.param("fixed_small", "small", id="small"),
             pytest.param("fixed_large", "large", id="large")]


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
@pytest.mark.parametrize("variance_type, variance", VARIANCES)
@pytest.mark.parametrize("mode, dim, dtype", CASES)
def test_ddpm_matches_diffusers(kind, variance_type, variance, mode, dim, dtype):
    steps = 50
    sched = ddpm_scheduler(kind, variance_type)
    process = setup(sched, steps, mode)
    times = scheduler_times(process, sched.timesteps)

    f = eps_model(mixture(dim), sched.alphas_cumprod)
    noise = start_noise(dim, dtype)
    theirs = run_diffusers(sched, f, noise, seed=21)
    ours = run_ours(process, f, noise, seed=21, sampler="ddpm", steps=steps, schedule=times,
                    variance=variance)
    assert_same_samples(ours, theirs, TOL[mode, dtype])


@pytest.mark.parametrize("variance_type, variance", VARIANCES)
@pytest.mark.parametrize("mode", ["as_is", "float64"])
def test_ddpm_full_chain_matches_diffusers(variance_type, variance, mode):
    """All 1000 ancestral steps of Ho et al. (2-D mixture to keep it quick)."""
    sched = ddpm_scheduler("linear", variance_type)
    process = setup(sched, N_TRAIN, mode)
    assert torch.equal(our_timesteps(process, make_times(process, "trailing", N_TRAIN)),
                       torch.arange(N_TRAIN - 1, -1, -1))
    assert torch.equal(sched.timesteps, torch.arange(N_TRAIN - 1, -1, -1))

    f = eps_model(mixture(2), sched.alphas_cumprod)
    noise = start_noise(2, F64)
    theirs = run_diffusers(sched, f, noise, seed=33)
    ours = run_ours(process, f, noise, seed=33, sampler="ddpm", steps=N_TRAIN, schedule="trailing",
                    variance=variance)
    assert_same_samples(ours, theirs, TOL_AS_IS_LONG if mode == "as_is" else TOL[mode, F64])


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 37])
@pytest.mark.parametrize("mode", ["as_is", "float64"])
def test_ddpm_small_matches_diffusers_on_other_spacings(spacing, steps, mode):
    """diffusers' DDPM steps to the next timestep of its own list, so every spacing is comparable.
    Its last timestep is > 0 here, where it still adds noise with variance clamped to 1e-20
    (std 1e-10, below the tolerances). 'fixed_large' would add noise of variance
    1 - alphas_cumprod[n_last] on that last step, where we step to clean data; it is left out."""
    sched = ddpm_scheduler("linear", "fixed_small", spacing=spacing)
    process = setup(sched, steps, mode)
    times = scheduler_times(process, sched.timesteps)

    f = eps_model(mixture(16), sched.alphas_cumprod)
    noise = start_noise(16, F64)
    theirs = run_diffusers(sched, f, noise, seed=9)
    ours = run_ours(process, f, noise, seed=9, sampler="ddpm", steps=steps, schedule=times,
                    variance="small")
    # The 1e-10 std noise diffusers adds on its last step is the only float64 difference.
    tol = TOL[mode, F64] if mode == "as_is" else dict(rtol=1e-9, atol=1e-9)
    assert_same_samples(ours, theirs, tol)


# ------------------------------------------------------------------------------------------------
# Timesteps and beta schedules
# ------------------------------------------------------------------------------------------------


def multistep_scheduler(spacing: str, steps_offset: int = 0):
    from diffusers import DPMSolverMultistepScheduler
    return DPMSolverMultistepScheduler(num_train_timesteps=N_TRAIN, timestep_spacing=spacing,
                                       steps_offset=steps_offset, **SCHEDULE_KWARGS["linear"])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 3, 10, 25, 50, 998, 999, 1000])
def test_named_spacings_are_diffusers_multistep_timesteps(spacing, steps):
    """Our leading / trailing / linspace are the timesteps of diffusers' multistep solvers (which,
    like ours, end with a step to clean data); trailing is also DDIM's and DDPM's."""
    process = VP.from_betas("linear")
    schedulers = [multistep_scheduler(spacing)]
    if spacing == "trailing":
        schedulers += [ddim_scheduler("linear", spacing=spacing), ddpm_scheduler("linear", "fixed_small", spacing)]
    if spacing != "trailing" and steps >= N_TRAIN:
        with pytest.raises(ValueError, match="exceed"):
            make_times(process, spacing, steps)
        return
    times = make_times(process, spacing, steps)
    torch.testing.assert_close(times, (our_timesteps(process, times).to(F64) + 1) / N_TRAIN, rtol=0, atol=1e-15)
    for sched in schedulers:
        sched.set_timesteps(steps)
        assert torch.equal(our_timesteps(process, times), sched.timesteps.long()), type(sched).__name__


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_ddim_spacings_are_reproduced_as_explicit_times(steps):
    """DDIM's leading and linspace keep timestep 0; scheduler_times gives them exactly."""
    process = VP.from_betas("linear")
    for spacing in ("leading", "linspace"):
        sched = ddim_scheduler("linear", spacing=spacing)
        sched.set_timesteps(steps)
        times = make_times(process, scheduler_times(process, sched.timesteps), steps)
        assert torch.equal(our_timesteps(process, times), sched.timesteps)
        assert int(sched.timesteps[-1]) == 0


@pytest.mark.parametrize("offset", [1, 3])
@pytest.mark.parametrize("steps", [10, 25, 50, 998])
def test_leading_offset_matches_diffusers_steps_offset(offset, steps):
    sched = multistep_scheduler("leading", steps_offset=offset)
    sched.set_timesteps(steps)
    process = VP.from_betas("linear")
    if int(sched.timesteps.max()) > N_TRAIN - 1:
        # diffusers hands out timesteps past its own schedule (998 steps, offset 3: up to 1001);
        # we refuse such a schedule.
        with pytest.raises(ValueError, match="must lie in"):
            make_times(process, "leading", steps, offset=offset)
        return
    ours = our_timesteps(process, make_times(process, "leading", steps, offset=offset))
    assert torch.equal(ours, sched.timesteps.long())


def test_rescaled_zero_terminal_snr_matches_diffusers():
    ours = VP.from_betas("linear", rescale_zero_terminal_snr=True)
    sched = DDIMScheduler(beta_schedule="linear", rescale_betas_zero_snr=True)
    theirs = sched.alphas_cumprod.to(F64)
    assert float(ours.alphas_cumprod[-1]) == 0.0 == float(theirs[-1])
    torch.testing.assert_close(ours.alphas_cumprod, theirs, rtol=0, atol=1e-6)  # observed 4.2e-7
    # diffusers rescales in float32, where sqrt(abar) - sqrt(abar_T) cancels near the end: its
    # last betas are off by up to 2e-6. The same rescaling done in float64 agrees to rounding.
    torch.testing.assert_close(ours.betas, sched.betas.to(F64), rtol=0, atol=1e-5)
    rescale = diffusers.schedulers.scheduling_ddim.rescale_zero_terminal_snr
    torch.testing.assert_close(ours.betas, rescale(named_betas("linear")), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name, kwargs", [
    ("linear", dict(beta_start=1e-4, beta_end=0.02)),
    ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
    ("squaredcos_cap_v2", dict()),
])
def test_named_beta_schedules_match_diffusers(name, kwargs):
    sched = DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule=name, **kwargs)
    # diffusers stores float32: compare at float32 resolution.
    torch.testing.assert_close(named_betas(name, N_TRAIN, **kwargs).to(F32), sched.betas,
                               rtol=2e-7, atol=1e-9)
    process = VP.from_betas(name, N_TRAIN, **kwargs)
    torch.testing.assert_close(process.alphas_cumprod, sched.alphas_cumprod.to(F64), rtol=2e-6, atol=1e-12)
