"""The metrics source: a Prometheus server's query API, or a target's own /metrics page."""

from __future__ import annotations

import httpx
from prefect import task
from prometheus_client.parser import text_string_to_metric_families

from tasks.retry import BACKOFF, retry_transient_http

TIMEOUT = httpx.Timeout(5.0, connect=2.0)
_retry = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_transient_http,
}


@task(**_retry)
def scrape_metric(url: str, name: str, labels: dict[str, str]) -> float | None:
    """The value of the first sample of `name` whose labels include `labels`."""
    r = httpx.get(url, timeout=TIMEOUT)
    r.raise_for_status()
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@task(**_retry)
def query_prometheus(base_url: str, promql: str) -> float | None:
    """An instant query; the first series' value, or None when the result is empty."""
    r = httpx.get(f"{base_url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=TIMEOUT)
    r.raise_for_status()
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None
