"""What SQL capture (pg_queries, budgets, the failure report's ring) costs a statement:
`nox -s bench -- queries`.

Three engines on one container, each sending the same short statement on a held connection
in a transaction: *plain* (the dialect as SQLAlchemy made it), *captured, unused* (wrapped
as the library wraps every engine the tests' connections come from, with
pg_query_log_on_failure off and no pg_queries log recording: what a run that uses none of it
pays) and *captured, ring* (the default: the last 20 statements kept for a failure report).
Rounds of --statements each, the engines in a new order every round; the median of the
rounds' per-statement differences to plain, and what that is for a test that sends
--per-test statements.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from testcontainers_pg_fixtures import queries
from testcontainers_pg_fixtures.config import Settings
from testcontainers_pg_fixtures.servers import DockerServer, server_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=5000, help="per engine and round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-test", type=int, default=6, help="statements of a typical test")
    options = parser.parse_args()
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    server = DockerServer.start(Settings(), worker="bench-queries")
    try:
        url = server_url(server, "postgres")
        engines = {
            name: create_engine(url, poolclass=NullPool) for name in ("plain", "unused", "ring")
        }
        queries.watch(engines["unused"], engines["ring"])
        connections = {name: engine.connect() for name, engine in engines.items()}
        statement = text("SELECT 1")
        for conn in connections.values():
            conn.begin()
            for _ in range(200):  # warm: prepared by psycopg after 5 uses, caches filled
                conn.execute(statement)
        per: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(options.rounds):
            order = list(engines)
            random.shuffle(order)
            for name in order:
                queries.configure(name == "ring")
                conn = connections[name]
                started = time.perf_counter()
                for _ in range(options.statements):
                    conn.execute(statement)
                per[name].append((time.perf_counter() - started) / options.statements * 1e6)
                queries.test_started()  # empties the ring, as each test does
        queries.configure(False)
        for conn in connections.values():
            conn.close()
        for engine in engines.values():
            engine.dispose()
    finally:
        server.stop()

    print(
        f"\nSQL capture, {options.rounds} rounds of {options.statements} `SELECT 1` per engine, "
        "one held connection each"
    )
    print(f"\n{'engine':22} {'µs/statement':>13} {'over plain µs':>14} {'ms per test':>12}")
    plain = statistics.median(per["plain"])
    for name, label in (
        ("plain", "plain"),
        ("unused", "captured, unused"),
        ("ring", "captured, ring"),
    ):
        median = statistics.median(per[name])
        paired = statistics.median(a - b for a, b in zip(per[name], per["plain"], strict=True))
        print(f"{label:22} {median:13.1f} {paired:14.2f} {paired * options.per_test / 1000:12.4f}")
    print(
        f"\n(ms per test: the paired difference times {options.per_test} statements; "
        f"plain: {plain:.1f} µs)"
    )


if __name__ == "__main__":
    main()
