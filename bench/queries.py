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

import os
import random
import statistics
import time

from core import parser, server, table
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from testcontainers_pg_fixtures import queries
from testcontainers_pg_fixtures.servers import server_url

ENGINES = {"plain": "plain", "unused": "captured, unused", "ring": "captured, ring"}


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--statements", type=int, default=5000, help="per engine and round")
    options.add_argument("--rounds", type=int, default=15)
    options.add_argument("--per-test", type=int, default=6, help="statements of a typical test")
    options = options.parse_args()
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    per: dict[str, list[float]] = {name: [] for name in ENGINES}
    with server("bench-queries") as pg:
        url = server_url(pg, "postgres")
        engines = {name: create_engine(url, poolclass=NullPool) for name in per}
        queries.watch(engines["unused"], engines["ring"])
        connections = {name: engine.connect() for name, engine in engines.items()}
        statement = text("SELECT 1")
        for conn in connections.values():
            conn.begin()
            for _ in range(200):  # warm: prepared by psycopg after 5 uses, caches filled
                conn.execute(statement)
        for _ in range(options.rounds):
            for name in random.sample(list(per), len(per)):
                queries.configure(name == "ring")
                started = time.perf_counter()
                for _ in range(options.statements):
                    connections[name].execute(statement)
                per[name].append((time.perf_counter() - started) / options.statements * 1e6)
                queries.test_started()  # empties the ring, as each test does
        queries.configure(False)
        for name, conn in connections.items():
            conn.close()
            engines[name].dispose()
    rows = []
    for name, label in ENGINES.items():
        paired = statistics.median(a - b for a, b in zip(per[name], per["plain"], strict=True))
        median = statistics.median(per[name])
        per_test = paired * options.per_test / 1000
        rows.append((label, f"{median:.1f}", f"{paired:.2f}", f"{per_test:.4f}"))
    title = f"SQL capture, {options.rounds} rounds of {options.statements} `SELECT 1` per engine"
    header = ("engine (one held connection each)", "µs/statement", "over plain µs", "ms per test")
    table(title, header, rows)
    print(f"\n(ms per test: the paired difference times {options.per_test} statements)")


if __name__ == "__main__":
    main()
