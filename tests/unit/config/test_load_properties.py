"""Properties of loading gateway.yaml and expanding ``${VAR}``/``${file:}`` (issue 17, fuzzing).

Whatever the file holds, loading gives a Config or one :class:`ConfigError`
(never another exception); every issue names a well-formed dotted path (empty
only for problems of the whole file); no message repeats a secret. Expansion
equals a plain reading of the references, and never touches keys. Example
counts come from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.addresses import host_address, is_loopback_host, url_problem
from gateway.config.expand import expand_references
from gateway.config.load import ConfigError, loads
from gateway.config.schema import Issues, Unresolved
from tests.unit.config.test_load import BASE, ENV

PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_WORD = r"[A-Za-z0-9_-]+"
_QUOTED = r'\["(?:[^"\\]|\\.)*"\]'
PATH = re.compile(rf"(?:{_WORD}|{_QUOTED})(?:\.{_WORD}|\[\d+\]|{_QUOTED})*")

# Secrets reach the file through ${VAR}; each is a marker no message may hold.
MARKERS = {
    "JWT": "jwtmarker" + "j" * 40,
    "OIDC_SECRET": "oidcmarker-secret",
    "PG_URL": "postgres://gw:pgmarker-pass@127.0.0.1:5432/gw",
    "API_KEY": "sk-ant-apimarker",
    "ADMIN_W": "adminmarker" + "w" * 32,
}
SECRET_TEXTS = ["jwtmarker", "oidcmarker", "pgmarker", "apimarker", "adminmarker"]
MARKED_ENV = {**ENV, **MARKERS}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        ["${JWT}", "${API_KEY}", "${NOPE}", "${file:relative}", "${file:/nonexistent/x}", "a${JWT}b",
         "${}", "${1X}", "${PG_URL}", "http://127.0.0.1:1", "169.254.169.254", "0.0.0.0", "-1", "yes", "0x10"]
    )
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


def walk(data: Any, path: tuple = ()) -> list[tuple]:
    """Every path (a tuple of keys and indices) into ``data``."""
    found = [path]
    if isinstance(data, dict):
        for k, v in data.items():
            found += walk(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += walk(v, (*path, i))
    return found


@st.composite
def mutated_documents(draw) -> str:
    doc = copy.deepcopy(BASE)
    doc["admin"] = {"write_keys": [{"id": "a", "key": "${ADMIN_W}"}]}
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in walk(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        what = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if what == "replace":
            parent[path[-1]] = draw(values)
        elif what == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12) | st.sampled_from(["gatehouse", "models", "managed", "tls"]))] = draw(values)
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def issues_of(text: str | bytes, environ: dict[str, str]) -> list[tuple[str, str]]:
    try:
        loads(text, environ)
    except ConfigError as err:
        assert err.issues, "a ConfigError names at least one issue"
        return err.issues
    return []


def well_formed(issues: list[tuple[str, str]], *, whole_file_allowed: bool) -> None:
    for path, message in issues:
        assert isinstance(message, str) and message
        if path == "":
            assert whole_file_allowed, message
        else:
            assert PATH.fullmatch(path), path


@PROPS
@given(mutated_documents())
def test_a_mutated_config_boots_or_names_dotted_paths_and_never_a_secret(text):
    issues = issues_of(text, MARKED_ENV)
    well_formed(issues, whole_file_allowed=False)
    for _, message in issues:
        assert not any(secret in message for secret in SECRET_TEXTS), message


yamlish = st.lists(
    st.sampled_from(list("ab:- \n\t{}[]&*!|>'\"#%@`,?$\\01") + ["${JWT}", "<<: *a", "&a ", "\ufeff", "listen:", "\n  "]),
    max_size=40,
).map("".join)


@PROPS
@given(yamlish | st.binary(max_size=80))
def test_any_text_is_a_config_error_about_the_file_or_a_path(text):
    well_formed(issues_of(text, ENV), whole_file_allowed=True)


# ---------------------------------------------------------------- expansion

names = st.sampled_from(["A", "B", "_x", "LONG_NAME_1"])
environs = st.dictionaries(names, st.text(max_size=10), max_size=4)
pieces = st.lists(
    st.one_of(
        st.text(alphabet=st.sampled_from(list("ab $}{:")), max_size=6).filter(lambda t: "${" not in t),
        names.map(lambda n: ("ref", n)),
    ),
    max_size=5,
)


def text_of(parts: list) -> str:
    out = "".join(f"${{{p[1]}}}" if isinstance(p, tuple) else p for p in parts)
    return out


@PROPS
@given(pieces, environs)
def test_expansion_is_each_reference_replaced_or_reported_at_its_path(parts, environ):
    text = text_of(parts)
    issues = Issues()
    out = expand_references({"k": {"${A}": [text]}}, "", environ, issues)
    assert list(out) == ["k"] and list(out["k"]) == ["${A}"]  # keys are never expanded
    missing = {p[1] for p in parts if isinstance(p, tuple) and p[1] not in environ}
    # A stray "${" the pieces formed by accident is reported too; otherwise exactly the missing ones.
    if "${" not in "".join(p for p in parts if isinstance(p, str)):
        assert {m.split()[2] for _, m in issues} == missing
        assert all(path == 'k["${A}"][0]' for path, _ in issues)
    if not issues:
        expected = "".join(environ[p[1]] if isinstance(p, tuple) else p for p in parts)
        assert out["k"]["${A}"][0] == expected


@PROPS
@given(pieces)
def test_without_an_environment_references_are_left_as_written(parts):
    text = text_of(parts)
    issues, left = Issues(), {}
    out = expand_references({"v": text}, "", None, issues, left)
    assert out["v"] == text
    if any(isinstance(p, tuple) for p in parts) and not issues:
        assert isinstance(out["v"], Unresolved) and left == {"v": text}


@PROPS
@given(st.binary(max_size=60), st.sampled_from(["", "x/", "/"]), st.booleans())
def test_file_references_read_stripped_text_or_report_the_path(tmp_path_factory, content, prefix, whole):
    folder = tmp_path_factory.mktemp("ref")
    target = folder / "value"
    target.write_bytes(content)
    ref = "${file:" + (str(target) if prefix == "/" else prefix + "value") + "}"
    issues = Issues()
    out = expand_references({"s": {"v": ref if whole else "a" + ref}}, "", {}, issues)
    if not whole or prefix != "/":
        assert [p for p, _ in issues] == ["s.v"] and str(content) not in issues[0][1]
        return
    try:
        expected = content.decode("utf-8").strip()
    except UnicodeDecodeError:
        assert [p for p, _ in issues] == ["s.v"]
        return
    assert not issues and out["s"]["v"] == expected


def test_messages_name_no_file_content(tmp_path):
    secret = tmp_path / "k"
    secret.write_text("filemarker-secret")
    doc = copy.deepcopy(BASE)
    doc["listen"]["port"] = "${file:" + str(secret) + "}"
    issues = issues_of(json.dumps(doc), ENV)
    assert [p for p, _ in issues] == ["listen.port"] and "filemarker" not in issues[0][1]


# ---------------------------------------------------------------- addresses

hosts = st.text(st.characters(codec="ascii"), max_size=20) | st.lists(
    st.sampled_from(["-1", "+1", " 1", "1_0", "0x", "0x7f", "07", "08", "256", "4294967295", "1" * 12, "[", "::1", "%"]),
    min_size=1,
    max_size=4,
).map(".".join)


@PROPS
@given(hosts)
def test_any_host_is_an_address_or_none_and_any_url_a_verdict(host):
    ip = host_address(host)
    assert ip is None or ip.version in (4, 6)
    is_loopback_host(host)
    for url in (f"http://{host}/", f"https://[{host}]:1/", host):
        problem = url_problem(url, False)
        assert problem is None or isinstance(problem, str)


def test_regression_a_signed_number_is_not_an_old_style_ipv4_address():
    # Found by the mutated-config property under the large profile: listen.host "-1"
    # reached ipaddress.IPv4Address(-1) and its AddressValueError escaped the loader.
    assert host_address("-1") is None and host_address("+1") is None and host_address("1_0") is None
    assert host_address("0x7f.1") == host_address("127.0.0.1")
    doc = copy.deepcopy(BASE)
    doc["listen"]["host"] = "-1"
    well_formed(issues_of(json.dumps(doc), ENV), whole_file_allowed=False)


def test_regression_a_section_of_the_wrong_kind_is_an_issue_not_a_type_error():
    # Found by the mutated-config property under the large profile: `upstreams: true`
    # reached the upstream-name rule, which iterated it (TypeError out of the loader).
    doc = copy.deepcopy(BASE)
    doc["upstreams"] = True
    assert [p for p, _ in issues_of(json.dumps(doc), ENV)] == ["upstreams"]


def test_regression_a_file_reference_keeps_a_carriage_return_inside_the_value(tmp_path):
    # Found by the file-reference property: text mode turned "\r" into "\n".
    (tmp_path / "v").write_bytes(b"a\rb\r\n")
    issues = Issues()
    assert expand_references({"v": "${file:" + str(tmp_path / "v") + "}"}, "", {}, issues) == {"v": "a\rb"}
