"""Atomic file and directory writes: a reader sees the old output or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(target: str | Path) -> None:
    """Refuse, before any work, an output path that cannot be written: its nearest existing ancestor must be
    a directory that takes a new entry (probed with an empty directory, removed at once)."""
    from mllm.core.errors import InputError

    target = Path(target).absolute()
    ancestor = next(p for p in target.parents if p.exists())
    if not ancestor.is_dir():
        raise InputError(f"cannot write {target}: {ancestor} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mllm-probe.", dir=ancestor))
    except OSError as err:
        raise InputError(f"cannot write {target}: {ancestor} takes no new files ({err.strerror})") from None


@contextlib.contextmanager
def _parents(target: Path) -> Iterator[None]:
    """Make ``target``'s missing parent directories; if the body fails, remove those it made (empty ones), so
    a failed write leaves no trace."""
    made = []
    for d in reversed([p for p in target.parents if not p.exists()]):
        d.mkdir(exist_ok=True)
        made.append(d)
    try:
        yield
    except BaseException:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target`` with the mode a
    plain ``open`` would give it (0666 less the umask; the temporary file is private while written)."""
    target = Path(target)
    with _parents(target):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~umask())
            os.replace(tmp_path, target)
        finally:
            tmp_path.unlink(missing_ok=True)


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json_atomic(target: str | Path, data) -> None:
    """JSON, indented with sorted keys (stable diffs for DVC metrics and committed logs), atomically."""
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success it replaces ``target`` whole."""
    target = Path(target)
    with _parents(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700, made what mkdir would give
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
