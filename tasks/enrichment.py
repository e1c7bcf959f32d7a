"""Triage enrichment's network side: the registry through `tasks.registry` (MLflow's
REST API), and the Deployment's rollout history through `tasks.kubernetes`.

`enrich_incident` puts them together and never raises: a source that fails becomes a gap
with its reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect import task

from runbooks.enrichment import DEFAULT_ALIASES, Enrichment, SourceError, enrich
from tasks import kubernetes, registry
from tasks.registry import MAX_PAGES, TIMEOUT, mlflow_error

# Enrichment is evidence for triage, not a remediation: a short retry budget keeps a dead
# registry from eating the P1 triage SLA.
_short_retry = {"retries": 2, "retry_delay_seconds": [0.5, 1.0]}
get_registered_model = registry.get_registered_model.with_options(**_short_retry)
search_model_versions = registry.search_model_versions.with_options(**_short_retry)
get_run = registry.get_run.with_options(**_short_retry)


class LiveSources:
    """`runbooks.enrichment.Sources` over the network; failures become SourceError."""

    def registry(self, url: str, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            registered = get_registered_model(url, model).get("registered_model") or {}
            versions: list[dict[str, Any]] = []
            token = None
            for _ in range(MAX_PAGES):
                page = search_model_versions(url, model, token)
                versions += page.get("model_versions") or []
                token = page.get("next_page_token")
                if not token:
                    break
        except Exception as exc:  # noqa: BLE001  translated into a readable reason
            raise SourceError(describe_http_failure(exc, url, f"model {model!r}")) from exc
        return registered, versions

    def run_user(self, url: str, run_id: str) -> str | None:
        try:
            run = get_run(url, run_id)
        except Exception as exc:  # noqa: BLE001  translated into a readable reason
            raise SourceError(describe_http_failure(exc, url, f"run {run_id}")) from exc
        return ((run.get("run") or {}).get("info") or {}).get("user_id") or None

    def rollout(self, namespace: str, deployment: str) -> tuple[dict[str, Any], list[dict]]:
        try:
            dep = kubernetes.read_namespaced_deployment(deployment, namespace)
            replica_sets = kubernetes.list_namespaced_replica_set(namespace)
        except Exception as exc:  # noqa: BLE001  translated into a readable reason
            raise SourceError(describe_kube_failure(exc, namespace, deployment)) from exc
        return dep, replica_sets


@task
def enrich_incident(
    model: str,
    *,
    registry_url: str | None = None,
    registry_model: str | None = None,
    aliases: Sequence[str] = DEFAULT_ALIASES,
    namespace: str | None = None,
    deployment: str | None = None,
    version_label: str = "version",
    owners: Sequence[str] = (),
    on_call: Sequence[str] = (),
    business: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Enrichment:
    """Triage's enrichment step: registry, rollout history, owners, on-call, business context."""
    return enrich(
        model,
        sources=LiveSources(),
        now=now or datetime.now(UTC),
        registry_url=registry_url,
        registry_model=registry_model,
        aliases=aliases,
        namespace=namespace,
        deployment=deployment,
        version_label=version_label,
        owners=owners,
        on_call=on_call,
        business=business,
    )


def describe_http_failure(exc: BaseException, base_url: str, what: str) -> str:
    """One line a human can act on, from whatever httpx or MLflow said."""
    if isinstance(exc, SourceError):
        return str(exc)
    if isinstance(exc, httpx.HTTPStatusError):
        r = exc.response
        code, message = mlflow_error(r)
        said = f"{code}: {message}" if code else (r.text.strip()[:200] or r.reason_phrase)
        if r.status_code == 404 and code == "RESOURCE_DOES_NOT_EXIST":
            return f"{what} not found at {base_url} ({said}); check the registry model name"
        if r.status_code == 404:
            return (
                f"{r.request.url.path} not found at {base_url} (404: {said}); "
                "is it an MLflow tracking server?"
            )
        if r.status_code in (401, 403):
            return f"{base_url} refused access ({r.status_code}: {said}); check the credentials"
        return f"{base_url} answered {r.status_code} for {what}: {said}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {base_url} within {TIMEOUT.read:g} s ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach {base_url} ({exc or type(exc).__name__})"
    if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        return f"cannot talk to {base_url}: {type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__} reading {what} from {base_url}: {exc}"


def describe_kube_failure(exc: BaseException, namespace: str, deployment: str) -> str:
    """Read by shape (status, reason, body) so only tasks.kubernetes imports the client."""
    status = getattr(exc, "status", None)
    where = f"Deployment {namespace}/{deployment}"
    if isinstance(status, int) and status > 0:
        message = _status_message(getattr(exc, "body", None)) or getattr(exc, "reason", "")
        if status == 404:
            return f"{where} not found ({message}); check the policy's Kubernetes target"
        if status in (401, 403):
            return (
                f"the Kubernetes API refused to show {where} ({status}: {message}); "
                "the service account needs get on deployments and list on replicasets"
            )
        return f"the Kubernetes API answered {status} for {where}: {message}"
    text = str(exc)
    if errno := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
        return f"cannot reach the Kubernetes API for {where} ({errno.group(1).strip()})"
    if type(exc).__name__ == "ConfigException":
        return f"no Kubernetes cluster configured ({text}); set RUNBOOKS_KUBE_HOST or a kubeconfig"
    return f"unexpected {type(exc).__name__} reading {where}: {text[:300]}"


def _status_message(body: Any) -> str:
    try:
        data = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        return str(body)[:200]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or "")[:200]
    return ""
