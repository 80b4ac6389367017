"""One writer per output folder: the ``flock`` on ``OUT/.nimbuild.lock`` that :class:`nimbuild.outdir.OutputFolder`
holds for a whole command.

A second command on the same folder waits ``NIMBUILD_LOCK_WAIT`` seconds (default 10) and then fails
naming the holder (its pid, host, command and start, written into the lock file). The kernel drops the
lock of a killed process, so a kill never blocks a later run; the holder unlinks the file on release and
a waiter re-checks that it locked the file at the path, so no two commands ever hold it at once.

Light (stdlib, nimbuild.errors/fsutil; the variable is checked by :class:`nimbuild.runtime.settings.Variable`).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import naming

LOCK_FILE = ".nimbuild.lock"
# A nimbuild (not a NIM) setting, read here only (as NIMBUILD_MAX_DOWNLOAD_BYTES is in runtime/model_store.py),
# checked by settings' one rule so that a bad value is the same one line naming it.
LOCK_WAIT_ENV = "NIMBUILD_LOCK_WAIT"
DEFAULT_LOCK_WAIT_S = 10.0


def lock_wait_seconds(env: Mapping[str, str] | None = None) -> float:
    """NIMBUILD_LOCK_WAIT: how long a command waits for another one's lock on its folder (seconds, 0 to 7 days)."""
    from nimbuild.runtime.settings import Variable

    env = os.environ if env is None else env
    raw = (env.get(LOCK_WAIT_ENV) or "").strip()
    if not raw:
        return DEFAULT_LOCK_WAIT_S
    rule = Variable(
        LOCK_WAIT_ENV, "float", "seconds a command waits for another's lock on its --out", "10", 0, 7 * 86400
    )
    value = rule.check(raw)
    assert isinstance(value, float)
    return value


def acquire(folder: Path, command: str) -> tuple[int, bool]:
    """Lock ``folder`` for ``command``: (the lock file's descriptor, whether the folder had to be made again).

    Waits up to :func:`lock_wait_seconds`, then a NimbuildError naming the holder. On a file system
    without locks (some network mounts) the command goes on unlocked.
    """
    import fcntl

    path = folder / LOCK_FILE
    deadline = time.monotonic() + lock_wait_seconds()
    recreated = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the holder we waited for removed the folder it had created
            folder.mkdir(parents=True, exist_ok=True)
            recreated = True
            continue
        except OSError as exc:
            raise naming(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(fd)
            os.close(fd)
            now = time.monotonic()
            if now >= deadline:
                raise NimbuildError(
                    f"{folder}: another nimbuild command is writing this folder ({holder})",
                    hint=f"wait for it to finish, or write into another --out "
                    f"({LOCK_WAIT_ENV}=SECONDS waits longer; a killed holder releases the lock at once)",
                ) from None
            time.sleep(min(0.2, deadline - now))
            continue
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return fd, recreated  # a file system without locks: go on unlocked
            os.close(fd)
            raise naming(exc, path) from exc
        try:  # the holder we waited for unlinks its file on release: lock the one at the path
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        holder = {
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "command": command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return fd, recreated


def describe_holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "its pid is not recorded yet"
    where = "" if info.get("host") in (None, os.uname().nodename) else f" on {info['host']}"
    return f"pid {info['pid']}{where}, `{info.get('command', 'nimbuild')}` since {info.get('since', '?')}"
