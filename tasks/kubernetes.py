"""Kubernetes, through the official client: the only module that imports it.

Each task is one API call, named after it, with a timeout; transient faults retry.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prefect import task

from runbooks.settings import get_settings
from tasks.retry import BACKOFF, retry_when

TIMEOUT = (3.05, 10)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or exc.status >= 500
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError)


_retry = {
    "retries": 3,
    "retry_delay_seconds": BACKOFF,
    "retry_condition_fn": retry_when(_transient),
}


@lru_cache(maxsize=4)
def api_client(host: str | None = None, context: str | None = None) -> client.ApiClient:
    """RUNBOOKS_KUBE_HOST, else in-cluster config, else kubeconfig (RUNBOOKS_KUBE_CONTEXT)."""
    settings = get_settings()
    host = host or settings.kube_host
    if host:
        cfg = client.Configuration()
        cfg.host = host
        return client.ApiClient(cfg)
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(context=context or settings.kube_context, client_configuration=cfg)
    return client.ApiClient(cfg)


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def apps() -> client.AppsV1Api:
    return client.AppsV1Api(api_client())


@task(**_retry)
def read_namespaced_service(name: str, namespace: str) -> dict[str, Any]:
    svc = core().read_namespaced_service(name, namespace, _request_timeout=TIMEOUT)
    return api_client().sanitize_for_serialization(svc)


@task(**_retry)
def patch_namespaced_service(name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    svc = core().patch_namespaced_service(name, namespace, body, _request_timeout=TIMEOUT)
    return api_client().sanitize_for_serialization(svc)


@task(**_retry)
def list_namespaced_deployment(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    out = apps().list_namespaced_deployment(
        namespace, label_selector=label_selector, _request_timeout=TIMEOUT
    )
    return [api_client().sanitize_for_serialization(d) for d in out.items]


@task(**_retry)
def read_namespaced_deployment_scale(name: str, namespace: str) -> dict[str, Any]:
    scale = apps().read_namespaced_deployment_scale(name, namespace, _request_timeout=TIMEOUT)
    return api_client().sanitize_for_serialization(scale)


@task(**_retry)
def patch_namespaced_deployment_scale(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    scale = apps().patch_namespaced_deployment_scale(
        name, namespace, {"spec": {"replicas": replicas}}, _request_timeout=TIMEOUT
    )
    return api_client().sanitize_for_serialization(scale)


@task(**_retry)
def read_namespaced_deployment(name: str, namespace: str) -> dict[str, Any]:
    deployment = apps().read_namespaced_deployment(name, namespace, _request_timeout=TIMEOUT)
    return api_client().sanitize_for_serialization(deployment)


@task(**_retry)
def list_namespaced_replica_set(namespace: str) -> list[dict[str, Any]]:
    """Every ReplicaSet in the namespace: the caller picks a Deployment's own by owner, as
    `kubectl rollout history` does, because labels can overlap between Deployments."""
    out = apps().list_namespaced_replica_set(namespace, _request_timeout=TIMEOUT)
    return [api_client().sanitize_for_serialization(rs) for rs in out.items]


def custom_objects() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


@task(**_retry)
def get_namespaced_custom_object(
    group: str, version: str, namespace: str, plural: str, name: str
) -> dict[str, Any]:
    return custom_objects().get_namespaced_custom_object(
        group, version, namespace, plural, name, _request_timeout=TIMEOUT
    )


@task(**_retry)
def patch_namespaced_custom_object(
    group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any]
) -> dict[str, Any]:
    """A JSON merge patch (the client's only content type for custom objects)."""
    return custom_objects().patch_namespaced_custom_object(
        group, version, namespace, plural, name, body, _request_timeout=TIMEOUT
    )


def is_not_found(exc: BaseException) -> bool:
    """The API answered 404: the object (or its kind, for a custom resource) is absent."""
    return isinstance(exc, ApiException) and exc.status == 404


# Kubernetes' own words for a 403, in the Status's message: `services "fraud" is forbidden:
# User "system:serviceaccount:ml-runbooks:ml-runbooks-flows" cannot patch resource
# "services" in API group "" in the namespace "ml-prod"`.
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]+)"'
    r'(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<namespace>[^"]+)")?'
)


def _forbidden(exc: ApiException) -> str:
    """What a 403 forbade and the RBAC rule that allows it."""
    try:
        message = str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    found = _FORBIDDEN.search(message)
    if found is None:
        return (
            "the runbook's service account lacks RBAC for this verb and resource"
            + (f" ({message})" if message else "")
            + "; grant it in the namespace's Role (deployments/k8s/manifests/flow-runs-rbac.yaml)"
        )
    f = found.groupdict()
    group = f["group"] or ""
    where = f" in namespace {f['namespace']}" if f["namespace"] else ""
    return (
        f"{f['user']} may not {f['verb']} {f['resource']}{where}; the service account's RBAC "
        f'needs a rule apiGroups: ["{group}"], resources: ["{f["resource"]}"], verbs: '
        f'["{f["verb"]}"] (deployments/k8s/manifests/flow-runs-rbac.yaml)'
    )


def describe_error(exc: BaseException) -> str | None:
    """A Kubernetes API failure in words a human can act on; None when it is not one."""
    if isinstance(exc, ApiException):
        if exc.status == 403:
            return f"Kubernetes API 403 {exc.reason}: {_forbidden(exc)}"
        hint = {
            401: "the runbook's credentials were not accepted; check the kubeconfig or token",
            404: "the object does not exist; check the policy's target names",
            409: "the object changed underneath; the next run reads it again",
        }.get(exc.status, "retried with backoff and still failing" if exc.status else "")
        return f"Kubernetes API {exc.status} {exc.reason}: {hint}".rstrip(": ")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return f"Kubernetes API unreachable after retries ({type(exc).__name__}: {exc})"
    return None
