"""Gaussian paths: x_t = alpha(t) x0 + sigma(t) eps, with t in [0, 1].

Every process of the library is one of these. A process is a small, immutable object that maps a
time tensor to alpha(t) and sigma(t); everything else (log-SNR, its inverse, derivatives for the
velocity parameterisation, sampling of q(x_t | x0), the prior) follows from those two functions.

Schedule arithmetic is done in float64: the coefficients of a 1000-step schedule differ in the
fifth digit near t = 0 and float32 loses them. Results are cast to the caller's dtype only when
they are applied to data (`expand`).

Conventions shared by all processes:
- t = 0 is (nearly) clean data and t = 1 is (nearly) pure noise; log-SNR decreases strictly in t.
- Samplers run from `t_max` down to `t_min` and then take a last step to clean data
  (alpha = 1, sigma = 0), as EDM and k-diffusion append sigma = 0.
- `prior_std` is the standard deviation the sampler scales standard-normal noise by at `t_max`.
"""

from __future__ import annotations

import inspect
import math

import torch

_f64 = torch.float64


def _as_time(t) -> torch.Tensor:
    """Times as a float64 tensor (scalars and lists are accepted). Python numbers go straight to
    float64: through torch's default float32 they would lose digits (0.259 -> 0.25900000333)."""
    t = torch.as_tensor(t) if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=_f64)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"time must be a real tensor, got dtype {t.dtype}")
    return t.to(_f64)


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{len(value)} values, {min(value):.4g}..{max(value):.4g}]"
    return repr(value)


def expand(coefficient, x: torch.Tensor):
    """Broadcast a per-sample coefficient of shape [B] (or []) against x of shape [B, ...].
    A Python number is returned as it is: it broadcasts already, at no cost."""
    if isinstance(coefficient, (int, float)):
        return coefficient
    coefficient = coefficient.to(device=x.device, dtype=x.dtype)
    return coefficient.reshape(coefficient.shape + (1,) * (x.ndim - coefficient.ndim))


class GaussianPath:
    """Base class: subclasses define `alpha` and `sigma` (float64 in, float64 out)."""

    t_min: float = 1e-3
    t_max: float = 1.0
    default_schedule: str = "uniform"  # what schedule='auto' means

    # -- the two functions that define a process -------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Both coefficients at once (processes that share work between them override this)."""
        return self.alpha(t), self.sigma(t)

    # -- what follows from them -------------------------------------------------------------------
    def log_snr(self, t) -> torch.Tensor:
        """lambda(t) = log(alpha^2 / sigma^2)."""
        t = _as_time(t)
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, log_snr) -> torch.Tensor:
        """The time at which the process has this log-SNR (inverse of `log_snr`).

        Generic version: bisection, which is exact to float64 resolution because log-SNR is
        strictly decreasing. Subclasses with a closed form override it.
        """
        target = _as_time(log_snr)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(64):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > target  # still too clean: the time is later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (lo + hi) / 2

    def t_from_sigma_ratio(self, rho) -> torch.Tensor:
        """Time at which sigma/alpha (EDM's and k-diffusion's 'sigma') equals rho."""
        return self.t_from_log_snr(-2 * torch.log(_as_time(rho)))

    def derivatives(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha/dt, d sigma/dt), by automatic differentiation of the closed forms."""
        t = _as_time(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            def grad(f):  # a constant coefficient (alpha = 1 on VE paths) has no graph
                y = f(t)
                if not y.requires_grad:
                    return torch.zeros_like(t)
                return torch.autograd.grad(y.sum(), t)[0].detach()
            return grad(self.alpha), grad(self.sigma)

    @property
    def prior_std(self) -> float:
        return float(self.sigma(self.t_max))

    def prior(self, shape, generator: torch.Generator | None = None, dtype=torch.float32,
              device=None) -> torch.Tensor:
        """A draw from the prior N(0, prior_std^2 I) that sampling starts from at t_max."""
        return self.prior_std * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def add_noise(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps, for t of shape [B] or []."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != data shape {tuple(x0.shape)}")
        t = _as_time(t)
        return expand(self.alpha(t), x0) * x0 + expand(self.sigma(t), x0) * noise

    def q_sample(self, x0: torch.Tensor, t, generator: torch.Generator | None = None):
        """Draw x_t ~ q(x_t | x0) in closed form; returns (x_t, eps)."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.add_noise(x0, t, noise), noise

    def __repr__(self) -> str:
        """Short, whatever the process: error messages quote it (a discrete schedule's 1000 betas
        would make a message of 22,000 characters)."""
        fields = ", ".join(f"{k}={_short(v)}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({fields})"

    def config(self) -> dict:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Variance preserving: alpha^2 + sigma^2 = 1
# ------------------------------------------------------------------------------------------------


class VP(GaussianPath):
    """Variance-preserving process, alpha(t)^2 + sigma(t)^2 = 1.

    `VP("linear")` is the score-SDE VP process with beta(t) = beta_min + t (beta_max - beta_min),
    so log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2).
    `VP("cosine")` is improved DDPM's alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1+s) pi/2);
    its SNR reaches zero at t = 1, so sampling starts at t_max = 0.9946 as in DPM-Solver.
    `VP.from_betas(...)` is a discrete DDPM schedule (see `DiscreteVP`).
    """

    default_schedule = "uniform"

    def __init__(self, schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown VP schedule {schedule!r}; choose 'linear' or 'cosine' "
                             "(or VP.from_betas for a discrete schedule)")
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.schedule, self.beta_min, self.beta_max, self.cosine_s = schedule, beta_min, beta_max, cosine_s
        if schedule == "cosine":
            self.t_max = 0.9946

    def log_alpha_bar(self, t) -> torch.Tensor:
        t = _as_time(t)
        if self.schedule == "linear":
            return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
        s = self.cosine_s
        angle = lambda u: (u + s) / (1 + s) * math.pi / 2  # noqa: E731
        return 2 * (torch.log(torch.cos(angle(t))) - math.log(math.cos(angle(0.0))))

    def alpha(self, t):
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t):
        # -expm1 keeps sigma accurate when alpha_bar is close to 1 (t near 0).
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def alpha_sigma(self, t):
        log_alpha_bar = self.log_alpha_bar(t)
        return torch.exp(0.5 * log_alpha_bar), torch.sqrt(-torch.expm1(log_alpha_bar))

    def log_snr(self, t):
        lab = self.log_alpha_bar(t)
        return lab - torch.log(-torch.expm1(lab))

    def t_from_log_snr(self, log_snr):
        # alpha_bar = sigmoid(lambda) for every VP process; invert log alpha_bar(t) in closed form.
        lab = torch.nn.functional.logsigmoid(_as_time(log_snr))
        if self.schedule == "linear":
            b0, b1 = self.beta_min, self.beta_max
            # (b1 - b0)/2 t^2 + b0 t + lab = 0, positive root, written to avoid cancellation.
            return 2 * -lab / (b0 + torch.sqrt(b0**2 - 2 * (b1 - b0) * lab))
        s = self.cosine_s
        c0 = math.cos(s / (1 + s) * math.pi / 2)
        return torch.arccos(torch.exp(0.5 * lab) * c0) * 2 * (1 + s) / math.pi - s

    @property
    def prior_std(self) -> float:
        # Unit-variance data noised by a VP process stays unit-variance: the prior is N(0, I).
        return 1.0

    @staticmethod
    def from_betas(betas="linear", num_steps: int = 1000, beta_start: float = 1e-4,
                   beta_end: float = 0.02, rescale_zero_terminal_snr: bool = False) -> "DiscreteVP":
        """A discrete DDPM schedule: explicit betas, or a named schedule
        ('linear', 'scaled_linear', 'squaredcos_cap_v2') of `num_steps` steps."""
        if isinstance(betas, str):
            betas = named_betas(betas, num_steps, beta_start, beta_end)
        return DiscreteVP(betas, rescale_zero_terminal_snr=rescale_zero_terminal_snr)

    def config(self):
        return {"kind": "vp", "schedule": self.schedule, "beta_min": self.beta_min,
                "beta_max": self.beta_max, "cosine_s": self.cosine_s}


def named_betas(name: str, num_steps: int = 1000, beta_start: float = 1e-4,
                beta_end: float = 0.02) -> torch.Tensor:
    """The beta schedules of DDPM ('linear'), latent diffusion ('scaled_linear') and improved
    DDPM ('squaredcos_cap_v2': alpha_bar from the cosine, betas capped at 0.999)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if name == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=_f64)
    if name == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=_f64) ** 2
    if name == "squaredcos_cap_v2":
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / num_steps) / f(i / num_steps), 0.999)
                             for i in range(num_steps)], dtype=_f64)
    raise ValueError(f"unknown beta schedule {name!r}; choose 'linear', 'scaled_linear' or "
                     "'squaredcos_cap_v2', or pass the betas")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so the last step has SNR 0
    and the first keeps its value."""
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


class DiscreteVP(VP):
    """A DDPM schedule of N discrete steps as a continuous-time VP process.

    Discrete step n (0-based, as in DDPM code) sits at t = (n + 1) / N, where alpha_bar(t) equals
    alphas_cumprod[n] exactly; t = 0 is clean data (alpha_bar = 1). Between steps, log alpha_bar is
    linear in t, which is the VP process with a piecewise-constant beta(t): a discrete checkpoint
    is sampled with exactly its own alphas_cumprod at its own timesteps, and any continuous
    sampler still sees a smooth, strictly decreasing log-SNR.
    """

    # The trailing spacing (as diffusers recommends) for every sampler: from t = 1 at any number of
    # steps and on every beta schedule. Uniform log-SNR is better on linear betas but wastes its
    # steps where the top log-SNR is extreme (cosine betas: -19.8); the leading spacing starts far
    # below the top at many steps (200 steps: timestep 800). docs/interop.md has the measurements.
    default_schedule = "trailing"

    def __init__(self, betas, rescale_zero_terminal_snr: bool = False):
        betas = torch.as_tensor(betas, dtype=_f64).flatten()
        if betas.numel() < 1 or not torch.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must be a non-empty sequence of values in (0, 1]")
        if rescale_zero_terminal_snr:
            betas = globals()["rescale_zero_terminal_snr"](betas)
        self.betas = betas
        self.num_steps = betas.numel()
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        # Knots of the piecewise-linear log alpha_bar, including the clean end at t = 0.
        self._knots = torch.cat([torch.zeros(1, dtype=_f64), torch.log(self.alphas_cumprod)])
        self.t_min = 1.0 / self.num_steps

    def log_alpha_bar(self, t):
        t = _as_time(t)
        u = t.clamp(0, 1) * self.num_steps
        i = u.floor().clamp(max=self.num_steps - 1)
        frac = u - i
        i = i.long()
        lo = self._knots[i]
        hi = self._knots[i + 1]
        # A zero-terminal-SNR schedule ends at alpha_bar = 0 (a knot of -inf): on that last segment
        # alpha_bar itself is interpolated linearly, so it reaches zero only at t = 1.
        to_zero = torch.isinf(hi)
        hi = torch.where(to_zero, lo, hi)  # keep the unused branch finite for autograd
        return torch.where(to_zero, lo + torch.log1p(-torch.where(to_zero, frac, 0)), lo + frac * (hi - lo))

    def t_from_log_snr(self, log_snr):
        lab = torch.nn.functional.logsigmoid(_as_time(log_snr))
        knots = self._knots  # decreasing from 0
        j = torch.searchsorted(-knots, -lab, right=False).clamp(1, self.num_steps)
        lo, hi = knots[j - 1], knots[j]
        to_zero = torch.isinf(hi)
        frac = torch.where(to_zero, -torch.expm1(lab - lo), (lab - lo) / torch.where(to_zero, lo - 1, hi - lo))
        return (j - 1 + frac.clamp(0, 1)) / self.num_steps

    def timestep_to_t(self, n) -> torch.Tensor:
        """Discrete timestep index n -> continuous time t = (n + 1) / N."""
        return (_as_time(n) + 1) / self.num_steps

    def t_to_timestep(self, t) -> torch.Tensor:
        """Continuous time -> the (fractional) discrete timestep index a DDPM network expects."""
        return _as_time(t) * self.num_steps - 1

    def config(self):
        # The stored betas are the final ones (already rescaled where asked), so they rebuild as is.
        return {"kind": "discrete_vp", "betas": self.betas.tolist()}


# ------------------------------------------------------------------------------------------------
# Variance exploding and EDM: alpha = 1
# ------------------------------------------------------------------------------------------------


class VE(GaussianPath):
    """Variance-exploding (score-SDE / NCSN): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    t = 0 has the smallest noise level sigma_min, so t_min = 0; the sampler's final step goes to
    sigma = 0.
    """

    t_min = 0.0
    default_schedule = "karras"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def alpha(self, t):
        return torch.ones_like(_as_time(t))

    def sigma(self, t):
        t = _as_time(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def log_snr(self, t):
        return -2 * torch.log(self.sigma(t))

    def t_from_log_snr(self, log_snr):
        log_sigma = -0.5 * _as_time(log_snr)
        return (log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def config(self):
        return {"kind": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class EDM(GaussianPath):
    """Karras et al. 2022: alpha = 1, sigma(t) = sigma_max * t, so t = 0 is clean data.

    sigma_min is the lowest noise level samplers visit (t_min = sigma_min / sigma_max); sigma_data
    is the data's standard deviation, used by EDM's preconditioning, weighting and noise-level
    distribution.
    """

    default_schedule = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.t_min = sigma_min / sigma_max

    def alpha(self, t):
        return torch.ones_like(_as_time(t))

    def sigma(self, t):
        return self.sigma_max * _as_time(t)

    def log_snr(self, t):
        return -2 * torch.log(self.sigma(t))

    def t_from_log_snr(self, log_snr):
        return torch.exp(-0.5 * _as_time(log_snr)) / self.sigma_max

    def config(self):
        return {"kind": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data}


# ------------------------------------------------------------------------------------------------
# Rectified flow / flow matching: straight lines between data and noise
# ------------------------------------------------------------------------------------------------


class Flow(GaussianPath):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t; the prior N(0, I) is exact at t = 1."""

    default_schedule = "uniform"

    def alpha(self, t):
        return 1 - _as_time(t)

    def sigma(self, t):
        return _as_time(t)

    def derivatives(self, t):
        t = _as_time(t)
        return -torch.ones_like(t), torch.ones_like(t)

    def t_from_log_snr(self, log_snr):
        # alpha/sigma = (1 - t)/t = exp(lambda/2)  =>  t = sigmoid(-lambda/2)
        return torch.sigmoid(-0.5 * _as_time(log_snr))

    def config(self):
        return {"kind": "flow"}


def process_from_config(config: dict) -> GaussianPath:
    """Rebuild a process from `process.config()` (as stored in checkpoints); an unknown kind, an
    unknown or missing option and a value of the wrong type are each a ValueError naming it."""
    if not isinstance(config, dict):
        raise ValueError(f"a process config must be a JSON object with a \"kind\", got {config!r}"[:200])
    config = dict(config)
    kind = config.pop("kind", None)
    builders = {"vp": VP, "ve": VE, "edm": EDM, "flow": Flow,
                "discrete_vp": DiscreteVP}
    if kind not in builders:
        raise ValueError(f"unknown process kind {kind!r}; expected one of {sorted(builders)}")
    parameters = inspect.signature(builders[kind]).parameters
    unknown = sorted(set(config) - set(parameters))
    missing = [n for n, p in parameters.items() if p.default is p.empty and n not in config]
    if unknown or missing:
        raise ValueError(f"the {kind!r} process takes {sorted(parameters) or 'no options'}; "
                         + (f"unknown: {unknown}" if unknown else f"missing: {missing}"))
    for name, value in config.items():
        default = parameters[name].default
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ValueError(f"the {kind!r} process's {name} must be a finite number, got {value!r}"[:200])
    try:
        return builders[kind](**config)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"the {kind!r} process cannot be built from {_short(config)}: {e}"[:300]) from None


def get_process(name: str, **kwargs) -> GaussianPath:
    """A process by name: 'vp' (linear), 'vp-cosine', 'ddpm' (1000 linear betas), 've', 'edm', 'flow'."""
    table = {
        "vp": lambda: VP("linear", **kwargs),
        "vp-cosine": lambda: VP("cosine", **kwargs),
        "ddpm": lambda: VP.from_betas("linear", **kwargs),
        "ve": lambda: VE(**kwargs),
        "edm": lambda: EDM(**kwargs),
        "flow": lambda: Flow(**kwargs),
    }
    if name not in table:
        raise ValueError(f"unknown process {name!r}; choose one of {sorted(table)}")
    return table[name]()
