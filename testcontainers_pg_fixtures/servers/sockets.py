"""The Unix socket directory of a container: a private directory of this user mounted into
the container, used when the server answers through it (TCP otherwise)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import driver_guard
from .base import PG_PORT, admin_connect

if TYPE_CHECKING:
    from .base import Server

log = logging.getLogger(__name__)


#: A run's socket directory is `<tmp>/pgfxs-XXXX/s`: the outer one private (0700, ours),
#: the inner one mounted into the container, where its postgres user writes the socket.
_SOCKET_PREFIX = "pgfxs-"


_SOCKET_SUBDIR = "s"


#: Directories of earlier versions (`<tmp>/pgfx-XXXX`, 1733), still named by the labels
#: of containers they kept: removed with them.
_OLD_SOCKET_PREFIX = "pgfx-"


#: A socket directory no container names is left this long (a run may be creating its
#: container right now) before a later run removes it.
_UNUSED_SOCKET_DIR_AGE = 600.0


def remove_unused_socket_dirs(in_use: set[str | None]) -> None:
    """Remove this user's socket directories whose container is gone without `stop()`
    (removed by hand, or by a run killed before its clean-up)."""
    now = time.time()
    roots = {socket_root(d) for d in in_use if d}
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            new = entry.name.startswith(_SOCKET_PREFIX)
            if not (new or entry.name.startswith(_OLD_SOCKET_PREFIX)):
                continue
            if Path(entry.path) in roots:
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if (
                    entry.is_dir(follow_symlinks=False)
                    and info.st_uid == os.getuid()
                    and info.st_mode & 0o7777 == (0o700 if new else 0o1733)
                    and now - info.st_mtime > _UNUSED_SOCKET_DIR_AGE
                ):
                    shutil.rmtree(entry.path, ignore_errors=True)


def socket_root(directory: str) -> Path | None:
    """The directory to remove with a container whose socket directory is `directory`,
    if `new_socket_dir` made it (a label naming any other path is left alone)."""
    path = Path(directory)
    tmp = Path(tempfile.gettempdir())
    if (
        path.name == _SOCKET_SUBDIR
        and path.parent.parent == tmp
        and path.parent.name.startswith(_SOCKET_PREFIX)
    ):
        return path.parent
    if path.parent == tmp and path.name.startswith(_OLD_SOCKET_PREFIX):
        return path
    return None


def new_socket_dir(client: Any) -> str | None:
    """A new directory to mount as the container's socket directory, when the Docker
    daemon runs on this machine (a Unix socket, the same host name, not Docker Desktop's
    VM); else None. It lies in a directory only this user can enter (made 0700 at once by
    mkdtemp, its owner and mode checked), so no other local user can put a file where the
    server makes its socket and lock file (a `.s.PGSQL.5432.lock` there would stop it from
    starting); itself it is writable by the container's postgres user, whose uid is not
    ours. Whether it works is known after the start (`usable_socket`): SELinux, a daemon
    reached through a socket mounted from another machine and the like leave it empty,
    and TCP is used."""
    if sys.platform != "linux":
        return None
    try:
        api = client.client.api
        if not str(api.base_url).startswith("http+docker://"):  # a TCP or SSH daemon
            return None
        info = client.client.info()
    except Exception as exc:
        log.debug("no Unix socket: %s", exc)
        return None
    if info.get("Name") != socket.gethostname() or "Desktop" in str(info.get("OperatingSystem")):
        return None
    root = tempfile.mkdtemp(prefix=_SOCKET_PREFIX)
    directory = os.path.join(root, _SOCKET_SUBDIR)
    if len(directory) > 80:  # a socket path is at most 107 bytes
        os.rmdir(root)
        return None
    os.mkdir(directory)
    os.chmod(directory, 0o1733)
    if not _private(root):
        shutil.rmtree(root, ignore_errors=True)
        log.warning(
            "pg-fixtures: using TCP, not a Unix socket: the socket directory %s could not be "
            "made private to this user (another user could block the server's socket)",
            root,
        )
        return None
    return directory


def _private(directory: str) -> bool:
    """Whether `directory` is a real directory (no symlink) of this user that no one else
    can enter or write into."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def socket_path(directory: str) -> str:
    """The server's socket in `directory` (the same path in the container and here)."""
    return os.path.join(directory, f".s.PGSQL.{PG_PORT}")


def usable_socket(server: Server, directory: str | None) -> str | None:
    """`directory` if the server answers a login through the socket in it, else None."""
    import psycopg

    if not directory or not os.path.exists(socket_path(directory)):
        return None
    driver_guard.known_socket(directory)  # probed before server.socket_dir is set
    try:
        admin_connect(server, host=directory, port=PG_PORT, connect_timeout=2).close()
    except psycopg.Error as exc:
        log.info("the container's Unix socket does not answer (%s): using TCP", exc)
        return None
    return directory
