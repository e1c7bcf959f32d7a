"""Root-cause labels: a person's word on why an incident happened, kept beside the
incident so that the report can say how often the investigation's diagnosis was right.

An incident may be labelled more than once (a first guess, then the post-mortem's answer);
the latest label is its root cause. Each label leaves one timeline line.
"""

from __future__ import annotations

import math
from typing import Any

from sqlmodel import Session, col, select

from runbooks.escalation import NoSuchIncident
from runbooks.incidents import add_timeline
from runbooks.models import Incident, RootCauseLabel

# The diagnosis' causes (checks/diagnose.py: Cause), named in the messages as examples: a
# label may also be free text, for a cause no check knows.
KNOWN_CAUSES = (
    "bad_deployment",
    "feature_drift",
    "data_quality",
    "stale_features",
    "infrastructure",
    "concept_drift",
    "bias",
)
FIELDS = ("root_cause", "component", "confidence", "labeled_by", "comment")


class LabelInputError(ValueError):
    """A label the store refuses; the message names the field and the fix."""


def _text(body: dict[str, Any], name: str, required: bool, example: str) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        need = "is required" if required else "must be a string"
        raise LabelInputError(f"{name} {need}, e.g. {{{name!r}: {example!r}}}; got {value!r}")
    return value.strip()


def parse_label(body: Any) -> dict[str, Any]:
    """The fields of a label from a request body, or LabelInputError naming the field."""
    if not isinstance(body, dict):
        raise LabelInputError(
            'body must be an object like {"root_cause": "feature_drift", "labeled_by": '
            f'"alice"}}, got {body!r}'
        )
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise LabelInputError(f"unknown fields {unknown}; a label takes {list(FIELDS)}")
    confidence = body.get("confidence", 1.0)
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, int | float)
        or not math.isfinite(confidence)
        or not 0 <= confidence <= 1
    ):
        raise LabelInputError(
            f"confidence must be a number between 0 and 1 (0.8: fairly sure), got {confidence!r}"
        )
    causes = ", ".join(KNOWN_CAUSES)
    return {
        "root_cause": _text(body, "root_cause", True, f"feature_drift (one of {causes}, or text)"),
        "component": _text(body, "component", False, "feature pipeline"),
        "confidence": float(confidence),
        "labeled_by": _text(body, "labeled_by", True, "alice"),
        "comment": _text(body, "comment", False, "upstream schema change"),
    }


def add_label(
    session: Session,
    incident_id: int,
    root_cause: str,
    labeled_by: str,
    component: str = "",
    confidence: float = 1.0,
    comment: str = "",
) -> RootCauseLabel:
    """Store one label (validated as `parse_label` does) and its timeline line."""
    fields = parse_label(
        {
            "root_cause": root_cause,
            "component": component,
            "confidence": confidence,
            "labeled_by": labeled_by,
            "comment": comment,
        }
    )
    if session.get(Incident, incident_id) is None:
        raise NoSuchIncident(f"no incident {incident_id}; list them at /api/v1/incidents")
    label = RootCauseLabel(incident_id=incident_id, **fields)
    session.add(label)
    where = f"{label.component}, " if label.component else ""
    add_timeline(
        session,
        incident_id,
        label.labeled_by,
        "root_cause",
        f"root cause labelled {label.root_cause} ({where}confidence {label.confidence:g}) "
        f"by {label.labeled_by}",
        data={"root_cause": label.root_cause, "component": label.component},
        at=label.at,
    )
    session.flush()
    return label


def labels_of(session: Session, incident_id: int) -> list[RootCauseLabel]:
    """The incident's labels, oldest first (the last is its root cause)."""
    if session.get(Incident, incident_id) is None:
        raise NoSuchIncident(f"no incident {incident_id}; list them at /api/v1/incidents")
    q = (
        select(RootCauseLabel)
        .where(RootCauseLabel.incident_id == incident_id)
        .order_by(col(RootCauseLabel.at), col(RootCauseLabel.id))
    )
    return list(session.exec(q).all())


def label_view(label: RootCauseLabel) -> dict[str, Any]:
    return label.model_dump(mode="json")
