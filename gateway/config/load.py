"""Load and validate ``gateway.yaml`` into a frozen :class:`Config`.

Theory of operation, in four passes over one YAML document:

1. **Parse** with YAML 1.2 scalar rules (``yes``/``on`` stay strings, as in the
   other gateway's JavaScript parser) and refuse duplicate keys.
2. **Expand** ``${VAR}`` anywhere inside a string value and ``${file:/abs}`` as a
   whole value. Keys are never expanded (:mod:`gateway.config.expand`).
3. **Shape-check** each section (each upstream and model on its own) against
   the Structs in :mod:`gateway.config.schema`, whose walker reports every
   unknown key, missing key, wrong type and out-of-range number at its own
   dotted path (``upstreams[1].auth.api_key``). Keys a provider does not take
   and the ``settings`` alias of ``cli`` are handled just before, on the raw data.
4. **Rule-check** what one field cannot say alone: URL guards, credential
   combinations, references between sections. Rules run only on parts that
   passed step 3, so one mistake does not produce a cascade of issues. Section
   rules live in :mod:`gateway.config.rules`, per-provider upstream rules in
   :mod:`gateway.config.upstreams`, and the URL/address guard (also used at run
   time) in :mod:`gateway.config.addresses`; this module re-exports the names
   other modules import from ``gateway.config.load``.

Every issue names a path; no message ever repeats a configured value that could
be a secret. The module is pure: it reads only the file it is handed, files
named by ``${file:}``, and the environ mapping it is given.

``expand=False`` checks a template without its secrets (``check-config
--no-env``): references are left as written, each such value gets a stand-in
that fits its field, every other value is shaped and rule-checked as usual, and
only the rule issues about the stand-ins themselves are dropped.

Alongside the data, the loader reads the text for one thing the data cannot
show: values cut short by an unquoted `` #`` (:mod:`gateway.config.comments`),
kept in ``Config.load_warnings`` for the boot warnings.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from gateway.config import schema as s
from gateway.config.addresses import (
    ALLOW_LOOPBACK_ENV,
    host_address,
    is_forbidden_address,
    is_loopback_host,
    url_problem,
)
from gateway.config.comments import cut_values, cut_warning
from gateway.config.expand import expand_references
from gateway.config.rules import check, prepare
from gateway.config.schema import Config, Issues, dotted, kind, shape
from gateway.config.upstreams import ANTHROPIC_API, NOT_SERVED, PROVIDER_RULES
from gateway.errors import Fault, Party

__all__ = [
    "ALLOW_LOOPBACK_ENV",
    "ANTHROPIC_API",
    "Config",
    "ConfigError",
    "PROVIDER_RULES",
    "UNSUPPORTED",
    "host_address",
    "is_forbidden_address",
    "is_loopback_host",
    "load",
    "loads",
    "redacted",
    "unsupported",
    "unsupported_features",
    "unsupported_reasons",
    "url_problem",
]


class ConfigError(Fault):
    """Every problem found in one load; ``issues`` holds (dotted path, message).

    The gateway's own configuration is wrong: its operator has to act.
    """

    fault = Party.GATEWAY

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.issues))


def load(path: str, environ: Mapping[str, str], *, expand: bool = True) -> Config:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file {path}: {exc.strerror or exc}")]) from None
    return loads(raw, environ, source=path, expand=expand)


def loads(
    text: bytes | str, environ: Mapping[str, str], source: str = "<string>", *, expand: bool = True
) -> Config:
    """``environ`` resolves ``${VAR}`` and holds process switches (the loopback
    allowance); with ``expand=False`` it is read for the switches only."""
    raw = text.encode() if isinstance(text, str) else text
    data = _parse_yaml(raw)
    unresolved = Issues()
    left: dict[str, str] = {}
    data = expand_references(data, "", environ if expand else None, unresolved, left)
    issues = Issues()
    cfg = _build(data, environ, issues, set(left))
    # A reference that did not resolve left an empty string behind; the shape
    # complaints about that placeholder would only repeat the same problem.
    failed = {path for path, _ in unresolved}
    issues = Issues([*unresolved, *(i for i in issues if not _under(i[0], failed))])
    if issues or cfg is None:
        raise ConfigError(issues)
    return msgspec.structs.replace(
        cfg,
        path=source,
        sha256=hashlib.sha256(raw).hexdigest(),
        unresolved=tuple(left.items()),
        load_warnings=tuple(cut_warning(path, line) for path, line in cut_values(raw, _Loader)),
    )


def _under(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith((r + ".", r + "[")) for r in roots)


# ---------------------------------------------------------------- 1. YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars and no duplicate keys."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        # Only the mapping's own keys count: a key that overrides one pulled in
        # with `<<: *anchor` is the point of a merge, not a duplicate.
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if isinstance(key, str):
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep)


class _DuplicateKey(Fault):
    fault = Party.GATEWAY

    def __init__(self, key: str, line: int) -> None:
        self.key, self.line = key, line


# YAML 1.1 (PyYAML's default) reads yes/no/on/off as booleans, 0777 as octal and
# 1:30 as 90; the other gateway's parser (YAML 1.2) reads them as written. Keep
# only the 1.2 forms so a managed `env: {FOO: yes}` reaches clients as "yes".
_DROPPED = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: _Loader, node: Any) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0x"):
        return int(text[2:], 16)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _parse_yaml(raw: bytes) -> Any:
    try:
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(
            [("", f"line {dup.line}: key '{dup.key}' appears twice in the same mapping")]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError([("", f"{where}{problem}")]) from None


# ---------------------------------------------------------------- build


def _build(data: Any, environ: Mapping[str, str], issues: Issues, stand_ins: set[str]) -> Config | None:
    """Shape each section on its own, so one broken section does not hide the
    rule problems of the others; return None when anything failed. ``stand_ins``:
    paths holding a stand-in for a value left unresolved on purpose; what the
    rules say about a stand-in says nothing about the real value, so it is dropped."""
    if data is None:
        issues.add("", "the file is empty; expected a mapping of sections")
        return None
    if not isinstance(data, dict):
        issues.add("", f"expected a mapping of sections at the top level, got {kind(data)}")
        return None
    data = prepare(data, issues)
    top = mi.type_info(Config)
    assert isinstance(top, mi.StructType)
    fields = {f.name: f for f in top.fields if f.name not in s.LOADER_FIELDS}
    for k in data:
        if k not in fields:
            issues.add(dotted("", k), f"unknown top-level section; expected one of: {', '.join(fields)}")
    sections: dict[str, Any] = {}
    items: dict[str, dict[int, Any]] = {}
    for name, f in fields.items():
        if data.get(name) is None:  # an empty `admin:` means the same as no admin section
            if f.required:
                issues.add(name, "required section is missing")
            continue
        before = len(issues)
        if name in _ITEMWISE and isinstance(data[name], list):
            items[name] = _shape_items(data[name], name, _ITEMWISE[name], issues)
            if not data[name] and f.required:
                issues.add(name, "must list at least one entry")
            shaped = list(items[name].values())
        else:
            shaped = shape(data[name], f.type, name, issues)
        if len(issues) == before:
            sections[name] = msgspec.convert(shaped, _ANNOTATIONS[name], strict=True)
    before_rules = len(issues)
    check(sections, items, data, environ.get(ALLOW_LOOPBACK_ENV) == "1", issues)
    if stand_ins:  # only rule issues can be about a stand-in's content; keep the rest
        issues[before_rules:] = [i for i in issues[before_rules:] if not _under(i[0], stand_ins)]
    if issues:
        return None
    return Config(**sections)


_ANNOTATIONS = {f.name: f.type for f in msgspec.structs.fields(Config)}
# Top-level lists checked entry by entry, so one bad upstream does not hide
# the rule problems of the others.
_ITEMWISE: dict[str, type] = {"upstreams": s.Upstream, "models": s.Model}


def _shape_items(values: list[Any], name: str, item: type, issues: Issues) -> dict[int, Any]:
    info = mi.type_info(item)
    good: dict[int, Any] = {}
    for i, value in enumerate(values):
        before = len(issues)
        shaped = shape(value, info, f"{name}[{i}]", issues)
        if len(issues) == before:
            good[i] = msgspec.convert(shaped, item, strict=True)
    return good


# ---------------------------------------------------------------- unsupported

# Features Gatehouse accepts in the file but does not serve yet, one row each:
# (path pattern, the feature's name for the value found there, is-it-switched-on
# for that value). `[*]` walks a list. Delete a row when its feature lands.
# Why these stay refused (SPEC 27.3): the reference names their keys and little else.
NOT_BUILT = {
    "federation": (
        "Gatehouse does not exchange identity_token_file for Anthropic API tokens (the other gateway's "
        "exchange, caching and failure handling are not described well enough to match); "
        "use auth.api_key or auth.oauth_token"
    ),
    "cri": "nothing about what it serves is described well enough to build; oidc sign-in is what Gatehouse serves",
}
UNSUPPORTED: tuple[tuple[str, str | Callable[[Any], str], Callable[[Any], bool]], ...] = (
    ("upstreams[*]", lambda u: f"provider: {u['provider']}; {NOT_SERVED[u['provider']]}", lambda u: u["provider"] in NOT_SERVED),
    ("upstreams[*].auth.federation_rule_id", f"workload identity federation; {NOT_BUILT['federation']}", bool),
    ("cri", f"customer-routed inference; {NOT_BUILT['cri']}", lambda c: bool(c and c["enabled"])),
)


def unsupported_reasons(cfg: Config) -> list[tuple[str, str]]:
    """(dotted path, the feature's name) for each switched-on feature Gatehouse lacks."""
    data = msgspec.json.decode(msgspec.json.encode(cfg))
    return [
        (path, feature(value) if callable(feature) else feature)
        for pattern, feature, switched_on in UNSUPPORTED
        for path, value in _find(data, pattern.split("."), "")
        if switched_on(value)
    ]


def unsupported(cfg: Config) -> list[str]:
    return [path for path, _ in unsupported_reasons(cfg)]


def unsupported_features(cfg: Config) -> list[str]:
    """One sentence per switched-on feature Gatehouse lacks, naming its path and the feature
    (``upstreams[0] (provider: bedrock) is not supported yet``)."""
    return [f"{path} ({feature}) is not supported yet" for path, feature in unsupported_reasons(cfg)]


def _find(data: Any, steps: list[str], path: str) -> Iterable[tuple[str, Any]]:
    if not steps:
        yield path, data
        return
    name, walk = steps[0].removesuffix("[*]"), steps[0].endswith("[*]")
    value = data.get(name) if isinstance(data, dict) else None
    here = dotted(path, name)
    if not walk:
        yield from _find(value, steps[1:], here)
        return
    for i, item in enumerate(value or ()):
        yield from _find(item, steps[1:], f"{here}[{i}]")


# ---------------------------------------------------------------- redaction

MASK = "***"
# Field names whose value is a credential wherever they appear.
_SECRET_NAMES = frozenset(
    {
        "jwt_secret",
        "client_secret",
        "api_key",
        "oauth_token",
        "password",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_bearer_token",
        "private_key_pem",
    }
)
# Mappings whose values are all treated as secret: header maps carry tokens,
# and a managed policy's env block often does.
_SECRET_MAPS = frozenset({"headers", "env"})


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data, every secret replaced by ``***``.

    Values left unresolved (``expand=False``) show as written, not as their
    stand-ins; the loader's own bookkeeping (unresolved paths, load warnings)
    is left out."""
    data = msgspec.json.decode(msgspec.json.encode(cfg))
    for name in ("unresolved", "load_warnings"):
        data.pop(name, None)
    return _redact(_as_written(data, "", dict(cfg.unresolved)), "")


def _as_written(value: Any, path: str, written: Mapping[str, str]) -> Any:
    if not written:
        return value
    if path in written:
        return written[path]
    if isinstance(value, dict):
        return {k: _as_written(v, dotted(path, k), written) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written(v, f"{path}[{i}]", written) for i, v in enumerate(value)]
    return value


def _redact(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        return {k: _redact_field(k, v, dotted(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _redact_field(name: str, value: Any, path: str) -> Any:
    if value is None:
        return None
    admin_key = name == "key" and "_keys[" in path
    if name in _SECRET_NAMES or admin_key:
        return [MASK for _ in value] if isinstance(value, list) else MASK
    if name in _SECRET_MAPS and isinstance(value, dict):
        return {k: MASK for k in value}
    if name in ("postgres_url", "listen_url") and isinstance(value, str):
        return _mask_url_password(value)
    return _redact(value, path)


def _mask_url_password(url: str) -> str:
    url = re.sub(r"(?i)([?&]password=)[^&]*", r"\1" + MASK, url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        return f"{scheme}{sep}{user}:{MASK}@{hostpart}"
    return url
