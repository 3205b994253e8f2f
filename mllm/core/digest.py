"""Content digests: what a resumable run (a training checkpoint, a long prediction) is valid for."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: str | Path, whole_below: int = 1 << 30) -> str:
    """sha256 of a file; of its size, first and last MiB when it is larger than ``whole_below`` bytes
    (weights of a 7B model: enough to tell two checkpoints apart without reading 15 GB)."""
    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        if size <= whole_below:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(1 << 20))
            fh.seek(size - (1 << 20))
            h.update(fh.read())
    return h.hexdigest()


def dir_digest(directory: str | Path) -> str:
    """sha256 over the names and digests of a directory's files (not its subdirectories): a model dir."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(directory).iterdir() if p.is_file()):
        h.update(f.name.encode() + file_digest(f).encode())
    return h.hexdigest()
