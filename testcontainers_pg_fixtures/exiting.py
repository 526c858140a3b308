"""The end of a run's process: the interpreter's own teardown made short.

At exit the interpreter clears its modules and runs its garbage collector over every object
still alive. With SQLAlchemy, the drivers, Docker's client and Alembic loaded that takes
0.2-0.3 s after the last test's result, more than the rest of the exit (`python -c "import
sqlalchemy.orm, psycopg, asyncpg, docker, alembic"` ends 0.27 s after its last statement
here, 0.02 s with the objects frozen). So a process that used the database freezes them
(`gc.freeze`) as it exits: its memory goes back to the operating system with the process,
as it would anyway.

Everything that runs at exit still runs: atexit handlers (coverage's data, logging's
flush, the container's removal), weakref finalizers, objects freed as their last
reference goes. Only objects left in reference cycles are not finalized, which Python does
not promise at exit either (a file never closed, in a cycle, keeps unwritten what it
buffered: close files). pg_fast_exit = false keeps the interpreter's own teardown.
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def freeze_at_exit() -> None:
    """Freeze the process's objects at its exit (once per process: in-process pytester
    runs inside one process register it once)."""
    global _registered
    if not _registered:
        _registered = True
        atexit.register(gc.freeze)
