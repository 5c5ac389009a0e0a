"""Denoiser networks and a registry that builds them from plain JSON-like dicts.

Every network is called as ``net(x, noise_level, labels=None)``: ``x`` is [B, ...] already
scaled to about unit variance, ``noise_level`` is a float tensor [B] (c_noise), ``labels``
an int64 tensor [B] or None (None means the null class). The output is shaped like ``x``.

A network's description is ``{"kind": ..., **fields of its config}``; ``network_config``
produces it and ``build_network`` consumes it, so a model is saved as this dict plus its
weights and nothing is tied to the code's class layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .autoencoder import AutoencoderConfig, AutoencoderKL, autoencoder_config, build_autoencoder
from .dit import DIT_CONFIGS, DiT, DiTConfig, dit_config
from .mlp import MLP, MLPConfig
from .unet import UNet, UNetConfig

__all__ = ["MLP", "MLPConfig", "UNet", "UNetConfig", "DiT", "DiTConfig", "DIT_CONFIGS",
           "dit_config", "NETWORKS", "build_network", "network_config",
           "AutoencoderKL", "AutoencoderConfig", "build_autoencoder", "autoencoder_config"]

# kind -> (network class, config class)
NETWORKS: dict[str, tuple[type[nn.Module], type]] = {
    "mlp": (MLP, MLPConfig),
    "unet": (UNet, UNetConfig),
    "dit": (DiT, DiTConfig),
}


def build_network(config: dict[str, Any]) -> nn.Module:
    """Build a network from ``{"kind": "unet" | "mlp" | "dit", **config fields}``.

    Unknown kinds, unknown fields and missing required fields raise ValueError naming them;
    a silently ignored typo would otherwise build a different model than the one asked for.
    """
    if not isinstance(config, dict):
        raise ValueError(f"network config must be a dict, got {type(config).__name__}")
    if "kind" not in config:
        raise ValueError(f"network config needs a 'kind', one of {sorted(NETWORKS)}")
    fields = dict(config)
    kind = fields.pop("kind")
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; known kinds: {sorted(NETWORKS)}")
    network_cls, config_cls = NETWORKS[kind]

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
    for kind, (network_cls, config_cls) in NETWORKS.items():
        if isinstance(net, network_cls) and isinstance(getattr(net, "config", None), config_cls):
            fields = dataclasses.asdict(net.config)
            # Lists, not tuples, so the dict equals what json.loads gives back.
            fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
            return {"kind": kind, **fields}
    raise ValueError(
        f"{type(net).__name__} is not a registered network; known kinds: {sorted(NETWORKS)}"
    )
