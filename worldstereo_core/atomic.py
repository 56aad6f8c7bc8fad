"""Atomic writes: the one place that turns "write a file / a folder" into "all or nothing".

Every writer of the pack (memory bank and 3D cache saves, PLY / GLB / MP4 / camera.json /
COLMAP / transforms.json exports, JSON reports) goes through these two functions, so a crash,
an interrupt or a bad input mid-write never leaves a half-written file or folder under the
target's name and never changes an earlier output:

- :func:`write_file` writes into a hidden temporary file in the target's folder, flushes it to
  disk and renames it onto the target (``os.replace`` is atomic on one file system).
- :func:`write_folder` builds a hidden temporary folder ``.<name>.tmp-<pid>-<id>`` next to the
  target, flushes it, then renames it into place. An existing target is first renamed away
  (``.<name>.old-<pid>-<id>``) and deleted once the new one is in place; a crash between the
  two renames leaves the old version under that name (:func:`previous_versions` finds it).

A process killed mid-write (SIGKILL, power loss) cannot clean up after itself; its temporary
folder carries its process id, and :func:`remove_stale_temporaries` (called by every folder
write and by the memory bank / cache loaders) deletes those of processes that no longer run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_file", "write_text", "write_bytes", "write_folder", "remove_stale_temporaries", "previous_versions"]

PathLike = str | os.PathLike


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the process umask.

    ``mkstemp`` creates its file 0600; renamed into place as is, outputs would be unreadable to
    anyone else (a web server or container serving ComfyUI's output folder). Linux reports the
    umask without changing it; elsewhere it is read by setting and restoring it.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_dir(Path(root))


def write_file(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the finished temporary file onto ``path``.

    The temporary file lies in ``path``'s folder (same file system, so the rename is atomic) and
    keeps ``path``'s suffix, because some writers (ffmpeg) choose the container from it. If
    ``write`` raises (or the process is interrupted), the temporary file is removed and ``path``
    is untouched. Returns ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, _file_mode())
        write(tmp_path)
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically (see :func:`write_file`)."""
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write a binary file atomically (see :func:`write_file`)."""
    return write_file(path, lambda tmp: tmp.write_bytes(data))


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours, or the platform cannot tell: leave it alone
    return True


def remove_stale_temporaries(target: PathLike) -> list[Path]:
    """Delete the temporary folders a killed :func:`write_folder` of ``target`` left behind.

    Only ``.<name>.tmp-<pid>-<id>`` folders whose process no longer runs are removed (a save
    in progress in another process keeps its folder); ones without a pid (older releases) are
    always stale. Returns the removed paths.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = _TEMP_RE.match(p.name)
        if not m or m["name"] != target.name or not p.is_dir() or p.is_symlink():
            continue
        if m["pid"] is not None and _pid_alive(int(m["pid"])):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def previous_versions(target: PathLike) -> list[Path]:
    """Old versions of ``target`` left by a crash between :func:`write_folder`'s two renames."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    return sorted(target.parent.glob(f".{target.name}.old-*"))


def write_folder(
    target: PathLike, write: Callable[[Path], None], may_replace: Callable[[Path], bool] | None = None
) -> Path:
    """Run ``write(tmp_dir)`` into a fresh hidden folder, then move it to ``target`` atomically.

    Args:
        target: the folder to create or replace.
        write: fills the temporary folder (files and sub-folders).
        may_replace: called with an existing ``target``; returns whether it may be replaced.
            None: an existing target is never replaced (:class:`FileExistsError`).

    Raises:
        FileExistsError: ``target`` exists and may not be replaced (or is a file).
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    if target.exists() and (not target.is_dir() or may_replace is None or not may_replace(target)):
        raise FileExistsError(f"{target} exists and may not be replaced")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = parent / f".{target.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = parent / f".{target.name}.old-{tag}"
    try:
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
    return target
