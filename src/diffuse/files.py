"""Files replaced in one step: every file a user gets is written beside its destination and
renamed over it, so a failure at any moment (a full disk, a kill) leaves the old file or the new
one, never a partial one.

`atomic_write(path)` is the one mechanism: it yields an open temporary file in the destination's
folder; on a clean exit the file is flushed, synced and renamed into place, on an exception it is
removed and the destination is left as it was.

`cache_folder(name)` is where data made once and kept (recorded demonstrations, conformers, feature
networks) live: $DIFFUSE_CACHE/NAME, else ~/.cache/diffuse/NAME; `cached_arrays` reads a record of
arrays from there, or makes it and writes it there.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# The environment variable that moves every cache of the project.
CACHE_ENV = "DIFFUSE_CACHE"


def cache_folder(name: str) -> Path:
    """The default folder of one cache: $DIFFUSE_CACHE/name, else ~/.cache/diffuse/name."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "diffuse") / name


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary sibling of `path` for writing; rename it over `path` on success.

    The temporary file is a hidden `.NAME.XXXX` in the same folder (a rename across file systems
    would not be atomic). Its permissions are the ordinary 0o644, not mkstemp's private 0o600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path, text: str) -> None:
    """Replace a text file in one step."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path, data: bytes) -> None:
    """Replace a binary file in one step."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def cached_arrays(path, record, make):
    """An instance of the dataclass `record`, whose fields are numpy arrays: read from the .npz at
    `path` (never unpickled), or made by `make()` and written there in one step."""
    import dataclasses
    import io

    import numpy as np

    path, names = Path(path), [field.name for field in dataclasses.fields(record)]
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return record(**{name: f[name] for name in names})
    made = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: getattr(made, name) for name in names})
    write_bytes_atomic(path, buffer.getvalue())
    return made
