"""`runbooks sandbox`: the whole stack on this machine, to try the runbooks by hand or to
run a test harness against.

It starts the sandbox model platform (every model with v1, good and serving, and v2, a bad
release to deploy), a Prefect server on SQLite and `runbooks serve` (the intake, the served
deployments and their automations). When all of them answer it prints one JSON line on
stdout: the URLs, the intake's bearer token and the environment that points the `runbooks`
command line at this stack. Everything else goes to stderr or to the logs in its home
directory. It runs until SIGINT or SIGTERM, then stops what it started.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from deployments.local import (
    ManagedProcess,
    free_port,
    prefect_env,
    start_prefect_server,
    start_runbooks_serve,
)
from runbooks.policy import DEFAULT_POLICY, PolicyError, load_policy, parse_policy
from sandbox.platform import SandboxPlatform

DEFAULT_MODELS: tuple[str, ...] = ("fraud-v3",)
F1_THRESHOLD = 0.70
# A model name ends up in the platform's URL paths, Prometheus labels and Prefect resource
# ids (ml.model.<name>): no slashes, spaces or quotes.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Of the caller's PREFECT_* and RUNBOOKS_* settings only these reach the stack: the others
# would point it at another one (the caller's Prefect server or database). The channels'
# settings do pass: set, they are how a harness points the sandbox's messages at its own
# local Slack, SMTP or PagerDuty servers (or a person at a test workspace); unset, the
# sandbox tells nobody.
NOTIFICATION_SETTINGS: tuple[str, ...] = tuple(
    f"RUNBOOKS_{name}"
    for name in (
        "SLACK_TOKEN",
        "SLACK_BASE_URL",
        "SLACK_SIGNING_SECRET",
        "SLACK_APP_TOKEN",
        "PAGERDUTY_ROUTING_KEY",
        "PAGERDUTY_URL",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_FROM",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_STARTTLS",
        "WEBHOOK_SECRET",
    )
)
PASS_THROUGH: tuple[str, ...] = (
    "PREFECT_LOGGING_LEVEL",
    "RUNBOOKS_WORKDIR",
    "RUNBOOKS_KUBE_HOST",
    "RUNBOOKS_KUBE_CONTEXT",
    *NOTIFICATION_SETTINGS,
)


class SandboxUsageError(ValueError):
    """Bad input to `runbooks sandbox`; the message names the option and the fix."""


@dataclass(frozen=True)
class Stack:
    """What the JSON line announces: where each part answers and how to reach it."""

    prefect_url: str
    intake_url: str
    token: str
    platform_url: str
    models: list[str]
    env: dict[str, str]


def say(msg: str) -> None:
    print(f"[sandbox {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_models(text: str) -> list[str]:
    """`--models a,b,c` as names, in order, each once."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise SandboxUsageError(
            "--models names no model; give one or more, comma separated, "
            "e.g. --models fraud-v3,churn"
        )
    for name in names:
        if not MODEL_NAME.fullmatch(name):
            raise SandboxUsageError(
                f"--models: {name!r} is not a model name the sandbox can serve; use up to 63 "
                "letters, digits, '.', '_' or '-', starting with a letter or digit, "
                "e.g. --models fraud-v3,churn"
            )
    return list(dict.fromkeys(names))


def read_policy(path: Path | None) -> dict[str, Any]:
    """The user's policy file, validated, as a mapping; the packaged default without one."""
    try:
        load_policy(path)
    except PolicyError as err:
        raise SandboxUsageError(
            f"--policy: {err}; give a readable, valid policy YAML (`runbooks check-config "
            "FILE` checks one) or leave --policy out to use the default policy"
        ) from None
    return yaml.safe_load((path or DEFAULT_POLICY).read_text())


def served_models(policy: dict[str, Any], models: Sequence[str]) -> list[str]:
    """What the sandbox platform serves: the models asked for, then those the policy names
    without a target (the sandbox becomes their target)."""
    untargeted = [
        str(name) for name, block in (policy.get("models") or {}).items() if not block.get("target")
    ]
    for name in untargeted:
        if not MODEL_NAME.fullmatch(name):
            raise SandboxUsageError(
                f"--policy: models.{name} has no target, so the sandbox would serve it, but "
                f"{name!r} is not a name it can serve; give that model a target or a name of "
                "letters, digits, '.', '_' or '-'"
            )
    return list(dict.fromkeys([*models, *untargeted]))


def sandbox_policy(
    policy: dict[str, Any], models: Sequence[str], platform_url: str, owners: Sequence[str]
) -> dict[str, Any]:
    """`policy` with each of `models` contained on the sandbox platform at `platform_url`.

    A model the policy names keeps its block; if the block names no target it gets the
    platform as target and the platform's /metrics to verify recovery (the policy's own
    recovery keys win). A model the policy does not name gets `owners` and those defaults.
    `runbooks demo` writes its one-model policy the same way.
    """
    out = copy.deepcopy(policy)
    blocks: dict[str, Any] = out.get("models") or {}
    # The sandbox's metrics show a rollback within ~1 s, so verification need not read every
    # 30 s for 10 minutes as it does against a real platform.
    recovery = {
        "metric": "model_f1_score",
        "above": F1_THRESHOLD,
        "url": f"{platform_url}/metrics",
        "interval_seconds": 0.5,
        "timeout_seconds": 60,
    }
    for name in models:
        block = blocks.setdefault(name, {"owners": list(owners)})
        if block.get("target"):
            continue
        block["target"] = {"kind": "platform", "url": platform_url}
        block["recovery"] = {**recovery, **(block.get("recovery") or {})}
    out["models"] = blocks
    return out


def cli_env(home: Path, prefect_port: int, intake_url: str, token: str) -> dict[str, str]:
    """The variables that point the `runbooks` command line (runbooks/settings.py and
    deployments/cli.py read them) at this stack."""
    return {
        "RUNBOOKS_HOME": str(home),
        "RUNBOOKS_POLICY_FILE": str(home / "policy.yaml"),
        "RUNBOOKS_DATABASE_URL": f"sqlite:///{home / 'incidents.db'}",
        "RUNBOOKS_INTAKE_URL": intake_url,
        "RUNBOOKS_INTAKE_TOKEN": token,
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
    }


def stack_env(cli: dict[str, str], home: Path, prefect_port: int) -> dict[str, str]:
    """The environment of the Prefect server and `runbooks serve`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "RUNBOOKS_")) or k in PASS_THROUGH
    }
    env = prefect_env(home, prefect_port, base)
    env.update(cli)
    # The scheduled monitoring sweep has no metric tables here; give it an empty directory
    # rather than let it fail every run.
    env["RUNBOOKS_SWEEP_SOURCE"] = str(home / "sweep")
    return env


def prepare_home(home: Path | None) -> Path:
    if home is None:
        return Path(tempfile.mkdtemp(prefix="runbooks-sandbox-"))
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SandboxUsageError(
            f"--home: cannot use {home}: {err.strerror}; give a directory you can write to, "
            "or leave --home out for a temporary one"
        ) from None
    return home


class Sandbox:
    """The stack's parts, started in order and stopped by PID in reverse order."""

    def __init__(self, home: Path, policy: dict[str, Any], models: list[str]) -> None:
        self.home = home
        self.policy = policy
        self.models = models
        self.stopping = threading.Event()
        self.platform: SandboxPlatform | None = None
        self.processes: list[ManagedProcess] = []

    def start(self) -> Stack | None:
        """Start every part; None when a stop was asked for before all of them answered."""
        self.platform = SandboxPlatform(models=self.models, serve="v1")
        platform_url = self.platform.start()
        say(f"sandbox platform at {platform_url}: {', '.join(self.models)} serve v1 (v2 is bad)")
        prefect_port, intake_port = free_port(), free_port()
        intake_url = f"http://127.0.0.1:{intake_port}"
        cli = cli_env(self.home, prefect_port, intake_url, secrets.token_urlsafe(24))
        env = stack_env(cli, self.home, prefect_port)
        (self.home / "sweep").mkdir(exist_ok=True)
        policy = sandbox_policy(
            self.policy, self.models, platform_url, [os.environ.get("USER", "cli")]
        )
        parse_policy(policy, "the sandbox's policy")
        Path(cli["RUNBOOKS_POLICY_FILE"]).write_text(yaml.safe_dump(policy, sort_keys=False))
        if self.stopping.is_set():
            return None
        say(f"starting a Prefect server on SQLite; log {self.home / 'prefect.log'}")
        self.processes.append(start_prefect_server(self.home, env, prefect_port))
        if self.stopping.is_set():
            return None
        say(f"starting `runbooks serve`; log {self.home / 'serve.log'}")
        self.processes.append(start_runbooks_serve(self.home, env, intake_port))
        if self.stopping.is_set():
            return None
        return Stack(
            prefect_url=f"http://127.0.0.1:{prefect_port}",
            intake_url=intake_url,
            token=cli["RUNBOOKS_INTAKE_TOKEN"],
            platform_url=platform_url,
            models=self.models,
            env=cli,
        )

    def watch(self) -> int:
        """Wait for a stop (0), or for a part to exit on its own (1)."""
        while not self.stopping.wait(0.5):
            for p in self.processes:
                if p.proc.poll() is not None:
                    say(f"{p.name} exited with {p.proc.returncode}; see {p.log}:\n{p.tail()}")
                    return 1
        return 0

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        if self.platform is not None:
            self.platform.stop()


def announce_usage(stack: Stack) -> None:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env.items())
    model = stack.models[0]
    say(f"ready: Prefect UI {stack.prefect_url}, intake {stack.intake_url}")
    say(f"in another shell: export {exports}")
    say(
        f"break {model}: curl -X POST {stack.platform_url}/api/v1/ml/models/{model}/deploy "
        """-H 'Content-Type: application/json' -d '{"version": "v2"}'"""
    )
    say("Ctrl-C stops the stack")


def run_sandbox(
    models: str | None, policy_file: Path | None, home: Path | None, keep: bool = False
) -> int:
    """`runbooks sandbox`: 2 on bad input (nothing started), 0 after SIGINT or SIGTERM,
    1 when a part fails to start or dies."""
    try:
        asked = parse_models(models) if models is not None else list(DEFAULT_MODELS)
        policy = read_policy(policy_file)
        served = served_models(policy, asked)
        home_dir = prepare_home(home)
    except SandboxUsageError as err:
        print(f"runbooks sandbox: {err}", file=sys.stderr)
        return 2
    sandbox = Sandbox(home_dir, policy, served)

    # Setting a flag, not raising: a signal must never cut a stop short, nor leave a part
    # that a helper had started but not yet returned.
    def request_stop(signum: int, frame: FrameType | None) -> None:
        sandbox.stopping.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        say(f"working in {home_dir}")
        stack = sandbox.start()
        if stack is None:
            return 0
        print(json.dumps(asdict(stack)), flush=True)
        announce_usage(stack)
        return sandbox.watch()
    except Exception as exc:  # noqa: BLE001  reported, then everything started is stopped
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    finally:
        sandbox.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        if home is None and not keep:
            shutil.rmtree(home_dir, ignore_errors=True)
        kept = "" if home is None and not keep else f"; kept {home_dir}"
        say(f"stopped the Prefect server, `runbooks serve` and the sandbox platform{kept}")
