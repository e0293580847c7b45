"""Recorded real-client requests, loaded so tests can send them again.

The files under ``transcripts/`` hold one request per line: method, path,
query, headers in wire order, and the body as parsed JSON (or text). Long
strings were elided when they were recorded, in one of two forms:

* ``<elided N chars sha256=H: 'first chars'…>`` replaces a string of N characters;
* ``<first 80 chars of json.dumps(value)>…<elided N chars, sha256=H>`` replaces a
  value (a string *or* an object) whose Python ``json.dumps`` text was
  ``80 + N`` characters long.

:meth:`Exchange.request_body` rebuilds sendable bytes: the recorded key order
and structure, with each elided value replaced by deterministic ASCII filler of
the recorded size. The filler never needs escaping, so its byte length in the
JSON is predictable. Bodies with nothing elided come back byte for byte.
"""

from __future__ import annotations

import ast
import json
import re
from importlib import resources
from typing import Any

import msgspec

# A string elided whole: its length in characters and the repr of its start.
_WHOLE = re.compile(r"<elided (\d+) chars sha256=([0-9a-f]+): (.*?)…>", re.S)
# A value cut after the first characters of its JSON text.
_CUT = re.compile(r"\A(.*)…<elided (\d+) chars, sha256=([0-9a-f]+)>\Z", re.S)
# The recorder hid the client's device id; 64 hex digits stand in for it so
# bodies keep their original length.
_DEVICE_ID = "<DEVICE_ID_64_HEX>"
_DEVICE_ID_STAND_IN = "0123456789abcdef" * 4

_WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()

# Headers that belong to one connection, not to the request: a replaying client
# sets its own.
HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})


def filler(length: int, seed: str = "", joiner: str = " ") -> str:
    """``length`` characters of plain ASCII, the same for the same ``seed``.

    Only letters, digits, ``[``/``]`` and ``joiner`` appear, so the text needs
    no JSON escaping. The seed (a recorded hash) keeps different originals
    different and equal originals equal, as prompt caching would see them.
    """
    if length <= 0:
        return ""
    head = f"[{seed}]{joiner}" if seed else ""
    words: list[str] = [head]
    size = len(head)
    index = 0
    while size < length:
        word = _WORDS[index % len(_WORDS)] + joiner
        words.append(word)
        size += len(word)
        index += 1
    return "".join(words)[:length]


def _readable_start(quoted: str) -> str:
    """The recorded start of an elided string (it was written as a Python repr)."""
    try:
        value = ast.literal_eval(quoted)
    except (ValueError, SyntaxError):
        return ""
    return value if isinstance(value, str) else ""


def _restore_string(text: str) -> Any:
    """The stand-in for one recorded JSON string (unchanged unless elided)."""
    whole = _WHOLE.fullmatch(text)
    if whole:
        return filler(int(whole.group(1)), whole.group(2))
    cut = _CUT.match(text)
    if cut:
        return _restore_cut(cut.group(1), int(cut.group(2)), cut.group(3))
    if _DEVICE_ID in text:
        return text.replace(_DEVICE_ID, _DEVICE_ID_STAND_IN)
    return text


def _restore_cut(start: str, rest: int, seed: str) -> Any:
    """Rebuild a value of which only the start of its JSON text was kept.

    The original text was ``len(start) + rest`` characters. Strings become
    filler of that length less the quotes; objects and arrays become a small
    container whose compact JSON has about the original's compact length.
    """
    total = len(start) + rest
    opener = start[:1]
    if opener == '"':
        return filler(total - 2, seed)
    if opener in ("{", "["):
        # Python's dumps put a space after each ":" and ","; the share of them
        # in the kept start estimates how much shorter the compact text was.
        spaces = start.count(": ") + start.count(", ")
        target = round(total * (1 - spaces / max(len(start), 1)))
        if opener == "[":
            return [filler(target - len('[""]'), seed)]
        shell: dict[str, Any] = {"type": "object", "description": ""}
        shell["description"] = filler(target - len(compact(shell)), seed)
        return shell
    return filler(total, seed)


def restore(value: Any) -> Any:
    """A copy of a recorded JSON value with every elided part regenerated."""
    if isinstance(value, str):
        return _restore_string(value)
    if isinstance(value, list):
        return [restore(item) for item in value]
    if isinstance(value, dict):
        return {key: restore(item) for key, item in value.items()}
    return value


def compact(value: Any) -> bytes:
    """JSON the way a JavaScript client writes it: no spaces, UTF-8 as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _restore_header(value: str) -> str:
    whole = _WHOLE.fullmatch(value)
    if not whole:
        return value
    length, seed = int(whole.group(1)), whole.group(2)
    # Header values (anthropic-beta lists) keep their recorded start up to the
    # last comma, so the real leading entries survive; filler completes the length.
    start = _readable_start(whole.group(3))
    keep = start[: start.rfind(",") + 1] if "," in start else ""
    if not keep.isascii() or len(keep) >= length:
        keep = ""
    return keep + filler(length - len(keep), seed, joiner="-")


def _contains_elision(value: Any) -> bool:
    if isinstance(value, str):
        return "<elided " in value
    if isinstance(value, list):
        return any(_contains_elision(item) for item in value)
    if isinstance(value, dict):
        return any(_contains_elision(item) for item in value.values())
    return False


class Exchange(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded request, and the answer where the recording kept it.

    ``headers`` are exactly as recorded (placeholders and elision markers
    included); :meth:`request_headers` gives a replayable list.
    """

    transcript: str
    n: int
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body_json: Any = None
    body_text: str | None = None
    body_len: int = 0
    note: str | None = None
    status: int | None = None
    response_headers: tuple[tuple[str, str], ...] | None = None
    response_json: Any = None

    @property
    def target(self) -> str:
        """Path and query as they appear on the request line."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def elided(self) -> bool:
        """True when part of the body was elided and is regenerated on replay."""
        if self.body_json is not None:
            return _contains_elision(self.body_json)
        return self.body_text is not None and "<elided " in self.body_text

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def request_body(self) -> bytes:
        if self.body_json is not None:
            return compact(restore(self.body_json))
        if self.body_text:
            text = _WHOLE.sub(lambda m: filler(int(m.group(1)), m.group(2)), self.body_text)
            return text.encode()
        return b""

    def request_headers(self, drop: frozenset[str] = HOP_HEADERS) -> list[tuple[str, str]]:
        """The headers in wire order, elided values regenerated, ``drop`` left out."""
        return [(name, _restore_header(value)) for name, value in self.headers if name.lower() not in drop]


def _pairs(raw: Any) -> tuple[tuple[str, str], ...] | None:
    if raw is None:
        return None
    return tuple((str(name), str(value)) for name, value in raw)


def _exchange(transcript: str, record: dict[str, Any]) -> Exchange:
    return Exchange(
        transcript=transcript,
        n=record.get("n", 0),
        method=record["method"],
        path=record["path"],
        query=record.get("query") or "",
        headers=_pairs(record["headers"]) or (),
        body_json=record.get("body_json"),
        body_text=record.get("body_text"),
        body_len=record.get("body_len") or 0,
        note=record.get("note"),
        status=record.get("resp_status"),
        response_headers=_pairs(record.get("resp_headers")),
        response_json=record.get("resp_body_json"),
    )


def _folder() -> Any:
    return resources.files("protocol_spec").joinpath("transcripts")


def names() -> list[str]:
    """Every transcript shipped, as ``folder/name`` without ``.jsonl``."""
    found = []
    for group in _folder().iterdir():
        if group.is_dir():
            found += [
                f"{group.name}/{item.name[:-6]}" for item in group.iterdir() if item.name.endswith(".jsonl")
            ]
    return sorted(found)


def load(name: str) -> list[Exchange]:
    """The exchanges of one transcript, e.g. ``load("cli/s01_authtoken_json")``."""
    name = name.removesuffix(".jsonl")
    source = _folder()
    for part in f"{name}.jsonl".split("/"):
        source = source.joinpath(part)
    if not source.is_file():
        raise FileNotFoundError(f"no transcript named {name!r}; known: {', '.join(names())}")
    text = source.read_text(encoding="utf-8")
    return [_exchange(name, json.loads(line)) for line in text.splitlines() if line.strip()]
