import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import diffuse
from diffuse import EDM, VE, VP, Flow, GaussianMixture
from diffuse.samplers import make_times

from conftest import all_processes

# A 1-D mixture with mean zero, so the N(0, 1) prior is right to first order on every process.
WEIGHTS, MEANS, STDS = [0.4, 0.6], [-1.5, 1.0], [0.3, 0.2]
MIXTURE = GaussianMixture([[m] for m in MEANS], STDS, WEIGHTS)
STOCHASTIC = {"ddpm", "euler_ancestral", "sde", "pc", "sde_dpmpp_2m", "sde_dpmpp_3m"}


def normal_quantiles(n):
    """Evenly spaced quantiles of N(0, 1): the ODE samplers then transport an exact sample of the
    prior, and the error measured is the sampler's alone."""
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)[:, None]


def wasserstein1(x):
    """W1 between the samples and the mixture, by the integral of |F_n - F| on a fine grid."""
    from scipy.special import ndtr
    grid = np.linspace(-4, 4, 8001)
    cdf = sum(w * ndtr((grid - m) / s) for w, m, s in zip(WEIGHTS, MEANS, STDS))
    empirical = np.searchsorted(np.sort(x.numpy().ravel()), grid, side="right") / x.numel()
    return float(np.trapezoid(np.abs(empirical - cdf), grid))


@pytest.mark.parametrize("process", all_processes())
def test_every_sampler_converges_to_the_data_distribution(process):
    model = MIXTURE.denoiser(process)
    noise = normal_quantiles(3000)
    for name in diffuse.samplers.available():
        errors = {}
        for steps in (4, 100):
            g = torch.Generator().manual_seed(0)
            x = diffuse.sample(model, process, noise, sampler=name, steps=steps, generator=g)
            errors[steps] = wasserstein1(x)
        # Deterministic samplers transport the exact quantiles, so only their own error shows;
        # stochastic ones add fresh noise, and the share of samples in each mode then fluctuates
        # by ~0.01, i.e. ~0.02 in W1 (the modes are 2.5 apart)
        assert errors[100] < (0.07 if name in STOCHASTIC else 0.02), (name, errors)
        if name != "adaptive":  # it picks its own steps; see test_adaptive_solver_meets_its_tolerance
            assert errors[100] < errors[4] / 3, (name, errors)


def _reference_ode_endpoint(process, x, t_max, t_min):
    """Solve dy/dlog(rho) = y - D(y, rho) with y = x/alpha from t_max to t_min at tight tolerance
    with an independent adaptive solver, then take the final denoising step."""
    from scipy.integrate import solve_ivp
    model = MIXTURE_2D.denoiser(process)
    shape = x.shape

    def rhs(log_rho, y):
        t = process.t_from_sigma_ratio(torch.tensor(math.exp(log_rho)))
        a = float(process.alpha(t))
        y = torch.from_numpy(y).reshape(shape)
        return (y - model(a * y, t.expand(shape[0]))).flatten().numpy()

    rho = lambda t: float(process.sigma(t) / process.alpha(t))  # noqa: E731
    y0 = (x / float(process.alpha(t_max))).flatten().numpy()
    sol = solve_ivp(rhs, (math.log(rho(t_max)), math.log(rho(t_min))), y0, method="DOP853",
                    rtol=1e-11, atol=1e-11)
    assert sol.success
    x_min = float(process.alpha(t_min)) * torch.from_numpy(sol.y[:, -1]).reshape(shape)
    return model(x_min, torch.full((shape[0],), t_min, dtype=torch.float64))


MIXTURE_2D = GaussianMixture([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], [0.15, 0.1, 0.2], [0.5, 0.3, 0.2])


@pytest.mark.parametrize("process", [EDM(), VP("linear"), VE(0.01, 50)], ids=["edm", "vp", "ve"])
def test_heun_converges_to_a_reference_ode_solve(process):
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times = make_times(process, "karras", 2)
    reference = _reference_ode_endpoint(process, noise * process.prior_std, float(times[0]), float(times[-1]))
    error = {}
    for steps in (40, 320):
        x = diffuse.sample(MIXTURE_2D.denoiser(process), process, noise, sampler="heun", steps=steps, schedule="karras")
        error[steps] = float((x - reference).norm(dim=1).max())
    assert error[320] < 2e-4, error
    # second order: 8x the steps gives ~64x less error (first order would give 8x)
    assert error[40] / error[320] > 30, error


def test_flow_is_exact_in_one_euler_step_for_a_point_mass():
    target = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)

    def velocity(x, t):
        # x_t = (1 - t) x0 + t eps for x0 = target, so u = eps - x0 = (x - x0) / t
        return (x - target) / t[:, None]

    noise = torch.randn(5, 3, dtype=torch.float64)
    x = diffuse.sample(velocity, Flow(), noise, sampler="euler", steps=1, prediction="velocity")
    torch.testing.assert_close(x, target.expand(5, 3), rtol=0, atol=1e-12)


def test_ddim_is_euler_and_ddpm_is_ddim_with_eta_one():
    process = VP("cosine")
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    run = lambda name, seed=None, **o: diffuse.sample(model, process, noise, sampler=name, steps=12,  # noqa: E731
                                                      generator=None if seed is None else torch.Generator().manual_seed(seed), **o)
    torch.testing.assert_close(run("ddim"), run("euler"))
    torch.testing.assert_close(run("ddpm", 5), run("ddim", 5, eta=1.0))
    assert not torch.allclose(run("ddpm", 5, variance="large"), run("ddpm", 5))


@pytest.mark.parametrize("name", diffuse.samplers.available())
def test_same_seed_same_samples_and_parameterisation_does_not_matter(name):
    process = VP.from_betas("linear")
    x0_model = MIXTURE_2D.denoiser(process)

    def v_model(x, t):
        return diffuse.convert(x0_model(x, t), "x0", "v", x, t, process)

    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = diffuse.sample(x0_model, process, noise, sampler=name, steps=8, generator=torch.Generator().manual_seed(7))
    b = diffuse.sample(x0_model, process, noise, sampler=name, steps=8, generator=torch.Generator().manual_seed(7))
    c = diffuse.sample(v_model, process, noise, sampler=name, steps=8, prediction="v",
                       generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)


def test_samplers_in_threads_equal_sequential_runs():
    process = EDM()
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(4))
    jobs = [(name, seed) for name in diffuse.samplers.available() for seed in (0, 1)]

    def run(job):
        name, seed = job
        return diffuse.sample(model, process, noise, sampler=name, steps=15,
                              generator=torch.Generator().manual_seed(seed))

    assert_threads_give_sequential_results(run, jobs)


def assert_threads_give_sequential_results(run, jobs) -> None:
    """run(job) for every job in 4 threads at once gives bit for bit what it gives one after another."""
    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(run, jobs))
    for job, a, b in zip(jobs, sequential, threaded):
        assert torch.equal(a, b), job


def test_model_receives_process_time_and_cond():
    process = VP.from_betas("linear")
    seen = []

    def model(x, t, label=None):
        seen.append((t.clone(), label))
        return torch.zeros_like(x)

    diffuse.sample(model, process, torch.randn(3, 2), sampler="ddim", steps=5, prediction="eps",
                   schedule="leading", cond={"label": 7})
    times = [float(t[0]) for t, _ in seen]
    # leading: 5 + 1 points in strides of 1000 // 6, the last (timestep 0) replaced by the final step
    assert times == [float(process.timestep_to_t(n)) for n in (830, 664, 498, 332, 166)]
    assert all(t.shape == (3,) and t.dtype == torch.float64 and label == 7 for t, label in seen)


def test_step_counts_and_callback():
    process = EDM()
    calls = []
    diffuse.sample(MIXTURE_2D.denoiser(process), process, torch.randn(4, 2, dtype=torch.float64),
                   sampler="heun", steps=10, callback=lambda info: calls.append(info["i"]))
    assert len(calls) == 2 * 10 - 1  # Heun: two evaluations per step, one on the last
    calls.clear()
    diffuse.sample(MIXTURE_2D.denoiser(process), process, torch.randn(4, 2, dtype=torch.float64),
                   sampler="dpmpp_2m", steps=10, callback=lambda info: calls.append(info["i"]))
    assert calls == list(range(10))


@pytest.mark.parametrize("process", all_processes())
def test_schedules(process):
    for name in ("uniform", "log_snr", "karras"):
        if process.t_max == 1 and float(process.alpha(1.0)) == 0 and name != "uniform":
            with pytest.raises(ValueError, match="not finite"):
                make_times(process, name, 10)
            continue
        times = make_times(process, name, 10)
        assert times.shape == (10,) and times[0] == pytest.approx(process.t_max)
        assert times[-1] == pytest.approx(process.t_min, rel=1e-9, abs=1e-12)
    t = make_times(process, "log_snr", 6) if float(process.alpha(process.t_max)) > 0 else None
    if t is not None:
        lam = process.log_snr(t)
        torch.testing.assert_close(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(5))


def test_karras_schedule_matches_the_formula():
    process = EDM(0.002, 80)
    rho = process.sigma(make_times(process, "karras", 5))
    i = torch.arange(5, dtype=torch.float64) / 4
    expected = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(rho, expected)


def test_bad_input_raises_clear_errors():
    process = VP()
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown sampler"):
        diffuse.sample(model, process, noise, sampler="plms")
    with pytest.raises(ValueError, match="no option"):
        diffuse.sample(model, process, noise, sampler="euler", eta=0.5)
    with pytest.raises(ValueError, match="say what the model predicts"):
        diffuse.sample(lambda x, t: x, process, noise)
    with pytest.raises(ValueError, match="returned"):
        diffuse.sample(lambda x, t: x[:, :1], process, noise, prediction="eps")
    with pytest.raises(ValueError, match="unknown schedule"):
        diffuse.sample(model, process, noise, schedule="cosine")
    with pytest.raises(ValueError, match="strictly decreasing"):
        diffuse.sample(model, process, noise, schedule=[0.1, 0.5])
    with pytest.raises(ValueError, match="explicit schedule of 2 times"):
        diffuse.sample(model, process, noise, schedule=[0.5, 0.1], steps=3)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        diffuse.sample(model, process, noise, steps=0)
    with pytest.raises(ValueError, match="discrete process"):
        diffuse.sample(model, process, noise, schedule="trailing")
    with pytest.raises(ValueError, match="exceed"):
        make_times(VP.from_betas("linear", 10), "leading", 20)
    with pytest.raises(ValueError, match="eta"):
        diffuse.sample(model, process, noise, sampler="ddim", eta=-1)
    zero_snr = VP.from_betas("linear", rescale_zero_terminal_snr=True)
    with pytest.raises(ValueError, match="zero SNR"):
        diffuse.sample(lambda x, t: x, zero_snr, noise, sampler="ddim", prediction="eps", schedule="trailing")


def test_zero_terminal_snr_with_v_prediction_gives_finite_samples():
    process = VP.from_betas("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012, rescale_zero_terminal_snr=True)
    x0_model = MIXTURE_2D.denoiser(process)
    v_model = lambda x, t: diffuse.convert(x0_model(x, t), "x0", "v", x, t, process)  # noqa: E731
    noise = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for name in diffuse.samplers.available():
        x = diffuse.sample(v_model, process, noise, sampler=name, steps=25, schedule="trailing",
                           prediction="v", generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(x).all(), name
        # every sample lands near one of the three modes
        assert torch.cdist(x, MIXTURE_2D.means).min(1).values.median() < 0.3, name


@pytest.mark.parametrize("process", [VP("linear"), EDM(), Flow()], ids=["vp", "edm", "flow"])
def test_adaptive_solver_meets_its_tolerance(process):
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    times = make_times(process, "uniform", 2)
    reference = diffuse.sample(model, process, noise, sampler="heun", schedule=make_times(process, "karras", 400)) \
        if process.t_max == 1 and float(process.alpha(1.0)) > 0 else None
    results = {}
    for tol in (1e-3, 1e-6):
        x, nfe = diffuse.sample(model, process, noise, sampler="adaptive", schedule=times, rtol=tol, atol=tol,
                                return_nfe=True)
        results[tol] = (x, nfe)
    (loose, nfe_loose), (tight, nfe_tight) = results[1e-3], results[1e-6]
    assert nfe_tight > nfe_loose > 10
    if reference is not None:  # a converged second-order solve on the same end times
        assert float((tight - reference).norm(dim=1).max()) < 1e-3
        assert float((tight - reference).norm(dim=1).max()) < float((loose - reference).norm(dim=1).max())


def _ode_error(process, name, steps, noise, reference, **options):
    x = diffuse.sample(MIXTURE_2D.denoiser(process), process, noise, sampler=name, steps=steps,
                       schedule="log_snr", **options)
    return float((x - reference).norm(dim=1).pow(2).mean().sqrt())


@pytest.mark.parametrize("name,options,min_ratio", [
    ("ddim", {}, 1.6),                  # first order: halving the step halves the error
    ("dpmpp_2m", {}, 3.0),              # second order: ~4x
    ("dpmpp_2s", {}, 3.0),
    ("heun", {}, 3.0),
    ("dpmpp_3m", {}, 4.0),              # third order: ~8x once the history is built
    ("unipc", {"order": 3}, 4.0),
])
def test_order_of_convergence_on_the_probability_flow_ode(name, options, min_ratio):
    process = VP("linear")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    times = make_times(process, "log_snr", 2)
    reference = diffuse.sample(MIXTURE_2D.denoiser(process), process, noise, sampler="adaptive",
                               schedule=times, rtol=1e-10, atol=1e-10)
    coarse, fine = (_ode_error(process, name, n, noise, reference, **options) for n in (40, 80))
    assert coarse / fine > min_ratio, (coarse, fine)
    if name != "ddim":
        assert fine < _ode_error(process, "ddim", 80, noise, reference) / 5


def test_stochastic_variants_reduce_to_their_deterministic_ones():
    process = EDM()
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    run = lambda name, seed=0, **o: diffuse.sample(model, process, noise, sampler=name, steps=12,  # noqa: E731
                                                   generator=torch.Generator().manual_seed(seed), **o)
    torch.testing.assert_close(run("sde_dpmpp_2m", eta=0.0), run("dpmpp_2m"))
    torch.testing.assert_close(run("sde_dpmpp_3m", eta=0.0), run("dpmpp_3m"))
    torch.testing.assert_close(run("euler_ancestral"), run("ddim", eta=1.0))
    torch.testing.assert_close(run("heun", churn=0.0), run("heun"))
    assert not torch.allclose(run("heun", churn=30.0), run("heun"))
    torch.testing.assert_close(run("pc", corrector_steps=0), run("sde"))


def test_edm_stochastic_heun_converges():
    process = EDM()
    x = diffuse.sample(MIXTURE.denoiser(process), process, normal_quantiles(3000), sampler="heun", steps=64,
                       schedule="karras", churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003,
                       generator=torch.Generator().manual_seed(0))
    assert wasserstein1(x) < 0.07


def test_model_evaluations_per_sampler():
    process = EDM()
    noise = torch.randn(4, 2, dtype=torch.float64)
    expected = {"ddim": 10, "dpmpp_2m": 10, "dpmpp_3m": 10, "unipc": 10, "heun": 19, "dpmpp_2s": 19,
                "pc": 19, "sde": 10, "sde_dpmpp_2m": 10}
    for name, nfe in expected.items():
        _, used = diffuse.sample(MIXTURE_2D.denoiser(process), process, noise, sampler=name, steps=10,
                                 return_nfe=True, generator=torch.Generator().manual_seed(0))
        assert used == nfe, (name, used)


# -- starting from a given state, step hooks, per-sample randomness ---------------------------------

def exact_marginal(process, t, n, seed=0):
    """x_t ~ p_t for the 1-D mixture: data drawn exactly, noised in closed form."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = MIXTURE.sample(n, g)
    return process.add_noise(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))


START_PROCESSES = [pytest.param(EDM(), "karras", id="edm"), pytest.param(VP("linear"), "log_snr", id="vp"),
                   pytest.param(Flow(), "uniform", id="flow"),
                   pytest.param(VP.from_betas("linear"), "trailing", id="ddpm")]


@pytest.mark.parametrize("process, schedule", START_PROCESSES)
@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "ddpm"])
def test_starting_at_an_intermediate_time_from_the_exact_marginal_gives_the_data(process, schedule, name):
    # where sigma/alpha = 1: half-way in signal-to-noise, far from both ends
    t_start = float(process.t_from_sigma_ratio(torch.tensor(1.0, dtype=torch.float64)))
    if isinstance(process, diffuse.DiscreteVP):  # on one of its steps
        t_start = float(process.timestep_to_t(round(float(process.t_to_timestep(t_start)))))
    run = lambda x: diffuse.sample(MIXTURE.denoiser(process), process, sampler=name, steps=60, schedule=schedule,  # noqa: E731
                                   x_start=x, t_start=t_start, generator=torch.Generator().manual_seed(1))
    exact = wasserstein1(run(exact_marginal(process, t_start, 4000)))
    assert exact < 0.05, exact  # 4000 draws of the mixture are about 0.02 from it in W1
    if name in STOCHASTIC:  # fresh noise at every step partly forgets where a sample started
        return
    # a start of the right mean and variance but the wrong shape is not transported to the data
    a, s = float(process.alpha(t_start)), float(process.sigma(t_start))
    spread = math.sqrt(a**2 * float(MIXTURE.sample(100_000, torch.Generator().manual_seed(2))[0].var()) + s**2)
    mean = a * sum(w * m for w, m in zip(WEIGHTS, MEANS))
    wrong = wasserstein1(run(mean + spread * torch.randn(4000, 1, generator=torch.Generator().manual_seed(3),
                                                         dtype=torch.float64)))
    assert wrong > 2 * exact, (exact, wrong)


def test_a_start_time_spaces_the_schedule_below_it():
    process = EDM()
    times = make_times(process, "karras", 6, t_start=0.1)
    assert times[0] == 0.1 and times[-1] == pytest.approx(process.t_min) and times.shape == (6,)
    rho = process.sigma(times)
    torch.testing.assert_close(rho ** (1 / 7), torch.linspace(8 ** (1 / 7), 0.002 ** (1 / 7), 6, dtype=torch.float64))
    ddpm = VP.from_betas("linear")
    start = float(ddpm.timestep_to_t(499))
    steps = ddpm.t_to_timestep(make_times(ddpm, "trailing", 5, t_start=start)).round().long().tolist()
    assert steps == [499, 399, 299, 199, 99]


def test_a_hook_that_does_nothing_changes_nothing():
    process = VP.from_betas("linear")
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for name in diffuse.samplers.available():
        if name == "adaptive":
            continue
        run = lambda **o: diffuse.sample(model, process, noise, sampler=name, steps=7, schedule="trailing",  # noqa: E731
                                         generator=torch.Generator().manual_seed(0), **o)
        seen = []
        hooked = run(hook=lambda x, i, t: seen.append((i, t)) or x)
        assert torch.equal(hooked, run()), name
        grid = make_times(process, "trailing", 7).tolist()
        expected = [(i, grid[i]) for i in range(7)] + [(7, 0.0)]
        if name == "unipc":  # the corrected state of each step; the last step returns D directly
            expected = expected[:6] + expected[7:]
        assert seen == expected, name


@pytest.mark.parametrize("name", ["euler", "ddim", "heun"])
def test_a_hook_replaces_the_state_the_next_step_starts_from(name):
    # One-step samplers keep no history, so replacing the state at t_2 is the same as starting there.
    process = EDM()
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    times = make_times(process, "karras", 8)
    planted = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    hooked = diffuse.sample(model, process, noise, sampler=name, schedule=times,
                            hook=lambda x, i, t: planted if i == 2 else x)
    direct = diffuse.sample(model, process, sampler=name, schedule=times[2:], x_start=planted, t_start=float(times[2]))
    torch.testing.assert_close(hooked, direct, rtol=0, atol=0)
    assert not torch.allclose(hooked, diffuse.sample(model, process, noise, sampler=name, schedule=times))
    final = diffuse.sample(model, process, noise, sampler=name, schedule=times, hook=lambda x, i, t: x * 0 if i == 8 else x)
    assert torch.equal(final, torch.zeros_like(final))


STOCHASTIC_OPTIONS = {"ddpm": {}, "euler_ancestral": {}, "sde": {}, "pc": {}, "sde_dpmpp_2m": {},
                      "sde_dpmpp_3m": {}, "heun": {"churn": 20.0}}


@pytest.mark.parametrize("name", sorted(STOCHASTIC_OPTIONS))
def test_with_per_sample_generators_a_sample_does_not_depend_on_its_batch(name):
    from diffuse.samplers import Generators

    process = EDM()
    model = MIXTURE_2D.denoiser(process)
    noise = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    run = lambda lo, hi, seed=0: diffuse.sample(model, process, noise[lo:hi], sampler=name, steps=6,  # noqa: E731
                                                generator=Generators.seeded(seed, lo, hi - lo), **STOCHASTIC_OPTIONS[name])
    whole = run(0, 20)
    torch.testing.assert_close(run(0, 10), whole[:10], rtol=0, atol=0)
    torch.testing.assert_close(run(13, 20), whole[13:], rtol=0, atol=0)
    assert not torch.equal(run(0, 10, seed=1), whole[:10])  # the seed still matters
    with pytest.raises(ValueError, match="3 per-sample generators for a batch of 20"):
        diffuse.sample(model, process, noise, sampler=name, generator=Generators.seeded(0, 0, 3))


def test_hooks_and_starts_in_threads_equal_sequential_runs():
    from diffuse.samplers import Generators

    process = VP("linear")
    model = MIXTURE_2D.denoiser(process)
    start = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) * 0.8
    jobs = [(name, k) for name in ("ddpm", "dpmpp_2m", "sde", "unipc") for k in range(3)]

    def run(job):
        name, k = job
        pull = lambda x, i, t: x * (1 - 0.01 * k)  # noqa: E731  a hook of its own per job
        return diffuse.sample(model, process, sampler=name, steps=9, x_start=start, t_start=0.5, hook=pull,
                              generator=Generators.seeded(k, 0, 64))

    assert_threads_give_sequential_results(run, jobs)


def test_bad_starts_and_hooks_raise_clear_errors():
    process = EDM()
    model = MIXTURE_2D.denoiser(process)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="either noise .* or x_start"):
        diffuse.sample(model, process, x, x_start=x, t_start=0.5)
    with pytest.raises(ValueError, match="either noise"):
        diffuse.sample(model, process)
    with pytest.raises(ValueError, match="x_start and t_start go together"):
        diffuse.sample(model, process, x_start=x)
    with pytest.raises(ValueError, match=r"t_start must lie in \(2.5e-05, 1\]"):
        diffuse.sample(model, process, x_start=x, t_start=1.5)
    with pytest.raises(ValueError, match="first time is where sampling starts"):
        diffuse.sample(model, process, x_start=x, t_start=0.5, schedule=[0.4, 0.1])
    with pytest.raises(ValueError, match="'leading' spacing does not begin at the top"):
        ddpm = VP.from_betas("linear")
        diffuse.sample(MIXTURE_2D.denoiser(ddpm), ddpm, x_start=x, t_start=0.5, schedule="leading")
    with pytest.raises(ValueError, match="not one of the discrete process's steps"):
        diffuse.sample(MIXTURE_2D.denoiser(ddpm), ddpm, x_start=x, t_start=0.5005, schedule="trailing")
    with pytest.raises(ValueError, match="no steps for a hook"):
        diffuse.sample(model, process, x, sampler="adaptive", hook=lambda x, i, t: x)
    with pytest.raises(ValueError, match=r"the step hook returned \(2, 2\)"):
        diffuse.sample(model, process, x, sampler="euler", hook=lambda x, i, t: x[:2])


@pytest.mark.parametrize("name", diffuse.samplers.available())
def test_a_float32_network_sees_float32_and_gets_float32_back(name):
    # A trained network holds float32 weights: a sampler that hands it a float64 state (the adaptive
    # solver's float64 error control once did) fails inside the network's first layer.
    process = EDM()
    exact = MIXTURE_2D.denoiser(process)

    def network(x, t):
        assert x.dtype == torch.float32, f"{name} handed the model {x.dtype}"
        return exact(x.double(), t).float()

    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(11))
    run = lambda model, x, seed: diffuse.sample(model, process, x, sampler=name, steps=6, prediction="x0",  # noqa: E731
                                                generator=torch.Generator().manual_seed(seed))
    out = run(network, noise, 0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    reference = run(exact, noise.double(), 0)
    if torch.equal(reference, run(exact, noise.double(), 1)):  # deterministic: float32 follows float64
        torch.testing.assert_close(out.double(), reference, atol=1e-3, rtol=1e-3)
