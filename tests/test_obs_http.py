"""The observability endpoint on an ephemeral port: /metrics, /healthz, /readyz, bad ports."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from moderator.errors import ConfigError
from moderator.obs.health import Check
from moderator.obs.http import ObsServer, serving
from moderator.obs.metrics import METRICS
from moderator.obs.telemetry import Telemetry
from moderator.settings import HttpSettings, load_settings

Sample = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> dict[Sample, float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def samples(telemetry: Telemetry) -> dict[Sample, float]:
    return parse(telemetry.scrape().decode())


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.headers["Content-Type"], answer.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[Telemetry, int]]:
    telemetry = Telemetry()
    server = ObsServer(telemetry, "127.0.0.1", 0)
    yield telemetry, server.port
    server.close()


def test_metrics_are_prometheus_text_with_the_table_s_names(
    served: tuple[Telemetry, int],
) -> None:
    telemetry, port = served
    telemetry.metrics.add("moderator_events_total", 3, outcome="verdict")
    telemetry.metrics.record("moderator_stage_latency_seconds", 0.02, stage="fetch")
    telemetry.metrics.set("moderator_consumer_lag", 7, topic="uploads", partition="0")
    status, content_type, body = get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    found = parse(body)
    assert found[("moderator_events_total", (("outcome", "verdict"),))] == 3
    assert found[("moderator_consumer_lag", (("partition", "0"), ("topic", "uploads")))] == 7
    bucket = ("moderator_stage_latency_seconds_bucket", (("le", "0.025"), ("stage", "fetch")))
    assert found[bucket] == 1
    families = {f.name for f in text_string_to_metric_families(body)}
    known = {spec.name.removesuffix("_total") for spec in METRICS}
    assert families <= known  # nothing but the table: no target_info, no scope labels


def test_scrape_hooks_run_before_each_scrape_and_a_broken_one_costs_nothing(
    served: tuple[Telemetry, int],
) -> None:
    telemetry, port = served
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("boom")

    telemetry.on_scrape(broken)
    telemetry.on_scrape(lambda: calls.append(1))
    telemetry.on_scrape(lambda: telemetry.metrics.set("moderator_inflight", len(calls)))
    get(port, "/metrics")
    status, _, body = get(port, "/metrics")
    assert status == 200 and parse(body)[("moderator_inflight", ())] == 2


def test_healthz_answers_while_the_process_runs(served: tuple[Telemetry, int]) -> None:
    assert get(served[1], "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")


def test_healthz_is_503_while_a_loop_is_stuck(served: tuple[Telemetry, int]) -> None:
    telemetry, port = served
    began = {"at": time.monotonic()}
    telemetry.liveness.add("consume loop", lambda: began["at"], 10)
    assert get(port, "/healthz")[0] == 200
    began["at"] = time.monotonic() - 11
    status, _, body = get(port, "/healthz")
    assert status == 503
    assert body.startswith("consume loop: one turn for 11 s (limit 10 s)")


def test_readyz_is_503_naming_what_is_not_ready_then_200(served: tuple[Telemetry, int]) -> None:
    telemetry, port = served
    engine = {"ok": False}
    telemetry.readiness.expect("broker", "engine")
    telemetry.readiness.add("broker", lambda: Check(True, "answered 0.1 s ago"))
    telemetry.readiness.add(
        "engine", lambda: Check(engine["ok"], "warm" if engine["ok"] else "warming up")
    )
    status, content_type, body = get(port, "/readyz?verbose")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {
        "ready": False,
        "checks": {
            "broker": {"ok": True, "detail": "answered 0.1 s ago"},
            "engine": {"ok": False, "detail": "warming up"},
        },
    }
    engine["ok"] = True
    status, _, body = get(port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


def test_unknown_paths_are_404(served: tuple[Telemetry, int]) -> None:
    assert get(served[1], "/")[0] == 404


def test_a_port_in_use_is_one_config_error_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(ConfigError) as raised,
            serving(HttpSettings(host="127.0.0.1", port=port)),
        ):
            pass
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"http.port: cannot listen on 127.0.0.1:{port}: the port is in use")
    assert "MODERATOR_HTTP__PORT" in message and "0 to turn the endpoint off" in message


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.1"])  # not an address; not this machine
def test_a_host_that_is_not_this_machines_names_http_host(host: str) -> None:
    with pytest.raises(ConfigError) as raised, serving(HttpSettings(host=host, port=39401)):
        pass
    message = str(raised.value)
    assert message.startswith(f"http.host: cannot listen on {host}:39401: no such local address")
    assert "MODERATOR_HTTP__HOST" in message and "free port" not in message


def test_port_zero_serves_nothing_and_a_given_telemetry_is_left_open() -> None:
    telemetry = Telemetry()
    with serving(HttpSettings(port=0), telemetry) as current:
        assert current is telemetry
    telemetry.metrics.add("moderator_dlq_total", code="malformed_event")
    assert samples(telemetry)[("moderator_dlq_total", (("code", "malformed_event"),))] == 1


def test_http_settings_defaults_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODERATOR_HTTP__PORT", raising=False)  # the test session turns it off
    assert load_settings().http.port == 9400
    assert load_settings().http.host == "0.0.0.0"  # noqa: S104 - the documented default
    monkeypatch.setenv("MODERATOR_HTTP__PORT", "0")
    assert load_settings().http.port == 0
    for port in (-1, 65536):
        with pytest.raises(ConfigError, match=r"^configuration error: http\.port"):
            load_settings(overrides={"http.port": port})


def test_many_telemetries_live_side_by_side() -> None:
    first, second = Telemetry(), Telemetry()
    first.metrics.add("moderator_events_total", outcome="dlq")
    assert ("moderator_events_total", (("outcome", "dlq"),)) not in samples(second)


def test_the_server_header_is_the_name_alone(served: tuple[Telemetry, int]) -> None:
    _, port = served
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        assert answer.headers["Server"] == "moderator"


def test_a_client_that_hung_up_is_no_error_worth_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from moderator.obs.http import _Server

    server = _Server.__new__(_Server)  # handle_error reads nothing of the server's state
    for exc in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset")):
        try:
            raise exc
        except ConnectionError:
            server.handle_error(None, ("127.0.0.1", 1))
    assert capsys.readouterr().err == ""
