"""The intake under generated input: schemathesis against its OpenAPI document, every
route, and Hypothesis against the two parsers that read what others send (the policy file,
Alertmanager's webhook). Bad input is a 4xx whose "error" names what is wrong, or the
parser's own error naming a field; never a 5xx, never another exception.

Bounded and derandomized: the same examples on every run, the module in about 20 s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployments.intake import create_app
from runbooks.alerts import AlertPayloadError, parse_alertmanager
from runbooks.policy import Policy, PolicyError, load_policy, parse_policy

TOKEN = "fuzz-token-of-every-scope"
_HOME = Path(tempfile.mkdtemp(prefix="runbooks-fuzz-"))
APP = create_app(f"sqlite:///{_HOME / 'incidents.db'}", load_policy(), token=TOKEN)

# The POST routes read their JSON themselves, so the OpenAPI document has no bodies: the
# fuzzer is given every field name the routes know, of any JSON type, to send.
_ANY: dict[str, Any] = {}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_AM_ALERT = {
    "type": "object",
    "properties": {
        "status": {"enum": ["firing", "resolved", "other"]},
        "labels": _STRINGS,
        "annotations": _STRINGS,
        "startsAt": {"type": "string"},
        "endsAt": {"type": "string"},
        "fingerprint": _ANY,
    },
}
FIELDS = {
    name: _ANY
    for name in [
        "by",
        "why",
        "model",
        "comment",
        "severity",
        "type",
        "description",
        "impact",
        "reportedBy",
        "alertname",
        "metric",
        "value",
        "baseline",
        "feature",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "fingerprint",
        "source",
        "matchers",
        "duration",
        "createdBy",
        "root_cause",
        "component",
        "confidence",
        "labeled_by",
    ]
}
FIELDS |= {"version": {"enum": ["4", "3"]}, "status": _ANY, "alerts": {"type": "array",
           "items": _AM_ALERT}}  # fmt: skip
BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object", "properties": FIELDS}}},
}


def _with_bodies(document: dict[str, Any]) -> dict[str, Any]:
    for path, item in document["paths"].items():
        if "post" in item and path != "/api/v1/slack/interactions":
            item["post"]["requestBody"] = BODY
    return document


def _document() -> dict[str, Any]:
    return _with_bodies(APP.openapi())


schema = schemathesis.openapi.from_dict(_document())
schema.app = APP  # in process, over its ASGI interface


@schema.parametrize()
@settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_route_answers_5xx_and_every_refusal_names_what_is_wrong(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    if 400 <= response.status_code < 500:
        error = response.json().get("error")
        assert isinstance(error, str) and error.strip(), response.text[:500]


def test_an_incident_id_beyond_64_bits_is_a_422_naming_the_id_not_a_500() -> None:
    from fastapi.testclient import TestClient

    with TestClient(APP) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/api/v1/incidents/{}", "/api/v1/incidents/{}/labels"):
            for bad in (2**64, 2**63, 0, -1):
                r = client.get(path.format(bad), headers=auth)
                assert r.status_code == 422, (path, bad, r.text)
                assert r.json()["error"].startswith("incident_id:"), r.text
        r = client.get(f"/api/v1/incidents/{2**63 - 1}", headers=auth)
        assert r.status_code == 404 and "no incident" in r.json()["error"]
        r = client.get("/api/v1/incidents", params={"offset": 2**64}, headers=auth)
        assert r.status_code == 400 and r.json()["error"].startswith("offset")
        r = client.get("/api/v1/report", params={"since": "99999999999d"}, headers=auth)
        assert r.status_code == 422 and r.json()["error"].startswith("since=")


# Policy documents: the default policy with parts replaced by anything YAML can hold.
_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
)
_YAMLISH = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)
_DEFAULT = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "runbooks" / "default_policy.yaml").read_text()
)


def _policy_documents() -> st.SearchStrategy[Any]:
    keys = sorted(_DEFAULT)

    def mutate(doc: dict[str, Any], key: str, value: Any) -> Any:
        return {**doc, key: value}

    replaced = st.builds(mutate, st.just(_DEFAULT), st.sampled_from(keys), _YAMLISH)
    return _YAMLISH | replaced | st.builds(lambda v: {"severity": v}, _YAMLISH)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(_policy_documents())
def test_any_policy_document_is_a_policy_or_a_policy_error_naming_a_field(doc: Any) -> None:
    try:
        parsed = parse_policy(doc, "policy.yaml")
    except PolicyError as err:
        message = str(err)
        assert message.startswith("policy.yaml: ") and len(message) > len("policy.yaml: ")
    else:
        assert isinstance(parsed, Policy)


_TIMES = st.sampled_from(
    ["2026-11-22T19:42:36Z", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
     "9999-12-31T23:59:59-01:00", "not a time", "", "2026-13-40T00:00:00Z"]
) | st.text(max_size=8) | st.integers() | st.none()  # fmt: skip
_LABELS = st.dictionaries(
    st.sampled_from(["model", "model_name", "deployment", "alertname", "x"]) | st.text(max_size=5),
    st.text(max_size=6) | st.integers() | st.none(),
    max_size=4,
)
_AM_ALERTS = st.fixed_dictionaries(
    {"status": st.sampled_from(["firing", "resolved", "x"]), "labels": _LABELS,
     "startsAt": _TIMES},
    optional={"endsAt": _TIMES, "annotations": _LABELS, "fingerprint": _SCALARS},
)  # fmt: skip
_WEBHOOKS = st.fixed_dictionaries(
    {"version": st.sampled_from(["4", "3", 4]), "status": st.sampled_from(["firing", "x"]),
     "alerts": st.lists(_AM_ALERTS | _YAMLISH, max_size=3)},
)  # fmt: skip


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_WEBHOOKS | _YAMLISH)
def test_any_json_is_alerts_or_an_alert_payload_error(body: Any) -> None:
    try:
        alerts = parse_alertmanager(body)
    except AlertPayloadError as err:
        assert str(err).strip()
    else:
        assert alerts and all(a.model for a in alerts)


@pytest.mark.parametrize(
    "starts", ["0001-01-01T00:00:00+01:00", "0001-01-01T00:30:00+00:45"]
)  # fmt: skip
def test_a_start_before_year_one_in_utc_is_a_payload_error(starts: str) -> None:
    alert = {"status": "firing", "labels": {"model": "m"}, "startsAt": starts}
    body = {"version": "4", "status": "firing", "alerts": [alert]}
    with pytest.raises(AlertPayloadError, match="startsAt"):
        parse_alertmanager(body)
