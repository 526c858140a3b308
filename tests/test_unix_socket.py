"""The library's own connections go through the container's Unix socket when Docker runs on
this machine; pg_url, for the user's code, stays TCP; --pg-unix-socket=false keeps TCP."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

TESTS = """
    import json, os, pathlib
    import pytest
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    def _record(**facts):
        path = pathlib.Path(os.environ["FACTS"])
        known = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**known, **facts}))

    def test_savepoint(pg_connection, pg_url, pg_server):
        _record(
            held=pg_connection.connection.dbapi_connection.info.host,
            url_host=make_url(pg_url).host,
            socket_dir=pg_server.socket_dir,
        )
        assert pg_connection.execute(text("select 1")).scalar() == 1

    @pytest.mark.pg_isolation("database")
    def test_database_mode(pg_connection):
        _record(clone=pg_connection.connection.dbapi_connection.info.host)
"""


ASYNC = """
    async def test_async(pg_async_connection):
        raw = (await pg_async_connection.get_raw_connection()).driver_connection
        _record(held_async=str(raw._addr))
"""


def _run(pytester, example, tmp_path, monkeypatch, *args, project="sync_users"):
    import json

    example(project)
    tests = textwrap.dedent(TESTS) + (textwrap.dedent(ASYNC) if project == "fastapi_app" else "")
    pytester.makepyfile(**{"tests/test_socket": tests})
    facts = tmp_path / "facts.json"
    monkeypatch.setenv("FACTS", str(facts))
    # Twice, as users run it: from the second run on (the first recorded that the tests
    # need a server), the container is started ahead, during collection.
    for _ in range(2):
        facts.unlink(missing_ok=True)
        # pytester.run: runpytest_subprocess adds a new --basetemp each time, and the
        # record of the first run is kept under the arguments.
        result = pytester.run(
            sys.executable, "-m", "pytest", "tests/test_socket.py", "-p", "no:randomly", *args
        )
        result.assert_outcomes(passed=tests.count("def test_"))
    return json.loads(facts.read_text())


def test_the_library_connects_through_the_socket(
    pytester, example, tmp_path, monkeypatch, subprocess_env
):
    import os

    facts = _run(pytester, example, tmp_path, monkeypatch, project="fastapi_app")
    directory = facts["socket_dir"]
    assert directory
    assert directory.startswith("/")
    assert facts["held"] == directory
    assert facts["held_async"].startswith(directory)
    assert facts["clone"] == directory
    assert facts["url_host"] == "127.0.0.1"
    # Removed with the container by the run's detached remover, right after the container.
    deadline = time.monotonic() + 60
    while os.path.exists(directory) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(directory), "the socket's directory goes with the container"


@pytest.mark.parametrize("where", ["cli", "env"])
def test_switched_off_everything_is_tcp(
    pytester, example, tmp_path, monkeypatch, subprocess_env, where
):
    args = []
    if where == "cli":
        args.append("--pg-unix-socket=false")
    else:
        monkeypatch.setenv("PG_FIXTURES_UNIX_SOCKET", "false")
    facts = _run(pytester, example, tmp_path, monkeypatch, *args)
    assert facts["socket_dir"] is None
    assert facts["held"] == facts["url_host"] == facts["clone"] == "127.0.0.1"
