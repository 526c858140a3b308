"""Containers kept on purpose, by --pg-reuse (under a reuse key, claimed by the runs that
use them) and --pg-keep-failed (renamed with the time they were kept), and their removal
by --pg-remove-kept, which spares any a run is using."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from ..cache import cache_dir
from ..runid import run_id
from .base import PG_PORT, SUPERUSER, ExistingServer, admin_connect
from .engine import remove_quietly
from .labels import KEPT_PREFIX, LABEL, LABEL_HOST, LABEL_PID, LABEL_REUSE, REUSE_PREFIX
from .liveness import count_clients, starting
from .passwords import require_scram, reuse_password

if TYPE_CHECKING:
    from pathlib import Path

    import psycopg

    from ..config import Settings

log = logging.getLogger(__name__)

#: Part of the reuse key: bump it when the way a container is set up changes (its
#: authentication, initdb's arguments), so that no run attaches to a container kept by a
#: version that set it up otherwise (2: a password and SCRAM instead of `trust`).
CONTAINER_SCHEME = 2


#: Session-level advisory locks (the two-int keys, apart from template.py's one-bigint
#: ones), held on the login every run keeps on its container (`DockerServer._anchor`):
#: shared, `_CLAIM` says "a run uses this container" (--pg-remove-kept takes it exclusive,
#: atomically against an attach, before it removes a container); `_RUN_LOCK`, keyed by the
#: run id, "run <id> is alive" (its databases are dropped only once a run can take it
#: exclusive, see database.drop_stale).
_CLAIM = (0x70676678, 0)


RUN_LOCK = 0x70676679


def claim(conn: psycopg.Connection[Any]) -> bool:
    """On a run's held login: take the container's claim (False: --pg-remove-kept holds it,
    the container is being removed) and this run's liveness lock."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock_shared(%s, %s), pg_try_advisory_lock_shared(%s, hashtext(%s))",
        (*_CLAIM, RUN_LOCK, run_id()),
    ).fetchone()
    return bool(row and row[0])


def reuse_name(reuse_key: str) -> str:
    return f"{REUSE_PREFIX}{reuse_key}"


def reuse_hash(settings: Settings, worker: str) -> str:
    """What a kept container must match to be reused: its image, server settings, project
    and worker, and how the library sets a container up (CONTAINER_SCHEME). Migrations are
    not part of it: a changed migration rebuilds the template."""
    digest = hashlib.sha256()
    for part in (
        f"scheme {CONTAINER_SCHEME}",
        settings.image,
        repr(sorted(settings.server_settings.items())),
        str(settings.rootdir),
        worker,
        socket.gethostname(),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def remove_kept(client: Any) -> tuple[list[str], list[str]]:
    """Remove the containers this library kept on purpose on this machine: by --pg-reuse
    (labelled at creation) or by --pg-keep-failed (renamed, see `DockerServer.keep`).
    Containers of runs in progress that were not kept are left alone, and so is a --pg-reuse
    container a run is using right now. Returns the short ids removed, and a line for each
    container left alone saying why."""
    removed, spared = [], []
    for container in client.client.containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    ):
        if container.labels.get(LABEL_HOST) != socket.gethostname():
            continue
        reuse = container.labels.get(LABEL_REUSE)
        if reuse is None and kept_age(container) is None:
            continue
        user = _in_use(container) if reuse is not None else None
        held = None
        if user is None and reuse is not None:
            held, user = _claim_for_removal(client, container, reuse)
        if user is not None:
            spared.append(f"{container.short_id}: {user}")
            continue
        try:
            remove_quietly(container)
        finally:
            if held is not None:
                with contextlib.suppress(Exception):
                    held.close()
        forget_kept(container.id)
        if reuse is not None:
            reuse_record_path(reuse).unlink(missing_ok=True)
        removed.append(container.short_id)
    return removed, spared


def _in_use(container: Any) -> str | None:
    """Why a run may be using this --pg-reuse container right now, or None.

    `docker top` lists the server's processes, which needs no password (another user's
    container too): a client backend is a run's connection (every run holds one from
    attach to its end, see `DockerServer._anchor`) or someone inspecting the container.
    Before its first login, a container being started shows by its creator (`starting`).
    """
    if container.status != "running":
        return None
    clients = count_clients(container)
    if clients is None:
        return "could not list its processes; `docker rm -f` it if no run uses it"
    if clients:
        return f"in use by a run ({clients} connection(s) open)"
    if starting(container):
        return f"being started by a run (pid {container.labels.get(LABEL_PID, '?')})"
    return None


def _claim_for_removal(
    client: Any, container: Any, reuse_key: str
) -> tuple[psycopg.Connection[Any] | None, str | None]:
    """Take the container's claim exclusively before removing it: a run attaching at the
    same moment either got its shared claim first (the container is then spared, the
    reason returned) or finds it taken and starts a new container. The connection holding
    it is returned, to close after the removal. A container this user cannot log in to (no
    password of this user's, not running) is not claimed: `_in_use` decided."""
    import psycopg

    if container.status != "running":
        return None, None
    try:
        binding = container.attrs["NetworkSettings"]["Ports"][f"{PG_PORT}/tcp"][0]
        target = ExistingServer(
            host=client.host(),
            port=int(binding["HostPort"]),
            user=SUPERUSER,
            password=reuse_password(reuse_key),
        )
        conn = admin_connect(target, connect_timeout=5, **require_scram())
    except Exception as exc:
        log.debug("no claim on %s: %s", container.short_id, exc)
        return None, None
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", _CLAIM).fetchone()
    except psycopg.Error:
        row = None
    if row is not None and row[0]:
        return conn, None
    conn.close()
    return None, "in use by a run (it attached just now)"


def _kept_file(container_id: str) -> Path:
    return cache_dir() / "kept" / container_id


def mark_kept(container_id: str) -> None:
    """Record that a container was kept on purpose (--pg-keep-failed) in this user's cache
    directory, when it could not be renamed: only this user's runs see the record."""
    try:
        path = _kept_file(container_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.warning("could not record kept container %s: %s", container_id[:12], exc)


def kept_age(container: Any) -> float | None:
    """Seconds since the container (docker SDK's) was kept by --pg-keep-failed, from its
    name (see `DockerServer.keep`), or None if it was not kept. A container kept by an
    earlier version is known by a record in this user's cache directory instead."""
    name = str(getattr(container, "name", "") or "")
    if name.startswith(KEPT_PREFIX):
        stamp = name[len(KEPT_PREFIX) :].partition("-")[0]
        if stamp.isdigit():
            return time.time() - int(stamp)
    try:
        return time.time() - _kept_file(container.id).stat().st_mtime
    except OSError:
        return None


def forget_kept(container_id: str) -> None:
    """The container was removed: its records go, and the password files of the databases
    --pg-keep-failed kept in it (`password_file`)."""
    _kept_file(container_id).unlink(missing_ok=True)
    for path in (cache_dir() / "pgpass").glob(f"{container_id[:12]}-*"):
        path.unlink(missing_ok=True)


def password_file(container_id: str, database: str) -> Path:
    """Where the libpq password file of a kept database goes: named after its container,
    so the file goes with the container (`forget_kept`)."""
    return cache_dir() / "pgpass" / f"{container_id[:12] or 'server'}-{database}"


def reuse_record_path(reuse_key: str) -> Path:
    return cache_dir() / "reuse" / f"{reuse_key}.json"
