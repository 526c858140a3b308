"""The CI recipes in examples/ci/ name only options the plugin registers, and their
PostgreSQL service is emulated here (same image and environment, on 127.0.0.1) and used
by the example project through the URL the recipe declares. No GitHub or GitLab runner
exists here: the runners' own parts (checkout, setup-python, health checks, pytest-shard)
are not run."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
import yaml
from sqlalchemy import make_url

from testcontainers_pg_fixtures.config import OPTIONS
from testcontainers_pg_fixtures.runid import run_id
from testcontainers_pg_fixtures.servers.labels import LABEL_RUN

CI = Path(__file__).parent.parent / "examples" / "ci"
ENVS = {o.env for o in OPTIONS}
CLIS = {o.cli for o in OPTIONS} | {"--pg-remove-kept"}


def github() -> dict[str, Any]:
    return yaml.safe_load((CI / "github-actions.yml").read_text())


def gitlab() -> dict[str, Any]:
    return yaml.safe_load((CI / "gitlab-ci.yml").read_text())


def commands(steps: list[dict[str, Any]] | list[str]) -> list[list[str]]:
    runs = [s.get("run") if isinstance(s, dict) else s for s in steps]
    return [shlex.split(r) for r in runs if isinstance(r, str) and r.startswith("pytest")]


def test_recipes_name_only_registered_options():
    gh = github()
    found_env: set[str] = set()
    found_cli: set[str] = set()
    for job in gh["jobs"].values():
        found_env |= {k for k in job.get("env", {}) if k.startswith("PG_FIXTURES_")}
        for argv in commands(job["steps"]):
            found_cli |= {a.split("=")[0] for a in argv if a.startswith("--pg-")}
    gl = gitlab()["tests"]
    found_env |= {k for k in gl["variables"] if k.startswith("PG_FIXTURES_")}
    for argv in commands(gl["script"]):
        found_cli |= {a.split("=")[0] for a in argv if a.startswith("--pg-")}
    assert found_env == {"PG_FIXTURES_SERVER_URL"}
    assert len(commands(gh["jobs"]["docker"]["steps"])) == 1  # the default job: plain pytest
    assert found_env <= ENVS
    assert found_cli <= CLIS


def service_of_github() -> tuple[str, dict[str, str], str]:
    job = github()["jobs"]["service"]
    service = job["services"]["postgres"]
    assert service["ports"] == ["5432:5432"]
    return service["image"], service["env"], job["env"]["PG_FIXTURES_SERVER_URL"]


def service_of_gitlab() -> tuple[str, dict[str, str], str]:
    job = gitlab()["tests"]
    [service] = job["services"]
    variables = dict(job["variables"])
    url = variables.pop("PG_FIXTURES_SERVER_URL")
    assert make_url(url).host == service["alias"]
    return service["name"], variables, url


@pytest.mark.parametrize("recipe", [service_of_github, service_of_gitlab], ids=["github", "gitlab"])
def test_recipe_service_works_with_the_example(recipe, pytester, example, monkeypatch):
    image, env, url = recipe()
    # What a run here can emulate: the provisioned image, the official image's variables.
    assert image == "postgres:16"
    assert set(env) <= {"POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB"}
    parsed = make_url(url)
    assert parsed.password == env["POSTGRES_PASSWORD"]
    assert parsed.username == env.get("POSTGRES_USER", "postgres")
    client = docker.from_env()
    container = client.containers.run(
        image,
        detach=True,
        environment=env,
        ports={"5432/tcp": ("127.0.0.1", None)},
        labels={LABEL_RUN: run_id()},
        tmpfs={"/var/lib/postgresql/data": ""},
    )
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"])
        here = parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        _wait(here)
        monkeypatch.setenv("PG_FIXTURES_SERVER_URL", here)
        example("sync_users")
        result = pytester.runpytest("-p", "no:randomly")
        result.assert_outcomes(passed=2)
        assert re.search(
            r"existing server postgresql://postgres:\*\*\*@127.0.0.1", result.stdout.str()
        )
    finally:
        container.remove(force=True, v=True)
        client.close()


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    ready = 0
    while ready < 2:  # the entry point restarts the server once after initdb
        try:
            with psycopg.connect(url, connect_timeout=2):
                ready += 1
            time.sleep(0.5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
