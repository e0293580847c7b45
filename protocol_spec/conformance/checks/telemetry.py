"""SPEC §21 telemetry relay (TEL-2, 3, 4, 6, 8), judged at the fake OTLP collector.

The fixtures give the gateway two ``telemetry.forward_to`` destinations, each a
sink of the fake collector (:mod:`protocol_spec.fakes.otlp_collector`):
``full`` takes metrics and logs, has a path under its base URL and two
headers (one expanded from the environment); ``defaults`` gives only a URL,
so it takes metrics alone. Nobody takes traces. ``listen.public_url`` is set,
so managed settings carry the telemetry environment (TEL-6). TEL-1 (the
ingest answer) is checked in :mod:`.replay`.

Every export a check sends carries a marker (a resource attribute) that makes
it unique, and what a sink received is matched by that marker, so a gateway
may deliver in any order (Anthropic's sends each export on its own). With the
fixtures' ``gatehouse:`` section, Gatehouse stamps the caller's identity on
every export (TEL-10, :mod:`.gatehouse_telemetry`), which changes its bytes:
then TEL-2's "unchanged" is judged on content, apart from the four identity
attributes stamping writes, in the same content type and encoding (a gateway
that relays the bytes as sent passes either way). A check waits for an export
it can count on to arrive after the ones it judges (a *sentinel*) instead of
sleeping, and leaves no export of its own pending, since the next check scripts
the same sinks.

What is not judged from outside: Anthropic's gateway's 30 s pause after five
failed deliveries (TEL-4) would cost a check half a minute and is that
gateway's own choice, not something a gateway owes; of TEL-8, the byte bound
and the dropping of the oldest (it would take 64 MiB of exports), the backoff's
figures and ``Retry-After`` (they are timings), and the flush at shutdown (the
suite does not stop the gateway). No check makes one destination fail five
times in a row, so Anthropic's gateway never pauses a destination the next
check needs; the outage check, which Anthropic's gateway is not expected to
pass (TEL-8 is Gatehouse's), runs last.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from protocol_spec.conformance import otlp
from protocol_spec.conformance.canonical import checksum
from protocol_spec.conformance.context import Ctx, header_value, obj
from protocol_spec.conformance.fixtures import (
    BASE_SETTINGS,
    COLLECTOR_HEADER,
    CONTRACTOR_RESOURCE_ATTRIBUTES,
    DEFAULTS_SINK,
    FULL_SINK,
    FULL_SINK_PATH,
    pushed_telemetry_env,
)
from protocol_spec.conformance.target import Answer
from protocol_spec.conformance.verdicts import Skip, check
from protocol_spec.fakes.otlp_collector import Answer as SinkAnswer
from protocol_spec.fakes.otlp_collector import RemoteCollector

# How long a destination may take to get an export on loopback, retries included (Gatehouse's
# first retries come within a second or two); generous, and only ever waited out on a failure.
# Read at each wait, so the tests of these checks can shorten it for relays that never retry.
ARRIVAL_S = 10.0
# How long a check looks for an export that should not arrive (or arrive again), once
# everything it did expect has arrived.
QUIET_S = 0.5
# A client answer that took this long waited on something (a stalled destination holds 8 s).
CLIENT_TIMEOUT_S = 5.0
REJECTIONS = (400, 413, 415, 422, 431)
OUTAGE_EXPORTS = 4
RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"


@dataclass(frozen=True)
class Export:
    """One export as the client sends it, and the marker that tells it apart."""

    signal: str
    body: bytes
    content_type: str
    marker: str
    content_encoding: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.content_encoding:
            headers["Content-Encoding"] = self.content_encoding
        return headers


def new_marker(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}"


def metrics(label: str, *, gzip: bool = False) -> Export:
    marker = new_marker(label)
    body = otlp.metrics_protobuf(marker)
    return Export("metrics", otlp.gzipped(body) if gzip else body, otlp.PROTOBUF, marker, "gzip" if gzip else None)


def logs(label: str) -> Export:
    marker = new_marker(label)
    return Export("logs", otlp.logs_json(marker), otlp.JSON, marker)


def collector(c: Ctx) -> RemoteCollector:
    if not c.state.collector_url:
        raise Skip("the fixtures run no fake collector (started with --no-telemetry)")
    return RemoteCollector(c.state.collector_url, c.suite.session)


async def send(c: Ctx, export: Export, token: str) -> Answer | None:
    """The gateway's answer to one export, or None when none came within :data:`CLIENT_TIMEOUT_S`."""
    try:
        return await c.t.post(f"/v1/{export.signal}", body=export.body, headers=export.headers, bearer=token, timeout_s=CLIENT_TIMEOUT_S)
    except TimeoutError:
        return None


def accepted(c: Ctx, rid: str, answer: Answer | None, what: str) -> bool:
    """Record that the client got 200 with an empty body, at once (an answer that never came fails)."""
    observed = f"no answer within {CLIENT_TIMEOUT_S:g} s" if answer is None else answer.summary()
    ok = answer is not None and answer.status == 200 and answer.body == b""
    return c.expect(rid, ok, what, observed=observed, expected="200, empty body")


def with_marker(records: list[dict[str, Any]], marker: str, status: int | None | str = "any") -> list[dict[str, Any]]:
    """The records of the export that carries ``marker`` (answered ``status``, unless "any")."""
    return [r for r in records if otlp.marker_of(r) == marker and (status == "any" or r["status"] == status)]


def unchanged(c: Ctx, export: Export, record: dict[str, Any]) -> bool:
    """Whether ``record`` holds ``export`` as sent: byte for byte, or, where the fixtures switch
    identity stamping on (TEL-10), the same content apart from the identity attributes."""
    if record["body"] == export.body:
        return True
    if not c.state.stamp_identity:
        return False
    sent = otlp.document(export.signal, export.body, export.content_type, export.content_encoding)
    got = otlp.record_document(record)
    return got is not None and otlp.without_identity(got) == otlp.without_identity(sent)


def signal_path(sink: str, signal: str) -> str:
    return (FULL_SINK_PATH if sink == FULL_SINK else "") + f"/v1/{signal}"


def _pairs(value: Any) -> set[str] | Any:
    """``k=v,k=v`` as a set of pairs (the order of resource attributes means nothing)."""
    return set(value.split(",")) if isinstance(value, str) else value


# -- TEL-6 -----------------------------------------------------------------------------


async def _settings_doc(c: Ctx, role: str) -> dict[str, Any]:
    answer = await c.t.get("/managed/settings", bearer=await c.bearer(role))
    if answer.status == 404:
        raise Skip("the target answers 404 for the fixture's policies: managed settings not offered")
    doc = obj(answer.json())
    if answer.status != 200 or not isinstance(doc.get("settings"), dict):
        c.expect("TEL-6", False, f"GET /managed/settings as {role}", observed=answer.summary(), expected="200 {uuid, checksum, settings}")
        return {}
    return doc


@check("telemetry: the environment managed settings push", "TEL-6")
async def pushed_environment(c: Ctx) -> None:
    """Both ``forward_to`` and ``public_url`` are set: every policy's env gains the exporter settings."""
    collector(c)
    wanted = pushed_telemetry_env(c.state.public_url)
    for role, own in (("normal", {}), ("contractor", {RESOURCE_ATTRIBUTES: CONTRACTOR_RESOURCE_ATTRIBUTES})):
        doc = await _settings_doc(c, role)
        if not doc:
            continue
        settings = doc["settings"]
        env = obj(settings.get("env"))
        for key, value in {**wanted, **own}.items():
            source = "the policy's own value wins" if key in own else "pushed"
            if key == RESOURCE_ATTRIBUTES:
                c.equal("TEL-6", _pairs(env.get(key)), _pairs(value), f"{role}: {key} ({source})")
            else:
                c.equal("TEL-6", env.get(key), value, f"{role}: {key} ({source})")
        if role == "normal":
            kept = {k: env.get(k) for k in BASE_SETTINGS["env"]}
            c.equal("TEL-6", kept, BASE_SETTINGS["env"], "the policy's own env is kept beside what is pushed")
        c.equal("TEL-6", doc.get("checksum"), checksum(settings), f"{role}: the checksum covers the settings with the pushed env")


# -- TEL-2 -----------------------------------------------------------------------------


@check("telemetry: what reaches each destination", "TEL-2")
async def relayed(c: Ctx) -> None:
    col = collector(c)
    token = await c.bearer()
    await col.reset()
    plain, json_logs, packed = metrics("relay-protobuf"), logs("relay-json"), metrics("relay-gzip", gzip=True)
    for export in (plain, json_logs, packed):
        accepted(c, "TEL-2", await send(c, export, token), f"a {export.signal} export ({export.content_type}, {export.content_encoding or 'identity'})")
    wanted = {FULL_SINK: [plain, json_logs, packed], DEFAULTS_SINK: [plain, packed]}
    got: dict[str, list[dict[str, Any]]] = {}
    for sink, exports in wanted.items():
        _, got[sink] = await col.wait(sink, len(exports), ARRIVAL_S, status=200)
    # Anything more (logs at the defaults sink, a copy) would arrive about as fast as the rest.
    for sink, exports in wanted.items():
        _, got[sink] = await col.wait(sink, len(exports) + 1, QUIET_S)
    how = "apart from the identity attributes stamped (TEL-10)" if c.state.stamp_identity else "byte for byte"
    for sink, exports in wanted.items():
        records = got[sink]
        for export in exports:
            what = f"{sink} destination: the {export.signal} export ({export.content_type}, {export.content_encoding or 'identity'})"
            arrived = with_marker(records, export.marker)
            if not c.expect("TEL-2", len(arrived) == 1, f"{what} arrives once", observed=len(arrived), expected=1):
                continue
            record = arrived[0]
            c.expect("TEL-2", unchanged(c, export, record), f"{what}: unchanged, {how}", observed=otlp.record_document(record),
                     expected=otlp.document(export.signal, export.body, export.content_type, export.content_encoding))
            c.equal("TEL-2", record["path"], signal_path(sink, export.signal), f"{what}: at <url>/v1/{export.signal}")
            c.equal("TEL-2", header_value(record["headers"], "content-type"), export.content_type, f"{what}: Content-Type unchanged")
            c.equal("TEL-2", header_value(record["headers"], "content-encoding"), export.content_encoding, f"{what}: Content-Encoding unchanged")
        extra = [f"{r['path']} ({len(r['body'])} bytes)" for r in records if otlp.marker_of(r) not in {e.marker for e in exports}]
        c.equal("TEL-2", extra, [], f"{sink} destination: only the signals it enables")
    for record in got[FULL_SINK]:
        c.equal("TEL-2", header_value(record["headers"], "authorization"), f"Bearer {c.state.collector_key}",
                "full destination: its Authorization header, ${VAR} expanded")
        c.equal("TEL-2", header_value(record["headers"], COLLECTOR_HEADER[0]), COLLECTOR_HEADER[1], "full destination: its own header")
    leaks = [f"{r['sink']}: {name}" for r in got[FULL_SINK] + got[DEFAULTS_SINK] for name, value in r["headers"] if token in value]
    c.equal("TEL-2", leaks, [], "the client's bearer never reaches a destination")


# -- TEL-3 -----------------------------------------------------------------------------


@check("telemetry: destinations fail on their own", "TEL-3")
async def independent(c: Ctx) -> None:
    col = collector(c)
    token = await c.bearer()
    await col.reset()
    unwanted = new_marker("unwanted")
    traces = Export("traces", otlp.traces_json(unwanted), otlp.JSON, unwanted)
    accepted(c, "TEL-3", await send(c, traces, token), "a traces export, which no destination takes")
    # 1. The full destination answers 503 once: the defaults one still gets the export.
    await col.script(FULL_SINK, SinkAnswer(status=503))
    failing = metrics("one-fails")
    accepted(c, "TEL-3", await send(c, failing, token), "an export while one destination answers 503")
    c.expect("TEL-3", await delivered(col, DEFAULTS_SINK, failing.marker), "the other destination delivers it")
    _, records = await col.wait(FULL_SINK, 1, ARRIVAL_S)
    c.expect("TEL-3", bool(with_marker(records, failing.marker, 503)), "the failing destination was tried (and answered 503)",
             observed=[r["status"] for r in records])
    # A gateway that retries (Gatehouse) does so before the next export; one that does not has dropped it.
    await _settled(c, col, token, "after-503")
    # 2. The full destination holds its answer: the client is answered, and the other delivers, meanwhile.
    before = len(await col.received(FULL_SINK))
    await col.script(FULL_SINK, SinkAnswer(stall=True))
    held = metrics("held")
    accepted(c, "TEL-3", await send(c, held, token), "an export while one destination holds its answer")
    _, records = await col.wait(FULL_SINK, before + 1, ARRIVAL_S)
    holding = with_marker(records, held.marker)
    c.expect("TEL-3", bool(holding) and holding[0]["status"] is None,
             "the client had its answer while the destination still held the export",
             observed=[r["status"] for r in holding] or "never sent", expected="held (no answer yet)")
    c.expect("TEL-3", await delivered(col, DEFAULTS_SINK, held.marker), "the other destination delivers while the first one stalls")
    await col.release(FULL_SINK)
    await _settled(c, col, token, "after-stall")
    seen = [r for r in await col.received() if r["path"].endswith("/v1/traces")]
    c.equal("TEL-3", [f"{r['sink']} {r['path']}" for r in seen], [], "a signal no destination takes goes nowhere")


async def delivered(col: RemoteCollector, sink: str, marker: str, timeout_s: float | None = None, ok: int = 200) -> bool:
    """Whether ``sink`` answers ``ok`` to the export carrying ``marker`` within ``timeout_s``
    (:data:`ARRIVAL_S` by default; waiting one delivery at a time)."""
    deadline = time.monotonic() + (ARRIVAL_S if timeout_s is None else timeout_s)
    while True:
        records = await col.received(sink)
        if with_marker(records, marker, ok):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        count = sum(r["status"] == ok for r in records)
        await col.wait(sink, count + 1, left, status=ok)


async def _settled(c: Ctx, col: RemoteCollector, token: str, label: str, rid: str = "TEL-3") -> list[dict[str, Any]]:
    """Send a sentinel and wait until the full destination delivered it: whatever it was
    still doing with earlier exports (a retry, a held answer) is over by then."""
    sentinel = metrics(label)
    accepted(c, rid, await send(c, sentinel, token), f"a later export ({label})")
    reached = await delivered(col, FULL_SINK, sentinel.marker)
    c.expect(rid, reached, f"a later export ({label}) reaches the full destination", observed="not delivered", expected="delivered")
    return await col.received(FULL_SINK)


# -- TEL-4 -----------------------------------------------------------------------------


@check("telemetry: a rejected export is not sent again", "TEL-4")
async def rejections(c: Ctx) -> None:
    col = collector(c)
    token = await c.bearer()
    await col.reset()
    await col.script(FULL_SINK, *(SinkAnswer(status=status) for status in REJECTIONS))
    rejected = [metrics(f"rejected-{status}") for status in REJECTIONS]
    for export in rejected:
        accepted(c, "TEL-4", await send(c, export, token), "an export the destination will reject")
    # Every rejected export has had its try before the sentinel is sent (so it is not the one rejected).
    await col.wait(FULL_SINK, len(REJECTIONS), ARRIVAL_S)
    records = await _settled(c, col, token, "after-rejections", "TEL-4")
    _, records = await col.wait(FULL_SINK, len(records) + 1, QUIET_S)
    for status, export in zip(REJECTIONS, rejected, strict=True):
        tries = with_marker(records, export.marker)
        c.equal("TEL-4", len(tries), 1, "a rejected export is sent once")
        c.expect("TEL-4", bool(tries) and tries[0]["status"] in REJECTIONS, "it was answered with a rejection",
                 observed=[t["status"] for t in tries], expected=f"one of {REJECTIONS} (the scripted order: {status} first)")


# -- TEL-8 -----------------------------------------------------------------------------


@check("telemetry: a destination down then back gets what was sent meanwhile", "TEL-8", timeout_s=40)
async def outage(c: Ctx) -> None:
    col = collector(c)
    token = await c.bearer()
    await col.reset()
    await col.down(DEFAULTS_SINK, 503)
    sent = [metrics(f"outage-{i}") for i in range(OUTAGE_EXPORTS)]
    for export in sent:
        accepted(c, "TEL-8", await send(c, export, token), "an export while a destination answers 503")
    # At least two failed tries (the first and a retry, or two exports) before the collector is back.
    failed, _ = await col.wait(DEFAULTS_SINK, 2, ARRIVAL_S, status=503)
    c.expect("TEL-8", failed, "the destination was tried while down", observed="fewer than 2 tries", expected="2 failed tries")
    await col.up(DEFAULTS_SINK)
    _, records = await col.wait(DEFAULTS_SINK, OUTAGE_EXPORTS, ARRIVAL_S, status=200)
    _, records = await col.wait(DEFAULTS_SINK, len(records) + 1, QUIET_S)
    markers = [e.marker for e in sent]
    arrived = [otlp.marker_of(r) for r in records if r["status"] == 200]
    order = [markers.index(m) if m in markers else -1 for m in arrived]
    c.equal("TEL-8", order, list(range(OUTAGE_EXPORTS)), "every export of the outage delivered once it is back, once each, in order")
    first = [r["status"] for r in with_marker(records, sent[0].marker)]
    c.expect("TEL-8", first[:1] == [503] and first[-1:] == [200], "the first export failed, was retried, and got through",
             observed=first, expected="503 first, 200 last")
