"""gateway.upstreams.egress: which URL goes through which proxy, NO_PROXY matching,
when proxy-only egress is on, and what boot says about it."""

from __future__ import annotations

import pytest

from gateway.upstreams.egress import BOUNDARY_ENV, Bypass, Egress, EgressError, parse_proxy

PROXY = "http://proxy.corp:3128"


def egress(allow_loopback: bool = False, **env: str) -> Egress:
    return Egress.from_env(env, allow_loopback=allow_loopback)


# ====================================================================== scheme choice


def test_nothing_set_means_direct_and_silent():
    e = egress()
    assert not e.configured
    assert e.proxy_for("https://api.anthropic.com/v1/messages") is None
    assert e.notices() == [] and e.describe() is None and e.idp_notice(None) is None


def test_each_scheme_uses_its_own_variable():
    e = egress(HTTPS_PROXY="http://secure:3128", HTTP_PROXY="http://plain:8080")
    assert e.proxy_for("https://api.anthropic.com/v1/messages") == "http://secure:3128"
    assert e.proxy_for("http://10.0.0.5:8000/v1/messages") == "http://plain:8080"
    assert e.proxy_for("ftp://files.example.com/") is None


def test_no_fallback_between_schemes():
    only_https = egress(HTTPS_PROXY=PROXY)
    assert only_https.proxy_for("http://internal.example.com/") is None
    only_http = egress(HTTP_PROXY=PROXY)
    assert only_http.proxy_for("https://api.anthropic.com/") is None
    assert any("HTTPS_PROXY is not" in n for n in only_http.notices())


def test_lowercase_variables_count_and_uppercase_wins_when_both_differ():
    assert egress(https_proxy=PROXY).proxy_for("https://x.example.com/") == PROXY
    e = egress(HTTPS_PROXY="http://upper:1", https_proxy="http://lower:2")
    assert e.proxy_for("https://x.example.com/") == "http://upper:1"
    assert e.notices() == ["HTTPS_PROXY and https_proxy are both set and differ; using HTTPS_PROXY"]
    assert egress(HTTPS_PROXY=PROXY, https_proxy=PROXY).notices() == []


def test_blank_variables_are_unset():
    assert not egress(HTTPS_PROXY="  ", HTTP_PROXY="").configured


# ====================================================================== proxy URLs


@pytest.mark.parametrize(
    "value, url, shown, host, port",
    [
        ("http://proxy.corp:3128", "http://proxy.corp:3128", "http://proxy.corp:3128", "proxy.corp", 3128),
        ("http://proxy.corp:3128/", "http://proxy.corp:3128", "http://proxy.corp:3128", "proxy.corp", 3128),
        ("proxy.corp:3128", "http://proxy.corp:3128", "http://proxy.corp:3128", "proxy.corp", 3128),
        ("http://Proxy.Corp", "http://proxy.corp:80", "http://proxy.corp:80", "proxy.corp", 80),
        ("http://[fd00::1]:3128", "http://[fd00::1]:3128", "http://[fd00::1]:3128", "fd00::1", 3128),
        (
            "http://svc%40corp:p%3Ass@10.0.0.9:3128",
            "http://svc%40corp:p%3Ass@10.0.0.9:3128",
            "http://10.0.0.9:3128",
            "10.0.0.9",
            3128,
        ),
    ],
)
def test_proxy_urls(value, url, shown, host, port):
    assert tuple(parse_proxy("HTTPS_PROXY", value)) == (url, shown, host, port)


@pytest.mark.parametrize(
    "value, says",
    [
        ("https://proxy.corp:443", "must be an http:// proxy URL (got a https:// one)"),
        ("socks5://user:hunter2@proxy.corp:1080", "must be an http:// proxy URL (got a socks5:// one)"),
        ("http://:3128", "names no proxy host"),
        ("http://proxy.corp:3128/some/path", "without a path"),
        ("http://user:hunter2@proxy.corp:99999", "is not a valid proxy URL"),
    ],
)
def test_unusable_proxy_stops_boot_without_quoting_the_value(value, says):
    with pytest.raises(EgressError) as info:
        egress(HTTPS_PROXY=value)
    assert says in str(info.value) and str(info.value).startswith("HTTPS_PROXY ")
    assert "hunter2" not in str(info.value)


def test_userinfo_is_kept_for_aiohttp_and_left_out_of_every_boot_line():
    e = egress(HTTPS_PROXY="http://svc:hunter2@proxy.corp:3128", HTTP_PROXY="http://svc:hunter2@proxy.corp:3128")
    proxy = e.proxy_for("https://api.anthropic.com/")
    assert proxy == "http://svc:hunter2@proxy.corp:3128"
    assert e.shown(proxy) == "http://proxy.corp:3128"
    assert e.shown("http://other:1") == "the proxy"
    lines = [*e.notices(), e.describe(), e.idp_notice(None)]
    assert all(line is None or "hunter2" not in line for line in lines)
    assert e.proxy_endpoints == frozenset({("proxy.corp", 3128)})


# ====================================================================== NO_PROXY


HOSTS = [
    # (NO_PROXY, URL, bypassed)
    ("*", "https://api.anthropic.com/", True),
    ("example.com", "https://example.com/", True),
    ("example.com", "https://api.example.com/", True),
    ("example.com", "https://deep.api.example.com./", True),  # trailing dot in the host
    ("example.com", "https://notexample.com/", False),
    ("example.com", "https://example.com.evil.io/", False),
    (".example.com", "https://example.com/", True),
    (".example.com", "https://api.example.com/", True),
    ("*.example.com", "https://api.example.com/", True),
    ("*.example.com", "https://example.com/", True),
    ("EXAMPLE.com", "https://Api.Example.COM/", True),
    ("  example.com , other.org ", "https://x.other.org/", True),
    ("example.com:443", "https://example.com/", True),
    ("example.com:443", "https://example.com:8443/", False),
    ("example.com:80", "http://example.com/", True),
    ("example.com:80", "https://example.com/", False),
    ("10.1.2.3", "https://10.1.2.3/", True),
    ("10.1.2.3", "https://10.1.2.4/", False),
    ("10.0.0.0/8", "https://10.200.3.4:8443/", True),
    ("10.0.0.0/8", "https://11.0.0.1/", False),
    ("10.0.0.0/8", "https://ten.example.com/", False),  # names are not resolved for ranges
    ("10.1.2.3:8443", "https://10.1.2.3:8443/", True),
    ("10.1.2.3:8443", "https://10.1.2.3/", False),
    ("::1", "https://[::1]:9/", True),
    ("[::1]:9", "https://[::1]:9/", True),
    ("[::1]:9", "https://[::1]:10/", False),
    ("fd00::/8", "https://[fd12:3456::1]/", True),
    ("fd00::/8", "https://[fe80::1]/", False),
    ("10.0.0.0/8", "https://[::ffff:10.1.1.1]/", True),  # an IPv4-mapped host matches its IPv4 range
    ("2.3", "https://10.1.2.3/", False),  # a domain entry never matches an IP host by suffix
    ("localhost", "http://localhost:8080/", True),
    ("", "https://example.com/", False),
    (",,", "https://example.com/", False),
]


@pytest.mark.parametrize("no_proxy, url, bypassed", HOSTS)
def test_no_proxy_matching(no_proxy, url, bypassed):
    e = egress(HTTPS_PROXY=PROXY, HTTP_PROXY=PROXY, NO_PROXY=no_proxy)
    assert (e.proxy_for(url) is None) is bypassed


def test_lowercase_no_proxy_is_read_too():
    e = egress(HTTPS_PROXY=PROXY, no_proxy="example.com")
    assert e.proxy_for("https://example.com/") is None


def test_unreadable_no_proxy_entries_are_named_at_boot_and_ignored():
    e = egress(HTTPS_PROXY=PROXY, NO_PROXY="good.example.com, bad host, 10.0.0.0/33, x.com:http, [::1]x")
    assert e.proxy_for("https://good.example.com/") is None
    [notice] = e.notices()
    assert notice.startswith("NO_PROXY: ignored entries")
    assert notice.endswith("bad host, 10.0.0.0/33, x.com:http, [::1]x")


def test_bypass_is_falsy_when_empty():
    assert not Bypass(" , ")
    assert Bypass("*") and Bypass("a.com")


# ====================================================================== proxy-only egress


def test_boundary_on_when_every_condition_holds():
    e = egress(HTTPS_PROXY=PROXY, **{BOUNDARY_ENV: "1"})
    assert e.boundary and e.notices() == []
    assert "proxy-only egress" in (e.describe() or "")


@pytest.mark.parametrize(
    "env, allow_loopback, missing",
    [
        ({}, False, ["neither HTTPS_PROXY nor HTTP_PROXY is set"]),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": "internal.corp"}, False, ["NO_PROXY / no_proxy is not empty"]),
        ({"HTTPS_PROXY": PROXY, "no_proxy": "internal.corp"}, False, ["NO_PROXY / no_proxy is not empty"]),
        ({"HTTPS_PROXY": PROXY}, True, ["CLAUDE_GATEWAY_ALLOW_LOOPBACK=1 is set"]),
        (
            {"NO_PROXY": "*"},
            True,
            [
                "neither HTTPS_PROXY nor HTTP_PROXY is set",
                "NO_PROXY / no_proxy is not empty",
                "CLAUDE_GATEWAY_ALLOW_LOOPBACK=1 is set",
            ],
        ),
    ],
)
def test_boundary_off_with_a_warning_naming_each_missing_condition(env, allow_loopback, missing):
    e = egress(allow_loopback, **env, **{BOUNDARY_ENV: "1"})
    assert not e.boundary
    [notice] = [n for n in e.notices() if BOUNDARY_ENV in n]
    assert notice.startswith(f"{BOUNDARY_ENV}=1 is ignored")
    for condition in missing:
        assert condition in notice
    assert notice.count(";") == len(missing) - 1  # nothing else is listed


def test_boundary_wants_exactly_one():
    e = egress(HTTPS_PROXY=PROXY, **{BOUNDARY_ENV: "true"})
    assert not e.boundary
    assert e.notices() == [f"{BOUNDARY_ENV} is 'true'; only 1 turns proxy-only egress on"]
    assert not egress(HTTPS_PROXY=PROXY, **{BOUNDARY_ENV: ""}).boundary


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/",
        "https://LOCALHOST./",
        "https://api.localhost:8443/",
        "http://127.0.0.1:8080/",
        "http://127.1/",
        "http://2130706433/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.10.10/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/",
        "http://100.100.100.200/",
    ],
)
def test_boundary_refuses_names_that_are_local_on_their_face(url):
    e = egress(HTTPS_PROXY=PROXY, HTTP_PROXY=PROXY, **{BOUNDARY_ENV: "1"})
    refusal = e.target_refusal(url)
    assert refusal is not None and refusal.startswith("refused in proxy-only egress: the URL ")


@pytest.mark.parametrize(
    "url", ["https://bedrock-runtime.us-east-1.amazonaws.com/", "https://10.0.0.5/", "https://internal.corp:8443/"]
)
def test_boundary_passes_everything_else_unjudged(url):
    e = egress(HTTPS_PROXY=PROXY, **{BOUNDARY_ENV: "1"})
    assert e.target_refusal(url) is None


# ====================================================================== boot lines


def test_idp_notice_only_when_use_proxy_is_unset_and_a_proxy_is_set():
    e = egress(HTTPS_PROXY=PROXY)
    notice = e.idp_notice(None)
    assert notice is not None and "oidc.use_proxy" in notice and "go direct" in notice
    assert e.idp_notice(False) is None and e.idp_notice(True) is None
    assert egress().idp_notice(None) is None


def test_all_proxy_is_named_as_unused():
    assert egress(ALL_PROXY=PROXY).notices() == ["ALL_PROXY is not used; set HTTPS_PROXY / HTTP_PROXY"]


def test_describe_names_each_scheme_and_the_mode():
    line = egress(HTTPS_PROXY="http://u:p@proxy.corp:3128", NO_PROXY="a.com,b.com").describe()
    assert line == (
        "egress: https via http://proxy.corp:3128, http via direct, 2 NO_PROXY entries; "
        "targets resolved and checked by the gateway first"
    )
    assert "NO_PROXY=*" in (egress(HTTP_PROXY=PROXY, NO_PROXY="*").describe() or "")
