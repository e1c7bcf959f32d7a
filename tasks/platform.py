"""A model platform's REST API (`/api/v1/ml/models/{name}/...`) over httpx."""

from __future__ import annotations

from typing import Any

import httpx
from prefect import task

from tasks.retry import BACKOFF, retry_transient_http

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
_retry = {"retries": 3, "retry_delay_seconds": BACKOFF, "retry_condition_fn": retry_transient_http}


def _check(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        # Keep the platform's own words: they usually name the fix.
        raise httpx.HTTPStatusError(
            f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}",
            request=r.request,
            response=r,
        )
    return r.json()


@task(**_retry)
def get_model_status(base_url: str, name: str) -> dict[str, Any]:
    r = httpx.get(f"{base_url.rstrip('/')}/api/v1/ml/models/{name}/status", timeout=TIMEOUT)
    return _check(r)


@task(**_retry)
def post_model_rollback(base_url: str, name: str, target_version: str) -> dict[str, Any]:
    r = httpx.post(
        f"{base_url.rstrip('/')}/api/v1/ml/models/{name}/rollback",
        json={"targetVersion": target_version},
        timeout=TIMEOUT,
    )
    return _check(r)


@task(**_retry)
def post_model_traffic(base_url: str, name: str, split: dict[str, int]) -> dict[str, Any]:
    """Set the traffic split in integer percents, e.g. {"v1": 50, "v2": 50}; setting the
    split it already has is success, so a retry is safe."""
    r = httpx.post(
        f"{base_url.rstrip('/')}/api/v1/ml/models/{name}/traffic", json=split, timeout=TIMEOUT
    )
    return _check(r)


def describe_error(exc: BaseException) -> str | None:
    """A platform API failure in words a human can act on; None when it is not one."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"model platform answered {exc.response.status_code}: {exc}"
    if isinstance(exc, httpx.TransportError):
        return f"model platform unreachable after retries ({type(exc).__name__}: {exc})"
    return None
