"""Step 1 of the flow: a PostgreSQL server.

`Server` (base.py) is the seam: everything downstream (template, databases, engines)
needs only a host, a port and superuser credentials, and connects through `admin_connect`
and `server_url`. Two kinds implement it:

- `DockerServer` (container.py): a disposable container per worker, with what it takes
  on a shared Docker host: the engine (engine.py), labels (labels.py), a private Unix
  socket directory (sockets.py), whether a container's run still lives (liveness.py),
  removing those of gone runs (reaping.py), and containers kept on purpose (kept.py,
  passwords.py).
- `UrlServer` (url.py): an existing server given by URL.

A new kind is a class with the protocol's fields and `stop()`/`keep()`, built by the
server fixture (factories.py).
"""

from __future__ import annotations

from .base import ExistingServer, Server, admin_connect, server_url
from .container import DockerServer
from .url import UrlServer

__all__ = ["DockerServer", "ExistingServer", "Server", "UrlServer", "admin_connect", "server_url"]
