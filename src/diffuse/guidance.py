"""Guidance as model wrappers, so that every sampler, process and parameterisation can use it.

A wrapper is itself a model `model(x, t, **cond)` with a declared `prediction`, so samplers never
know guidance exists.
"""

from __future__ import annotations

import torch

from .conditions import null_like
from .parameterization import convert
from .process import GaussianPath


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


class ClassifierFreeGuidance:
    """(1 + w) eps(x, c) - w eps(x, null)  (Ho & Salimans 2022, eq. 6).

    The combination is linear, and every parameterisation (eps, x0, v, score, velocity) is affine
    in eps at fixed (x, t) with coefficients that sum the same way, so combining the model's own
    outputs is the same as combining eps and converting. Both passes run as one batch of 2B.
    w = 0 is the plain conditional model. The null condition is a class (`null_label`, the
    class models' extra row) or, for other conditions, `null`: {name: fill value}, e.g.
    {"tokens": 0}, the all-padding null text of text models.

    interval   (t_low, t_high): guide only for t in this range (Kynkaanniemi et al. 2024);
               elsewhere the conditional model alone is used.
    rescale    phi in [0, 1]: rescale the guided output to the per-sample standard deviation of
               the conditional one and mix with weight phi (Lin et al. 2024, eq. 15-16), which
               counters the over-exposure of large w.
    """

    def __init__(self, model, scale: float, null_label: int | None = None, prediction: str | None = None,
                 interval: tuple[float, float] | None = None, rescale: float = 0.0, null: dict | None = None):
        if not 0 <= rescale <= 1:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")
        if interval is not None and not interval[0] < interval[1]:
            raise ValueError(f"interval must be (t_low, t_high) with t_low < t_high, got {interval}")
        if (null_label is None) == (null is None):
            raise ValueError("say what the null condition is: null_label=K for a class model, or "
                             "null={'tokens': 0} (any condition name: the value that fills it)")
        # The condition entries that guidance replaces, and the value each is filled with.
        self.null = {"labels": int(null_label)} if null is None else dict(null)
        self.model, self.scale = model, float(scale)
        self.prediction = prediction or getattr(model, "prediction", None)
        self.interval, self.rescale = interval, float(rescale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond):
        missing = [name for name in self.null if cond.get(name) is None]
        if missing:
            raise ValueError(f"classifier-free guidance needs the condition {missing[0]!r}")
        if self.scale == 0:
            return self.model(x, t, **cond)
        # One batch of 2B: every condition doubled, the guided ones with their null in the second half.
        both = {name: torch.cat([value, null_like(self.null[name], value) if name in self.null else value])
                if isinstance(value, torch.Tensor) else value for name, value in cond.items()}
        conditional, unconditional = self.model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        w = torch.full((x.shape[0],), self.scale, dtype=conditional.dtype, device=x.device)
        if self.interval is not None:
            inside = (t >= self.interval[0]) & (t <= self.interval[1])
            w = torch.where(inside.to(x.device), w, torch.zeros_like(w))
        guided = conditional + _per_sample(w, x) * (conditional - unconditional)
        if self.rescale:
            dims = tuple(range(1, x.ndim))
            ratio = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
            guided = self.rescale * guided * ratio + (1 - self.rescale) * guided
        return guided


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021): the score gains s grad_x log p(y | x_t).

    `classifier(x, t)` returns logits [B, K] of a classifier trained on noisy x_t (diffuse
    train-classifier). The shift is applied to the score, grad log p_t(x | y) ~ grad log p_t(x)
    + s grad log p(y | x_t), i.e. eps <- eps - s sigma grad log p(y | x_t), and the result is
    converted back to the model's own prediction, so it is correctly scaled whatever the model
    predicts. With an exact classifier, s = 1 samples the exact class-conditional distribution.
    """

    def __init__(self, model, classifier, process: GaussianPath, scale: float, prediction: str | None = None,
                 conditional_model: bool = False):
        self.model, self.classifier, self.process, self.scale = model, classifier, process, float(scale)
        self.conditional_model = conditional_model  # whether the model itself also takes the labels
        self.prediction = prediction or getattr(model, "prediction", None)
        if self.prediction is None:
            raise ValueError("say what the model predicts: prediction='eps' | 'x0' | 'v' | 'score' | 'velocity'")

    def log_prob_gradient(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x, t), dim=-1)
            chosen = log_probs.gather(1, labels.reshape(-1, 1).to(x.device)).sum()
            return torch.autograd.grad(chosen, x)[0]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, **cond):
        if labels is None:
            raise ValueError("classifier guidance needs labels")
        out = self.model(x, t, labels=labels, **cond) if self.conditional_model else self.model(x, t, **cond)
        if self.scale == 0:
            return out
        eps = convert(out, self.prediction, "eps", x, t, self.process)
        sigma = _per_sample(self.process.sigma(t).to(x.device, x.dtype), x)
        eps = eps - self.scale * sigma * self.log_prob_gradient(x, t, labels).to(x.dtype)
        return convert(eps, "eps", self.prediction, x, t, self.process)
