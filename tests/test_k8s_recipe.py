"""The Kubernetes recipe (deployments/k8s/) holds together: each manifest is a valid object
of its kind by the Kubernetes client's OpenAPI models, with no field those models do not
know; the pool's job template renders to a valid Job; the names one file gives are the
names the others use. No cluster here: what only an API server checks (admission, defaults,
field immutability, whether the image exists) is out of reach."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from prefect.utilities.templating import apply_values, find_placeholders

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deployments" / "k8s"
API_VERSION = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in sorted((K8S / "manifests").glob("*.yaml"))
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


def unknown_fields(given: Any, kept: Any, where: str) -> list[str]:
    """Keys of `given` that the model dropped: the client ignores what it does not know."""
    if isinstance(given, dict):
        kept = kept if isinstance(kept, dict) else {}
        out = [f"{where}.{k}" for k in given if k not in kept]
        return out + [
            p for k in given if k in kept for p in unknown_fields(given[k], kept[k], f"{where}.{k}")
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=False))
            for p in unknown_fields(g, k, f"{where}[{i}]")
        ]
    return []


def validate(doc: dict[str, Any]) -> Any:
    """The object as the model of its kind reads it; raises on a missing required field or
    a wrong type, fails on an unknown field or a kind of the wrong API group."""
    kind = doc.get("kind")
    assert kind in API_VERSION, f"kind {kind!r}: add its model to API_VERSION"
    assert doc.get("apiVersion") == API_VERSION[kind], f"{kind} is {API_VERSION[kind]}"
    client = ApiClient()
    obj = client.deserialize(json.dumps(doc), f"V1{kind}", "application/json")
    unknown = unknown_fields(doc, client.sanitize_for_serialization(obj), kind)
    assert not unknown, f"fields the {kind} schema does not have: {unknown}"
    return obj


@pytest.mark.parametrize(("where", "doc"), manifests(), ids=[w for w, _ in manifests()])
def test_each_manifest_is_a_valid_object_of_its_kind(where: str, doc: dict[str, Any]) -> None:
    obj = validate(doc)
    assert obj.metadata.name, where
    if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
        assert obj.metadata.namespace == "ml-runbooks", where


def test_the_validation_catches_an_unknown_field_and_a_missing_name() -> None:
    (_, intake), *_ = [(w, d) for w, d in manifests() if d["kind"] == "Deployment"]
    bad = json.loads(json.dumps(intake))
    bad["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"nam": "x"}}]
    with pytest.raises(AssertionError, match=r"envFrom\[0\]\.secretRef\.nam"):
        validate(bad)
    del bad["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        validate(bad)


def base_job_template() -> dict[str, Any]:
    return json.loads((K8S / "base-job-template.json").read_text())


def test_the_base_job_template_renders_to_a_valid_job() -> None:
    """As the Kubernetes worker does: variables' defaults and the run's values into the
    placeholders, `env` as a list of name/value pairs, the command as arguments."""
    template = base_job_template()
    variables = template["variables"]["properties"]
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used <= set(variables), f"placeholders without a variable: {used - set(variables)}"
    values = {k: v["default"] for k, v in variables.items() if "default" in v}
    values.update(
        name="triage-run",
        command=["prefect", "flow-run", "execute"],
        env=[{"name": k, "value": v} for k, v in values["env"].items()],
    )
    job = apply_values(template["job_configuration"]["job_manifest"], values)
    obj = validate(job)
    container = obj.spec.template.spec.containers[0]
    assert container.image == intake_image()
    assert obj.spec.template.spec.service_account_name in names_of("ServiceAccount")
    assert container.env_from[0].secret_ref.name in names_of("Secret")
    assert obj.spec.template.spec.volumes[0].config_map.name in names_of("ConfigMap")


def names_of(kind: str) -> set[str]:
    return {d["metadata"]["name"] for _, d in manifests() if d["kind"] == kind}


def deployment(name: str) -> dict[str, Any]:
    (doc,) = [
        d for _, d in manifests() if d["metadata"]["name"] == name and d["kind"] == "Deployment"
    ]
    return doc


def intake_image() -> str:
    return deployment("ml-runbooks-intake")["spec"]["template"]["spec"]["containers"][0]["image"]


def test_manifests_use_the_secret_keys_configmap_accounts_and_pool_they_name() -> None:
    secret_keys = {
        k for _, d in manifests() if d["kind"] == "Secret" for k in d.get("stringData", {})
    }
    assert secret_keys == {
        "RUNBOOKS_INTAKE_TOKEN",
        "RUNBOOKS_DATABASE_URL",
        "PREFECT_API_URL",
        "PREFECT_API_KEY",
    }
    for name in ("ml-runbooks-intake", "ml-runbooks-worker"):
        pod = deployment(name)["spec"]["template"]
        assert (
            pod["metadata"]["labels"].items()
            >= deployment(name)["spec"]["selector"]["matchLabels"].items()
        )
        for env in pod["spec"]["containers"][0]["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] in names_of("Secret") and ref["key"] in secret_keys, env
        for volume in pod["spec"].get("volumes", []):
            assert volume["configMap"]["name"] in names_of("ConfigMap")
        account = pod["spec"].get("serviceAccountName")
        assert account is None or account in names_of("ServiceAccount")
    (service,) = [d for _, d in manifests() if d["kind"] == "Service"]
    intake_labels = deployment("ml-runbooks-intake")["spec"]["template"]["metadata"]["labels"]
    assert intake_labels.items() >= service["spec"]["selector"].items()
    args = deployment("ml-runbooks-worker")["spec"]["template"]["spec"]["containers"][0]["args"]
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    }
    assert (
        args[args.index("--pool") + 1] in pools and args[args.index("--type") + 1] == "kubernetes"
    )


def test_the_image_puts_every_package_where_the_pull_step_looks_and_runs_as_non_root() -> None:
    dockerfile = (K8S / "Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    assert re.search(rf"RUNBOOKS_WORKDIR={re.escape(workdir)}\b", dockerfile)
    assert '"{{ $RUNBOOKS_WORKDIR }}"' in (ROOT / "prefect.yaml").read_text()
    packages = re.search(r"include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package}/ {package}/" in dockerfile, package
    assert "COPY prefect.yaml" in dockerfile
    user = re.search(r"^USER (\S+)", dockerfile, re.M).group(1)
    assert user.isdigit() and int(user) > 0
    for name in ("ml-runbooks-intake",):
        assert deployment(name)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
            user
        )
