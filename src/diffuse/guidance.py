"""Guidance as model wrappers, so that every sampler, process and parameterisation can use it."""

from __future__ import annotations

import torch


class ClassifierFreeGuidance:
    """eps_w = (1 + w) eps(x, c) - w eps(x, null)  (Ho & Salimans 2022, eq. 6).

    Combining the two predictions linearly is the same in any parameterisation that is affine in
    eps at fixed (x, t) (eps, x0, v, score, velocity), so the wrapper combines the model's own
    output and keeps its `prediction`. Both passes run as one batch of 2B. w = 0 is the plain
    conditional model.
    """

    def __init__(self, model, scale: float, null_label: int, prediction: str | None = None):
        self.model, self.scale, self.null_label = model, float(scale), int(null_label)
        self.prediction = prediction or getattr(model, "prediction", None)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, **cond):
        if labels is None:
            raise ValueError("classifier-free guidance needs labels")
        if self.scale == 0:
            return self.model(x, t, labels=labels, **cond)
        null = torch.full_like(labels, self.null_label)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), labels=torch.cat([labels, null]), **cond)
        conditional, unconditional = both.chunk(2)
        return (1 + self.scale) * conditional - self.scale * unconditional
