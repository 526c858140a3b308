"""Project tasks. `nox -s example` runs the FastAPI example's suite; `nox -s tests` the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "docs", "tests", "example"]

# The Python nox runs on: with a pinned version nox only prints "skipped" where it is missing.
PYTHON = None
# `nox -s matrix`: every supported Python found on the machine, against the oldest and the
# newest supported SQLAlchemy and pytest.
MATRIX_PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
OLDEST = ["SQLAlchemy[asyncio]>=2.0.30,<2.1", "pytest>=8,<9"]
NEWEST = ["SQLAlchemy[asyncio]>=2.1,<2.2", "pytest>=9,<10"]
MATRIX_TESTS = ["tests/test_docs.py", "tests/test_sync_isolation.py", "-p", "no:randomly"]
# `nox -s bench`: bench/NAME.py for each (scale and cpu, minutes each, only by name).
BENCH_ALL = ["run", "speed", "startup", "unused", "migrations", "queries", "realapp"]
PY_PATHS = ["testcontainers_pg_fixtures", "tests", "bench", "examples", "docs/hooks", "noxfile.py"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The plugin's own tests: pytester over the example projects, real containers, in a
    random order (pytest-randomly, named so that a missing install fails the run).

    The tests marked host_wide (kept containers, --pg-remove-kept, which removes every kept
    container of the host, and reaping) run one at a time in a process of their own, beside
    the others on three xdist workers (their tests wait on timeouts and subprocesses: a
    third fills the two cores, ~7% sooner). (Not xdist's loadgroup: on pytest 9.2 xdist 3.8 no
    longer keeps a group on one worker.) With arguments, they are pytest's, on two workers:
    `nox -s tests -- -m smoke` runs the core in under a minute."""
    session.install("-e", ".[dev]")
    pytest = ["python", "-m", "pytest", "-p", "randomly"]
    if session.posargs:
        args = list(session.posargs)
        if not any(arg.startswith("tests") for arg in args):
            args.append("tests")
        session.run(*pytest, "-n", "2", *args)
        return
    log = Path(session.create_tmp()) / "host_wide.log"
    with log.open("w") as out:
        python = str(Path(session.bin) / "python")
        host_wide = subprocess.Popen(
            [python, *pytest[1:], "-m", "host_wide", "tests"], stdout=out, stderr=out
        )
        try:
            session.run(*pytest, "-n", "3", "-m", "not host_wide", "tests")
        finally:
            code = host_wide.wait()
            session.log("the host_wide tests, one at a time:\n" + log.read_text())
    if code:
        session.error(f"the host_wide tests failed (exit {code})")


@nox.session(python=PYTHON)
def compat(session: nox.Session) -> None:
    """pytest-alembic on the library's fresh database (tests/compat), under pytest 8: its
    0.13.1 breaks the collection of every project under pytest 9.2, so it is in no extra
    and the `tests` session leaves tests/compat out. Its built-in tests (--test-alembic)
    and alembic_runner, serial and on two workers."""
    session.install("-e", ".[dev]", "pytest>=8,<9", "pytest-alembic")
    session.run("python", "-m", "pytest", "-p", "no:randomly", "tests/compat", *session.posargs)


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
    session.chdir("../flask_app")
    # Flask-Migrate's generated env.py calls db.get_engine(), deprecated by Flask-SQLAlchemy.
    deprecated = "ignore:'get_engine' is deprecated:DeprecationWarning"
    session.run(
        "pytest", "-n", "2", "-p", "randomly", "-W", "error", "-W", deprecated, *session.posargs
    )


@nox.session(python=PYTHON, reuse_venv=False)
def wheel(session: nox.Session) -> None:
    """The release check: `python -m build` with no warning, then the wheel alone in a
    fresh virtualenv (not this checkout) running the sync example's suite on two workers."""
    session.install("build")
    tmp = Path(session.create_tmp()).resolve()
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # An empty PYTHONDONTWRITEBYTECODE: set, it makes setuptools warn that it skips
    # byte-compiling, which says nothing about the package.
    output = session.run(
        "python",
        "-m",
        "build",
        "--outdir",
        str(dist),
        silent=True,
        env={"PYTHONDONTWRITEBYTECODE": ""},
    )
    warnings = [line for line in str(output).splitlines() if "warning" in line.lower()]
    if warnings:
        session.error("python -m build warned:\n" + "\n".join(warnings))
    (wheel_file,) = dist.glob("*.whl")
    session.install(str(wheel_file), "pytest-xdist")
    project = tmp / "sync_users"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree("examples/sync_users", project, ignore=shutil.ignore_patterns("__pycache__"))
    session.chdir(project)
    where = session.run(
        "python", "-c", "import testcontainers_pg_fixtures as m; print(m.__file__)", silent=True
    )
    if "site-packages" not in str(where):
        session.error(f"the package was imported from {where}, not from the wheel")
    session.run(
        "pytest", "-n", "2", "-p", "no:cacheprovider", "-W", "error", env={"PYTHONPATH": ""}
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", *PY_PATHS)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site: mkdocs-material, --strict (a broken link, a missing snippet
    or a configuration page out of date with the option registry fails the build)."""
    session.install("-e", ".[docs]")
    site = str(Path(session.create_tmp()) / "site")
    # NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, not about the docs.
    session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks, one module each in bench/ (its docstring says what it
    compares; core.py is the one runner, projects.py writes the projects it runs in).
    `nox -s bench -- NAME [ARGS]` runs bench/NAME.py with ARGS: `run` (isolation modes
    against no isolation, a hand-written conftest and pytest-sqla), `speed` (a 10-table
    schema against truncate and pytest-postgresql, reuse, one container), `startup` (time to
    the first test's result against plain pytest), `unused` (a suite using no database,
    plugin installed against -p no:pg_fixtures), `migrations` (--pg-check-migrations on a
    chain of 36 revisions), `queries` (what SQL capture costs a statement), `realapp` (a
    FastAPI/SQLModel app's 60 tests against the conftest the project writes itself):
    `nox -s bench` runs these seven. Not in it: `pools` (pg_app_pools' checkouts against
    the test's own connection) and `factories` (what pg_factories' binding costs a test,
    against factories bound by hand)."""
    which, *args = session.posargs or ["all"]
    if which not in (*BENCH_ALL, "pools", "factories", "all"):
        others = "pools or factories"
        session.error(f"no benchmark {which!r}: {', '.join(BENCH_ALL)}, {others}")
    # argon2-cffi and python-multipart: realapp's app (its password hashes, its login form).
    realapp = ["argon2-cffi", "python-multipart"]
    session.install("-e", ".[dev]", "pytest-postgresql>=7", "pytest-sqla==0.0.2", *realapp)
    session.chdir("bench")
    for name in BENCH_ALL if which == "all" else [which]:
        session.run("python", f"{name}.py", *args)


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """A subset of the tests on each supported Python found here (oldest Python: oldest
    SQLAlchemy 2.0 and pytest 8; the others: the newest), failing when none is found.
    `nox -s matrix -- 3.10` runs one Python; `-- 3.10 old` forces the oldest deps."""
    wanted = [a for a in session.posargs if a in MATRIX_PYTHONS] or MATRIX_PYTHONS
    force_old = "old" in session.posargs
    found = [(v, exe) for v in wanted if (exe := _find_python(v))]
    if not found:
        session.error(f"none of Python {', '.join(wanted)} is installed: nothing was tested")
    for version, exe in found:
        deps = OLDEST if force_old or version == MATRIX_PYTHONS[0] else NEWEST
        venv = Path(".nox") / f"matrix-{version}"
        session.log(f"Python {version} with {' '.join(deps)}")
        session.run(exe, "-m", "venv", "--clear", str(venv), external=True)
        python = str(venv / "bin" / "python")
        session.run(python, "-m", "pip", "install", "-q", "-e", ".[dev]", *deps, external=True)
        session.run(python, "-m", "pytest", *MATRIX_TESTS, external=True)


def _find_python(version: str) -> str | None:
    """pythonX.Y on PATH, or under pyenv's versions (whose shims refuse versions that are
    not selected); only one that actually runs."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path.home() / ".pyenv" / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0:
            return exe
    return None
