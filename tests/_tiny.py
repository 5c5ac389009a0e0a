"""Tiny training settings shared by the training, checkpoint, CLI and DDP tests.

Everything here is sized to train a few steps in well under a second on one CPU thread.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch

from diffuse.data import DataConfig
from diffuse.training import RunConfig, task_class

MLP = {"kind": "mlp", "dim": 2, "hidden": 32, "depth": 2}
UNET = {"kind": "unet", "in_channels": 1, "channels": 32, "channel_mults": [1, 2],
        "num_res_blocks": 1, "attention_levels": [1]}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_config(kind: str = "diffusion", **fields) -> RunConfig:
    """A RunConfig of the task `kind` with its defaults, from flat keywords (RunConfig.updated)."""
    return RunConfig(task_class(kind).Config(), DataConfig(), None).updated(**fields)


def ring_config(**overrides) -> RunConfig:
    """The 2-D ring with a small MLP: the fastest thing that trains."""
    settings = dict(data="ring", network=dict(MLP), batch_size=16, steps=4, checkpoint_every=2,
                    grid_size=4, sample_steps=2, warmup_steps=2)
    return run_config(**{**settings, **overrides})


def digits_config(cond: str = "none", dropout: float = 0.0, **overrides) -> RunConfig:
    """8x8 digits with a small U-Net; class-conditional with label dropout when cond='class'."""
    network = {**UNET, "dropout": dropout, "num_classes": 10 if cond == "class" else None}
    settings = dict(data="digits", cond=cond, network=network, batch_size=16, steps=4,
                    checkpoint_every=2, grid_size=4, sample_steps=2, warmup_steps=2)
    return run_config(**{**settings, **overrides})


def unet_json(num_classes: int | None = None) -> str:
    return json.dumps({**UNET, "num_classes": num_classes})


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: one thread, and the package importable from source."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PYTHON = sys.executable

# Module-scoped fixtures train before conftest's per-test fixture limits the threads; on a busy
# machine a second thread makes these tiny models several times slower, not faster.
torch.set_num_threads(1)
