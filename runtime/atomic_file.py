"""Write files under a temporary name and rename, so no reader ever sees a half-written file.

Temporary names say whose they are: ``.<target>.<host>.<pid>.<random>.glsnet-tmp<suffix>``. A
process killed with SIGKILL (or a machine that lost power) cannot remove its own, so a later run
into the same folder removes those whose process is provably gone: same host, pid not running.
Several files that belong together are renamed as one (``replace_all``): all of them, or none.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

TEMP_MARK = ".glsnet-tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_MARK) + r".*$")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, so never toggle it while threads write
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:48] or "host"


def create_temporary(target: str | os.PathLike, suffix: str | None = None) -> Path:
    """An empty file beside ``target`` under a recognisable temporary name (see the module docstring).

    The name ends with ``target``'s suffix by default so that writers that pick a format from the name work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent,
        prefix=f".{target.name}.{_HOST}.{os.getpid()}.",
        suffix=TEMP_MARK + (target.suffix if suffix is None else suffix),
    )
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    except BaseException:  # a signal here must not leave the file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    On any exception (KeyboardInterrupt and signals included) the temporary file is removed and
    ``target`` is left as it was.
    """
    tmp_path = create_temporary(target, suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def replace_all(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Rename each temporary onto its target, all or none.

    A target that is a folder is refused before anything moves. When a rename fails midway, the
    targets already replaced are put back as they were (the earlier file restored from a hard
    link, or removed when there was none) and the error is raised.
    """
    pairs = [(Path(tmp), Path(target)) for tmp, target in pairs]
    for _, target in pairs:
        if target.is_dir():
            raise IsADirectoryError(21, "a folder is in the way of this output", str(target))
    done: list[tuple[Path, Path | None]] = []  # (target, backup of what it was)
    try:
        for tmp, target in pairs:
            backup = _hard_link_backup(target)
            try:
                os.replace(tmp, target)
            except BaseException:
                if backup is not None:
                    backup.unlink()
                raise
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink()
        raise
    for _, backup in done:
        if backup is not None:
            with contextlib.suppress(OSError):
                backup.unlink()


def _hard_link_backup(target: Path) -> Path | None:
    """A second name for an existing ``target`` (a temporary one), so a rollback can restore it."""
    if not target.is_file():
        return None
    backup = create_temporary(target, suffix=".old")
    try:
        backup.unlink()
        os.link(target, backup)
    except OSError:  # no hard links here (some network or FAT file systems): no restore, only removal
        with contextlib.suppress(OSError):
            backup.unlink()
        return None
    return backup


def pid_is_running(pid: int) -> bool:
    """True unless ``pid`` is provably not a running process on this machine."""
    if pid <= 0:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary files in ``directory`` left by processes of this host that are no longer running."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match["host"] != _HOST or pid_is_running(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def remove_temporaries_of(target: str | os.PathLike) -> list[Path]:
    """Remove every temporary file of ``target`` beside it, whoever wrote it; returns them.

    A process killed outright (SIGKILL, OOM killer, lost node) never runs atomic_path's cleanup, and
    on another host its pid cannot be checked. Call this only when no live process is writing
    ``target`` (glsnet batch does, after the worker that wrote it died).
    """
    target = Path(target)
    removed = []
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*{TEMP_MARK}*"):
        match = _TEMP_NAME.match(stale.name)
        if match is None or match["target"] != target.name:
            continue
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed
