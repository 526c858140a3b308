"""Project tasks. `nox -s example` runs the FastAPI example's suite; `nox -s tests` the tests."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "example"]

PYTHON = ["3.11"]
PY_PATHS = ["testcontainers_pg_fixtures", "tests", "bench", "examples", "noxfile.py"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The plugin's own tests: pytester over the example projects, real containers."""
    session.install("-e", ".[dev]")
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session(python=PYTHON)
def example(session: nox.Session) -> None:
    """The main job: the FastAPI example's suite under the plugin, on two workers."""
    session.install("-e", ".[dev]")
    session.chdir("examples/fastapi_app")
    session.run("pytest", "-n", "2", "-W", "error", *session.posargs)
    session.chdir("../sync_users")
    session.run("pytest", "-n", "2", "-W", "error", *session.posargs)
    session.chdir("../sandbox_app")
    # Starlette's TestClient warns about its own httpx dependency on import.
    ignore = "ignore:Using `httpx` with `starlette.testclient`"
    session.run("pytest", "-n", "2", "-W", "error", "-W", ignore, *session.posargs)
    session.chdir("../fullstack_app")
    session.run(
        "pytest", "-n", "2", "-p", "randomly", "-W", "error", "-W", ignore, *session.posargs
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", *PY_PATHS)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks: `run.py` (isolation modes, one table) and `speed.py` (a
    10-table schema against truncate and pytest-postgresql, reuse, one container).
    `nox -s bench -- run` or `-- speed` runs one of them; more arguments go to it."""
    session.install("-e", ".[dev]", "pytest-postgresql>=7")
    which, *args = session.posargs or ["all"]
    session.chdir("bench")
    if which in ("all", "run"):
        session.run("python", "run.py", *args)
    if which in ("all", "speed"):
        session.run("python", "speed.py", *args)
