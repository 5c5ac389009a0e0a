"""Checkpoints: folders of safetensors and JSON, written atomically, never unpickled.

A run directory holds numbered checkpoint folders and a pointer to the newest complete one:

    RUN/checkpoints/step-00001000/
        config.json          {"kind": the task, "run": the run's config, "data": its DataInfo,
                              "state": what the task stores (tokenizer, latent scale, ...),
                              "history": the changes made to the config on resume}
        model.safetensors    the trained weights
        ema.safetensors      their exponential moving average (what sampling uses), if kept
        trainer.safetensors  optimizer moments
        trainer.json         step, optimizer hyper-parameters, elapsed time
    RUN/checkpoints/latest   the name of the newest complete checkpoint folder

A checkpoint is written into a temporary folder, flushed to disk and renamed into place; only
then is `latest` replaced (also by rename). A process killed at any moment leaves `latest`
pointing at a complete checkpoint. Loading reads only safetensors and JSON: a file that is not a
safetensors file, a pickle in disguise included, is refused before anything in it is run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import fsync_dir as _fsync_dir
from .files import write_text_atomic

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP_NAME = re.compile(r"step-\d{8}")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or not in our format."""


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(run_dir, step: int, config: dict, tensors: dict[str, dict[str, torch.Tensor]],
                    meta: dict | None = None, keep: int = 2) -> Path:
    """Write `tensors` ({file stem: {name: tensor}}), `config` and `meta` as checkpoint `step`.

    Returns the checkpoint folder. Older checkpoints beyond the newest `keep` are removed.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    os.chmod(tmp, 0o755)  # mkdtemp makes the folder private; the checkpoint is ordinary data
    try:
        _write_json(tmp / "config.json", config)
        for stem, state in tensors.items():
            _write_tensors(tmp / f"{stem}.safetensors", state)
        _write_json(tmp / "trainer.json", {"step": step, **(meta or {})})
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # re-saving a step: move the old one aside, then put the new in place
            trash = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.old."))
            os.rename(final, trash / name)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, name + "\n")
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temporaries of writes that were killed
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(f".{LATEST}.*"):  # and of pointer updates that were killed
        stale.unlink(missing_ok=True)


def latest_checkpoint(path) -> Path:
    """The checkpoint folder for a run directory, a checkpoints directory or a checkpoint itself."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "trainer.json").is_file():
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    pointer = root / LATEST
    # Every step-* folder is complete: it was renamed into place whole. A kill between that rename
    # and the pointer's (the first checkpoint's, or a same-step re-save's) leaves the pointer
    # missing or dangling; the newest complete folder is then the run's last checkpoint.
    complete = sorted(p for p in root.glob("step-*") if p.is_dir() and _STEP_NAME.fullmatch(p.name)) \
        if root.is_dir() else []
    if not pointer.is_file():
        if complete:
            return complete[-1]
        raise CheckpointError(f"no checkpoint found in {path} (expected {pointer})")
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{pointer} cannot be read: {e}") from None
    if not _STEP_NAME.fullmatch(name):  # a pointer names a folder beside it, never a path elsewhere
        raise CheckpointError(f"{pointer} should name a checkpoint folder like step-00001000, not {name[:60]!r}")
    folder = root / name
    if folder.is_dir():
        return folder
    if not complete:
        raise CheckpointError(f"{pointer} names {folder.name}, which does not exist")
    return complete[-1]


def load_tensors(path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing anything else (pickles included) without running it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file opens with its header's length (u64, little-endian), then the JSON
    # header. That length can itself begin with the byte 0x80 (a 128-byte header, say), so the
    # pickle and zip signatures only count when no JSON header follows. Either way nothing here
    # unpickles: the safetensors reader refuses whatever it cannot parse.
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise CheckpointError(f"{path} is a pickle or a zip archive, not a safetensors file; "
                              "diffuse never unpickles checkpoints (they can run arbitrary code)")
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None


def load_json(path) -> dict:
    """A checkpoint's JSON object, or a CheckpointError naming the file."""
    from .configs import ConfigError, read_json
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    try:
        return read_json(path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


@dataclass(frozen=True)
class StoredRun:
    """What a checkpoint's config.json says (see the module docstring)."""

    folder: Path
    kind: str
    config: dict
    data: dict
    state: dict
    history: list


def read_run(path) -> StoredRun:
    """The newest checkpoint of a run (or a given checkpoint folder) and its config.json, checked
    for the sections every run has."""
    folder = latest_checkpoint(path)
    file = folder / "config.json"
    stored = load_json(file)
    expected = {"kind": str, "run": dict, "data": dict, "state": dict, "history": list}
    for key, kind in expected.items():
        if not isinstance(stored.get(key), kind):
            raise CheckpointError(f"{file} is not a run's config: {key!r} must be a {kind.__name__}, "
                                  f"got {type(stored.get(key)).__name__}")
    task = stored["run"].get("task")
    if not isinstance(task, dict) or task.get("kind") != stored["kind"]:
        raise CheckpointError(f"{file} is damaged: it says the run is a {stored['kind']!r} run, but its task is "
                              f"{task.get('kind') if isinstance(task, dict) else task!r}")
    return StoredRun(folder, stored["kind"], stored["run"], stored["data"], stored["state"], stored["history"])


# -- optimizer state <-> flat tensors + JSON -----------------------------------------------------

def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and the rest (for JSON)."""
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
