"""Triage enrichment: what changed around the model, who owns it, what an outage costs.

The triage runbook asks, before anyone acts: which version is serving and which came before
it, what was promoted or rolled out in the last days, who owns the model, who is on call and
what the business stands to lose. Every answer is optional: a source that is not configured
or does not answer becomes a gap line that says why, never an error that stops triage.

This module is the pure part: types, parsing of the registry's and Kubernetes' JSON, ordering,
the time window and the wording. The network calls come in through `Sources`, which
`tasks.enrichment` implements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

RECENT = timedelta(days=7)
DEFAULT_ALIASES = ("champion", "production")
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
BUSINESS_KEYS = ("revenue_per_hour", "users")


class SourceError(Exception):
    """A source did not answer usefully; the message is the gap line's reason."""


class Sources(Protocol):
    """The network behind enrichment. Each method raises SourceError with a readable reason."""

    def registry(self, url: str, model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The registered model and all its versions, as MLflow's REST API returns them."""
        ...

    def run_user(self, url: str, run_id: str) -> str | None:
        """Who started the run a version was registered from."""
        ...

    def rollout(self, namespace: str, deployment: str) -> tuple[dict[str, Any], list[dict]]:
        """The Deployment and every ReplicaSet in its namespace."""
        ...


@dataclass(frozen=True)
class ModelVersion:
    version: int
    aliases: tuple[str, ...] = ()
    stage: str | None = None
    status: str | None = None
    created: datetime | None = None
    updated: datetime | None = None
    # MLflow's open-source server leaves a version's user_id empty; the run's author fills it.
    user: str | None = None
    run_id: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class RegistryContext:
    url: str
    model: str
    current: ModelVersion | None
    # Why `current` was picked: "alias champion", "stage Production" or "highest version".
    current_basis: str
    previous: ModelVersion | None
    aliases: dict[str, int]
    # Versions registered or updated inside the window, latest change first.
    recent: list[ModelVersion]
    version_count: int


@dataclass(frozen=True)
class Revision:
    revision: int
    replica_set: str
    # A rollback reuses the old ReplicaSet under a new revision number, so this is when the
    # revision's pod template first rolled out, not necessarily when it last did.
    created: datetime | None
    images: tuple[str, ...]
    version: str | None
    change_cause: str | None
    replicas: int | None


@dataclass(frozen=True)
class RolloutHistory:
    namespace: str
    deployment: str
    current: int | None
    # Oldest first, as `kubectl rollout history` prints them.
    revisions: list[Revision]
    recent: list[Revision]


@dataclass
class Enrichment:
    model: str
    at: datetime
    window: timedelta
    registry: RegistryContext | None = None
    rollout: RolloutHistory | None = None
    owners: list[str] = field(default_factory=list)
    on_call: list[str] = field(default_factory=list)
    business: dict[str, Any] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def summary_lines(self) -> list[str]:
        """Short lines for the incident timeline, gaps last."""
        days = _window_words(self.window)
        lines: list[str] = []
        if self.registry is not None:
            lines += _registry_lines(self.registry, days)
        if self.rollout is not None:
            lines += _rollout_lines(self.rollout, days)
        if self.owners:
            lines.append(f"owners: {', '.join(self.owners)}")
        if self.on_call:
            lines.append(f"on-call: {', '.join(self.on_call)}")
        if self.business:
            lines.append(f"business: {_business_words(self.business)}")
        lines += [f"gap: {g}" for g in self.gaps]
        return lines


def enrich(
    model: str,
    *,
    sources: Sources,
    now: datetime,
    registry_url: str | None = None,
    registry_model: str | None = None,
    aliases: Sequence[str] = DEFAULT_ALIASES,
    namespace: str | None = None,
    deployment: str | None = None,
    version_label: str = "version",
    owners: Sequence[str] = (),
    on_call: Sequence[str] = (),
    business: Mapping[str, Any] | None = None,
    window: timedelta = RECENT,
) -> Enrichment:
    """Gather what is known about `model`; whatever is missing lands in `.gaps`, never raises."""
    now = _utc(now)
    out = Enrichment(model=model, at=now, window=window)
    if not registry_url:
        out.gaps.append(not_configured("registry", "no MLflow URL given"))
    else:
        name = registry_model or model
        try:
            out.registry = _registry(sources, registry_url, name, aliases, now, window, out.gaps)
        except Exception as exc:  # noqa: BLE001  a failed source is a gap, triage goes on
            out.gaps.append(failed("registry", exc))
    if not namespace or not deployment:
        out.gaps.append(not_configured("kubernetes", "no namespace and Deployment given"))
    else:
        try:
            dep, replica_sets = sources.rollout(namespace, deployment)
            out.rollout = rollout_history(dep, replica_sets, now, window, version_label)
        except Exception as exc:  # noqa: BLE001  a failed source is a gap, triage goes on
            out.gaps.append(failed("kubernetes", exc))
    out.owners = [o for o in owners if o]
    if not out.owners:
        out.gaps.append(not_configured("owners", f"none listed for {model} in the policy"))
    out.on_call = [o for o in on_call if o]
    if not out.on_call:
        out.gaps.append(not_configured("on-call", f"nobody listed for {model}"))
    out.business = dict(business or {})
    missing = [k for k in BUSINESS_KEYS if out.business.get(k) is None]
    if missing:
        out.gaps.append(not_configured("business context", f"{' and '.join(missing)} not given"))
    return out


def _registry(
    sources: Sources,
    url: str,
    name: str,
    aliases: Sequence[str],
    now: datetime,
    window: timedelta,
    gaps: list[str],
) -> RegistryContext:
    registered, versions = sources.registry(url, name)
    ctx = registry_context(url, name, registered, versions, aliases, now, window)
    # Only the two versions triage talks about are worth a run lookup each.
    filled = {}
    for mv in (ctx.current, ctx.previous):
        if mv is None or mv.user or not mv.run_id:
            continue
        try:
            filled[mv.version] = dataclasses.replace(mv, user=sources.run_user(url, mv.run_id))
        except Exception as exc:  # noqa: BLE001  the author is a detail, not the whole source
            gaps.append(failed(f"registry author of v{mv.version}", exc))
    if not filled:
        return ctx
    return dataclasses.replace(
        ctx,
        current=filled.get(ctx.current.version, ctx.current) if ctx.current else None,
        previous=filled.get(ctx.previous.version, ctx.previous) if ctx.previous else None,
        recent=[filled.get(mv.version, mv) for mv in ctx.recent],
    )


def not_configured(source: str, why: str) -> str:
    return f"{source}: not configured ({why})"


def failed(source: str, exc: BaseException) -> str:
    if isinstance(exc, SourceError):
        return f"{source}: {exc}"
    # Not a failure the source layer foresaw: say what it was so someone can fix the code.
    return f"{source}: unexpected {type(exc).__name__}: {exc}"


# --- MLflow model registry -------------------------------------------------------------


def model_version(data: Mapping[str, Any]) -> ModelVersion:
    """One entry of MLflow's `model_versions` (or a `model_version`) as a ModelVersion."""
    try:
        number = int(data["version"])
    except (KeyError, TypeError, ValueError):
        raise SourceError(f"a model version without a version number: {dict(data)!r}") from None
    stage = data.get("current_stage")
    return ModelVersion(
        version=number,
        aliases=tuple(data.get("aliases") or ()),
        # MLflow answers the string "None" for a version in no stage.
        stage=None if stage in (None, "", "None") else str(stage),
        status=data.get("status") or None,
        created=from_millis(data.get("creation_timestamp")),
        updated=from_millis(data.get("last_updated_timestamp")),
        user=data.get("user_id") or None,
        run_id=data.get("run_id") or None,
        source=data.get("source") or None,
    )


def registry_context(
    url: str,
    model: str,
    registered: Mapping[str, Any],
    versions: Sequence[Mapping[str, Any]],
    aliases: Sequence[str] = DEFAULT_ALIASES,
    now: datetime | None = None,
    window: timedelta = RECENT,
) -> RegistryContext:
    """Which version serves, which came before, what changed in the window.

    Current: the version behind the first of `aliases` that exists, else the version in a
    stage of that name (MLflow 2's stages), else the highest ready version. Previous: the
    highest ready version below the current one. MLflow keeps no history of where an alias pointed,
    so the version number order is the only "before" it can tell.
    """
    found = sorted((model_version(v) for v in versions), key=lambda mv: mv.version)
    by_number = {mv.version: mv for mv in found}
    holders = _alias_map(registered, found)
    current, basis = None, "highest version"
    for alias in aliases:
        if alias in holders and holders[alias] in by_number:
            current, basis = by_number[holders[alias]], f"alias {alias}"
            break
    if current is None:
        wanted = {a.lower() for a in aliases}
        staged = [mv for mv in found if mv.stage and mv.stage.lower() in wanted]
        if staged:
            current = staged[-1]
            basis = f"stage {current.stage}"
    if current is None and found:
        # A failed or pending registration never served, so it is not "current" either.
        ready = [mv for mv in found if mv.status in (None, "READY")]
        current = (ready or found)[-1]
    previous = None
    if current is not None:
        earlier = [
            mv for mv in found if mv.version < current.version and mv.status in (None, "READY")
        ]
        previous = earlier[-1] if earlier else None
    recent: list[ModelVersion] = []
    if now is not None:
        recent = [mv for mv in found if within(_last_change(mv), now, window)]
        recent.sort(key=lambda mv: (_last_change(mv) or _EPOCH, mv.version), reverse=True)
    return RegistryContext(
        url=url,
        model=model,
        current=current,
        current_basis=basis if current else "no versions",
        previous=previous,
        aliases=holders,
        recent=recent,
        version_count=len(found),
    )


def _alias_map(registered: Mapping[str, Any], versions: Sequence[ModelVersion]) -> dict[str, int]:
    # The registered model lists its aliases; versions list theirs too, which covers a
    # registry that only fills one of the two.
    out: dict[str, int] = {}
    for mv in versions:
        for alias in mv.aliases:
            out[alias] = mv.version
    for entry in registered.get("aliases") or ():
        try:
            out[str(entry["alias"])] = int(entry["version"])
        except (KeyError, TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def _last_change(mv: ModelVersion) -> datetime | None:
    stamps = [t for t in (mv.created, mv.updated) if t is not None]
    return max(stamps) if stamps else None


# --- Kubernetes rollout history ----------------------------------------------------------


def owned_by(replica_set: Mapping[str, Any], deployment: Mapping[str, Any]) -> bool:
    """Whether the Deployment controls this ReplicaSet, by owner reference as kubectl decides.

    The uid decides when both sides have one, so a ReplicaSet left over from an earlier
    Deployment of the same name does not count; without uids the name does.
    """
    meta = deployment.get("metadata") or {}
    name, uid = meta.get("name"), meta.get("uid")
    for ref in (replica_set.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") != "Deployment":
            continue
        if uid and ref.get("uid"):
            if ref["uid"] == uid:
                return True
        elif ref.get("name") == name:
            return True
    return False


def revision_of(replica_set: Mapping[str, Any], version_label: str = "version") -> Revision | None:
    """A ReplicaSet as one line of rollout history, or None without a revision annotation."""
    meta = replica_set.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    try:
        number = int(annotations[REVISION_ANNOTATION])
    except (KeyError, TypeError, ValueError):
        return None
    spec = replica_set.get("spec") or {}
    template = spec.get("template") or {}
    pod_spec = template.get("spec") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    labels = {**(meta.get("labels") or {}), **pod_labels}
    containers = [*(pod_spec.get("initContainers") or ()), *(pod_spec.get("containers") or ())]
    replicas = (replica_set.get("status") or {}).get("replicas", spec.get("replicas"))
    return Revision(
        revision=number,
        replica_set=str(meta.get("name") or ""),
        created=from_iso(meta.get("creationTimestamp")),
        images=tuple(c["image"] for c in containers if c.get("image")),
        version=labels.get(version_label),
        change_cause=annotations.get(CHANGE_CAUSE_ANNOTATION),
        replicas=int(replicas) if replicas is not None else None,
    )


def rollout_history(
    deployment: Mapping[str, Any],
    replica_sets: Sequence[Mapping[str, Any]],
    now: datetime | None = None,
    window: timedelta = RECENT,
    version_label: str = "version",
) -> RolloutHistory:
    meta = deployment.get("metadata") or {}
    revisions = [
        rev
        for rs in replica_sets
        if owned_by(rs, deployment) and (rev := revision_of(rs, version_label)) is not None
    ]
    revisions.sort(key=lambda r: r.revision)
    try:
        current: int | None = int((meta.get("annotations") or {})[REVISION_ANNOTATION])
    except (KeyError, TypeError, ValueError):
        current = revisions[-1].revision if revisions else None
    recent = []
    if now is not None:
        recent = [r for r in revisions if within(r.created, now, window)]
        recent.sort(key=lambda r: r.revision, reverse=True)
    return RolloutHistory(
        namespace=str(meta.get("namespace") or ""),
        deployment=str(meta.get("name") or ""),
        current=current,
        revisions=revisions,
        recent=recent,
    )


# --- Time --------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def within(when: datetime | None, now: datetime, window: timedelta = RECENT) -> bool:
    """Inside [now - window, now]; a stamp a little in the future (clock skew) counts too."""
    if when is None:
        return False
    return _utc(when) >= _utc(now) - window


def from_millis(value: Any) -> datetime | None:
    """MLflow's timestamps: milliseconds since the epoch, as a number or a string."""
    try:
        millis = int(value)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(millis / 1000, UTC) if millis > 0 else None


def from_iso(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _utc(value)
    if not value:
        return None
    try:
        return _utc(datetime.fromisoformat(str(value)))
    except ValueError:
        return None


def _utc(dt: datetime) -> datetime:
    # A naive time from a caller is taken as UTC rather than the host's zone.
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# --- Wording -----------------------------------------------------------------------------


def _when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "at an unknown time"


def _window_words(window: timedelta) -> str:
    days = window / timedelta(days=1)
    if days == int(days):
        return f"{int(days)} day" + ("" if days == 1 else "s")
    return f"{window.total_seconds() / 3600:g} h"


def _version_words(mv: ModelVersion, basis: str = "") -> str:
    basis = f" ({basis})" if basis else ""
    by = f" by {mv.user}" if mv.user else ""
    updated = f", updated {_when(mv.updated)}" if mv.updated and mv.updated != mv.created else ""
    return f"v{mv.version}{basis}, registered {_when(mv.created)}{by}{updated}"


def _change_word(mv: ModelVersion) -> str:
    return "registered" if mv.updated is None or mv.updated == mv.created else "updated"


def _registry_lines(ctx: RegistryContext, days: str) -> list[str]:
    if ctx.current is None:
        return [f"registry: {ctx.model} has no versions"]
    line = f"registry: {ctx.model} {_version_words(ctx.current, ctx.current_basis)}"
    line += f"; previous {_version_words(ctx.previous)}" if ctx.previous else "; no previous"
    lines = [line]
    if ctx.recent:
        changes = "; ".join(
            f"v{mv.version} {_change_word(mv)} {_when(_last_change(mv))}" for mv in ctx.recent
        )
        lines.append(f"registry: {len(ctx.recent)} change(s) in the last {days}: {changes}")
    else:
        lines.append(f"registry: no versions registered or updated in the last {days}")
    return lines


def _revision_words(rev: Revision) -> str:
    version = f", version {rev.version}" if rev.version else ""
    images = ", ".join(rev.images) or "no images"
    cause = f", {rev.change_cause!r}" if rev.change_cause else ""
    return f"revision {rev.revision} ({images}{version}, since {_when(rev.created)}{cause})"


def _rollout_lines(h: RolloutHistory, days: str) -> list[str]:
    where = f"kubernetes: {h.namespace}/{h.deployment}"
    if not h.revisions:
        return [f"{where}: no ReplicaSets with a revision found"]
    by_number = {r.revision: r for r in h.revisions}
    cur = by_number.get(h.current) if h.current is not None else None
    earlier = [r for r in h.revisions if cur is None or r.revision < cur.revision]
    line = f"{where} at " + (_revision_words(cur) if cur else f"revision {h.current}")
    line += f"; previous {_revision_words(earlier[-1])}" if earlier else "; no previous revision"
    lines = [line]
    if h.recent:
        changes = "; ".join(f"revision {r.revision} at {_when(r.created)}" for r in h.recent)
        lines.append(f"kubernetes: {len(h.recent)} rollout(s) in the last {days}: {changes}")
    else:
        lines.append(f"kubernetes: no rollouts in the last {days}")
    return lines


def _business_words(business: Mapping[str, Any]) -> str:
    parts = []
    for key, value in business.items():
        if key == "revenue_per_hour" and isinstance(value, int | float):
            parts.append(f"revenue {value:,.0f}/h at risk")
        elif key == "users" and isinstance(value, int | float):
            parts.append(f"{value:,.0f} users")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
