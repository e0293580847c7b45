"""Audit events and operational log lines, both on stderr.

Audit events are single-line JSON objects with ``ts`` and ``evt`` (the event
names and fields follow Anthropic's gateway, so existing log pipelines keep
working). Operational lines are human text: ``[gatehouse] <ts> <level> <msg>``.

With ``CLAUDE_GATEWAY_LOG_FORMAT=json`` (or ``gatehouse.log_format: json``
in the config, which the variable overrides) operational lines are JSON too
(``{"ts", "level", "msg"}``) and audit events gain ``"level": "info"``, so one
parser reads the whole stream: a line with ``evt`` is an audit event, a line
with ``msg`` an operational one. Default ``text``: the output is as before.

Each line goes out in one ``os.write`` call: with ``--workers N`` several
processes share the same stderr, and a single write of a line is never
interleaved with another process's line (lines stay far below PIPE_BUF-sized
concerns for regular files and terminals, and are written whole for pipes up to
PIPE_BUF; longer audit lines are still one syscall).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.client_text import LOG_CHARS, capped

_encode = msgspec.json.Encoder().encode
LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
_fd = 2
_threshold = LEVELS.get(os.environ.get("CLAUDE_GATEWAY_LOG_LEVEL", "info"), 20)


def set_level(name: str) -> None:
    global _threshold
    _threshold = LEVELS.get(name, 20)


FORMAT_ENV = "CLAUDE_GATEWAY_LOG_FORMAT"
FORMATS = ("text", "json")
_format_text = os.environ.get(FORMAT_ENV) or "text"
_json = _format_text == "json"


def set_format(name: str) -> None:
    """``"text"`` or ``"json"`` (tests; processes take it from the environment)."""
    global _json, _format_text
    if name not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {name!r}")
    _format_text, _json = name, name == "json"


def use_config_format(name: str | None) -> None:
    """Apply the config's ``gatehouse.log_format``, unless the environment already chose."""
    if name and not os.environ.get(FORMAT_ENV):
        set_format(name)


def format_error() -> str | None:
    """Why the environment's log format is unusable, or None: the CLI refuses to start on it."""
    if _format_text in FORMATS:
        return None
    return f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, got {_format_text!r}"


_cached_ms = -1
_cached_iso = ""


def _now_iso() -> str:
    # Every request writes an audit line; formatting a datetime costs more than
    # the rest of the line, and many lines share a millisecond under load.
    global _cached_ms, _cached_iso
    ms = int(time.time() * 1000)
    if ms != _cached_ms:
        seconds = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _cached_ms, _cached_iso = ms, f"{seconds}.{ms % 1000:03d}Z"
    return _cached_iso


def _write(data: bytes) -> None:
    try:
        os.write(_fd, data)
    except OSError:
        # stderr gone (closed pipe at shutdown): nothing better to do than carry on.
        pass


def emit(evt: str, **fields: Any) -> None:
    """Write one audit event. Audit events ignore the log level.

    Fields often carry what a client sent (a model, a path, a reason); a string
    longer than :data:`gateway.client_text.LOG_CHARS` is cut, so one request can
    never write more than a bounded line.
    """
    record = {"ts": _now_iso(), "level": "info", "evt": evt} if _json else {"ts": _now_iso(), "evt": evt}
    for name, value in fields.items():
        record[name] = capped(value) if type(value) is str and len(value) > LOG_CHARS else value
    _write(_json_line(record))


def _json_line(record: dict[str, Any]) -> bytes:
    try:
        data = _encode(record)
    except (UnicodeEncodeError, msgspec.EncodeError):
        # A lone surrogate (from undecodable client bytes) has no UTF-8 form;
        # the standard library writes it as an escape instead of failing.
        data = json.dumps(record, default=repr, separators=(",", ":")).encode()
    return data + b"\n"


# An operational line quotes errors, paths and at most a traceback (library
# errors arrive with theirs); it never needs more than this.
MESSAGE_CHARS = 16 * 1024


def log(level: str, message: str) -> None:
    """Write one operational line, if ``level`` passes the configured threshold."""
    if LEVELS[level] < _threshold:
        return
    if _json:
        _write(_json_line({"ts": _now_iso(), "level": level, "msg": capped(message, MESSAGE_CHARS)}))
        return
    line = f"[gatehouse] {_now_iso()} {level} {capped(message, MESSAGE_CHARS)}".replace("\n", " ")
    _write(line.encode(errors="backslashreplace") + b"\n")


def enabled(level: str) -> bool:
    return LEVELS[level] >= _threshold


class _ToLog(logging.Handler):
    """Library messages (aiohttp, asyncio) as operational lines, in the chosen format."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warn" if record.levelno >= logging.WARNING else "info"
        try:
            message = f"{record.name}: {self.format(record)}"
        except Exception:  # a bad format string in a library's call must not take the process down
            message = f"{record.name}: {record.msg!r}"
        log(level, message)


def capture_library_logging() -> None:
    """Route the standard ``logging`` module's warnings and errors through :func:`log`.

    Without it an unhandled-exception report from aiohttp or asyncio reaches
    stderr as bare multi-line text, which a JSON log pipeline cannot parse.
    Called by ``serve``; importing this module changes nothing.
    """
    root = logging.getLogger()  # its default level, WARNING, is what passes
    if not any(isinstance(h, _ToLog) for h in root.handlers):
        root.addHandler(_ToLog())
