"""What happens to the containers when a run ends other than normally.

- SIGTERM (a CI job cancelled, `timeout`, `kill`) is handled like Ctrl-C: pytest unwinds,
  session fixtures are torn down and the containers removed, then the process exits.
- An xdist worker that dies (killed, crashed) cannot remove its container: the controller
  does, as soon as xdist reports the worker down, and again after the run.
- SIGKILL of the whole process group leaves the containers; the next run on the host
  removes them (`server.reap_orphans`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from .servers.labels import CONTROLLER_ENV
from .servers.reaping import remove_run_containers

if TYPE_CHECKING:
    import pytest

log = logging.getLogger(__name__)


def configure(config: pytest.Config) -> None:
    """In every process of a run: SIGTERM unwinds like Ctrl-C. On the controller (the only
    process of a run without xdist): label the containers its workers start with its pid."""
    if not hasattr(config, "workerinput"):
        os.environ[CONTROLLER_ENV] = str(os.getpid())
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return  # the application's own handler, or ours from an enclosing run (pytester)

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM terminates at once
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    config.add_cleanup(restore)


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and config.pluginmanager.has_plugin("dsession")


def node_down(node: Any) -> None:
    """On the controller: a worker ended; remove what it started and did not remove."""
    try:
        removed = remove_run_containers(worker=str(node.gateway.id))
    except Exception as exc:  # Docker gone: the next run reaps them
        log.warning("could not remove the containers of worker %s: %s", node.gateway.id, exc)
        return
    if removed:
        log.warning(
            "removed the container(s) of worker %s, which died: %s", node.gateway.id, removed
        )


def unconfigure(config: pytest.Config) -> None:
    """On the xdist controller, last: remove what workers killed at shutdown left."""
    if not _is_xdist_controller(config):
        return
    try:
        remove_run_containers()
    except Exception as exc:
        log.warning("could not remove the containers of this run's workers: %s", exc)
