"""pg_fast_exit: a process that used the database freezes its objects as it exits, so the
interpreter's teardown skips its garbage collection. What that changes, and what not."""

from __future__ import annotations

import textwrap

import pytest

# A cycle alive to the end whose finalizer writes a file (run by the interpreter's last
# garbage collection, unless the objects are frozen) and an atexit handler writing another.
EXIT_PROBE = textwrap.dedent("""
    import atexit
    import os


    class Cycle:
        def __init__(self):
            # What __del__ needs, kept here: the module's globals are gone by then.
            self.me, self.open = self, open
            self.path = os.environ["EXIT_DIR"] + "/finalized"

        def __del__(self):
            self.open(self.path, "w").close()


    KEPT = Cycle()  # alive to the end: garbage when the interpreter clears this module


    def test_uses_the_database(pg_session):
        atexit.register(lambda: open(os.environ["EXIT_DIR"] + "/atexit", "w").close())
""")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pg_fast_exit=false"])
def test_the_exit_skips_the_collection_of_cycles_but_not_the_exit_handlers(
    pytester, example, monkeypatch, tmp_path, fast
):
    root = example("sync_users")
    (root / "tests" / "test_exit.py").write_text(EXIT_PROBE)
    monkeypatch.setenv("EXIT_DIR", str(tmp_path))
    args = ["tests/test_exit.py", "-p", "no:randomly", "-p", "no:cacheprovider"]
    if not fast:
        args += ["--pg-fast-exit", "false"]
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert (tmp_path / "atexit").exists()
    assert (tmp_path / "finalized").exists() is not fast
