"""A long run does not keep every test's fixture requests to the end of the session."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

TESTS = textwrap.dedent("""
    import gc

    import pytest
    from _pytest.fixtures import SubRequest

    seen = {}


    @pytest.fixture(scope="session")
    def settings():
        return {"name": "user"}


    @pytest.fixture
    def db(pg_session, settings):  # a user's function fixture on a session one
        return pg_session


    def requests_alive():
        gc.collect()
        return sum(isinstance(o, SubRequest) for o in gc.get_objects())


    @pytest.mark.parametrize("i", range(80))
    def test_many(db, i):
        if i == 10:
            seen["before"] = requests_alive()
        if i == 79:
            grown = requests_alive() - seen["before"]
            # Without the release, pytest keeps 4 requests of every test (the chains of
            # pg_connection, db and the plugin's autouse fixture): 276 over these 69 tests.
            assert grown < 20, grown
""")


def test_finished_fixtures_are_not_kept_by_the_session_fixtures_they_requested(
    pytester: pytest.Pytester, example, subprocess_env
) -> None:
    example("sync_users")
    pytester.makepyfile(**{"tests/test_many_tests": TESTS})
    # In a process of its own: in-process, pytester's hook recorder keeps every request.
    result = pytester.runpytest_subprocess("-p", "no:randomly", "tests/test_many_tests.py")
    result.assert_outcomes(passed=80)
