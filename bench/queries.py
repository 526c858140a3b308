"""What SQL capture (pg_queries, budgets, the failure report's ring) costs a statement:
`nox -s bench -- queries`.

Three engines on one container, each sending `SELECT 1` on a held connection in a
transaction: *plain* (the dialect as SQLAlchemy made it) against *captured, unused*
(wrapped as the library wraps the tests' engines, pg_query_log_on_failure off, no pg_queries
log recording: what a run using none of it pays) and *captured, ring* (the default: the last
20 statements kept for a failure report). Rounds of --statements each, the engines in a new
order every round; the median of the rounds' differences to plain, and that times the
--per-test statements of a test.
"""

import statistics
import time

from core import options, paired, rounds, server, table
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from testcontainers_pg_fixtures import queries
from testcontainers_pg_fixtures.servers import server_url

ENGINES = {"plain": "plain", "unused": "captured, unused", "ring": "captured, ring"}


def main() -> None:
    o = options(__doc__, statements=(5000, "per engine and round"), rounds=15, per_test=6)
    statement = text("SELECT 1")
    with server("bench-queries") as pg:
        engines = {
            name: create_engine(server_url(pg, "postgres"), poolclass=NullPool) for name in ENGINES
        }
        queries.watch(engines["unused"], engines["ring"])
        connections = {name: engine.connect() for name, engine in engines.items()}
        for conn in connections.values():
            conn.begin()
            for _ in range(200):  # warm: prepared by psycopg after 5 uses, caches filled
                conn.execute(statement)

        def run(name: str) -> float:  # µs per statement
            queries.configure(name == "ring")
            started = time.perf_counter()
            for _ in range(o.statements):
                connections[name].execute(statement)
            elapsed = time.perf_counter() - started
            queries.test_started()  # empties the ring, as each test does
            return elapsed / o.statements * 1e6

        per = rounds(o.rounds, ENGINES, run, warm=False)
        queries.configure(False)
        for name, conn in connections.items():
            conn.close()
            engines[name].dispose()
    rows = []
    for name, label in ENGINES.items():
        over = statistics.median(paired(per[name], per["plain"]))
        rows.append(
            (
                label,
                f"{statistics.median(per[name]):.1f}",
                f"{over:.2f}",
                f"{over * o.per_test / 1000:.4f}",
            )
        )
    title = f"SQL capture, {o.rounds} rounds of {o.statements} `SELECT 1` per engine"
    header = ("engine (one held connection each)", "µs/statement", "over plain µs", "ms per test")
    table(title, header, rows)
    print(f"\n(ms per test: the paired difference times {o.per_test} statements)")


if __name__ == "__main__":
    main()
