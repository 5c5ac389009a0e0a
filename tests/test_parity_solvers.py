"""Parity of the multistep solvers with diffusers (the test peer), and its DDIM stride bug.

The setup is that of test_parity_diffusers.py, whose helpers are reused: both sides sample the exact
eps of a Gaussian mixture at diffusers' own alphas_cumprod[n], from the same noise, on the same
integer timesteps (ours at t = (n + 1) / N). Our named spacings are those of its multistep
schedulers ('linspace' and 'leading' over steps + 1 points, the last dropped).

Precision modes, as there, plus what the multistep schedulers add:
- "as_is": diffusers untouched (float32 tables).
- "float64": alphas_cumprod cast to float64 as there; in addition `sigmas`, which set_timesteps
  always stores as float32 (sqrt((1 - abar)/abar) at its timesteps, then alpha = 1/sqrt(1 + s^2),
  sigma = s alpha and lambda = log alpha - log sigma are derived from it at every step), is rebuilt
  in float64 from the same alphas_cumprod. That is the only conversion that matters: the round trip
  abar -> s -> alpha is exact to rounding in float64.
- DPMSolverMultistepScheduler.step() casts the sample to float32 before its update (for all input
  dtypes), which limits float64 parity through step() to ~1e-7; the float64 test therefore also
  drives its own update functions (first- and second-order DPM-Solver++) without step().
"""

from __future__ import annotations

import math

import pytest
import torch

import diffuse
from diffuse import VP, GaussianMixture
from diffuse.samplers import make_times

diffusers = pytest.importorskip("diffusers")
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler  # noqa: E402
from test_parity_diffusers import (  # noqa: E402
    F32, F64, N_TRAIN, SCHEDULE_KWARGS, ddim_scheduler, eps_model, mixture, run_diffusers,
    run_ours, setup, start_noise,
)

# diffusers' set_timesteps under numpy 2 (np.array of a tensor): not ours to fix here.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

STEPS = [5, 10, 20, 25]
# (precision mode, sample dtype) -> assert_close tolerances.
TOL = {
    ("as_is", F64): dict(rtol=1e-5, atol=1e-5),     # observed max |diff| 1.7e-6
    ("as_is", F32): dict(rtol=2e-5, atol=2e-5),     # observed 1.8e-6
    ("float64", F64): dict(rtol=1e-10, atol=1e-10),  # observed 4.5e-14
}
MODES = [pytest.param("as_is", F64, id="as_is-f64"), pytest.param("as_is", F32, id="as_is-f32"),
         pytest.param("float64", F64, id="float64")]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# Both sides
# ------------------------------------------------------------------------------------------------


def dpm_solver(spacing: str) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=N_TRAIN, algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
        prediction_type="epsilon", timestep_spacing=spacing, use_karras_sigmas=False,
        **SCHEDULE_KWARGS["linear"])


def unipc_scheduler(spacing: str, order: int, variant: str, lower_order_final: bool = True):
    return UniPCMultistepScheduler(
        num_train_timesteps=N_TRAIN, predict_x0=True, solver_type=variant, solver_order=order,
        lower_order_final=lower_order_final, final_sigmas_type="zero", disable_corrector=[],
        prediction_type="epsilon", timestep_spacing=spacing, **SCHEDULE_KWARGS["linear"])


def setup_multistep(sched, steps: int, mode: str) -> VP:
    process = setup(sched, steps, mode)
    if mode == "float64":
        abar = sched.alphas_cumprod[sched.timesteps]
        sched.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=F64)])
    return process


def our_times(sched, process, spacing: str, steps: int) -> torch.Tensor:
    """Our named spacing, checked to be diffusers' timesteps."""
    times = make_times(process, spacing, steps)
    assert torch.equal(process.t_to_timestep(times).round().long(), sched.timesteps)
    return times


def run_multistep(sched, f, noise, last_step: bool = True):
    """diffusers' sampling loop. Returns its final sample (None without the last step) and its x0
    estimate at the last model call, which its last step (to sigma = 0) returns when it is finite."""
    x = noise.clone()
    last = len(sched.timesteps) - 1
    for k, n in enumerate(sched.timesteps):
        eps = f(x, n)
        if k == last:
            x0 = sched.convert_model_output(eps, sample=x)
            if not last_step:
                return None, x0
        x = sched.step(eps, n, x).prev_sample
    return x, x0


def check_same(ours, theirs, tol):
    assert ours.dtype == theirs.dtype
    assert torch.isfinite(ours).all()
    assert theirs.abs().max() > 0.1  # far from zero: the comparison is not trivial
    torch.testing.assert_close(ours, theirs, **tol)


# ------------------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("mode, dtype", MODES)
def test_dpmpp_2m_matches_diffusers(spacing, steps, mode, dtype):
    sched = dpm_solver(spacing)
    process = setup_multistep(sched, steps, mode)
    f = eps_model(mixture(16), sched.alphas_cumprod)
    noise = start_noise(16, dtype)
    theirs, x0 = run_multistep(sched, f, noise)
    assert torch.equal(theirs, x0)  # its last step is first order: x = D
    ours = run_ours(process, f, noise, seed=0, sampler="dpmpp_2m",
                    schedule=our_times(sched, process, spacing, steps))
    # Through step(), the float32 cast of the sample bounds float64 parity (observed 4.5e-7).
    tol = dict(rtol=2e-6, atol=2e-6) if mode == "float64" else TOL[mode, dtype]
    check_same(ours, theirs, tol)


def run_dpm_solver_updates(sched, f, noise):
    """diffusers' DPM-Solver++ update functions with step()'s order rule for solver_order=2 and
    final_sigmas_type='zero' (first order on the first and the last step), without step()'s cast
    of the sample to float32."""
    x = noise.clone()
    last = len(sched.timesteps) - 1
    sched.set_begin_index(0)
    sched._init_step_index(sched.timesteps[0])
    for k, n in enumerate(sched.timesteps):
        d = sched.convert_model_output(f(x, n), sample=x)
        sched.model_outputs = [sched.model_outputs[-1], d]
        if k in (0, last):
            x = sched.dpm_solver_first_order_update(d, sample=x)
        else:
            x = sched.multistep_dpm_solver_second_order_update(sched.model_outputs, sample=x)
        sched._step_index += 1
    return x


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
@pytest.mark.parametrize("steps", STEPS)
def test_dpmpp_2m_matches_diffusers_update_rules_in_float64(spacing, steps):
    sched = dpm_solver(spacing)
    process = setup_multistep(sched, steps, "float64")
    f = eps_model(mixture(16), sched.alphas_cumprod)
    noise = start_noise(16, F64)
    theirs = run_dpm_solver_updates(sched, f, noise)
    ours = run_ours(process, f, noise, seed=0, sampler="dpmpp_2m",
                    schedule=our_times(sched, process, spacing, steps))
    check_same(ours, theirs, TOL["float64", F64])  # observed 3.5e-14


# ------------------------------------------------------------------------------------------------
# UniPC
# ------------------------------------------------------------------------------------------------


def compare_unipc(spacing, steps, mode, dtype, order, variant, lower_order_final=True):
    sched = unipc_scheduler(spacing, order, variant, lower_order_final)
    process = setup_multistep(sched, steps, mode)
    f = eps_model(mixture(16), sched.alphas_cumprod)
    noise = start_noise(16, dtype)
    # diffusers' step to sigma = 0 is x = D, exactly, where it works: we compare with that D. It
    # gives NaN for bh1, forming alpha * B(h) * 0 with B(h) = -h = -inf; without lower_order_final
    # it extrapolates to lambda = inf with r_k = 0: NaN at order 2, a singular solve at order 3.
    theirs, x0 = run_multistep(sched, f, noise, last_step=lower_order_final)
    if lower_order_final:
        assert torch.equal(theirs, x0) or (variant == "bh1" and torch.isnan(theirs).all())
    ours = run_ours(process, f, noise, seed=0, sampler="unipc",
                    schedule=our_times(sched, process, spacing, steps),
                    order=order, variant=variant, lower_order_final=lower_order_final)
    check_same(ours, x0, TOL[mode, dtype])


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("mode, dtype", MODES)
def test_unipc_matches_diffusers(variant, order, steps, mode, dtype):
    compare_unipc("trailing", steps, mode, dtype, order, variant)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_unipc_matches_diffusers_on_its_other_spacings(variant, order, spacing):
    compare_unipc(spacing, 10, "float64", F64, order, variant)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [5, 20])
def test_unipc_without_lower_order_final_matches_diffusers(variant, order, steps):
    """Full order up to the last step; only the step to clean data is first order."""
    compare_unipc("trailing", steps, "float64", F64, order, variant, lower_order_final=False)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_calls_the_model_once_per_step(order):
    """The corrector reuses the evaluation at the new point: no extra call, none after the last step."""
    process = VP.from_betas("linear", N_TRAIN)
    model = mixture(2).denoiser(process)
    times = make_times(process, "trailing", 7)
    calls = []

    def counting(x, t):
        calls.append(float(t[0]))
        return model(x, t)

    diffuse.sample(counting, process, start_noise(2, F64), sampler="unipc", schedule=times,
                   prediction="x0", order=order)
    assert calls == times.tolist()


def test_unipc_variants_differ_and_orders_differ():
    """The options reach the update: bh1 and bh2 differ only through the weight B(h)/2 used for
    a single earlier point, orders through the number of points."""
    process = VP.from_betas("linear", N_TRAIN)
    model = mixture(16).denoiser(process)
    noise = start_noise(16, F64)
    out = {(o, v): diffuse.sample(model, process, noise, sampler="unipc", steps=10,
                                  schedule="trailing", order=o, variant=v)
           for o in (1, 2, 3) for v in ("bh1", "bh2")}
    for a in out:
        for b in out:
            if a != b:
                assert (out[a] - out[b]).abs().max() > 1e-4, (a, b)


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_zero_terminal_snr_start_is_finite(order, variant, lower_order_final):
    """alpha = 0 at the first time: lambda_0 = -inf, h = inf on the first step."""
    process = VP.from_betas("scaled_linear", N_TRAIN, beta_start=0.00085, beta_end=0.012,
                            rescale_zero_terminal_snr=True)
    mix = GaussianMixture([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], [0.15, 0.1, 0.2], [0.5, 0.3, 0.2])
    x0_model = mix.denoiser(process)
    v_model = lambda x, t: diffuse.convert(x0_model(x, t), "x0", "v", x, t, process)  # noqa: E731
    noise = torch.randn(256, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    times = make_times(process, "trailing", 20)
    assert float(process.alpha(times[0])) == 0.0
    x = diffuse.sample(v_model, process, noise, sampler="unipc", schedule=times, prediction="v",
                       order=order, variant=variant, lower_order_final=lower_order_final)
    assert torch.isfinite(x).all()
    assert torch.cdist(x, mix.means).min(1).values.median() < 0.3


def test_unipc_rejects_bad_options():
    process = VP.from_betas("linear", N_TRAIN)
    model = mixture(2).denoiser(process)
    noise = start_noise(2, F64)
    for order in (0, 4, 2.5, True):
        with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
            diffuse.sample(model, process, noise, sampler="unipc", steps=5, order=order)
    with pytest.raises(ValueError, match="variant must be 'bh1'"):
        diffuse.sample(model, process, noise, sampler="unipc", steps=5, variant="bh3")
    with pytest.raises(ValueError, match="has no option"):
        diffuse.sample(model, process, noise, sampler="unipc", steps=5, corrector=False)


# ------------------------------------------------------------------------------------------------
# diffusers' DDIM stride (its issue 12633)
# ------------------------------------------------------------------------------------------------


def implied_previous(sched) -> list[int]:
    """The previous timestep DDIMScheduler.step() uses: t - N // steps, whatever set_timesteps made."""
    return [int(t) - N_TRAIN // sched.num_inference_steps for t in sched.timesteps]


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_diffusers_ddim_steps_off_its_own_timesteps(spacing):
    sched = ddim_scheduler("linear", spacing=spacing)
    sched.set_timesteps(7)  # 1000 % 7 != 0
    listed = [int(t) for t in sched.timesteps[1:]] + [-1]  # -1: clean data (final_alpha_cumprod)
    implied = implied_previous(sched)
    assert implied != listed
    if spacing == "trailing":
        # 999 -> 857, but the next model call is at 856, ...; the last step, from 142, ends at
        # timestep 0 (alphas_cumprod[0] < 1): not at clean data.
        assert implied[0] == 857 and listed[0] == 856
        assert implied[-1] == 0
    else:
        # 999 -> 857, but the next model call is at 832: the sample is 25 timesteps noisier than
        # the model is told.
        assert implied[0] == 857 and listed[0] == 832
    # With 10 steps the trailing stride is right (the case tested for parity); linspace's list
    # is spaced by 111 there, its stride is 100.
    sched.set_timesteps(10)
    right = implied_previous(sched)[:-1] == [int(t) for t in sched.timesteps[1:]]
    assert right == (spacing == "trailing")


def ode_endpoint(mix: GaussianMixture, process, noise: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE from t = 1 to clean data, by an independent adaptive solver at tight
    tolerance: in y = x/alpha and rho = sigma/alpha, dy/dlog(rho) = y - D(y, rho), where D is the
    mixture's exact denoiser for the path alpha = 1, sigma = rho (the same for every process)."""
    from scipy.integrate import solve_ivp

    class _RhoPath:
        def alpha(self, rho):
            return torch.ones_like(rho)

        def sigma(self, rho):
            return rho

    denoise = mix.denoiser(_RhoPath())
    one = torch.tensor(1.0, dtype=F64)
    alpha, sigma = float(process.alpha(one)), float(process.sigma(one))
    shape = noise.shape

    def rhs(log_rho, y):
        y = torch.from_numpy(y).reshape(shape)
        return (y - denoise(y, torch.tensor(math.exp(log_rho), dtype=F64))).flatten().numpy()

    end = 1e-9  # D(y, 1e-9) is y to ~1e-16 for these component widths
    sol = solve_ivp(rhs, (math.log(sigma / alpha), math.log(end)), (noise / alpha).flatten().numpy(),
                    method="DOP853", rtol=1e-10, atol=1e-10)
    assert sol.success
    return denoise(torch.from_numpy(sol.y[:, -1]).reshape(shape), torch.tensor(end, dtype=F64))


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_our_ddim_converges_where_diffusers_ddim_stalls(spacing):
    """Deterministic DDIM is the Euler method of the probability-flow ODE, so with more steps it must
    approach the ODE's endpoint. Ours, stepping between consecutive grid times, does (error ~ 1/steps);
    diffusers' with a stride of N // steps that is not its list's spacing does not: its error stays
    ~0.1 (a bias, not a discretisation error). With few steps (e.g. 7) DDIM's own error dominates and
    the wrong stride can even land closer by chance, so the comparison is made where it is decisive."""
    mix = mixture(16)
    noise = start_noise(16, F64)
    errors, reference = {}, None
    for steps in (150, 300):  # 1000 % steps != 0
        sched = ddim_scheduler("linear", spacing=spacing)
        process = setup(sched, steps, "float64")
        if reference is None:  # both start at timestep 999 (t = 1)
            reference = ode_endpoint(mix, process, noise)
        f = eps_model(mix, sched.alphas_cumprod)
        theirs = run_diffusers(sched, f, noise, seed=0)
        ours = run_ours(process, f, noise, seed=0, sampler="ddim", steps=steps, schedule=spacing)
        errors[steps] = [float((x - reference).abs().max()) for x in (ours, theirs)]
    (ours_150, theirs_150), (ours_300, theirs_300) = errors[150], errors[300]
    # observed: ours 0.031 -> 0.017 (0.025 -> 0.013 linspace); diffusers 0.11 -> 0.12 (0.12 -> 0.12)
    assert ours_300 < 0.6 * ours_150, errors
    assert theirs_300 > 0.8 * theirs_150, errors
    assert ours_300 < theirs_300 / 4, errors
