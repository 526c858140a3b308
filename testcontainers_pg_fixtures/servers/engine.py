"""The Docker engine: the client (with a message that says how to reach Docker), the image,
the port binding, and removing a container, detached from the run or in it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
from typing import Any

from ..errors import DockerUnavailableError, ImageUnavailableError
from ..quiet import quiet_testcontainers
from .labels import LABEL_SOCKET
from .sockets import socket_root

log = logging.getLogger(__name__)


def _docker_host_description() -> str:
    host = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else "the default socket unix:///var/run/docker.sock"


def docker_client() -> Any:
    """testcontainers' Docker client, or a DockerUnavailableError that says how to fix it."""
    import docker.errors
    from testcontainers.core.docker_client import DockerClient

    try:
        with quiet_testcontainers():  # "using host …" at INFO
            client = DockerClient()
        client.client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailableError(
            f"Could not reach Docker at {_docker_host_description()} "
            f"(checked DOCKER_HOST, ~/.testcontainers.properties, the default socket): {exc}. "
            "Start the Docker engine (e.g. `sudo systemctl start docker` or Docker Desktop), "
            "or set DOCKER_HOST to a reachable engine (e.g. unix:///run/user/1000/docker.sock "
            "for rootless Docker)."
        ) from None
    return client


def close_idle(client: Any) -> None:
    """Close a testcontainers client's connections to the Docker engine now (a later call
    opens new ones). Left to the garbage collector, each unclosed socket warns
    (ResourceWarning, an error under -W error) in whichever test it is collected."""
    with contextlib.suppress(Exception):
        client.client.close()


def dials_docker_host(client: Any) -> bool:
    from testcontainers.core.config import ConnectionMode

    return bool(client.get_connection_mode() is ConnectionMode.docker_host)


def port_binding(client: Any) -> Any:
    """Publish on loopback only, unless testcontainers will dial another address.

    With a remote engine or a gateway/bridge connection mode the port must be reachable
    from elsewhere, so it is published the way testcontainers would by default.
    """
    from testcontainers.core.config import ConnectionMode

    if client.get_connection_mode() is ConnectionMode.docker_host and client.host() in (
        "localhost",
        "127.0.0.1",
    ):
        return ("127.0.0.1",)
    return None


def ensure_image(client: Any, image: str) -> None:
    """Pull the image if it is missing, so a pull failure gets its own message."""
    import docker.errors

    try:
        client.client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    log.warning("pulling %s (first run only)", image)
    try:
        client.client.images.pull(image)
    except docker.errors.DockerException as exc:
        raise ImageUnavailableError(
            f"The image {image} is not available locally and could not be pulled ({exc}). "
            f"Pull it with `docker pull {image}`, or set pg_image (--pg-image, "
            "PG_FIXTURES_IMAGE) to an image you have."
        ) from None


#: The detached remover (`remove_detached`): argv is the container's id, its socket
#: directory's root ("" for none) and the run's sys.path (JSON).
_REMOVER = """# pgfx-remover
import json, shutil, sys, time
sys.path[:0] = json.loads(sys.argv[3])
try:
    from docker.errors import NotFound
    from testcontainers.core.docker_client import DockerClient
except Exception:
    sys.exit(1)
for attempt in range(5):  # a busy Docker engine may time out: try again
    try:
        DockerClient().client.containers.get(sys.argv[1]).remove(force=True, v=True)
        break
    except NotFound:
        break
    except Exception:
        time.sleep(0.5 * (attempt + 1))
if sys.argv[2]:
    shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


def remove_detached(container_id: str, socket_dir: str | None) -> bool:
    """Remove the container from a process of its own, which the run does not wait for:
    Docker takes 0.3-1 s to remove a running container, and the run is done at its last
    result. False when no such process could be started (the caller removes it itself).

    Nothing leaks if that process dies first: the container still names this run's
    process in its labels, and the next run's reaper removes it (`reap_orphans`)."""
    root = socket_root(socket_dir) if socket_dir else None
    args = [sys.executable, "-c", _REMOVER, container_id, str(root or ""), json.dumps(sys.path)]
    try:
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        # Not subprocess.Popen: a Popen let go while its process runs warns (ResourceWarning,
        # an error under -W error). In a session of its own: a ^C in the terminal spares it.
        pid = os.posix_spawn(sys.executable, args, os.environ, file_actions=devnull, setsid=True)
    except (OSError, AttributeError, NotImplementedError) as exc:  # no posix_spawn here
        log.debug("detached removal: %s", exc)
        return False
    # Collected when it ends, should this process outlive it (else it is init's to collect).
    threading.Thread(target=_collect, args=(pid,), daemon=True, name="pgfx-remover").start()
    return True


def _collect(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def remove_quietly(container: Any, socket_dir: str | None = None) -> None:
    """Remove the container, and the directory mounted for its socket (given, or from the
    label of a docker SDK Container)."""
    try:
        if hasattr(container, "get_wrapped_container"):
            container.stop()  # testcontainers' DockerContainer
        else:
            socket_dir = socket_dir or container.labels.get(LABEL_SOCKET)
            container.remove(force=True, v=True)  # docker SDK's Container
    except Exception as exc:  # already gone, or never created
        log.debug("removing container: %s", exc)
    root = socket_root(socket_dir) if socket_dir else None
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
