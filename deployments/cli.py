"""`runbooks`: the command line of ML Runbooks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _prefect_defaults() -> None:
    # A served run starts within a second of its event instead of ten.
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RUNBOOKS_WORKDIR", str(Path(__file__).resolve().parent.parent))


def build_intake(host: str, port: int):  # type: ignore[no-untyped-def]
    import uvicorn

    from deployments.intake import create_app
    from deployments.outbox import OutboxDeliverer, prefect_api
    from runbooks.policy import load_policy
    from runbooks.settings import get_settings

    settings = get_settings()
    db = settings.resolved_database_url()
    policy = load_policy(settings.policy_file)
    deliverer = None
    try:
        api, headers = prefect_api()
        deliverer = OutboxDeliverer(
            db, api, headers, settings.outbox_retry_seconds, settings.runbook_start_seconds
        )
    except RuntimeError as err:
        print(
            f"warning: {err}; alerts are stored and their events wait in the outbox",
            file=sys.stderr,
        )
    app = create_app(
        db,
        policy,
        token=settings.intake_token,
        alert_token=settings.intake_alert_token,
        read_token=settings.intake_read_token,
        act_token=settings.intake_act_token,
        rate_per_second=settings.intake_rate_per_second,
        rate_burst=settings.intake_rate_burst,
        max_body_bytes=settings.intake_max_body_bytes,
        writers=settings.intake_writers,
        max_pending=settings.intake_max_pending,
        deliverer=deliverer,
        slack_socket_mode=settings.slack_socket_mode or bool(settings.slack_app_token),
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    return uvicorn.Server(config)


def cmd_serve_intake(args: argparse.Namespace) -> int:
    server = build_intake(args.host, args.port)
    print(f"intake listening on http://{args.host}:{args.port}", flush=True)
    server.run()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.serve import serve_deployments

    server = build_intake(args.host, args.port)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, name="intake", daemon=True)
    thread.start()
    print(f"intake listening on http://{args.host}:{args.port}", flush=True)
    try:
        serve_deployments(
            limit=args.limit,
            preload=not args.no_preload,
            poll_seconds=args.poll_seconds,
            in_process=not args.processes,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from runbooks.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.file)
    except PolicyError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(f"Checking '{args.file}'  SUCCESS")
    print(f"Found:\n - {len(policy.severity)} severity rules\n - {len(policy.models)} models")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from tasks.approvals import ApprovalAnswerError, answer_approval

    try:
        answer = answer_approval(
            args.incident, args.by, not args.reject, args.comment, via="runbooks approve"
        )
    except ApprovalAnswerError as err:
        print(err, file=sys.stderr)
        return 1
    print(answer.say())
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    """Say "I have it": the escalation chain stops; PagerDuty and the incident's thread hear."""
    from runbooks.escalation import NoSuchIncident, acknowledge_incident
    from runbooks.incidents import IncidentStateError
    from runbooks.settings import get_settings
    from runbooks.store import session_scope

    try:
        with session_scope(get_settings().resolved_database_url()) as s:
            ack = acknowledge_incident(s, args.incident, args.by, "runbooks ack")
    except (NoSuchIncident, IncidentStateError) as err:
        print(err, file=sys.stderr)
        return 1
    told = ""
    if ack.first:
        from tasks.notifications import notify

        sent = notify.fn(args.incident, "acknowledged", data={"by": ack.by, "via": "runbooks ack"})
        channels = [d.channel for d in sent if d.status == "sent"]
        told = (
            f"; told {', '.join(channels)}"
            if channels
            else "; no channel took it (see its timeline)"
        )
    print(ack.line + told)
    return 0


def cmd_automation(args: argparse.Namespace) -> int:
    """The kill switch: while paused, no runbook acts on the model (or on any model)."""
    from runbooks import remediation
    from runbooks.settings import get_settings
    from runbooks.store import migrate, session_scope

    url = get_settings().resolved_database_url()
    migrate(url)
    with session_scope(url) as s:
        if args.action == "status":
            pauses = remediation.automation_pauses(s)
            if args.json:
                print(json.dumps([remediation.pause_view(p) for p in pauses]))
            elif not pauses:
                print("automation runs: no pause")
            for p in [] if args.json else pauses:
                scope = "every model" if p.scope == remediation.EVERY_MODEL else p.scope
                since = f"{p.paused_at:%Y-%m-%d %H:%M:%SZ}"
                print(f"paused for {scope} by {p.paused_by} since {since}: {p.comment}")
            return 0
        try:
            line = remediation.switch_automation(
                s, args.action == "pause", args.model, args.by, getattr(args, "comment", "")
            )
        except ValueError as err:
            print(f"--{err}", file=sys.stderr)
            return 2
        except remediation.NotPaused as err:
            print(err, file=sys.stderr)
            return 1
    print(line)
    return 0


def _intake(url: str):  # type: ignore[no-untyped-def]
    from tasks.intake_client import IntakeClient

    return IntakeClient(url, url_from="--url or RUNBOOKS_INTAKE_URL", timeout=10)


class _Told(Exception):
    """The command said what went wrong on stderr; main() exits with `code`."""

    def __init__(self, code: int) -> None:
        self.code = code


def _ask(call: Callable[[], Any]) -> Any:
    """`call`'s answer from the intake; an intake that does not answer or refuses is one
    line on stderr and exit 1."""
    from tasks.intake_client import IntakeRefused, IntakeUnreachable

    try:
        return call()
    except IntakeUnreachable as err:
        print(err, file=sys.stderr)
    except IntakeRefused as err:
        print(err.error, file=sys.stderr)
    raise _Told(1)


def cmd_silence(args: argparse.Namespace) -> int:
    """Like amtool silence: the intake's silences API from the shell."""
    from tasks.intake_client import IntakeRefused, IntakeUnreachable

    intake = _intake(args.url)
    try:
        if args.action == "add":
            body = {
                "matchers": args.matchers,
                "duration": args.duration,
                "createdBy": args.author,
                "comment": args.comment,
            }
            if args.start:
                body["startsAt"] = args.start
            data = intake.add_silence(body)
        elif args.action == "expire":
            data = intake.expire_silence(args.id, args.by)
        else:
            data = intake.list_silences(args.state)
    except IntakeUnreachable as err:
        print(
            f"cannot reach the intake at {args.url}: {err.reason}; set --url or RUNBOOKS_INTAKE_URL"
        )
        return 1
    except IntakeRefused as err:
        print(err.error, file=sys.stderr)
        return 1
    if args.action in ("query", "list"):
        for v in data["items"]:
            print(
                f"{v['id']}  {v['state']:<8} until {v['endsAt'][:16]}  "
                f"{' '.join(v['matchers'])}  {v['createdBy']}: {v['comment']}"
            )
    elif args.action == "add":
        print(data["id"])
    else:
        print(f"{data['id']} expired at {data['endsAt']}")
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    intake = _intake(args.url)
    change = "close" if args.close else "reopen" if args.reopen else None
    if change and (not args.id or not args.by):
        print(f"--{change} needs the incident's id and --by NAME", file=sys.stderr)
        return 2
    if change:
        done = _ask(lambda: intake.change_status(args.id, change, args.by, args.why or ""))
        last = done["incident"]["timeline"][-1]["message"] if done["changed"] else ""
        print(last or f"incident {args.id} is {done['incident']['status']}; nothing changed")
        return 0
    data = _ask(lambda: intake.get_incident(args.id) if args.id else intake.list_incidents())
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.id:
        from deployments.report import format_incident

        print(format_incident(data))
    else:
        for i in data["items"]:
            print(
                f"#{i['id']:<5} {i['status']:<13} {i['severity'] or '-':<3} {i['model']:<20} "
                f"{i['title']}"
            )
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    """A root cause for an incident, or its labels with --list, through the intake."""
    if not args.list and (not args.root_cause or not args.by):
        print("label needs --root-cause CAUSE and --by NAME (or --list)", file=sys.stderr)
        return 2
    intake = _intake(args.url)
    if args.list:
        data = _ask(lambda: intake.list_labels(args.id))
    else:
        body = {"root_cause": args.root_cause, "labeled_by": args.by}
        body |= {"component": args.component or "", "comment": args.comment or ""}
        if args.confidence is not None:
            body["confidence"] = args.confidence
        data = _ask(lambda: intake.add_label(args.id, body))
    for v in data["items"] if args.list else [data]:
        print(
            f"{v['at'][:19]}  {v['root_cause']}  {v['component'] or '-'}  "
            f"confidence {v['confidence']:g}  by {v['labeled_by']}"
            + (f": {v['comment']}" if v["comment"] else "")
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The incident report from the intake: a table per severity and per model, or JSON."""
    from runbooks.reporting import format_report

    data = _ask(lambda: _intake(args.url).report(args.since, args.until))
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


def cmd_postmortem(args: argparse.Namespace) -> int:
    """An incident's post-mortem from the intake (markdown, or --json); --accept closes it."""
    from runbooks.postmortem import PostMortem

    if args.accept and not args.by:
        print("--accept needs --by NAME: who accepts the post-mortem", file=sys.stderr)
        return 2
    intake = _intake(args.url)
    if args.accept:
        view = _ask(lambda: intake.accept_postmortem(args.id, args.by))
        print(f"incident {args.id} is {view['status']}: {view['timeline'][-1]['message']}")
        return 0
    data = _ask(lambda: intake.get_postmortem(args.id))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(PostMortem.model_validate(data).to_markdown(), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deployments.demo import run_demo

    return run_demo(args.scenario, keep=args.keep)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from deployments.sandbox import run_sandbox

    return run_sandbox(args.models, args.policy, args.home, keep=args.keep)


def cmd_diagnose(argv: list[str]) -> int:
    from checks.diagnose import main as diagnose_main

    return diagnose_main(argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runbooks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run whole incidents against a local sandbox")
    # The names are checked by deployments/demo.py, the one place that lists them, so that
    # building this parser does not import the demo for every other command.
    d.add_argument(
        "--scenario",
        default="bad-release",
        help="bad-release (default), gradual-rollback, rollback-makes-it-worse, "
        "approval-timeout, kill-switch, or all of them on one stack",
    )
    d.add_argument("--keep", action="store_true", help="keep the demo's temp dir")
    d.set_defaults(func=cmd_demo)

    sb = sub.add_parser(
        "sandbox",
        help="run a local stack (Prefect, runbooks serve, sandbox platform) until Ctrl-C; "
        "prints one JSON line with its URLs, token and CLI environment",
    )
    sb.add_argument(
        "--models",
        default=None,
        help="models on the sandbox platform, comma separated (default fraud-v3); each has "
        "v1 (good, serving) and v2 (a bad release)",
    )
    sb.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="your policy file; its models without a target are contained on the sandbox",
    )
    sb.add_argument("--home", type=Path, default=None, help="state and logs (default: temp dir)")
    sb.add_argument("--keep", action="store_true", help="keep the temp home dir at exit")
    sb.set_defaults(func=cmd_sandbox)

    for name, func, helptext in (
        ("serve", cmd_serve, "run the intake and serve the deployments (PREFECT_API_URL)"),
        ("serve-intake", cmd_serve_intake, "run the intake alone"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, default=8080)
        if name == "serve":
            s.add_argument("--limit", type=int, default=None, help="concurrent runs at most")
            s.add_argument(
                "--no-preload",
                action="store_true",
                help="start each run in a fresh interpreter, found by the poll alone "
                "(Prefect's default) instead of forking one that imported Prefect and the "
                "flows already, or a thread for deployments tagged in-process",
            )
            s.add_argument(
                "--processes",
                action="store_true",
                help="start deployments tagged in-process in forked processes too",
            )
            s.add_argument(
                "--poll-seconds",
                type=float,
                default=0.5,
                help="how often to ask Prefect for runs to start (default 0.5)",
            )
        s.set_defaults(func=func)

    c = sub.add_parser("check-config", help="validate a policy file")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    a = sub.add_parser("approve", help="approve (or --reject) an incident's pending action")
    a.add_argument("incident", type=int)
    a.add_argument("--reject", action="store_true")
    a.add_argument("--by", default=os.environ.get("USER", "cli"))
    a.add_argument("--comment", default="")
    a.set_defaults(func=cmd_approve)

    ack = sub.add_parser("ack", help="acknowledge an incident: its escalation chain stops")
    ack.add_argument("incident", type=int)
    ack.add_argument("--by", default=os.environ.get("USER", "cli"), help="who has it")
    ack.set_defaults(func=cmd_ack)

    au = sub.add_parser("automation", help="the kill switch: pause, resume or show automation")
    ausub = au.add_subparsers(dest="action", required=True)
    ap = ausub.add_parser("pause", help="no runbook acts until resume (evidence goes on)")
    ap.add_argument("--model", default=None, help="only this model (default: every model)")
    ap.add_argument("--comment", required=True, help="why; it goes on every skipped action")
    ap.add_argument("--by", default=os.environ.get("USER", "cli"))
    ar = ausub.add_parser("resume", help="let runbooks act again")
    ar.add_argument("--model", default=None, help="the model paused alone (default: global)")
    ar.add_argument("--by", default=os.environ.get("USER", "cli"))
    ast = ausub.add_parser("status", help="show the pauses in force")
    ast.add_argument("--json", action="store_true")
    au.set_defaults(func=cmd_automation)

    i = sub.add_parser("incidents", help="list incidents, or show one with its timeline")
    i.add_argument("id", nargs="?", type=int)
    i.add_argument("--url", default=os.environ.get("RUNBOOKS_INTAKE_URL", "http://127.0.0.1:8080"))
    i.add_argument("--json", action="store_true")
    change = i.add_mutually_exclusive_group()
    change.add_argument("--close", action="store_true", help="close a resolved incident")
    change.add_argument(
        "--reopen", action="store_true", help="reopen an ended one: triage decides again"
    )
    i.add_argument("--by", help="who closes or reopens it (with --close / --reopen)")
    i.add_argument("--why", help="why, for the timeline")
    i.set_defaults(func=cmd_incidents)

    lab = sub.add_parser("label", help="label an incident's root cause, or --list its labels")
    lab.add_argument("id", type=int)
    lab.add_argument("--root-cause", help="feature_drift, bad_deployment, ... or free text")
    lab.add_argument("--component", help='what broke: "feature pipeline", "model v3"')
    lab.add_argument("--confidence", type=float, help="0..1, how sure you are (default 1)")
    lab.add_argument("--by", help="who labels it")
    lab.add_argument("--comment")
    lab.add_argument("--list", action="store_true", help="show the incident's labels")
    lab.add_argument(
        "--url", default=os.environ.get("RUNBOOKS_INTAKE_URL", "http://127.0.0.1:8080")
    )
    lab.set_defaults(func=cmd_label)

    rep = sub.add_parser("report", help="MTTD/MTTA/MTTR, deadlines met, diagnosis vs labels")
    rep.add_argument("--since", default="30d", help="30d, 24h, 90m or an ISO datetime")
    rep.add_argument("--until", default=None, help="the same forms; default now")
    rep.add_argument("--json", action="store_true")
    rep.add_argument(
        "--url", default=os.environ.get("RUNBOOKS_INTAKE_URL", "http://127.0.0.1:8080")
    )
    rep.set_defaults(func=cmd_report)

    pm = sub.add_parser("postmortem", help="an incident's post-mortem; --accept closes it")
    pm.add_argument("id", type=int)
    shown = pm.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="the JSON (metrics under metrics)")
    shown.add_argument("--markdown", action="store_true", help="the markdown (the default)")
    shown.add_argument("--accept", action="store_true", help="accept it: the incident closes")
    pm.add_argument("--by", help="who accepts it (with --accept)")
    pm.add_argument("--url", default=os.environ.get("RUNBOOKS_INTAKE_URL", "http://127.0.0.1:8080"))
    pm.set_defaults(func=cmd_postmortem)

    intake_url = os.environ.get("RUNBOOKS_INTAKE_URL", "http://127.0.0.1:8080")
    sil = sub.add_parser("silence", help="add, query or expire silences (like amtool)")
    sil.add_argument("--url", default=intake_url)
    ssub = sil.add_subparsers(dest="action", required=True)
    sa = ssub.add_parser("add", help='silence alerts: runbooks silence add model="fraud-v3"')
    sa.add_argument("matchers", nargs="+", help='label matchers: model="x" alertname=~"F1.*"')
    sa.add_argument("--duration", default="1h", help="how long: 30m, 2h, 1d (default 1h)")
    sa.add_argument("--start", default=None, help="RFC 3339 start; default now")
    sa.add_argument("--author", default=os.environ.get("USER", "cli"))
    sa.add_argument("--comment", required=True, help="why; it goes on every muted alert")
    sq = ssub.add_parser("query", aliases=["list"], help="list silences")
    sq.add_argument("--state", default="active", help="active, pending, expired or all")
    se = ssub.add_parser("expire", help="end a silence now")
    se.add_argument("id")
    se.add_argument(
        "--by", default=os.environ.get("USER", ""), help="who expires it (default: $USER)"
    )
    sil.set_defaults(func=cmd_silence)

    sub.add_parser(
        "diagnose", help="rank root causes from evidence files (see --help)", add_help=False
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _prefect_defaults()
    if argv[:1] == ["diagnose"]:
        return cmd_diagnose(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except _Told as told:
        return told.code


if __name__ == "__main__":
    sys.exit(main())
