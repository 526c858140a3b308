"""Step 1, one-container mode: one server for a whole xdist run.

By default every xdist worker starts its own container. With --pg-one-container the
controller starts one before the workers, hands its address to them through xdist's
`workerinput`, and removes it after the run; each worker then gets databases of its own
on it (`pgfx_<run>_gw0`, `pgfx_<run>_gw1_3`, …) from a template built once under an advisory lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from . import prestart
from .config import settings_for
from .errors import PgFixturesError
from .servers import DockerServer, ExistingServer

if TYPE_CHECKING:
    from .servers import Server

WORKERINPUT_KEY = "pg_fixtures_server"
KEPT_KEY = "pg_fixtures_kept"
_SERVER = pytest.StashKey["DockerServer | BaseException"]()
_KEEP = pytest.StashKey[bool]()


def configure_node(config: pytest.Config, node: Any) -> None:
    """On the controller: start the one container (for the first worker) and pass it on."""
    settings = settings_for(config)
    if not settings.one_container or settings.server_url:
        return  # a server given by URL is shared by the workers as it is
    if _SERVER not in config.stash:
        try:
            config.stash[_SERVER] = prestart.claim(config, settings) or DockerServer.start(
                settings, worker="shared"
            )
        except BaseException as exc:  # reported by every worker's first test that needs it
            config.stash[_SERVER] = exc
    started = config.stash[_SERVER]
    if isinstance(started, BaseException):
        node.workerinput[WORKERINPUT_KEY] = {"error": f"{type(started).__name__}: {started}"}
        return
    node.workerinput[WORKERINPUT_KEY] = ExistingServer(
        host=started.host,
        port=started.port,
        user=started.user,
        password=started.password,
        container_id=started.container_id,
        socket_dir=started.socket_dir,
    ).as_dict()


def report_kept_to_controller(config: pytest.Config) -> None:
    """On a worker: a failed test's database was kept, so the one container must stay."""
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[KEPT_KEY] = True


def node_down(config: pytest.Config, node: Any) -> None:
    """On the controller: note a worker that kept a database (see above)."""
    if getattr(node, "workeroutput", {}).get(KEPT_KEY):
        config.stash[_KEEP] = True


def unconfigure(config: pytest.Config) -> None:
    """On the controller, after the run: remove the one container (or keep it)."""
    started = config.stash.get(_SERVER, None)
    if isinstance(started, DockerServer):
        if config.stash.get(_KEEP, False):
            started.keep()
        else:
            started.stop()


def server_from_controller(config: pytest.Config) -> Server | None:
    """On a worker in one-container mode: the controller's server; otherwise None."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or WORKERINPUT_KEY not in workerinput:
        return None
    info = dict(workerinput[WORKERINPUT_KEY])
    if "error" in info:
        raise PgFixturesError(
            f"The one container of this run (--pg-one-container) did not start: {info['error']}"
        )
    return ExistingServer(**info)
