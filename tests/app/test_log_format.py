"""CLAUDE_GATEWAY_LOG_FORMAT=json: audit events and operational lines on one stream, one parser."""

from __future__ import annotations

import json
import logging
import signal
import subprocess

import aiohttp
import pytest

from gateway import audit
from tests.system.test_process import (
    ENV,
    GATEHOUSE,
    free_port,
    spawn,
    token,
    wait_exit,
    wait_ready,
    write_config,
)


@pytest.fixture
def fmt():
    yield audit.set_format
    audit.set_format("text")


def lines(capfd) -> list[str]:
    return capfd.readouterr().err.splitlines()


def test_json_lines_carry_ts_and_level(fmt, capfd):
    capfd.readouterr()
    fmt("json")
    audit.log("warn", "two\nlines")
    audit.emit("inference", user="alice@example.com", status=200, model="claude-sonnet-4-6")
    op, event = (json.loads(line) for line in lines(capfd))
    assert list(op) == ["ts", "level", "msg"] and op["level"] == "warn" and op["msg"] == "two\nlines"
    assert op["ts"].endswith("Z") and "T" in op["ts"]
    # The audit event keeps its fields and gains the level.
    assert event == {"ts": event["ts"], "level": "info", "evt": "inference", "user": "alice@example.com",
                     "status": 200, "model": "claude-sonnet-4-6"}  # fmt: skip


def test_json_messages_are_capped_and_survive_lone_surrogates(fmt, capfd):
    capfd.readouterr()
    fmt("json")
    audit.log("error", "x" * (audit.MESSAGE_CHARS * 2) + "\udcff")
    (line,) = lines(capfd)
    doc = json.loads(line)
    assert doc["level"] == "error" and len(doc["msg"]) < audit.MESSAGE_CHARS + 100


def test_text_stays_as_it_was(capfd):
    capfd.readouterr()
    audit.log("info", "hello")
    audit.emit("config.load", path="/x")
    text, event = lines(capfd)
    assert text.startswith("[gatehouse] ") and text.endswith(" info hello")
    assert list(json.loads(event)) == ["ts", "evt", "path"]


def test_the_level_threshold_applies_to_json_too(fmt, capfd):
    capfd.readouterr()
    fmt("json")
    audit.log("debug", "quiet")
    assert lines(capfd) == []


def test_unknown_format_is_refused(fmt):
    with pytest.raises(ValueError):
        fmt("yaml")


def test_library_messages_join_the_stream(fmt, capfd):
    capfd.readouterr()
    fmt("json")
    audit.capture_library_logging()
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        logging.getLogger("aiohttp.server").info("below the root's WARNING: not written")
        (line,) = lines(capfd)
        doc = json.loads(line)
        assert doc["level"] == "error" and doc["msg"].startswith("aiohttp.server: Error handling request")
        assert "RuntimeError: boom" in doc["msg"]
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, audit._ToLog)]:
            root.removeHandler(handler)


def test_a_bad_format_stops_the_cli_before_anything_else(tmp_path):
    cfg = write_config(tmp_path, "postgres://gw@127.0.0.1:9/gw", "http://127.0.0.1:9", free_port())
    out = subprocess.run([*GATEHOUSE, "serve", "--config", str(cfg)], env={**ENV, "CLAUDE_GATEWAY_LOG_FORMAT": "yaml"},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == "gatehouse: CLAUDE_GATEWAY_LOG_FORMAT must be one of text, json, got 'yaml'\n"


async def test_a_served_request_writes_only_json(tmp_path, pg_url, fake_upstream):
    port = free_port()
    cfg = write_config(tmp_path, pg_url, fake_upstream.url, port)
    proc = spawn("serve", "--config", str(cfg), env={**ENV, "CLAUDE_GATEWAY_LOG_FORMAT": "json"})
    try:
        await wait_ready(port, proc)
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"http://127.0.0.1:{port}/v1/messages", data=body,
                             headers={"Authorization": f"Bearer {token(cfg)}"})  # fmt: skip
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
        docs = [json.loads(line) for line in proc.stderr.read().splitlines()]  # every line parses
        assert all(d["ts"] and d["level"] in audit.LEVELS for d in docs)
        events = {d["evt"] for d in docs if "evt" in d}
        messages = " | ".join(d["msg"] for d in docs if "msg" in d)
        assert {"config.load", "inference"} <= events
        assert "listening on" in messages and "shutdown complete" in messages
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def migrate(tmp_path, pg_url, extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    cfg = write_config(tmp_path, pg_url, "http://127.0.0.1:9", free_port(), extra)
    return subprocess.run([*GATEHOUSE, "migrate", "--config", str(cfg)], env={**ENV, **env},
                           capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_config_key_chooses_json_and_the_environment_overrides_it(tmp_path, pg_url):
    env = {"CLAUDE_GATEWAY_LOG_FORMAT": ""}  # not set: the file decides
    out = migrate(tmp_path, pg_url, "gatehouse:\n  log_format: json\n", **env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stderr.splitlines()[-1])["msg"] == "migrations are up to date"
    out = migrate(tmp_path, pg_url, "gatehouse:\n  log_format: json\n", CLAUDE_GATEWAY_LOG_FORMAT="text")
    assert out.stderr.splitlines()[-1].startswith("[gatehouse] ")
    out = migrate(tmp_path, pg_url, "gatehouse:\n  log_format: text\n", CLAUDE_GATEWAY_LOG_FORMAT="json")
    assert json.loads(out.stderr.splitlines()[-1])["level"] == "info"


def test_an_unknown_config_format_is_a_config_error(tmp_path):
    cfg = write_config(tmp_path, "postgres://gw@127.0.0.1:9/gw", "http://127.0.0.1:9", free_port(),
                       "gatehouse:\n  log_format: yaml\n")  # fmt: skip
    out = subprocess.run([*GATEHOUSE, "check-config", "--config", str(cfg)], env=ENV, capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert out.returncode == 2 and "gatehouse.log_format" in out.stderr, out.stderr
