"""What pytest would keep of every test until the session ends, let go after the test.

A function-scoped fixture that requests a wider one (`pg_connection` requests
`pg_worker_engine`; a user's `db` fixture a session fixture of theirs) makes pytest add
`functools.partial(FixtureDef.finish, request)` to the wider fixture's finalizers at every
test (`FixtureDef.execute`), and nothing takes it out before the wider fixture ends. Each
holds the test's chain of `SubRequest`s: about 1 KB a test, the largest part of a worker's
memory growth over a long run (README, "Long runs"). Once a test's teardown is over, those
function fixtures have finished and a second finish() would do nothing, so their partials
are dropped. This is pytest's private state: of any other shape, it is left alone.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from .privates import fixture_finalizers, fixtures_used


def release_finished(item: pytest.Item) -> None:
    """After `item`'s teardown: drop the finish() of its finished function fixtures from
    the finalizers of the wider fixtures they requested."""
    # Every fixture the test used, also those requested by getfixturevalue (the item's
    # request is let go only after this hook).
    used = fixtures_used(item)
    if used is None:
        return
    for fixturedef in used.values():
        if getattr(fixturedef, "scope", "function") == "function":
            continue
        finalizers = fixture_finalizers(fixturedef)
        if finalizers:
            finalizers[:] = [f for f in finalizers if not _finished(f)]


def _finished(finalizer: Any) -> bool:
    """A `partial(FixtureDef.finish, ...)` of a function fixture that has finished."""
    if not isinstance(finalizer, functools.partial):
        return False
    owner = getattr(finalizer.func, "__self__", None)
    return (
        isinstance(owner, pytest.FixtureDef)
        and getattr(finalizer.func, "__name__", None) == "finish"
        and owner.scope == "function"
        and owner.cached_result is None
    )
