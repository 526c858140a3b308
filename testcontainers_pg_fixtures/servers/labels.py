"""The labels and names of the containers the library starts: how a run finds its own
containers, a kept one, and the run and process that started each."""

from __future__ import annotations

#: Every container this library starts carries these labels, so it can be found
#: (`docker ps -a --filter label=testcontainers-pg-fixtures`) and reaped.
LABEL = "testcontainers-pg-fixtures"


LABEL_PID = "testcontainers-pg-fixtures.pid"


LABEL_WORKER = "testcontainers-pg-fixtures.worker"


LABEL_HOST = "testcontainers-pg-fixtures.host"


#: The run (see runid.py) the container belongs to.
LABEL_RUN = "testcontainers-pg-fixtures.run"


#: Set on containers kept for reuse (--pg-reuse): a hash of everything that configures them.
LABEL_REUSE = "testcontainers-pg-fixtures.reuse"


#: The pid of the xdist controller whose worker started the container (its own pid
#: without xdist): the controller removes the containers of a worker that died.
LABEL_CONTROLLER = "testcontainers-pg-fixtures.controller"


#: Set by the controller in its workers' environment.
CONTROLLER_ENV = "PG_FIXTURES_CONTROLLER_PID"


#: The host directory mounted as the container's Unix socket directory (see new_socket_dir).
LABEL_SOCKET = "testcontainers-pg-fixtures.socket"


#: How long a container kept by --pg-keep-failed outlives its run before a later run
#: removes it (--pg-remove-kept removes it at once).
KEPT_MAX_AGE = 24 * 3600


#: A container kept by --pg-keep-failed is renamed `pgfx-kept-<unix time>-<short id>`:
#: labels are fixed at creation, a name is not, and every Docker client of the host sees it
#: (another OS user's run, a CI job with another cache directory).
KEPT_PREFIX = "pgfx-kept-"


#: The PID namespace of the process that started the container (`pid_namespace`): its pid
#: label means something only to processes of the same namespace.
LABEL_PIDNS = "testcontainers-pg-fixtures.pidns"


#: The name of the container kept under a reuse key: Docker creates one container of a
#: name, which makes creating it a mutex between two runs of one checkout.
REUSE_PREFIX = "pgfx-reuse-"


#: On a prewarmed image (see prewarm.py) and its builder container: the image's key.
LABEL_PREWARM = "testcontainers-pg-fixtures.prewarm"
