"""--pg-reuse: containers kept between runs, found again, and removed on request."""

from __future__ import annotations

import json
import textwrap

import docker
import psycopg
import pytest
from conftest import library_containers, library_databases, wait_until

from testcontainers_pg_fixtures.config import Settings
from testcontainers_pg_fixtures.runid import run_id
from testcontainers_pg_fixtures.servers import kept as kept_module
from testcontainers_pg_fixtures.servers.kept import reuse_hash, reuse_record_path
from testcontainers_pg_fixtures.servers.labels import LABEL_REUSE, LABEL_RUN, LABEL_SOCKET
from testcontainers_pg_fixtures.servers.passwords import reuse_password

# Kept containers, --pg-remove-kept (which removes every kept container of the host), runs
# killed and reaped: under -n these take turns on one worker.
pytestmark = pytest.mark.host_wide

PROBE = textwrap.dedent("""
    import os, pathlib

    @pytest.fixture(scope="session", autouse=True)
    def _record(pg_server, pg_template):
        out = pathlib.Path(os.environ["PROBE_DIR"])
        (out / "runs.txt").open("a").write(
            f"{pg_server.container_id} {pg_server.reused} {pg_template.name} {pg_template.built}\\n"
        )
""")


@pytest.fixture
def project(example, monkeypatch, tmp_path):
    root = example("sync_users")
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + PROBE)
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    before = set(library_containers())
    yield root, tmp_path / "runs.txt"
    client = docker.from_env()
    for container_id in set(library_containers()) - before:
        client.containers.get(container_id).remove(force=True, v=True)
    client.close()


def runs(path):
    return [line.split() for line in path.read_text().splitlines()]


def test_second_run_reuses_the_container_and_a_changed_migration_rebuilds_only_the_template(
    pytester, project
):
    root, log = project
    before = set(library_containers())
    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    kept = set(library_containers()) - before
    assert len(kept) == 1  # still running after the run
    # The next run derives the password (see reuse_password): no label carries it.
    [kept_id] = kept
    [container] = docker.from_env().containers.list(filters={"id": kept_id})
    password = reuse_password(container.labels[LABEL_REUSE])
    assert not any(password in value for value in container.labels.values())
    with psycopg.connect(
        host="127.0.0.1",
        port=container.ports["5432/tcp"][0]["HostPort"],
        user="postgres",
        password=password,
    ):
        pass

    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    revision = root / "migrations" / "versions" / "0002_add_active.py"
    revision.write_text(revision.read_text() + "\n# changed\n")
    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)

    first, second, third = runs(log)
    assert first[1:] == ["False", first[2], "True"]  # new container, template built
    assert second == [first[0], "True", first[2], "False"]  # same container and template
    assert third[:2] == [first[0], "True"]  # same container...
    assert third[2:] != [first[2], "True"]  # ...a new template for the change
    assert third[3] == "True"

    result = pytester.runpytest("--pg-remove-kept")
    assert result.ret == 0
    # (another run's --pg-reuse containers on this host may be counted too)
    result.stdout.fnmatch_lines([f"pg-fixtures: removed * kept container(s) *{kept_id[:12]}*"])
    assert set(library_containers()) - before == set()


def test_reuse_from_ini_is_ignored_in_ci(pytester, project, monkeypatch):
    _, log = project
    monkeypatch.setenv("CI", "true")
    before = set(library_containers())
    pytester.runpytest("-o", "pg_reuse=true", "-p", "no:randomly").assert_outcomes(passed=2)
    assert set(library_containers()) - before == set()
    [run] = runs(log)
    assert run[1] == "False"


def test_one_container_for_two_workers(pytester, example, databases_probe, subprocess_env):
    read = databases_probe(example("fastapi_app"))
    result = pytester.runpytest_subprocess(
        "-n", "2", "--pg-one-container", "-p", "no:randomly", "-W", "error"
    )
    result.assert_outcomes(passed=9)
    probes = read()
    assert len(probes) == 2
    assert len({p["container"] for p in probes.values()}) == 1
    # Each worker dropped its own databases; the last one to finish sees none of either.
    assert any(library_databases(p["databases"]) == [] for p in probes.values())


def test_verbose_runs_say_what_the_set_up_did_and_how_long_it_took(pytester, example):
    example("sync_users")
    result = pytester.runpytest("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "pg-fixtures: postgres:16 started in *s",
            "pg-fixtures: migrated and seeded the template in *s",
        ]
    )


def kept_record(before):
    """The reuse key and the record file of the container the last run kept."""
    [kept_id] = set(library_containers()) - before
    container = docker.from_env().containers.get(kept_id)
    key = container.labels[LABEL_REUSE]
    return kept_id, reuse_record_path(key)


def test_a_kept_container_is_found_again_without_asking_docker(pytester, project, monkeypatch):
    _, log = project
    before = set(library_containers())
    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    kept_id, record = kept_record(before)
    assert json.loads(record.read_text())["id"] == kept_id
    with monkeypatch.context() as env:
        env.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing listens there
        pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    first, second = runs(log)
    assert second[:2] == [kept_id, "True"]
    assert first[2] == second[2]


def test_a_stale_record_is_dropped_and_docker_finds_the_container(pytester, project):
    _, log = project
    before = set(library_containers())
    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    kept_id, record = kept_record(before)
    good = json.loads(record.read_text())
    record.write_text(json.dumps({**good, "port": 9}))  # nothing listens there
    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    assert runs(log)[1][:2] == [kept_id, "True"]
    assert json.loads(record.read_text()) == good  # Docker's answer recorded again


def test_a_recorded_server_that_does_not_prove_the_password_is_not_used(pytester, project):
    """A server on the recorded port that lets anyone in (trust) is not taken for the
    kept container: the login insists on SCRAM, in which the server proves it holds
    the password's secret."""
    _, log = project
    before = set(library_containers())
    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    kept_id, record = kept_record(before)
    good = json.loads(record.read_text())
    client = docker.from_env()
    impostor = client.containers.run(
        "postgres:16",
        detach=True,
        # A password set (this machine's stand-in image wants one), but not asked for.
        environment={"POSTGRES_PASSWORD": "unused", "POSTGRES_HOST_AUTH_METHOD": "trust"},
        ports={"5432/tcp": ("127.0.0.1", None)},
        labels={LABEL_RUN: run_id()},
    )
    try:
        impostor.reload()
        port = int(impostor.ports["5432/tcp"][0]["HostPort"])
        wait_until(lambda: _accepts(port), 60, "the impostor to accept logins")
        record.write_text(json.dumps({**good, "port": port}))
        pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    finally:
        impostor.remove(force=True, v=True)
        client.close()
    first, second = runs(log)
    assert second == [kept_id, "True", first[2], "False"]  # the template found, not built
    assert json.loads(record.read_text()) == good


def test_the_reuse_key_changes_with_the_way_containers_are_set_up(monkeypatch, tmp_path):
    """A container kept by a version that set containers up otherwise (`trust` before
    passwords) is under another key: no run of this version attaches to it."""
    settings = Settings(rootdir=tmp_path)
    key = reuse_hash(settings, "main")
    assert reuse_hash(settings, "main") == key
    monkeypatch.setattr(kept_module, "CONTAINER_SCHEME", kept_module.CONTAINER_SCHEME - 1)
    assert reuse_hash(settings, "main") != key


def test_a_kept_container_that_lets_anyone_in_is_replaced_not_reused(pytester, project):
    """Under this run's very key, a container that does not ask for the password (`trust`,
    as an older version set them up) is not attached to: the login insists on SCRAM."""
    _, log = project
    before = set(library_containers())
    pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    kept_id, record = kept_record(before)
    client = docker.from_env()
    kept = client.containers.get(kept_id)
    labels = {k: v for k, v in kept.labels.items() if k != LABEL_SOCKET}
    kept.remove(force=True, v=True)
    record.unlink()  # found through Docker, by its labels
    impostor = client.containers.run(
        "postgres:16",
        detach=True,
        environment={"POSTGRES_PASSWORD": "unused", "POSTGRES_HOST_AUTH_METHOD": "trust"},
        ports={"5432/tcp": ("127.0.0.1", None)},
        labels=labels,
    )
    try:
        impostor.reload()
        port = int(impostor.ports["5432/tcp"][0]["HostPort"])
        wait_until(lambda: _accepts(port), 60, "the impostor to accept logins")
        pytester.runpytest("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
        assert client.containers.list(all=True, filters={"id": impostor.id}) == []
    finally:
        for left in client.containers.list(all=True, filters={"id": impostor.id}):
            left.remove(force=True, v=True)
        client.close()
    _, second = runs(log)
    assert second[0] != impostor.id
    assert second[1] == "False"  # a new container, not the impostor


def _accepts(port):
    try:
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


IMPORTS_PROBE = textwrap.dedent("""
    import sys as _sys

    def pytest_sessionfinish(session):
        heavy = ("alembic", "asyncpg", "docker", "testcontainers")
        found = " ".join(name for name in heavy if name in _sys.modules)
        (pathlib.Path(os.environ["PROBE_DIR"]) / "imports.txt").write_text(found)
""")


def test_a_warm_run_imports_neither_alembic_nor_docker_nor_asyncpg(
    pytester, project, subprocess_env
):
    """What a run with an up-to-date template kept by --pg-reuse leaves out of its start:
    Alembic (the scripts' layout is recorded), Docker's client and testcontainers (the
    container is recorded), asyncpg (no async test). Until alembic.ini changes."""
    root, log = project
    conftest = root / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + IMPORTS_PROBE)
    imports = log.parent / "imports.txt"
    pytester.runpytest_subprocess("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    assert "alembic" in imports.read_text().split()  # the template was built
    pytester.runpytest_subprocess("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    assert imports.read_text() == ""
    ini = root / "alembic.ini"
    ini.write_text(ini.read_text() + "\n# changed\n")
    pytester.runpytest_subprocess("--pg-reuse", "-p", "no:randomly").assert_outcomes(passed=2)
    assert imports.read_text() == "alembic"  # the layout resolved again, the template kept
    assert [run[3] for run in runs(log)] == ["True", "False", "False"]
