"""Write a file so that readers never see half of it: a unique temp file beside it, then one rename.

Every step, the report and the drift monitor write their outputs through here, so a crash or a
concurrent writer leaves either the old file or the new one, and never a stray temp file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_file(path: str | Path, write: Callable[[Path], object], fsync: bool = False) -> Path:
    """Call `write(tmp)` on a temp file in `path`'s folder, then rename it over `path`.

    The temp name ends with `path`'s suffix, so writers that pick a format by suffix (matplotlib,
    pandas, Evidently) write the right one. With fsync, the data reaches the disk before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if fsync:
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are read by other users (serving, the KFP UI)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, fsync: bool = False) -> Path:
    """Replace `path` with `text` (UTF-8)."""
    return replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync=fsync)


def write_json(path: str | Path, obj: object) -> Path:
    """Replace `path` with `obj` as indented JSON (dates and paths as strings)."""
    return write_text(path, json.dumps(obj, indent=2, default=str))


def write_csv(path: str | Path, frame) -> Path:
    """Replace `path` with a pandas DataFrame as CSV, without its index."""
    return replace_file(path, lambda tmp: frame.to_csv(tmp, index=False))
