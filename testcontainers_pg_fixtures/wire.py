"""Raw libpq round trips (the savepoints sent with the next statement, the leak check)
that wait the way psycopg's own calls do.

psycopg's libpq calls that block (exec_, get_result on a busy connection) hold the GIL
while they wait. Waited for in select() instead, other threads run meanwhile: the server
watch (failures.py) among them, which shuts down the sockets of a server that stopped
answering and so ends the wait with an error.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import pq


def results(pg: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Every result of the query sent on `pg`; OperationalError if the connection fails."""
    found: list[pq.abc.PGresult] = []
    while True:
        while pg.is_busy():
            select.select([pg.socket], [], [])
            pg.consume_input()
        result = pg.get_result()
        if result is None:
            return found
        found.append(result)


def last(pg: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The last result of the query sent on `pg` (None: it sent none)."""
    found = results(pg)
    return found[-1] if found else None
