"""Publishing finished outputs: exactly one writer wins, and temporaries left by dead processes can be proven ours.

Every output (a PLY, a video, a report, a folder of frames, an artifact) is written under a temporary name
beside its final path, then published in one step:

* a file without replacement is hard-linked to the final name (``os.link`` fails when the name exists), so of
  two writers started together exactly one gets the name and the other is told it already exists; on a file
  system without hard links the final name is reserved with ``O_CREAT | O_EXCL`` first (same guarantee, but a
  reader can see an empty file for a moment);
* a folder without replacement is renamed (``rename`` refuses a non-empty folder and any file in the way);
* a replacement (``--force``) is ``os.replace`` for files; for folders the two are swapped atomically with
  ``renameat2(RENAME_EXCHANGE)`` on Linux, else the old one is moved aside and the new one moved in.

Temporary names carry an owner tag: the writer's pid, the start time of that process and the host, as in
``.photo.ply.tmp-4242-1733500000-k3j9x2@myhost``. A later run writing into the same folder finds temporaries
whose process is gone (the pid is not running, or runs a process started at another time) and removes them
(``sweep_stale``); one from another host cannot be checked from here and is only reported. Nothing whose name
does not carry our tag is ever touched.

This module sits in reference/ because the reference PLY and video writers publish through it; the toolkit's
artifact, report and batch writers use the same functions (``publish_file``, ``publish_folder``,
``temp_path``, ``temp_folder``, ``sweep_stale``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sharp_export.errors import OutputError, UserInputError, output_error

TEMP_KINDS = ("tmp", "old", "partial")
# <base>.<kind>-<pid>-<start>-<random>@<host>[<suffix>], with an optional leading dot (hidden files).
_TAGGED = re.compile(
    r"^\.?(?P<base>.+)\.(?P<kind>tmp|old|partial)-(?P<pid>\d+)-(?P<start>\d+)-(?P<rand>[a-z0-9_]+)"
    r"@(?P<host>[A-Za-z0-9_-]+)(?P<suffix>\.[A-Za-z0-9]+)?$"
)
# errno values of a file system that cannot make hard links (FAT, exFAT, some network shares).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _host() -> str:
    """This machine's name with every character outside [A-Za-z0-9_-] as '_' (dots would be ambiguous)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (whole seconds since the epoch), or None when no such process runs."""
    import psutil

    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        return -1  # exists, but we may not look at it: alive as far as we can tell


def owner_tag() -> str:
    """``<pid>-<start>``: this process, unambiguous even after its pid is reused."""
    return f"{os.getpid()}-{_process_start(os.getpid())}"


def temp_path(final: Path, kind: str = "tmp") -> Path:
    """A hidden, tagged, unique sibling of ``final`` to write into (its suffix kept: ffmpeg picks the format by it)."""
    name = f".{final.name}.{kind}-{owner_tag()}-{secrets.token_hex(4)}@{_host()}"
    suffix = final.suffix if kind == "partial" else ""
    return final.with_name(name + suffix)


def temp_folder(final: Path, kind: str = "tmp") -> Path:
    """Create (mode 0755) and return a tagged, unique sibling folder of ``final``."""
    prefix = f"{final.name}.{kind}-{owner_tag()}-"
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=f"@{_host()}", dir=final.parent))
    os.chmod(folder, 0o755)  # mkdtemp makes 0700; outputs are meant to be shared and copied
    return folder


def already_exists(final: Path) -> OutputError:
    """The error of the writer that lost: another writer published ``final`` first (or it was there already)."""
    return OutputError("already exists; nothing was overwritten", path=final, fix="pass --force to replace it")


def publish_file(temp: Path, final: Path, *, replace: bool) -> None:
    """Give the finished file ``temp`` the name ``final``; without ``replace`` only if no one else has it."""
    if replace:
        os.replace(temp, final)
        return
    try:
        os.link(temp, final)
    except FileExistsError:
        raise already_exists(final) from None
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
        _publish_without_links(temp, final)
        return
    with contextlib.suppress(OSError):
        temp.unlink()


def _publish_without_links(temp: Path, final: Path) -> None:
    """Reserve ``final`` exclusively, then move ``temp`` over the reservation (the one writer that reserved)."""
    try:
        os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise already_exists(final) from None
    try:
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            final.unlink()  # our own empty reservation
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False  # glibc before 2.28, musl
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # an old kernel, or a file system without the flag
    raise OSError(code, os.strerror(code), str(b))


def publish_folder(temp: Path, final: Path, *, replace: bool) -> None:
    """Give the finished folder ``temp`` the name ``final``; without ``replace`` only if no one else has it.

    With ``replace``, a reader sees the old or the new folder, never neither where the kernel can swap them;
    the old folder is deleted afterwards. The caller has checked that the old folder may be replaced.
    """
    if not replace or not (final.exists() or final.is_symlink()):
        try:
            os.rename(temp, final)  # refuses a non-empty folder or a file at ``final``
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise already_exists(final) from None
            raise
        return
    if _exchange(temp, final):
        shutil.rmtree(temp, ignore_errors=True)  # now holds the old folder
        return
    aside = temp_folder(final, "old")
    os.replace(final, aside / "previous")
    try:
        os.replace(temp, final)
    except BaseException:
        os.replace(aside / "previous", final)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


# ---- temporaries left behind by dead processes ----------------------------------------------------------------


@dataclass(frozen=True)
class Stale:
    path: Path
    pid: int
    host: str
    removed: bool  # False: from another host (cannot check that its process is gone), left alone

    def note(self) -> str:
        if self.removed:
            return f"note: removed {self.path}, left by sharp-export process {self.pid}, which no longer runs"
        return (
            f"note: {self.path} is a sharp-export temporary of process {self.pid} on host {self.host}; "
            "not removed from here (delete it once that process has ended)"
        )


def owner_is_gone(name: str) -> bool | None:
    """For a tagged temporary name: True when its process is gone, False while it runs, None if not ours or
    from another host."""
    match = _TAGGED.match(name)
    if match is None or match["host"] != _host():
        return None
    started = _process_start(int(match["pid"]))
    return started is None or (started != -1 and abs(started - int(match["start"])) > 1)


def sweep_stale(folder: Path, base: str | None = None) -> list[Stale]:
    """Remove this host's temporaries of ours in ``folder`` (only those for ``base`` when given) whose process is
    gone; report those of other hosts. Temporaries of running processes, and every other name, are left alone."""
    found: list[Stale] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        match = _TAGGED.match(entry.name)
        if match is None or (base is not None and match["base"] != base):
            continue
        if match["host"] != _host():
            found.append(Stale(Path(entry.path), int(match["pid"]), match["host"], removed=False))
            continue
        if not owner_is_gone(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another run swept it first
        found.append(Stale(Path(entry.path), int(match["pid"]), match["host"], removed=True))
    return found


def write_file(path: Path, chunks: list[bytes], *, replace: bool) -> None:
    """Write ``chunks`` to a tagged temporary beside ``path``, fsync it, and publish it (``write_with``)."""

    def write(temp: Path) -> None:
        with open(temp, "xb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

    write_with(path, write, replace=replace)


def write_with(path: Path, write: Callable[[Path], None], *, replace: bool) -> None:
    """``write(temp)`` fills a tagged temporary beside ``path`` (a library that writes its own files, e.g. SPZ),
    which is then published (``publish_file``).

    On any failure (full disk, read-only folder, Ctrl-C, SIGTERM, another writer first) the temporary is
    removed and an existing ``path`` is left as it was; a write fault becomes an ``OutputError`` naming ``path``.
    """
    if not path.parent.is_dir():
        raise UserInputError("output directory does not exist", path=path.parent, fix="create it first")
    temp = temp_path(path)
    try:
        write(temp)
        publish_file(temp, path, replace=replace)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            kept = "the existing file is unchanged" if path.exists() else "no partial file was left"
            converted = output_error(error, path, outcome=kept)
            if converted is not None:
                raise converted from None
        raise
