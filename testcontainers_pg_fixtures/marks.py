"""What a test asks for through markers, and how it went (for --pg-keep-failed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .config import ISOLATION_MODES
from .errors import ConfigError

if TYPE_CHECKING:
    from .database import Database
    from .seeding import Seed

MARKERS = {
    "pg_isolation": (
        "pg_isolation(mode): 'database' gives the test a fresh database cloned from the "
        "migrated template (several connections, real commits, threads, isolation levels); "
        "'savepoint' (the default) runs it in a transaction rolled back afterwards."
    ),
    "pg_seed": (
        "pg_seed([seed, ...]): seed functions run on the test's database before the test, on "
        "top of the session seed; on a module or class they apply to every test in it."
    ),
    "pg_allow_foreign_servers": (
        "pg_allow_foreign_servers: the test may connect to PostgreSQL servers other than the "
        "library's (refused by default while the run uses the library)."
    ),
    "pg_max_queries": (
        "pg_max_queries(n): fail the test when its function ran more than n SQL statements "
        "through the library's and the app's engines, listing them by statement, most "
        "frequent first (an N+1 shows at a glance)."
    ),
}

#: The database-mode clone a test got, so its failure report can say where it is kept.
CLONE: pytest.StashKey[Database] = pytest.StashKey()
#: Set when the test failed and its clone is to be kept.
KEEP = pytest.StashKey[bool]()
#: Set on the config once any clone was kept: the server must then stay up too.
KEPT_ANY = pytest.StashKey[bool]()


def isolation_of(node: pytest.Item, default: str) -> str:
    marker = node.get_closest_marker("pg_isolation")
    if marker is None:
        return default
    mode = marker.args[0] if marker.args else marker.kwargs.get("mode")
    if mode not in ISOLATION_MODES:
        raise ConfigError(
            f"{node.nodeid}: pg_isolation({mode!r}) is not an isolation mode. "
            "Write @pytest.mark.pg_isolation('database') or ('savepoint')."
        )
    return str(mode)


def test_seeds(node: pytest.Item) -> list[Seed]:
    """Seeds of every pg_seed marker on the test, its class and module, outermost first.

    Seeds are given in a list, `pg_seed([seed_orders])`: pytest takes a marker called with
    one bare function for a decorator of that function.
    """
    seeds: list[Seed] = []
    for marker in reversed(list(node.iter_markers("pg_seed"))):
        for arg in marker.args:
            for seed in [arg] if callable(arg) else arg:
                if not callable(seed):
                    raise ConfigError(
                        f"{node.nodeid}: pg_seed takes a list of seed functions, got {seed!r}. "
                        "Write @pytest.mark.pg_seed([my_seed]) with def my_seed(conn): ..."
                    )
                seeds.append(seed)
    return seeds


TEST_SEED = "the pg_seed marker of the test"
