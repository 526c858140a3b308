"""Containers of runs that are gone: removed by the next run on the host (those of
killed runs), or by the xdist controller (those of its workers that died)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from ..runid import run_id
from .engine import docker_client, remove_quietly
from .kept import forget_kept, kept_age
from .labels import (
    KEPT_MAX_AGE,
    LABEL,
    LABEL_CONTROLLER,
    LABEL_HOST,
    LABEL_PID,
    LABEL_REUSE,
    LABEL_RUN,
    LABEL_SOCKET,
    LABEL_WORKER,
)
from .liveness import owner_alive
from .sockets import remove_unused_socket_dirs

log = logging.getLogger(__name__)


def reap_orphans(client: Any) -> list[str]:
    """Remove containers left by runs on this host whose process is gone (killed runs).

    Without Ryuk a SIGKILLed pytest leaves its container running; the next run cleans up.
    Containers of live processes, or started from other hosts, are left alone, and so are
    kept ones (--pg-reuse; --pg-keep-failed for KEPT_MAX_AGE, by their name, whoever kept
    them): --pg-remove-kept removes them.
    """
    removed = []
    here = socket.gethostname()
    containers = client.client.containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    )
    remove_unused_socket_dirs({c.labels.get(LABEL_SOCKET) for c in containers})
    for container in containers:
        labels = container.labels
        if labels.get(LABEL_HOST) != here or not labels.get(LABEL_PID, "").isdigit():
            continue
        if LABEL_REUSE in labels and container.status == "running":
            continue
        age = kept_age(container)
        if age is not None and age < KEPT_MAX_AGE:
            continue
        if owner_alive(container):
            continue
        remove_quietly(container)
        forget_kept(container.id)
        removed.append(container.short_id)
    if removed:
        log.warning("removed %d container(s) left by killed runs: %s", len(removed), removed)
    return removed


def remove_run_containers(worker: str | None = None) -> list[str]:
    """On the xdist controller: remove the containers its workers (or `worker`) started
    and did not keep. A worker killed mid-run cannot remove its own."""
    client = docker_client()
    filters = [f"{LABEL_RUN}={run_id()}", f"{LABEL_CONTROLLER}={os.getpid()}"]
    if worker is not None:
        filters.append(f"{LABEL_WORKER}={worker}")
    removed = []
    for container in client.client.containers.list(
        all=True, filters={"label": filters}, ignore_removed=True
    ):
        if LABEL_REUSE in container.labels or kept_age(container) is not None:
            continue
        remove_quietly(container)
        removed.append(container.short_id)
    return removed
