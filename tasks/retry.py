"""What a task may retry: transient faults (connection errors, 429, 5xx), never client errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

BACKOFF = [1.0, 2.0, 4.0]


def retry_when(is_transient: Callable[[BaseException], bool]) -> Callable[..., bool]:
    """A Prefect `retry_condition_fn` that retries only the faults `is_transient` names."""

    def condition(_task: Any, _task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except BaseException as exc:  # noqa: BLE001  we only classify it
            return is_transient(exc)
        return False

    return condition


def transient_http(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code == 429 or code >= 500
    return False


retry_transient_http = retry_when(transient_http)
