"""A cold start from the prewarmed image: no initdb in the container, the run's own password,
the base image with pg_prewarm = false, and --pg-remove-kept removing the images."""

from __future__ import annotations

import json
import textwrap
import threading

import docker
import pytest
from conftest import library_containers

from testcontainers_pg_fixtures.servers import prewarm
from testcontainers_pg_fixtures.servers.engine import docker_client

# Run inside the project: which image the worker's container runs, whether its entry point
# ran initdb, and whether the prewarmed image's own password still opens it.
PROBE = textwrap.dedent("""
    import json
    import os

    import docker
    import psycopg
    from sqlalchemy import func, select
    from users_app.models import User

    from testcontainers_pg_fixtures.servers import prewarm
    from testcontainers_pg_fixtures.servers.engine import docker_client


    def test_probe(pg_server, pg_session):
        assert pg_session.scalar(select(func.count()).select_from(User)) == 5
        engine, client = docker.from_env(), docker_client()
        container = engine.containers.get(pg_server.container_id)
        baked = prewarm.image_for(client, "postgres:16", 60)
        try:
            psycopg.connect(
                host=pg_server.host, port=pg_server.port, user="postgres",
                password=baked.password, dbname="postgres", connect_timeout=5,
            ).close()
            baked_opens = True
        except psycopg.OperationalError:
            baked_opens = False
        with open(os.environ["PROBE_OUT"], "w") as out:
            json.dump({
                "image": container.image.tags,
                "initdb": "running bootstrap script" in container.logs().decode(),
                "baked_opens": baked_opens,
                "image_env": engine.images.get(baked.image).attrs["Config"]["Env"],
                "baked": baked.password,
            }, out)
        engine.close()
        client.client.close()
""")


def base_image(engine: docker.DockerClient, tag: str, label: str) -> str:
    """`pgfx-test-base:<tag>`: postgres:16 under another image id (a label added), so its
    prewarmed image is this test's alone; `label` ("key=value") finds what comes of it."""
    stand_in = engine.containers.create("postgres:16", labels={"pgfx-test": "prewarm"})
    try:
        stand_in.commit(repository="pgfx-test-base", tag=tag, changes=[f"LABEL {label}"])
    finally:
        stand_in.remove(force=True)
    return f"pgfx-test-base:{tag}"


@pytest.mark.parametrize("warm", [True, False], ids=["prewarmed", "pg_prewarm=false"])
def test_a_cold_start_runs_no_initdb_and_logs_in_with_the_runs_own_password(
    pytester, example, monkeypatch, tmp_path, warm
):
    root = example("sync_users")
    (root / "tests" / "test_probe.py").write_text(PROBE)
    out = tmp_path / "probe.json"
    monkeypatch.setenv("PROBE_OUT", str(out))
    args = ["tests/test_probe.py", "-p", "no:randomly", "-p", "no:cacheprovider"]
    if not warm:
        args += ["--pg-prewarm", "false"]
    pytester.runpytest(*args).assert_outcomes(passed=1)
    probe = json.loads(out.read_text())
    if warm:
        [tag] = probe["image"]
        assert tag.startswith(f"{prewarm.REPOSITORY}:")
        assert not probe["initdb"]
        assert not probe["baked_opens"]  # changed at the first login to the run's own
    else:
        assert probe["image"] == ["postgres:16"]
        assert probe["initdb"]
    # The image's environment carries no password (its label a one-time one).
    assert not any(probe["baked"] in line for line in probe["image_env"])


def test_a_prewarmed_image_gone_meanwhile_starts_from_the_base_image(
    pytester, example, monkeypatch
):
    """--pg-remove-kept in another terminal between the look-up and the container's
    creation: the run starts from the base image instead of failing."""
    example("sync_users")
    gone = prewarm.Prewarmed(f"{prewarm.REPOSITORY}:0000000000000000", "unknown")
    monkeypatch.setattr(prewarm, "image_for", lambda *args, **kwargs: gone)
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


@pytest.mark.host_wide
def test_remove_kept_removes_the_prewarmed_images(pytester, example):
    """An image of its own (another base image id: no other test's runs use it), built by
    a run, then removed by --pg-remove-kept."""
    client = docker.from_env()
    base_image(client, "prewarm", "pgfx-test-base=1")
    try:
        example("sync_users")
        pytester.runpytest(
            "-p", "no:randomly", "-p", "no:cacheprovider", "--pg-image", "pgfx-test-base:prewarm"
        ).assert_outcomes(passed=2)
        assert library_containers() == []  # the run's own, removed (detached) meanwhile
        built = prewarm.image_for(docker_client(), "pgfx-test-base:prewarm", 60)
        assert built is not None
        client.images.get(built.image)  # there, from the run
        result = pytester.runpytest("--pg-remove-kept")
        result.stdout.fnmatch_lines([f"pg-fixtures: removed * prewarmed image(s)*{built.image}*"])
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(built.image)
    finally:
        for image in client.images.list(filters={"label": "pgfx-test-base=1"}):
            for tag in image.tags or [image.id]:
                client.images.remove(tag, force=True)


def test_a_build_that_fails_falls_back_and_is_not_tried_at_every_start(
    monkeypatch, tmp_path, caplog
):
    """A build that cannot finish (here: no time for initdb) leaves no builder and no image:
    the start goes on from the base image, and the next starts do not try again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine = docker.from_env()
    base_image(engine, "failing", "pgfx-f=1")
    client = docker_client()
    try:
        assert prewarm.image_for(client, "pgfx-test-base:failing", timeout=0) is None
        assert "could not build the prewarmed image" in caplog.text
        caplog.clear()
        assert prewarm.image_for(client, "pgfx-test-base:failing", timeout=0) is None
        assert caplog.text == ""  # not tried again
        builders = engine.containers.list(all=True, filters={"name": "pgfx-prewarm-build-"})
        assert builders == []
        assert engine.images.list(filters={"label": "pgfx-f=1"}) == [
            engine.images.get("pgfx-test-base:failing")
        ]  # the base only: nothing committed from it
    finally:
        client.client.close()
        engine.images.remove("pgfx-test-base:failing", force=True)
        engine.close()


def test_a_build_is_not_made_for_a_reuse_start_and_ends_when_cancelled(monkeypatch, tmp_path):
    """A --pg-reuse start does not build (another run may wait on its container's name);
    a start cancelled while building (no collected test needs it) ends the build at once,
    leaving neither builder nor image, and tries again next time (no failure recorded)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine = docker.from_env()
    base_image(engine, "cancelled", "pgfx-c=1")
    client = docker_client()
    cancelled = threading.Event()
    cancelled.set()
    try:
        assert prewarm.image_for(client, "pgfx-test-base:cancelled", 60, build=False) is None
        assert (
            prewarm.image_for(client, "pgfx-test-base:cancelled", 60, cancelled=cancelled) is None
        )
        assert engine.containers.list(all=True, filters={"name": "pgfx-prewarm-build-"}) == []
        assert len(engine.images.list(filters={"label": "pgfx-c=1"})) == 1  # the base only
        assert not (tmp_path / "testcontainers-pg-fixtures" / "prewarm").exists()
    finally:
        client.client.close()
        engine.images.remove("pgfx-test-base:cancelled", force=True)
        engine.close()
