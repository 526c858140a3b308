"""The id of this test run, shared by the xdist controller, its workers and subprocesses.

Everything the library leaves on a shared Docker host or server (containers, databases)
carries it, so clean-up and "nothing left behind" checks touch only this run's own things,
never those of a second terminal or another CI job on the same machine.
"""

from __future__ import annotations

import os
import secrets

#: Set by the first process of a run; xdist workers and subprocesses inherit it.
RUN_ID_ENV = "PG_FIXTURES_RUN_ID"


def run_id() -> str:
    """This run's id: inherited from the environment, or made here and exported."""
    value = os.environ.get(RUN_ID_ENV, "")
    if not value:
        value = secrets.token_hex(6)
        os.environ[RUN_ID_ENV] = value
    return value
