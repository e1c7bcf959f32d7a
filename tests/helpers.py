"""Small helpers shared by the tests."""

from __future__ import annotations

import time

import httpx


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until `predicate` is truthy. A poll that times out counts as "not yet": on a
    loaded 2-core machine the Prefect API has taken over 5 s to answer one read (seen in a
    fresh-clone CI run), which says nothing about the condition."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except httpx.TimeoutException as err:
            last = f"(poll timed out: {err!r})"
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
