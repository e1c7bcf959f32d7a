"""Telling people on the real stack: Alertmanager -> intake -> triage -> Slack's first
message -> rollback -> resolved -> the resolution as a reply in the incident's thread
(the announce deployment, started by ml.incident.resolved). Slack is the fake Web API of
tests/fake_slack.py, over HTTP; the served flows only know RUNBOOKS_SLACK_BASE_URL."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import SLACK_TOKEN, make_model
from tests.helpers import wait_for
from tests.test_end_to_end import fire, incident_of

pytestmark = pytest.mark.slow


def test_first_message_then_resolution_in_its_thread(
    stack: dict, alertmanager: str, kube, slack
) -> None:  # type: ignore[no-untyped-def]
    core, apps = kube.clients()
    make_model(core, apps, "ml-prod", "recsys", serving="v2")
    labels = {
        "alertname": "ModelF1Low",
        "model": "recsys",
        "metric": "f1_score",
        "severity": "critical",
        "version": "v2",
    }
    fire(alertmanager, labels, {"value": "0.61", "baseline": "0.84"})
    view = wait_for(
        lambda: (v := incident_of(stack["intake"], "recsys")) and v["status"] == "resolved" and v,
        timeout=150,
        what="incident resolved",
    )
    channel = slack.channel_id("#ml-incidents")
    first = next(
        c
        for c in slack.posts()
        if c.body.get("channel") == "#ml-incidents"
        and "recsys" in c.body["text"]
        and "thread_ts" not in c.body
    )
    assert "P1" in first.body["text"]
    root = next(
        ts
        for ts, m in slack.messages[channel].items()
        if m.get("text") == first.body["text"] and not m.get("thread_ts")
    )

    def replies() -> list:
        return [c for c in slack.posts() if c.body.get("thread_ts") == root]

    later = wait_for(
        lambda: (r := replies()) and any("Resolved" in c.body["text"] for c in r) and r,
        timeout=60,
        what="the resolution as a reply in the incident's thread",
    )
    assert {c.body.get("channel") for c in later} <= {"#ml-incidents", channel}
    roots = [c for c in slack.posts() if "recsys" in c.body["text"] and "thread_ts" not in c.body]
    assert roots == [first], "one thread per incident and channel"

    def told() -> list[str]:
        v = httpx.get(f"{stack['intake']}/api/v1/incidents/{view['id']}").json()
        return [e["message"] for e in v["timeline"] if e["kind"] == "notified"]

    # The "sent" line follows the last channel's delivery: Slack may have the reply first.
    lines = wait_for(
        lambda: (
            (t := told()) and any(m.startswith("resolved sent to #ml-incidents") for m in t) and t
        ),
        timeout=30,
        what="the resolution's line on the timeline",
    )
    assert any(m.startswith("opened sent to #ml-incidents") for m in lines), lines
    view = httpx.get(f"{stack['intake']}/api/v1/incidents/{view['id']}").json()
    # The token went to Slack in the Authorization header and nowhere else.
    # (Other modules' in-process tests post to this fake with tokens of their own.)
    assert {c.token for c in [first, *later]} == {SLACK_TOKEN}
    for log in ("serve.log", "prefect.log"):
        assert SLACK_TOKEN not in (stack["home"] / log).read_text()
    assert SLACK_TOKEN not in str(view)
