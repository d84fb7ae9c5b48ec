"""`/metrics` of a real runtime, read by the official Prometheus Python
client's OpenMetrics parser (strict: it rejects malformed exposition, a
missing `# EOF`, counters without `_total`, bad label escaping …), after
calls made with the official Dapr SDK."""

from __future__ import annotations

import urllib.request

from dapr.clients.exceptions import DaprGrpcError
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import STATE_STORE


def _scrape(weft) -> tuple[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{weft.http_port}/metrics", timeout=10) as r:
        content_type = r.headers.get("Content-Type", "")
        text = r.read().decode("utf-8")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return content_type, families


def _value(families: dict, family: str, sample: str, **labels: str) -> float | None:
    if family not in families:
        return None
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_metrics_parse_as_openmetrics_and_count_known_calls(weft, client):
    _, before = _scrape(weft)
    base = _value(before, "weft_api_requests", "weft_api_requests_total",
                  transport="grpc", method="SaveState", code="OK") or 0
    for i in range(3):
        client.save_state(STATE_STORE, f"metrics-{i}", "v")
    try:
        client.get_state("no-such-store", "k")
    except DaprGrpcError:
        pass

    content_type, families = _scrape(weft)
    assert content_type.startswith("application/openmetrics-text"), content_type
    assert families["weft_api_requests"].type == "counter"
    assert _value(families, "weft_api_requests", "weft_api_requests_total",
                  transport="grpc", method="SaveState", code="OK") == base + 3
    errors = [s for s in families["weft_api_requests"].samples
              if s.labels.get("method") == "GetState" and s.labels.get("code") != "OK"]
    assert errors and errors[0].value >= 1, families["weft_api_requests"].samples
    hist = families["weft_api_request_duration_seconds"]
    assert hist.type == "histogram"
    count = _value(families, "weft_api_request_duration_seconds",
                   "weft_api_request_duration_seconds_count", transport="grpc", method="SaveState")
    assert count is not None and count >= 3
    ops = _value(families, "weft_component_operations", "weft_component_operations_total",
                 component=STATE_STORE, operation="set")
    assert ops is not None and ops >= 3
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert "weft_shm_sessions" in families
