"""Files that many processes and machines share: atomic writes, checksums, locks and stale-temporary cleanup.

- Nothing half-written is ever read back: a file or folder is built under a temporary name beside its target
  and renamed onto it when complete (:func:`atomic_path`, :func:`atomic_write_text`, :func:`atomic_dir`).
- Outputs are readable by the team: temporaries are created with the permissions ``open``/``mkdir`` give under
  the process umask (0644 / 0755 with umask 022), never ``mkstemp``'s 0600.
- A temporary's name says who writes it (``.<target>.<host>-<pid>-<random>.tmp``), so when a store is opened
  :func:`clean_stale` removes those of dead writers on this machine, and any older than an hour.
- :func:`file_sha256` hashes a file once per process while it stays unchanged on disk, so stores can verify
  their files on every open without paying for it twice.
- :func:`exclusive`: one holder per key across processes and machines (filelock's OS lock: released by the
  kernel when its holder dies, so a lock file left behind never blocks).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0  # a temporary this old is abandoned whoever wrote it: a write takes seconds


def _host_token() -> str:
    """This machine and PID namespace, in 8 hex digits: a PID in a temporary's name is only checked where it
    means the same process (same host name, same boot, same PID namespace)."""
    parts = [socket.gethostname()]
    for probe in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(os.readlink(probe) if probe.endswith("/pid") else Path(probe).read_text().strip())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


HOST = _host_token()
_TMP_NAME = re.compile(r"\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
# what else atomic_path / atomic_dir leave behind: tempfile.mkstemp names of earlier versions, an interrupted swap
_OTHER_TEMPS = re.compile(r"^\..+(\.[a-z0-9_]{8}\.tmp|\.old)$")


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask decides the mode
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: the bytes on disk are ``text.encode()``, which a checksum may cover."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(text.encode())


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place when the block succeeds.

    An existing ``target`` is replaced only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    tmp.mkdir(0o777)  # the umask decides the mode
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_stale(entry: os.DirEntry, now: float, max_age_s: float) -> bool:
    name = entry.name
    m = _TMP_NAME.search(name) if name.startswith(".") else None
    if m is None and not _OTHER_TEMPS.match(name):
        return False
    if m and m["host"] == HOST and not _pid_alive(int(m["pid"])):
        return True  # its writer died (kill -9): nobody will rename it
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
    except FileNotFoundError:
        return False


def clean_stale(root: str | Path, depth: int = 1, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` / :func:`atomic_dir` (``.*.tmp``, and ``.*.old`` of an
    interrupted swap) that nobody will finish, in ``root`` and ``depth - 1`` levels of folders below: those whose
    writer on this machine is dead, and any older than ``max_age_s``. Returns what was removed."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if _is_stale(entry, now, max_age_s):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
            log.info("removed stale temporary %s", path)
        elif depth > 1 and entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            removed += clean_stale(entry.path, depth - 1, max_age_s)
    return removed


_DIGESTS: dict[tuple, tuple[int, str]] = {}


def file_sha256(path: str | Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, hashed once per process while its inode, size, mtime and ctime stay the
    same (a write in place changes ctime, so a corrupted file is hashed again; renaming the folder it is in
    does not, so a store's files hashed when written are not hashed again when it is opened)."""
    p = Path(path)
    st = p.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        with open(p, "rb") as fh:
            _DIGESTS[key] = (st.st_size, hashlib.file_digest(fh, "sha256").hexdigest())
    return _DIGESTS[key]


def text_sha256(text: str) -> dict[str, int | str]:
    """The record :func:`atomic_write_text` of ``text`` must match: ``{"size": bytes, "sha256": hex}``."""
    data = text.encode()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def checksum_mismatch(path: str | Path, record: dict) -> str | None:
    """Why ``path`` does not match its ``{"size", "sha256"}`` record (missing, other size, other content), or
    None when it does."""
    try:
        size, digest = file_sha256(path)
    except FileNotFoundError:
        return "missing"
    if size != record.get("size"):
        return f"has {size} bytes where {record.get('size')} were written (truncated or changed on disk)"
    if digest != record.get("sha256"):
        return "content differs from the checksum recorded when it was written (changed or corrupted on disk)"
    return None


@contextlib.contextmanager
def exclusive(lock_file: str | Path, what: str = "") -> Iterator[None]:
    """Hold the lock ``lock_file`` for the block: one holder at a time across processes and machines sharing the
    folder. An OS lock (flock), so a holder killed with -9 releases it and its lock file never blocks anyone;
    waiting is logged once (``what`` says for what)."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for %s (another process holds it%s)", lock_file, f": {what}" if what else "")
            lock.acquire()
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            from benchmark.errors import PhbenchError

            raise PhbenchError(f"{lock_file}: the file system does not support file locks ({err.strerror}); "
                               "put the store on one that does (or mount it with flock)") from err
        raise
    try:
        yield
    finally:
        lock.release()
