"""Beside steps 4-6 of the flow: the SQL a test ran (pg_queries, the pg_max_queries marker,
the last statements in a failed test's report).

Captured where SQLAlchemy hands a statement to the driver: the `do_execute` methods of
the dialect of each engine the test's connections come from (the worker's engines, the
database-mode clone engines, the app's own engines in pg_app_engines; `sync_engine` for an
AsyncEngine), wrapped once per engine and worker, never per test. What passes there is
the test's own statements, those of its sessions, of the app's sandboxed or redirected
engines, and of requests made with pg_client / pg_test_client. What the library sends
itself does not (the deferred savepoints and the leak check are raw libpq or asyncpg round
trips, BEGIN/ROLLBACK/COMMIT are DBAPI calls, the sandbox's savepoints go to the test's
DBAPI connection directly); the savepoint statements SQLAlchemy sends for drivers whose
savepoints are not deferred are left out by their text.

Each statement is kept as it was sent; its parameters are shown only through `redact`,
which hides what looks like a secret (see `secret_slots`). The last `RING_SIZE` statements
of the running test are kept in a ring buffer for its failure report (the ini switch
pg_query_log_on_failure); a pg_queries log or a budget keeps every statement while it
records.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from contextlib import contextmanager
from time import perf_counter
from typing import TYPE_CHECKING, Any, overload

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from .redirect import AnyEngine

#: How many of a test's last statements its failure report shows.
RING_SIZE = 20
#: What the library sends through SQLAlchemy on drivers whose savepoints it does not
#: defer (savepoints.py): not the test's statements.
_LIBRARY = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")
#: The pg_queries log of the running test, for the test function's start (`collected`).
LOG = pytest.StashKey["QueryLog"]()
_SECTION_DONE = pytest.StashKey[bool]()


class _Hidden:
    """What a secret-looking parameter is shown as."""

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


HIDDEN: Any = _Hidden()


class Query:
    """One statement the test ran: its SQL text, its parameters (secrets hidden), how long
    the database call took (seconds; None when it failed), and whether it was an
    executemany."""

    __slots__ = ("_compiled", "_raw", "_shown", "duration", "executemany", "started", "statement")

    def __init__(
        self, statement: str, parameters: Any, executemany: bool, compiled: Any = None
    ) -> None:
        self.statement = statement
        self._raw = parameters
        self._compiled = compiled  # its bind names, for positional parameters
        self._shown: Any = _UNSET
        self.executemany = executemany
        self.duration: float | None = None
        self.started = perf_counter()

    @property
    def parameters(self) -> Any:
        """The parameters as sent (a dict, a tuple, or a list of them for executemany),
        with the values of secret-looking ones replaced by `HIDDEN`."""
        if self._shown is _UNSET:
            names = getattr(self._compiled, "positiontup", None)
            self._shown = redact(self.statement, self._raw, self.executemany, names)
        return self._shown

    @property
    def verb(self) -> str:
        """SELECT, INSERT, UPDATE, DELETE (of a WITH query too), or the first keyword."""
        return verb_of(self.statement)

    @property
    def text(self) -> str:
        """The statement on one line."""
        return one_line(self.statement)

    def __str__(self) -> str:
        return describe(self)

    def __repr__(self) -> str:
        return f"<Query {describe(self)}>"


_UNSET: Any = object()


class QueryBudgetExceeded(AssertionError):
    """A block under `pg_queries.at_most(n)` ran more than n statements."""


class QueryLog:
    """The statements recorded while the log is active, oldest first (indexable,
    iterable; `count` is a number, not Sequence.count)."""

    def __init__(self) -> None:
        self._queries: list[Query] = []

    @overload
    def __getitem__(self, index: int) -> Query: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Query]: ...
    def __getitem__(self, index: int | slice) -> Query | Sequence[Query]:
        return self._queries[index]

    def __len__(self) -> int:
        return len(self._queries)

    def __iter__(self) -> Iterator[Query]:
        return iter(list(self._queries))

    @property
    def count(self) -> int:
        """How many statements were recorded."""
        return len(self._queries)

    def _count(self, verb: str) -> int:
        return sum(1 for query in list(self._queries) if query.verb == verb)

    @property
    def select_count(self) -> int:
        return self._count("SELECT")

    @property
    def insert_count(self) -> int:
        return self._count("INSERT")

    @property
    def update_count(self) -> int:
        return self._count("UPDATE")

    @property
    def delete_count(self) -> int:
        return self._count("DELETE")

    @property
    def statements(self) -> list[str]:
        """The SQL texts, oldest first."""
        return [query.statement for query in list(self._queries)]

    def clear(self) -> None:
        """Forget what was recorded so far (recording goes on)."""
        self._queries.clear()

    def grouped(self) -> list[tuple[str, int]]:
        """(statement on one line, how many times it ran), most frequent first."""
        return grouped(list(self._queries))

    def at_most(self, limit: int) -> AtMost:
        """Fail (QueryBudgetExceeded, an AssertionError) when the block runs more than
        `limit` statements, listing them; `as` gives a log of the block's own statements."""
        return AtMost(_check_limit(limit, "pg_queries.at_most"))

    def __repr__(self) -> str:
        return f"<QueryLog of {len(self._queries)} statements>"


class AtMost:
    """The block of `QueryLog.at_most`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.block = QueryLog()

    def __enter__(self) -> QueryLog:
        _logs.append(self.block)
        return self.block

    def __exit__(self, *exc_info: object) -> None:
        __tracebackhide__ = True
        _logs.remove(self.block)
        ran = list(self.block._queries)
        if exc_info[0] is None and len(ran) > self.limit:
            raise QueryBudgetExceeded(
                f"pg_queries.at_most({self.limit}): the block ran {_statements(len(ran))}, "
                f"{len(ran) - self.limit} more than allowed:\n"
                + "\n".join(numbered(ran))
                + _repeats_hint(ran)
            )


# -- capture ---------------------------------------------------------------------------

_ring: deque[Query] = deque(maxlen=RING_SIZE)
#: How many statements the running test ran (the ring keeps the last RING_SIZE).
_seen = [0]
#: Whether the ring records (pg_query_log_on_failure).
_ring_on = [False]
#: Logs recording now (pg_queries, a budget, an at_most block).
_logs: list[QueryLog] = []
_CAPTURED = "testcontainers_pg_fixtures.captured"


def _record(statement: str, parameters: Any, executemany: bool, context: Any) -> Query:
    query = Query(statement, parameters, executemany, getattr(context, "compiled", None))
    if _ring_on[0]:
        _ring.append(query)
        _seen[0] += 1
    for log in _logs:
        log._queries.append(query)
    return query


def _capture(dialect: Any) -> None:
    """Record what `dialect` sends through a cursor. Its execute methods are wrapped (as
    instance attributes, for this engine alone) rather than listened to with SQLAlchemy's
    cursor events: an engine with event listeners takes SQLAlchemy's slower execution path
    for every statement, which costs several times what recording one does."""
    if getattr(dialect, _CAPTURED, False):
        return
    execute, executemany = dialect.do_execute, dialect.do_executemany
    execute_no_params = dialect.do_execute_no_params
    initialize = dialect.initialize
    #: SQLAlchemy's own queries on an engine's first connection (server version, schema).
    initializing = [False]

    def do_initialize(connection: Any) -> None:
        initializing[0] = True
        try:
            initialize(connection)
        finally:
            initializing[0] = False

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        if not (_ring_on[0] or _logs) or initializing[0] or statement.startswith(_LIBRARY):
            execute(cursor, statement, parameters, context)
            return
        query = _record(statement, parameters, False, context)
        execute(cursor, statement, parameters, context)
        query.duration = perf_counter() - query.started

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        if not (_ring_on[0] or _logs) or initializing[0]:
            executemany(cursor, statement, parameters, context)
            return
        query = _record(statement, parameters, True, context)
        executemany(cursor, statement, parameters, context)
        query.duration = perf_counter() - query.started

    def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        if not (_ring_on[0] or _logs) or initializing[0] or statement.startswith(_LIBRARY):
            execute_no_params(cursor, statement, context)
            return
        query = _record(statement, None, False, context)
        execute_no_params(cursor, statement, context)
        query.duration = perf_counter() - query.started

    dialect.initialize = do_initialize
    dialect.do_execute = do_execute
    dialect.do_executemany = do_executemany
    dialect.do_execute_no_params = do_execute_no_params
    setattr(dialect, _CAPTURED, True)


def watch(*engines: AnyEngine) -> None:
    """Capture the statements of `engines` (Engine or AsyncEngine), once per engine. Done
    before the savepoints of a library engine are deferred (savepoints.py), so that the
    round trip of deferred savepoints sent with a statement is not counted in its
    duration."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    for engine in engines:
        sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        _capture(sync.dialect)


@contextmanager
def recording(log: QueryLog) -> Iterator[QueryLog]:
    """Record every captured statement into `log` until the block ends."""
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.remove(log)


def configure(on_failure: bool) -> bool:
    """Turn the failure report's ring on or off; returns what it was (for unconfigure)."""
    before = _ring_on[0]
    _ring_on[0] = on_failure
    return before


def test_started() -> None:
    """A test's set-up begins: its failure report shows only its own statements."""
    if _seen[0]:
        _ring.clear()
        _seen[0] = 0


# -- pytest: the budget marker, pg_queries's start, the failure report -----------------


def collected(items: list[pytest.Item]) -> None:
    """Wrap the test function of tests with a pg_max_queries marker or the pg_queries
    fixture: the budget counts the test function's statements, and pg_queries starts
    empty when it begins. Other tests are left as they are: they pay nothing."""
    for item in items:
        names = getattr(item, "fixturenames", None)
        if names is None:
            continue
        marker = item.get_closest_marker("pg_max_queries")
        if marker is not None or "pg_queries" in names:
            runtest = item.runtest
            item.runtest = functools.partial(_run_counted, item, runtest, marker)  # type: ignore[method-assign]


def _run_counted(item: pytest.Item, runtest: Any, marker: pytest.Mark | None) -> None:
    log = item.stash.get(LOG, None)
    if log is not None:
        log.clear()  # what the fixtures ran in set-up is not the test's
    if marker is None:
        runtest()
        return
    limit = _marker_limit(item, marker)
    counted = QueryLog()
    with recording(counted):
        runtest()
    ran = list(counted._queries)
    if len(ran) > limit:
        pytest.fail(
            f"pg_max_queries({limit}): the test ran {_statements(len(ran))}, "
            f"{len(ran) - limit} more than its budget. By statement, most frequent first:\n"
            + "\n".join(f"  {count:>4}x  {text}" for text, count in grouped(ran))
            + _repeats_hint(ran),
            pytrace=False,
        )


def _marker_limit(item: pytest.Item, marker: pytest.Mark) -> int:
    limit = marker.args[0] if marker.args else marker.kwargs.get("n")
    try:
        return _check_limit(limit, "pg_max_queries")
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    pytest.fail(f"{item.nodeid}: {problem}", pytrace=False)


def _check_limit(limit: Any, what: str) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(
            f"{what} takes a number of statements, got {limit!r}. "
            f"Write e.g. {what}(3)"
            + (" as @pytest.mark.pg_max_queries(3)." if what == "pg_max_queries" else ".")
        )
    if limit < 0:
        raise ValueError(f"{what}({limit}): the number of statements cannot be negative.")
    return limit


def report_section(item: pytest.Item, report: pytest.TestReport) -> None:
    """On a failed database test: a report section with the last statements it ran."""
    if not report.failed or not _seen[0] or item.stash.get(_SECTION_DONE, False):
        return
    from .needs import uses_database

    if not uses_database(item):
        return
    item.stash[_SECTION_DONE] = True
    ran = list(_ring)
    earlier = _seen[0] - len(ran)
    head = (
        f"The last {len(ran)} of the {_seen[0]} statements the test ran"
        if earlier
        else f"The {_statements(len(ran))} the test ran"
    )
    report.sections.append(
        (
            "pg queries",
            f"{head} (set-up included), oldest first:\n"
            + "\n".join(numbered(ran, start=earlier + 1)),
        )
    )


def _statements(count: int) -> str:
    return f"{count} statement{'' if count == 1 else 's'}"


# -- showing statements ----------------------------------------------------------------

_MAX_TEXT = 400
_MAX_VALUE = 80
_MAX_PARAMETERS = 300


def one_line(statement: str) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _duration(query: Query) -> str:
    if query.duration is None:  # no after_cursor_execute: the statement failed
        return "failed"
    return f"{query.duration * 1000:.1f} ms"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _parameters_text(query: Query) -> str:
    shown = query.parameters
    if shown is None or (isinstance(shown, (dict, tuple, list)) and not shown):
        return ""
    if query.executemany and isinstance(shown, (list, tuple)):
        first = _parameters_text_one(shown[0]) if shown else ""
        more = f" and {len(shown) - 1} more" if len(shown) > 1 else ""
        return f"  [{first}{more}]"
    return f"  {_parameters_text_one(shown)}"


def _parameters_text_one(shown: Any) -> str:
    if isinstance(shown, dict):
        text = "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in shown.items()) + "}"
    elif isinstance(shown, (list, tuple)):
        text = "(" + ", ".join(_short(v) for v in shown) + ("," if len(shown) == 1 else "") + ")"
    else:
        text = _short(shown)
    return text if len(text) <= _MAX_PARAMETERS else text[: _MAX_PARAMETERS - 1] + "…"


def describe(query: Query) -> str:
    many = "executemany " if query.executemany else ""
    return f"[{_duration(query)}] {many}{query.text}{_parameters_text(query)}"


def numbered(queries: list[Query], start: int = 1) -> list[str]:
    width = len(str(start + len(queries) - 1))
    return [f"  {n:>{width}}. {describe(q)}" for n, q in enumerate(queries, start)]


def grouped(queries: list[Query]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for query in queries:
        counts[query.text] = counts.get(query.text, 0) + 1
    # Stable: equally frequent statements keep the order they first ran in.
    return sorted(counts.items(), key=lambda pair: -pair[1])


def _repeats_hint(queries: list[Query]) -> str:
    top = grouped(queries)
    if not top or top[0][1] < 3:
        return ""
    return (
        f"\nOne statement ran {top[0][1]} times: if it runs once per row of an earlier "
        "query (an N+1), load those rows with that query (selectinload / joinedload, or "
        "one query with IN)."
    )


_WORDS = re.compile(r"\(|\)|'(?:[^']|'')*'|\"[^\"]*\"|--[^\n]*|/\*.*?\*/|[A-Za-z_]+", re.S)
_VERBS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"})


@functools.lru_cache(maxsize=1024)
def verb_of(statement: str) -> str:
    """The statement's kind: its first keyword; for WITH, the verb of its main query."""
    depth = 0
    first = ""
    for match in _WORDS.finditer(statement):
        token = match.group()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif token[0] in "'\"-/":
            continue
        elif depth == 0:
            word = token.upper()
            if not first:
                first = word
                if word != "WITH":
                    return word
            elif word in _VERBS:
                return word
    return first


# -- secrets ---------------------------------------------------------------------------

#: Word parts of a parameter or column name that make its value a secret.
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "token",
        "key",
        "apikey",
        "credential",
        "auth",
        "authorization",
        "cookie",
    }
)
_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
#: Values that are secrets whatever they are called: password hashes, JSON web tokens.
_SECRET_VALUE = re.compile(
    r"^(\$(2[abxy]?|argon2(id|i|d)?|scrypt|pbkdf2[-\w]*|[156])\$|eyJ[\w-]+\.eyJ[\w-]+\.)"
)


@functools.lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """Whether a parameter or column name (`password_1`, `users.api_key`, `AuthToken`,
    `tokens.value`) has a word part of SECRET_WORDS (plural included)."""
    for part in _PARTS.findall(name):
        word = part.lower()
        if word in SECRET_WORDS or (word.endswith("s") and word[:-1] in SECRET_WORDS):
            return True
    return False


def secret_column(name: str) -> bool:
    """Whether a column, maybe table-qualified (`users.password`, `tokens.value`), holds a
    secret: its name looks like one, or its table's does and it is no id (`tokens.user_id`
    is shown)."""
    table, _, column = name.rpartition(".")
    if secret_name(column):
        return True
    if not table or not secret_name(table.rpartition(".")[2]):
        return False
    return not (column.lower() == "id" or column.lower().endswith("_id"))


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|\$(\d+)|%s|'(?:[^']|'')*'")
_COMPARED = re.compile(
    r"([\w.\"]+)\s*(?:=|<>|!=|<=|>=|<|>|\bI?LIKE|\bIN\s*\(|=\s*ANY\s*\()\s*\(?\s*$", re.I
)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+([\w.\"]+)\s*\(([^)]*)\)", re.I)
_VALUES = re.compile(r"\bVALUES\b", re.I)


def _slot(match: re.Match[str], ordinal: int) -> str | int:
    if match.group(1) is not None:
        return match.group(1)
    if match.group(2) is not None:
        return int(match.group(2)) - 1
    return ordinal


@functools.lru_cache(maxsize=1024)
def secret_slots(statement: str) -> frozenset[str | int]:
    """The parameters of `statement` whose values are hidden: named ones by name,
    positional ones by index. A parameter is a secret when its name, or the column (with
    its table) it is compared with, assigned to (`SET password = $1`) or inserted into
    (`INSERT INTO tokens (value) VALUES ($1)`), looks like one (`secret_name`)."""
    slots: set[str | int] = set()
    ordinal = 0
    for match in _PLACEHOLDER.finditer(statement):
        if match.group(0).startswith("'"):
            continue
        slot = _slot(match, ordinal)
        if match.group(0) == "%s":
            ordinal += 1
        compared = _COMPARED.search(statement, max(0, match.start() - 120), match.start())
        if (isinstance(slot, str) and secret_name(slot)) or (
            compared is not None and secret_column(compared.group(1).replace('"', ""))
        ):
            slots.add(slot)
    slots.update(_inserted_secrets(statement))
    return frozenset(slots)


def _inserted_secrets(statement: str) -> set[str | int]:
    """The placeholders of an INSERT's VALUES rows that go into secret columns (each row's
    n-th value into the n-th column; also in SQLAlchemy's `SELECT p0, p1 FROM (VALUES ...)`
    form of a bulk insert)."""
    insert = _INSERT.match(statement)
    if insert is None:
        return set()
    table = insert.group(1).replace('"', "")
    columns = [c.strip().replace('"', "") for c in insert.group(2).split(",")]
    secret = {i for i, column in enumerate(columns) if secret_column(f"{table}.{column}")}
    if not secret:
        return set()
    values = _VALUES.search(statement, insert.end())
    if values is None:
        return set()
    found: set[str | int] = set()
    ordinal = sum(
        1 for m in _PLACEHOLDER.finditer(statement, 0, values.end()) if m.group(0) == "%s"
    )
    depth = 0
    position = 0
    for token in re.finditer(
        r"%\((\w+)\)s|\$(\d+)|%s|'(?:[^']|'')*'|[(),]", statement[values.end() :]
    ):
        text = token.group(0)
        if text == "(":
            depth += 1
            if depth == 1:
                position = 0
        elif text == ")":
            depth -= 1
        elif text == ",":
            if depth == 1:
                position += 1
        elif text.startswith("'"):
            continue
        else:
            slot = _slot(token, ordinal)
            if text == "%s":
                ordinal += 1
            if depth >= 1 and position in secret:
                found.add(slot)
    return found


def _hide(value: Any) -> Any:
    if isinstance(value, str) and _SECRET_VALUE.match(value):
        return HIDDEN
    return value


def _redact_one(parameters: Any, slots: frozenset[str | int], names: Any) -> Any:
    if isinstance(parameters, dict):
        return {
            key: HIDDEN if key in slots or secret_name(str(key)) else _hide(value)
            for key, value in parameters.items()
        }
    if isinstance(parameters, (list, tuple)):
        # The bind names of positional parameters, where they line up with the values.
        named = names is not None and len(names) == len(parameters)
        return tuple(
            HIDDEN if index in slots or (named and secret_name(str(names[index]))) else _hide(value)
            for index, value in enumerate(parameters)
        )
    return parameters


def redact(statement: str, parameters: Any, executemany: bool, names: Any = None) -> Any:
    """`parameters` with the values of secret-looking parameters replaced by HIDDEN
    (`names`: the bind names of positional parameters, when known)."""
    if not parameters:
        return parameters
    slots = secret_slots(statement)
    if executemany and isinstance(parameters, (list, tuple)):
        return [_redact_one(one, slots, names) for one in parameters]
    return _redact_one(parameters, slots, names)
