"""MLflow's model registry over its REST API (`/api/2.0/mlflow/...`), through httpx.

The only module that speaks MLflow: triage's enrichment reads the registered model, its
versions and their runs; containment's registry rollback reads the version an alias
points at and moves the alias. Each verb is one call with a timeout; transient faults
(connection errors, 429, 5xx) retry with backoff, client errors do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from prefect import task

from runbooks.enrichment import SourceError
from tasks.retry import BACKOFF, retry_transient_http

TIMEOUT = httpx.Timeout(5.0, connect=2.0)
_retry = {"retries": 3, "retry_delay_seconds": BACKOFF, "retry_condition_fn": retry_transient_http}
PAGE_SIZE = 1000
# 20k versions of one model is far beyond any real registry; the cap bounds a broken paging.
MAX_PAGES = 20
# A version tag a deploy pipeline (or a post-mortem) sets to "false" on a version that
# must never be rolled back to, as `ml-runbooks.io/stable` on a Kubernetes Deployment.
STABLE_TAG = "stable"


def _api(base_url: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/api/2.0/mlflow/{path}"


def _answer(r: httpx.Response, base_url: str) -> dict[str, Any]:
    url = str(r.request.url.copy_with(query=None))
    if r.status_code >= 400:
        code, message = mlflow_error(r)
        said = f": {code}: {message}" if code else ""
        raise httpx.HTTPStatusError(
            f"{r.request.method} {url} -> {r.status_code}{said}",
            request=r.request,
            response=r,
        )
    try:
        body = r.json()
    except ValueError:
        kind = r.headers.get("content-type", "no content type")
        raise SourceError(
            f"{url} did not answer JSON ({kind}: {r.text[:80]!r}); "
            f"is {base_url} an MLflow tracking server?"
        ) from None
    if not isinstance(body, dict):
        raise SourceError(f"{url} answered {type(body).__name__}, not a JSON object")
    return body


def _get(base_url: str, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
    with httpx.Client(timeout=TIMEOUT) as http:
        r = http.get(
            _api(base_url, path), params={k: v for k, v in params.items() if v is not None}
        )
    return _answer(r, base_url)


def _post(base_url: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    with httpx.Client(timeout=TIMEOUT) as http:
        r = http.post(_api(base_url, path), json=dict(body))
    return _answer(r, base_url)


@task(**_retry)
def get_registered_model(base_url: str, name: str) -> dict[str, Any]:
    return _get(base_url, "registered-models/get", {"name": name})


@task(**_retry)
def search_model_versions(
    base_url: str, name: str, page_token: str | None = None
) -> dict[str, Any]:
    # MLflow's filter takes either quote; pick the one the name does not contain.
    quote = '"' if "'" in name else "'"
    return _get(
        base_url,
        "model-versions/search",
        {
            "filter": f"name={quote}{name}{quote}",
            "max_results": PAGE_SIZE,
            "page_token": page_token,
        },
    )


@task(**_retry)
def get_run(base_url: str, run_id: str) -> dict[str, Any]:
    return _get(base_url, "runs/get", {"run_id": run_id})


@task(**_retry)
def get_model_version_by_alias(base_url: str, name: str, alias: str) -> dict[str, Any]:
    """`{"model_version": {...}}` the alias points at; 404 when the model or alias is not
    there."""
    return _get(base_url, "registered-models/alias", {"name": name, "alias": alias})


@task(**_retry)
def set_model_alias(base_url: str, name: str, alias: str, version: str) -> dict[str, Any]:
    """Point `alias` at `version` (MLflow replaces where it pointed before), so setting the
    alias it already has is success and a retry is safe. MLflow answers `{}`."""
    return _post(
        base_url,
        "registered-models/alias",
        {"name": name, "alias": alias, "version": str(version)},
    )


def is_not_found(exc: BaseException) -> bool:
    """MLflow's 404 RESOURCE_DOES_NOT_EXIST: no such model, version or alias."""
    if not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code != 404:
        return False
    return mlflow_error(exc.response)[0] == "RESOURCE_DOES_NOT_EXIST"


def mlflow_error(r: httpx.Response) -> tuple[str | None, str]:
    """MLflow's own words for a failure: its errors are JSON {"error_code", "message"};
    a proxy in front answers HTML, which gives (None, "")."""
    try:
        body = r.json()
    except ValueError:
        return None, ""
    if isinstance(body, dict) and body.get("error_code"):
        return str(body["error_code"]), str(body.get("message", ""))[:300]
    return None, ""
