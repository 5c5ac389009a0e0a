"""Denoiser networks and a registry that builds them from plain JSON-like dicts.

Every network is called as ``net(x, noise_level, labels=None)``: ``x`` is [B, ...] already
scaled to about unit variance, ``noise_level`` is a float tensor [B] (c_noise), ``labels``
an int64 tensor [B] or None (None means the null class). The output is shaped like ``x``.

A network's description is ``{"kind": ..., **fields of its config}``; ``network_config``
produces it and ``build_network`` consumes it, so a model is saved as this dict plus its
weights and nothing is tied to the code's class layout.

The noise-aware classifiers of classifier guidance (``net(x, noise_level) -> logits [B, K]``,
see ``models/classifier.py``) have a registry of the same form: ``build_classifier`` and
``classifier_config``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .autoencoder import AutoencoderConfig, AutoencoderKL, autoencoder_config, build_autoencoder
from .classifier import (MLPClassifier, MLPClassifierConfig, UNetClassifier, UNetClassifierConfig,
                         default_classifier)
from .control import ControlledUNet, ControlledUNetConfig
from .dit import DIT_CONFIGS, DiT, DiTConfig, dit_config
from .mlp import MLP, MLPConfig
from .text import TextConditioned, TextConditionedConfig, TextEncoder, text_network
from .temporal_unet import TemporalUNet, TemporalUNetConfig
from .unet import UNet, UNetConfig

__all__ = ["MLP", "MLPConfig", "UNet", "UNetConfig", "TemporalUNet", "TemporalUNetConfig", "ControlledUNet", "ControlledUNetConfig", "DiT", "DiTConfig", "DIT_CONFIGS",
           "dit_config", "TextConditioned", "TextConditionedConfig", "TextEncoder", "text_network", "NETWORKS", "build_network", "network_config",
           "AutoencoderKL", "AutoencoderConfig", "build_autoencoder", "autoencoder_config",
           "CLASSIFIERS", "build_classifier", "classifier_config", "default_classifier",
           "UNetClassifier", "UNetClassifierConfig", "MLPClassifier", "MLPClassifierConfig"]

# kind -> (network class, config class)
NETWORKS: dict[str, tuple[type[nn.Module], type]] = {
    "mlp": (MLP, MLPConfig),
    "unet": (UNet, UNetConfig),
    "dit": (DiT, DiTConfig),
    "text": (TextConditioned, TextConditionedConfig),
    "control": (ControlledUNet, ControlledUNetConfig),
    "temporal_unet": (TemporalUNet, TemporalUNetConfig),
}

# The noise-aware classifiers of classifier guidance, ``net(x, noise_level) -> logits``: a
# registry of their own, so that neither kind can be picked where the other is expected.
CLASSIFIERS: dict[str, tuple[type[nn.Module], type]] = {
    "unet_classifier": (UNetClassifier, UNetClassifierConfig),
    "mlp_classifier": (MLPClassifier, MLPClassifierConfig),
}


def build_network(config: dict[str, Any]) -> nn.Module:
    """Build a network from ``{"kind": "unet" | "mlp" | "dit", **config fields}``.

    Unknown kinds, unknown fields and missing required fields raise ValueError naming them;
    a silently ignored typo would otherwise build a different model than the one asked for.
    """
    return _build(NETWORKS, config, "network")


def build_classifier(config: dict[str, Any]) -> nn.Module:
    """Build a classifier from ``{"kind": "unet_classifier" | "mlp_classifier", **config fields}``,
    with the same checks as ``build_network``."""
    return _build(CLASSIFIERS, config, "classifier")


def _build(registry: dict[str, tuple[type[nn.Module], type]], config, what: str) -> nn.Module:
    if not isinstance(config, dict):
        raise ValueError(f"{what} config must be a dict, got {type(config).__name__}")
    if "kind" not in config:
        raise ValueError(f"{what} config needs a 'kind', one of {sorted(registry)}")
    fields = dict(config)
    kind = fields.pop("kind")
    if kind not in registry:
        raise ValueError(f"unknown {what} kind {kind!r}; known kinds: {sorted(registry)}")
    network_cls, config_cls = registry[kind]

    known = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"unknown field(s) for {kind!r}: {unknown}; known fields: {sorted(known)}")
    required = [
        name
        for name, f in known.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in fields]
    if missing:
        raise ValueError(f"missing required field(s) for {kind!r}: {missing}")
    # The config's own __post_init__ validates values and turns JSON lists back into tuples.
    return network_cls(config_cls(**fields))


def network_config(net: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable description of ``net``: its kind plus its config's fields."""
    return _describe(NETWORKS, net, "network")


def classifier_config(net: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable description of a classifier network, as ``network_config``."""
    return _describe(CLASSIFIERS, net, "classifier")


def _describe(registry: dict[str, tuple[type[nn.Module], type]], net: nn.Module, what: str) -> dict[str, Any]:
    for kind, (network_cls, config_cls) in registry.items():
        if isinstance(net, network_cls) and isinstance(getattr(net, "config", None), config_cls):
            fields = dataclasses.asdict(net.config)
            # Lists, not tuples, so the dict equals what json.loads gives back.
            fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
            return {"kind": kind, **fields}
    raise ValueError(
        f"{type(net).__name__} is not a registered {what}; known kinds: {sorted(registry)}"
    )
