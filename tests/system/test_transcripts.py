"""The transcript loader rebuilds requests that look like what the client sent."""

from __future__ import annotations

import json
import re

import pytest

from protocol_spec import transcripts
from protocol_spec.transcripts import Exchange, filler, load, names

REPLAYED = [
    "cli/s04_apikeyhelper",
    "gateway-fake/g3_login_interactive",
    "cli/s01_authtoken_json",
    "cli/s02_authtoken_streamjson",
    "cli/t_tool",
    "cli/s03_apikey",
    "cli/ctx_cmd",
    "cli/s07_model_my-gw-alias",
    "cli/x_custom_headers",
    "gateway-fake/g4_p_signed_in",
    "gateway-real/client_wire",
    "sdk/sdk_anthropic_stream",
    "sdk/sdk_anthropic_create",
]

# Recorded with full bodies (before this copy's elision of long strings); the
# others were compacted first, which loses the size of some strings.
FULL_RECORDINGS = {
    "cli/s01_authtoken_json",
    "cli/s02_authtoken_streamjson",
    "cli/s03_apikey",
    "cli/s04_apikeyhelper",
    "cli/t_tool",
    "gateway-fake/g3_login_interactive",
}

WHOLE = re.compile(r"<elided (\d+) chars sha256=[0-9a-f]+: .*…>", re.S)
CUT = re.compile(r"(.*)…<elided (\d+) chars, sha256=[0-9a-f]+>", re.S)


def _all_exchanges() -> list[Exchange]:
    return [exchange for name in names() for exchange in load(name)]


def _strings(value, path=""):
    """Every string leaf of a JSON value, with where it sits."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")


def _at(value, path):
    for step in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        value = value[step[0]] if step[0] else value[int(step[1])]
    return value


def test_required_transcripts_are_present():
    assert set(REPLAYED) <= set(names())
    counts = {name: len(load(name)) for name in ("cli/s01_authtoken_json", "cli/t_tool", "cli/ctx_cmd")}
    assert counts == {"cli/s01_authtoken_json": 1, "cli/t_tool": 2, "cli/ctx_cmd": 25}
    assert len(load("gateway-real/client_wire")) == 47
    assert load("cli/t_tool.jsonl") == load("cli/t_tool")


def test_unknown_name_says_what_exists():
    with pytest.raises(FileNotFoundError, match="cli/s01_authtoken_json"):
        load("cli/nope")


def test_fields_of_an_exchange():
    (exchange,) = load("cli/s01_authtoken_json")
    assert (exchange.method, exchange.path, exchange.query) == ("POST", "/v1/messages", "beta=true")
    assert exchange.target == "/v1/messages?beta=true"
    assert exchange.headers[0] == ("Accept", "application/json")
    assert exchange.header("user-agent") == "claude-cli/2.1.328 (external, sdk-cli)"
    assert exchange.header("Content-Length") == str(exchange.body_len)
    (discovery, _) = load("cli/s06_discovery")
    assert (discovery.method, discovery.target, discovery.request_body()) == (
        "GET",
        "/v1/models?limit=1000",
        b"",
    )
    wire = load("gateway-real/client_wire")
    assert wire[0].status == 200 and wire[0].response_headers


def test_bodies_without_elisions_are_byte_exact():
    exact = [e for e in _all_exchanges() if e.body_json is not None and not e.elided]
    assert len(exact) >= 10
    for exchange in exact:
        assert len(exchange.request_body()) == exchange.body_len, (exchange.transcript, exchange.n)


def test_sdk_create_body_is_the_recorded_json():
    (exchange,) = load("sdk/sdk_anthropic_create")
    body = exchange.request_body()
    assert json.loads(body) == exchange.body_json
    assert len(body) == exchange.body_len


@pytest.mark.parametrize("name", REPLAYED)
def test_replayed_bodies_parse_keep_structure_and_have_plausible_size(name):
    for exchange in load(name):
        body = exchange.request_body()
        if exchange.body_json is None:
            continue
        rebuilt = json.loads(body)
        assert body == exchange.request_body()  # deterministic
        _assert_same_shape(exchange.body_json, rebuilt)
        if not exchange.elided:
            assert len(body) == exchange.body_len
        elif name in FULL_RECORDINGS:
            # Only whole strings elided: what is missing is the escaping and
            # non-ASCII bytes of the originals, a small share.
            assert 0.95 * exchange.body_len <= len(body) <= exchange.body_len, (name, exchange.n)
        else:
            # Compacted recordings lost the size of doubly elided strings, so
            # only an upper bound holds (cut objects are estimated, hence 10%).
            assert len(body) <= exchange.body_len * 1.1, (name, exchange.n)


def _assert_same_shape(recorded, rebuilt, path=""):
    """Same keys in the same order and same values, apart from elided leaves."""
    if isinstance(recorded, dict):
        assert list(recorded) == list(rebuilt), path
        for key in recorded:
            _assert_same_shape(recorded[key], rebuilt[key], f"{path}.{key}")
    elif isinstance(recorded, list):
        assert len(recorded) == len(rebuilt), path
        for i, (a, b) in enumerate(zip(recorded, rebuilt, strict=True)):
            _assert_same_shape(a, b, f"{path}[{i}]")
    elif isinstance(recorded, str) and (WHOLE.fullmatch(recorded) or CUT.fullmatch(recorded)):
        return
    elif isinstance(recorded, str) and "<DEVICE_ID_64_HEX>" in recorded:
        assert len(rebuilt) == len(recorded) + 64 - len("<DEVICE_ID_64_HEX>"), path
    else:
        assert recorded == rebuilt, path


@pytest.mark.parametrize("name", REPLAYED)
def test_each_elided_string_becomes_ascii_filler_of_the_recorded_length(name):
    for exchange in load(name):
        if exchange.body_json is None:
            continue
        rebuilt = json.loads(exchange.request_body())
        for path, text in _strings(exchange.body_json):
            whole, cut = WHOLE.fullmatch(text), CUT.fullmatch(text)
            if whole:
                value = _at(rebuilt, path)
                assert isinstance(value, str) and value.isascii()
                assert len(value) == int(whole.group(1)), path
                assert json.dumps(value) == f'"{value}"'  # needs no escaping
            elif cut and cut.group(1).startswith('"'):
                value = _at(rebuilt, path)
                assert len(value) == len(cut.group(1)) + int(cut.group(2)) - 2, path
            elif cut and cut.group(1).startswith("{"):
                assert isinstance(_at(rebuilt, path), dict), path


def test_equal_originals_get_equal_filler():
    first, second = load("cli/t_tool")
    system_a = json.loads(first.request_body())["system"]
    system_b = json.loads(second.request_body())["system"]
    assert system_a == system_b


def test_replay_headers_keep_order_and_fill_elided_values():
    (exchange,) = load("cli/s01_authtoken_json")
    replay = exchange.request_headers()
    names_sent = [name for name, _ in replay]
    assert names_sent == [n for n, _ in exchange.headers if n.lower() not in transcripts.HOP_HEADERS]
    assert "Host" not in names_sent and "Content-Length" not in names_sent
    beta = dict(replay)["anthropic-beta"]
    assert len(beta) == 230
    assert beta.startswith("claude-code-20250219,interleaved-thinking-2025-05-14,")
    assert beta.isascii() and " " not in beta
    # Values that were not elided are untouched.
    assert dict(replay)["anthropic-version"] == "2023-06-01"
    assert len(exchange.request_headers(drop=frozenset())) == len(exchange.headers)


def test_filler_is_deterministic_and_exact():
    for length in (0, 1, 5, 17, 300, 10_000):
        text = filler(length, "abc123")
        assert len(text) == length and text.isascii()
        assert text == filler(length, "abc123")
    assert filler(40, "a") != filler(40, "b")


def test_form_bodies_fill_elisions_in_place():
    exchange = Exchange(
        transcript="inline",
        n=0,
        method="POST",
        path="/oauth/token",
        query="",
        headers=(),
        body_text="grant_type=x&code=<elided 200 chars sha256=0011: 'abc'…>&z=1",
    )
    body = exchange.request_body().decode()
    assert body.startswith("grant_type=x&code=") and body.endswith("&z=1")
    assert len(body) == len("grant_type=x&code=") + 200 + len("&z=1")
