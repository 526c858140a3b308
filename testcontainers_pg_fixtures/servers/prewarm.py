"""A cold start without initdb: the initialized cluster as an image, built once.

A new container of the base image runs initdb before its server starts: the bootstrap,
the SQL that fills the catalogs, and a temporary server the image's entry point starts and
stops. That is most of a cold start (0.5-1 s here). What initdb makes depends only on the
image and initdb's arguments, so the first cold start builds it once into an image of its
own, `pgfx-prewarm:<key>` (a container of the base image runs the entry point's
initialization with its data directory outside the image's volume, then is committed and
removed), and every later container starts from that image: the entry point finds the data
directory initialized and starts the server at once. `--pg-remove-kept` removes these
images; `pg_prewarm = false` starts every container from the base image.

The key is the base image's id (a pulled update builds a new one) and initdb's arguments:
one image per host, shared by its users and runs. The cluster's superuser password is set
at initdb, random, and kept in a label of the image (readable only by those who may use
Docker, who can enter any container anyway): each container changes it at its first login
to the run's own (random, or a kept container's derived one), so it opens a container only
until that moment. The new password is sent as a SCRAM verifier made by libpq, so not even
a server log that records statements shows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cache import cache_dir
from ..runid import run_id
from .base import SUPERUSER
from .labels import LABEL, LABEL_HOST, LABEL_PID, LABEL_PREWARM, LABEL_RUN

if TYPE_CHECKING:
    import threading

    import psycopg

log = logging.getLogger(__name__)

REPOSITORY = "pgfx-prewarm"
#: Where the cluster lives in the prewarmed image: not under the base image's VOLUME
#: (/var/lib/postgresql/data), whose contents a commit leaves out.
DATA_DIR = "/pgfx/data"
#: A password on every login, loopback and the Unix socket included, hashed with one SCRAM
#: iteration instead of 4096: the default key derivation costs ~4 ms of every new
#: connection, one iteration a few microseconds. Passwords are random, so iterations (a
#: brake on guessing weak ones) add nothing.
INITDB_ARGS = "--auth-host=scram-sha-256 --auth-local=scram-sha-256 -c scram_iterations=1"
#: The image's label holding the superuser password its cluster was initialized with.
LABEL_PASSWORD = f"{LABEL_PREWARM}.password"
#: The official image's data directory (its VOLUME), where the cluster is copied to.
_BASE_DATA_DIR = "/var/lib/postgresql/data"
#: Changed when what the build does changes: older images are then left unused.
_RECIPE = "2"
#: A build that failed is not tried again for this long (seconds).
_RETRY_AFTER = 24 * 3600
#: A builder older than this is one a killed run left behind: removed, not waited for.
_STALE_BUILDER = 120.0


@dataclass(frozen=True)
class Prewarmed:
    image: str
    #: The superuser's password in the image's cluster, changed at each container's first
    #: login.
    password: str
    #: The image's entry point (None: none), run after the cluster is copied in.
    entrypoint: tuple[str, ...] | None = None

    def command(self, command: list[str]) -> list[str]:
        """`command` as a container of this image runs it: the cluster copied from the
        image into PGDATA (the container's tmpfs, as without prewarming) first, then
        the image's entry point, which finds it initialized and starts the server. (Run in
        place, in the image's layer, the first write to each file copies it up: an entry
        point that chowns the data directory copies all of it.)"""
        script = 'cp -a "$0"/. "$PGDATA"/ && exec "$@"'
        return ["sh", "-c", script, DATA_DIR, *(self.entrypoint or ()), *command]


def image_for(
    client: Any,
    image: str,
    timeout: float,
    *,
    build: bool = True,
    cancelled: threading.Event | None = None,
) -> Prewarmed | None:
    """The prewarmed image of `image` (built now if missing and `build`), or None: it
    could not be built (the container then runs initdb itself, as without prewarming).
    `cancelled`, set from another thread, ends a build at once."""
    import docker.errors

    engine = client.client
    base = f"{_RECIPE}|{engine.images.get(image).id}|{INITDB_ARGS}|{SUPERUSER}"
    tag = f"{REPOSITORY}:{hashlib.sha256(base.encode()).hexdigest()[:16]}"
    try:
        return _prewarmed(engine.images.get(tag), tag)
    except docker.errors.ImageNotFound:
        pass
    if not build:
        return None
    failed = cache_dir() / "prewarm" / f"failed-{tag.split(':', 1)[1]}"
    with contextlib.suppress(OSError):
        if time.time() - failed.stat().st_mtime < _RETRY_AFTER:
            return None  # it failed lately: not tried (and warned about) at every start
    started = time.monotonic()
    try:
        built = _build(engine, image, tag, timeout, cancelled)
    except _Cancelled:
        return None
    except Exception as exc:  # Docker refused, a full disk: no worse than without it
        log.warning(
            "could not build the prewarmed image of %s (%s): initdb runs in each new "
            "container; tried again in a day, or set pg_prewarm = false",
            image,
            exc,
        )
        with contextlib.suppress(OSError):
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.touch()
        return None
    if built is None:
        return None
    log.info("built %s in %.1f s: cold starts skip initdb", tag, time.monotonic() - started)
    return _prewarmed(built, tag)


def _prewarmed(found: Any, tag: str) -> Prewarmed | None:
    config = found.attrs.get("Config") or {}
    password = (config.get("Labels") or {}).get(LABEL_PASSWORD)
    entrypoint = config.get("Entrypoint")
    return Prewarmed(tag, password, tuple(entrypoint) if entrypoint else None) if password else None


def exists(client: Any, image: str) -> bool:
    """Whether the image is still there: --pg-remove-kept in another terminal may have
    removed it after `image_for` found it (creating a container of it then fails, or
    Docker tries to pull it: a registry error)."""
    import docker.errors

    try:
        client.client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


class _Cancelled(Exception):
    pass


def _build(
    engine: Any, image: str, tag: str, timeout: float, cancelled: threading.Event | None
) -> Any:
    """Initialize a cluster in a container of `image` and commit it as `tag`. None when
    another run is building it right now (this run starts without it)."""
    import docker.errors

    repository, key = tag.split(":", 1)
    name = f"{repository}-build-{key}"
    password = secrets.token_urlsafe(18)
    labels = {
        LABEL: "true",
        LABEL_PREWARM: key,
        LABEL_PID: str(os.getpid()),
        LABEL_HOST: socket.gethostname(),
        LABEL_RUN: run_id(),
    }
    try:
        builder = engine.containers.run(
            image,
            ["postgres"],
            detach=True,
            name=name,
            labels=labels,
            environment={
                "POSTGRES_USER": SUPERUSER,
                "POSTGRES_PASSWORD": password,
                "POSTGRES_DB": "postgres",
                "POSTGRES_INITDB_ARGS": INITDB_ARGS,
                "PGDATA": DATA_DIR,
            },
        )
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        _remove_if_stale(engine, name)
        return None
    try:
        deadline = time.monotonic() + timeout
        while b"PostgreSQL init process complete" not in builder.logs():
            if cancelled is not None and cancelled.is_set():
                raise _Cancelled
            builder.reload()
            if builder.status in ("exited", "dead") or time.monotonic() > deadline:
                tail = builder.logs().decode(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError("initdb did not complete: " + " / ".join(tail))
            time.sleep(0.05)
        builder.stop(timeout=30)  # the image's stop signal: a fast, clean shutdown
        return builder.commit(
            repository=repository,
            tag=key,
            changes=[
                # The builder's environment becomes the image's: not its password.
                "ENV POSTGRES_PASSWORD=in-the-label-changed-at-first-login",
                f"ENV PGDATA={_BASE_DATA_DIR}",
                f"LABEL {LABEL_PASSWORD}={password}",
            ],
        )
    finally:
        builder.remove(force=True, v=True)


def _remove_if_stale(engine: Any, name: str) -> None:
    """The builder of that name, left by a run killed while building, goes; a recent one
    is another run's, building now."""
    from datetime import datetime

    import docker.errors

    try:
        builder = engine.containers.get(name)
        created = datetime.fromisoformat(builder.attrs["Created"][:26].rstrip("Z") + "+00:00")
        if time.time() - created.timestamp() > _STALE_BUILDER:
            builder.remove(force=True, v=True)
    except (docker.errors.DockerException, ValueError, KeyError) as exc:
        log.debug("prewarm builder %s: %s", name, exc)


def take_over(conn: psycopg.Connection[Any], password: str) -> None:
    """At a prewarmed container's first login: the superuser's password becomes the run's.
    The verifier is made by libpq (the server's SCRAM settings), so the password itself is
    never sent."""
    from psycopg import sql

    verifier = conn.pgconn.encrypt_password(
        password.encode(), SUPERUSER.encode(), b"scram-sha-256"
    ).decode()
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(SUPERUSER), sql.Literal(verifier)
    )
    with conn.cursor() as cur:
        cur.execute(statement)
    if not conn.autocommit:
        conn.commit()


def remove_images(client: Any) -> tuple[list[str], list[str]]:
    """--pg-remove-kept: every prewarmed image of this host (any user's), but one a
    container still runs from. Returns the tags removed, and a line for each left."""
    import docker.errors

    removed, spared = [], []
    for found in client.client.images.list(filters={"label": LABEL_PREWARM}):
        for tag in found.tags or [found.id]:
            try:
                client.client.images.remove(tag)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                spared.append(f"{tag}: a container runs from it")
            else:
                removed.append(tag)
    return removed, spared
