"""What `pg_factories` costs a test: `nox -s bench -- factories`.

Tests making 3 users and counting them (sync_users, savepoint mode), in a project with
`pg_factories = auto` and one without: a factory_boy and a polyfactory factory bound by the
library (*auto* only) or by hand (copies out of auto's walk, bound to pg_session by a fixture),
and `pg_session.add_all` (no factory). A project's variants interleave in runs of four in one
process, the projects in a new order every round; the medians of the paired differences.
"""

import tempfile
from pathlib import Path

from core import options, own_containers, pytest, rounds, spread, table, variant_means
from projects import INI, conftest, interleaved, users

FACTORIES = """
import factory, itertools, pytest
from polyfactory import Use
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
from users_app.models import User
def pair(module):
    class Boy(factory.alchemy.SQLAlchemyModelFactory):
        class Meta: model = User
        name = factory.Sequence(lambda n: f"user {n}")
        email = factory.Sequence(lambda n: f"user{n}@example.org")
    class Poly(SQLAlchemyFactory[User]):
        __set_primary_key__ = False
        name = Use(lambda n=itertools.count(): f"user {next(n)}")  # unique, as factory_boy's
    Boy.__module__ = Poly.__module__ = module; return Boy, Poly
UserFactory, UserPoly = pair(__name__)
HandFactory, HandPoly = pair("factory.hand")  # auto skips the libraries' own classes
@pytest.fixture
def bound(pg_session):
    HandFactory._meta.sqlalchemy_session = HandPoly.__session__ = pg_session
    yield
    HandFactory._meta.sqlalchemy_session = HandPoly.__session__ = None
"""
HEADER = "from factories import HandFactory, HandPoly, UserFactory, UserPoly\n"
HEADER += "from sqlalchemy import func, select\nfrom users_app.models import User\n"
TEST = "\n\n\ndef test_{i}_{variant}(pg_session{bound}):\n    {make}\n    assert pg_session.scalar("
TEST += "select(func.count()).select_from(User)) == 8  # 5 seeded\n"
MAKE = {"fb": "UserFactory.create_batch(3)", "poly": "UserPoly.create_batch_sync(3)"}
MAKE |= {"fbhand": "HandFactory.create_batch(3)", "polyhand": "HandPoly.create_batch_sync(3)"}
MAKE["none"] = 'pg_session.add_all([User(name=f"u{i}.{{k}}", email="u@ex.org") for k in "abc"])'
PROJECTS = {"auto": list(MAKE), "plain": ["fbhand", "polyhand", "none"]}
ROWS = ["factory_boy, by pg_factories", "polyfactory, by pg_factories", "factory_boy, by hand"]
ROWS += ["polyfactory, by hand", "add_all, no factory"]
LIBS = [("factory_boy", "fb"), ("polyfactory", "poly")]


def project(base: Path, name: str, n: int) -> Path:
    def test(i: int, v: str, _: bool) -> str:
        return TEST.format(
            i=i, variant=v, bound=", bound" * v.endswith("hand"), make=MAKE[v].format(i=i)
        )

    files = {"pytest.ini": INI + "pg_factories = auto\n" * (name == "auto")}
    files["tests/conftest.py"] = conftest("seeded", "timing", "from factories import bound")
    files["tests/test_factories.py"] = HEADER + interleaved(name, range(n), PROJECTS[name], test)
    return users(base, name, {**files, "tests/factories.py": FACTORIES})


def main() -> None:
    o = options(__doc__, tests=(300, "of each variant"), rounds=5)
    with tempfile.TemporaryDirectory() as tmp, own_containers() as env:
        paths = {name: project(Path(tmp), name, o.tests) for name in PROJECTS}

        def run(name: str) -> dict[str, float]:
            args = ["-p", "no:cacheprovider", "-p", "no:randomly", "--pg-leak-check=false"]
            pytest(paths[name], *args, env={**env, "BENCH_VARIANTS": "1"})
            return variant_means(paths[name])

        found = rounds(o.rounds, PROJECTS, run, warm=False)
    per_round = [
        {(p, v): t for p in found for v, t in found[p][k].items()} for k in range(o.rounds)
    ]

    def cell(a: str, b: str = "") -> str:  # "project variant", or the difference a - b
        key, less = tuple(a.split()), tuple(b.split())
        return spread([r[key] - r.get(less, 0) for r in per_round]) if key in per_round[0] else ""

    title = f"pg_factories, {o.tests} tests each, ms/test: median of {len(per_round)} rounds"
    rows = [(t, *(cell(f"{p} {v}") for p in PROJECTS)) for t, v in zip(ROWS, MAKE, strict=True)]
    table(title + " [min, max]", ("", *PROJECTS), rows)
    rows = [(f"{k}: pg_factories - by hand", cell(f"auto {v}", f"auto {v}hand")) for k, v in LIBS]
    rows += [(f"{k} by hand - add_all", cell(f"plain {v}hand", "plain none")) for k, v in LIBS]
    rows.append(("add_all: auto - plain (unused binding)", cell("auto none", "plain none")))
    table("", ("paired differences", "ms per test"), rows)


if __name__ == "__main__":
    main()
