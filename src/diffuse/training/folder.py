"""A run folder has one owner at a time, and a new run never mixes into an old one.

`RunLock` is a file RUN/.lock created exclusively (O_EXCL) that holds the writer's pid, host and
start time; a second process that asks for it is refused with those, so two `diffuse train` on one
`--out` cannot prune each other's temporary files. A lock whose process is gone (same host, pid
not alive) is stale and taken over. Within one process the lock may be taken again, so a script
can train a run and then resume it; it is released when training ends or the process exits.

`prepare_fresh(folder, overwrite)` is the rule for a new run: the folder must be empty (or not
exist); with `overwrite` a previous run's own files are removed first, and a non-empty folder
that is not a run folder is never cleared.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..checkpoint import CHECKPOINTS

LOCK = ".lock"
METRICS = "metrics.jsonl"
PICTURES = "pictures"
TEST_METRICS = "test_metrics.json"


class RunFolderError(RuntimeError):
    """The run folder is owned by another process, or holds another run."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    self.held = True  # this process already writes here (a script that trains, then resumes)
                    return self
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise RunFolderError(
                    f"{self.path.parent} is in use by process {holder.get('pid')} on {holder.get('host')} "
                    f"(since {holder.get('started')}); wait for it to finish, or remove {self.path} if it is gone")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            atexit.register(self.release)
            return self
        raise RunFolderError(f"could not take the lock {self.path}")

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}  # a lock being written, or damaged: it names nobody alive

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def run_files(folder: Path) -> list[Path]:
    """What a run writes at the top of its folder: checkpoints, logs, pictures."""
    return [p for p in Path(folder).iterdir()
            if p.name in (CHECKPOINTS, PICTURES, METRICS, TEST_METRICS) or p.suffix == ".png"]


def prepare_fresh(folder: Path, overwrite: bool) -> None:
    """Make `folder` ready for a new run (see the module docstring)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {folder} is a file, not a folder")
    entries = [p for p in folder.iterdir() if p.name != LOCK] if folder.is_dir() else []
    if not entries:
        return
    if not any(p.name in (CHECKPOINTS, METRICS) for p in entries):
        raise RunFolderError(f"{folder} is not empty and holds no run ({entries[0].name}, ...); choose an empty or "
                             "new folder for --out")
    if not overwrite:
        raise RunFolderError(f"{folder} already holds a run; continue it with --resume, replace it with "
                             "--overwrite, or choose another --out")
    for path in run_files(folder):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def sweep_temporaries(folder: Path) -> None:
    """Remove what killed writes left: the hidden temporaries (.NAME.XXXX) of the run's own files at
    its top and in pictures/ (the checkpoints' are swept by every save). Only the lock's holder
    calls this, so no other writer can be midway through one."""
    for place in (Path(folder), Path(folder) / PICTURES):
        if place.is_dir():
            for stale in place.glob(".*.*"):
                if stale.is_file() and stale.name != LOCK:
                    stale.unlink(missing_ok=True)
