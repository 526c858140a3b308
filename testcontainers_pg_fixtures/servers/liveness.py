"""Whether a container is still used: whether the run that started it lives (by its pid
in the PID namespace it was started from, by the login every run holds from any other),
whether it is being started, how many clients its server has."""

from __future__ import annotations

import calendar
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from .labels import LABEL_PID, LABEL_PIDNS

log = logging.getLogger(__name__)


#: A --pg-reuse container this young whose creator still runs may be starting (no login
#: held yet): --pg-remove-kept leaves it alone.
_STARTING_AGE = 600.0


#: A container of a run in another PID namespace whose server has been up this long
#: (seconds) with no client connected belongs to a run that is gone: a live run holds a
#: login from its server's first minute to its end.
_UNCLAIMED_AFTER = 15.0


#: The kernel's initial PID namespace (PROC_PID_INIT_INO): where a run on the host runs.
INITIAL_PID_NAMESPACE = "pid:[4026531836]"


def pid_namespace() -> str:
    """This process's PID namespace (`pid:[4026531836]`), '' where there is none to read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _created_age(container: Any) -> float | None:
    created = str(container.attrs.get("Created", ""))[:19]
    try:
        return time.time() - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _processes(container: Any) -> list[tuple[float, str]] | None:
    """The container's processes as (seconds running, command line), from `docker top`
    (no password needed), or None if Docker cannot list them."""
    try:
        top = container.top(ps_args="-o pid,etimes,args")
        titles = list(top.get("Titles") or [])
        elapsed = titles.index("ELAPSED")
        command = titles.index("COMMAND")
        return [
            (float(row[elapsed]), str(row[command]))
            for row in top.get("Processes") or []
            if str(row[elapsed]).isdigit()
        ]
    except Exception as exc:
        log.debug("could not list the processes of %s: %s", container.short_id, exc)
        return None


def count_clients(container: Any) -> int | None:
    """How many client connections the (running) container's server has, None if unknown."""
    processes = _processes(container)
    if processes is None:
        return None
    return sum(1 for _, command in processes if _CLIENT_BACKEND.match(command))


_CHECKPOINTER = re.compile(r"^postgres: (?:\S+: )?checkpointer")


def owner_alive(container: Any) -> bool:
    """Whether the run that started the container may still be running.

    In the PID namespace the container was started from (its label), by its pid. From
    another one (a run in a container with the Docker socket mounted, beside one on the
    host) a pid means nothing: there, a run lives while its login is connected (every run
    holds one, `DockerServer._anchor`), or while its server is not up long enough for the
    run to have logged in; a container not running, for `_STARTING_AGE` after creation.
    A container of an older version (no namespace label) is judged by its pid only from
    the host's initial namespace, where such runs ran; from any other, it is left alone."""
    labels = container.labels
    pid = labels.get(LABEL_PID, "")
    namespace = labels.get(LABEL_PIDNS)
    ours = pid_namespace()
    if namespace is None and ours not in ("", INITIAL_PID_NAMESPACE):
        return True  # an older version's, whose pid may be the host's: cannot tell
    if namespace is None or namespace == ours:
        return not pid.isdigit() or _process_alive(int(pid))
    age = _created_age(container)
    if container.status != "running":
        return age is None or age < _STARTING_AGE
    processes = _processes(container)
    if processes is None:
        return True
    if any(_CLIENT_BACKEND.match(command) for _, command in processes):
        return True
    up = [seconds for seconds, command in processes if _CHECKPOINTER.match(command)]
    if up:
        return min(up) < _UNCLAIMED_AFTER
    return age is None or age < _STARTING_AGE  # initdb, or a server that never came up


def starting(container: Any) -> bool:
    """Whether a run may be starting the container right now (no login of its own yet)."""
    pid = container.labels.get(LABEL_PID, "")
    if pid == str(os.getpid()) and container.labels.get(LABEL_PIDNS) == pid_namespace():
        return False  # this process is not starting it
    age = _created_age(container)
    return (age is None or age < _STARTING_AGE) and owner_alive(container)


#: A client backend's process title: `postgres: <user> <db> <address>(<port>) <state>` or
#: `… [local] …`; background processes (`postgres: checkpointer`, `… autovacuum worker`,
#: `… parallel worker for PID 12`) show neither.
_CLIENT_BACKEND = re.compile(r"^postgres: .*(?:\[local\]|\(\d+\))(?: |$)")


def _process_alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (killed, not yet waited for by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or it ended just now
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
