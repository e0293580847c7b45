"""Managed policies: selection, merge rules, model access, boot checks and warnings.

Policies are built from real configs (``gateway.config.load.loads``) so the tests see
exactly what the gateway sees at boot.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gateway.auth.tokens import Principal
from gateway.config.load import ConfigError, loads, unsupported
from gateway.config.settings_keys import key_list
from gateway.policy.canonical_json import checksum, dumps
from gateway.policy.policies import ALLOW_ALL, ModelAccess, Policies, client_defaults, merge_settings
from gateway.upstreams.routing import Routes

ENV = {"JWT": "j" * 40, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1"}
BASE: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 18080},
    "oidc": {"issuer": "http://127.0.0.1:18100", "client_id": "gw", "client_secret": "s"},
    "session": {"jwt_secret": "${JWT}"},
    "store": {"postgres_url": "postgres://gw@127.0.0.1:5432/gw"},
    "upstreams": [{"provider": "anthropic", "base_url": "http://127.0.0.1:18200", "auth": {"api_key": "k"}}],
}


def config(policies: list[dict[str, Any]] | None, **extra: Any) -> Any:
    data = copy.deepcopy(BASE)
    if policies is not None:
        data["managed"] = {"policies": policies}
    data.update(extra)
    return loads(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), ENV)


def policies(policy_list: list[dict[str, Any]] | None, pricing_rows: Any = None, **extra: Any) -> Policies:
    cfg = config(policy_list, **extra)
    routes = Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models)
    return Policies(cfg, tuple(e.id for e in routes.catalog), pricing_rows)


def who(groups: tuple[str, ...] = (), email: str | None = "dev@example.com", sub: str = "u1") -> Principal:
    return Principal(sub=sub, email=email, name=None, groups=groups, sid=None, exp=0)


def boot_issues(policy_list: list[dict[str, Any]]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        config(policy_list)
    return err.value.issues


# ---------------------------------------------------------------- merge rules

# (base, role, merged)
MERGES = [
    pytest.param(
        {"availableModels": ["a", "b"]},
        {"availableModels": ["c"]},
        {"availableModels": ["c"]},
        id="allow-list replaces",
    ),
    pytest.param(
        {"permissions": {"allow": ["Read"], "deny": ["WebFetch"], "ask": ["Bash"]}},
        {"permissions": {"allow": ["Grep"], "deny": ["Edit", "WebFetch"], "ask": ["Write"]}},
        {"permissions": {"allow": ["Grep"], "deny": ["WebFetch", "Edit"], "ask": ["Bash", "Write"]}},
        id="permissions: allow replaces, deny and ask unite",
    ),
    pytest.param(
        {"permissions": {"deny": ["WebFetch"], "defaultMode": "plan"}},
        {"permissions": {"allow": ["Read"]}},
        {"permissions": {"deny": ["WebFetch"], "defaultMode": "plan", "allow": ["Read"]}},
        id="permissions keys the role leaves out are inherited",
    ),
    pytest.param(
        {
            "disabledMcpjsonServers": ["a"],
            "deniedMcpServers": [{"serverName": "x"}],
            "blockedMarketplaces": [{"source": "npm", "package": "p"}],
        },
        {
            "disabledMcpjsonServers": ["b", "a"],
            "deniedMcpServers": [{"serverName": "x"}, {"serverName": "y"}],
            "blockedMarketplaces": [{"source": "npm", "package": "q"}],
        },
        {
            "disabledMcpjsonServers": ["a", "b"],
            "deniedMcpServers": [{"serverName": "x"}, {"serverName": "y"}],
            "blockedMarketplaces": [{"source": "npm", "package": "p"}, {"source": "npm", "package": "q"}],
        },
        id="deny-lists unite, objects compared by value",
    ),
    pytest.param(
        {"deniedModels": ["fable"]},
        {"deniedModels": ["opus"]},
        {"deniedModels": ["fable", "opus"]},
        id="deniedModels unites",
    ),
    pytest.param(
        {
            "hooks": {
                "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit"}]}],
                "Stop": [{"hooks": []}],
            }
        },
        {
            "hooks": {
                "PreToolUse": [{"matcher": "Edit", "hooks": [{"type": "command", "command": "fmt"}]}],
                "SessionStart": [{"hooks": []}],
            }
        },
        {
            "hooks": {
                "PreToolUse": [
                    {"matcher": "Bash", "hooks": [{"type": "command", "command": "audit"}]},
                    {"matcher": "Edit", "hooks": [{"type": "command", "command": "fmt"}]},
                ],
                "Stop": [{"hooks": []}],
                "SessionStart": [{"hooks": []}],
            }
        },
        id="hooks unite per event",
    ),
    pytest.param(
        {"env": {"A": "1", "B": "2"}, "modelOverrides": {"x": "1"}, "skillOverrides": {"s": "on"}},
        {"env": {"B": "3", "C": "4"}, "modelOverrides": {"y": "2"}, "skillOverrides": {"s": "off"}},
        {
            "env": {"A": "1", "B": "3", "C": "4"},
            "modelOverrides": {"x": "1", "y": "2"},
            "skillOverrides": {"s": "off"},
        },
        id="records merge one level deep",
    ),
    pytest.param(
        {"sandbox": {"enabled": True, "network": {"allowedDomains": ["a"]}}, "model": "x"},
        {"sandbox": {"network": {"allowedDomains": ["b"]}}},
        {"sandbox": {"network": {"allowedDomains": ["b"]}}, "model": "x"},
        id="other keys replace whole",
    ),
    pytest.param({"env": {"A": "1"}}, {}, {"env": {"A": "1"}}, id="empty role inherits the base"),
    pytest.param({}, {"env": {"A": "1"}}, {"env": {"A": "1"}}, id="empty base"),
]


@pytest.mark.parametrize(("base", "role", "merged"), MERGES)
def test_merge_rules(base, role, merged):
    before = copy.deepcopy((base, role))
    assert merge_settings(base, role) == merged
    assert (base, role) == before  # inputs untouched


# ---------------------------------------------------------------- selection

POLICY_LIST: list[dict[str, Any]] = [
    {
        "match": {"groups": ["contractors"]},
        "cli": {"availableModels": ["claude-haiku-4-5"], "permissions": {"allow": ["Read"]}},
    },
    {"match": {"email_domain": "@Partner.example"}, "cli": {"env": {"P": "1"}}},
    {"match": {"groups": ["eng"], "email_domain": "example.com"}, "cli": {"env": {"E": "1"}}},
    {"match": {}, "cli": {"permissions": {"deny": ["WebFetch"]}, "env": {"BASE": "1"}}},
]


@pytest.mark.parametrize(
    ("groups", "email", "index"),
    [
        (("contractors",), "x@example.com", 0),
        (("eng", "contractors"), "x@example.com", 0),  # first match wins
        (("Contractors",), "x@other.org", 3),  # groups are case-sensitive
        ((), "x@PARTNER.EXAMPLE", 1),  # domains are not
        ((), "a@b@partner.example", 1),  # after the last @
        (("eng",), "x@example.com", 2),  # both keys fit
        (("eng",), "x@other.org", 3),  # only one fits
        ((), None, 3),
        ((), "no-at-sign", 3),
    ],
)
def test_first_matching_policy_wins(groups, email, index):
    matched = policies(POLICY_LIST).match(who(groups, email))
    assert matched is not None and matched.index == index


def test_winner_is_merged_onto_the_catch_all_base():
    ps = policies(POLICY_LIST)
    contractor = ps.match(who(("contractors",)))
    assert contractor is not None
    assert contractor.settings == {
        "permissions": {"deny": ["WebFetch"], "allow": ["Read"]},
        "env": {"BASE": "1"},
        "availableModels": ["claude-haiku-4-5"],
    }
    base = ps.match(who())
    assert base is not None and base.settings == {"permissions": {"deny": ["WebFetch"]}, "env": {"BASE": "1"}}


def test_no_match_without_a_base_and_no_managed_section():
    ps = policies(POLICY_LIST[:3])
    assert ps.configured and ps.match(who(("nobody",), "x@other.org")) is None
    assert ps.access_for(who(("nobody",), "x@other.org")) is ALLOW_ALL
    none = policies(None)
    assert not none.configured and none.match(who()) is None and none.access_for(who()) is ALLOW_ALL


def test_served_body_checksum_and_etag_are_precomputed():
    matched = policies(
        [
            {
                "match": {},
                "cli": {
                    "availableModels": ["claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5"],
                    "permissions": {"deny": ["WebFetch"]},
                    "enforceAvailableModels": True,
                },
            }
        ]
    ).match(who())
    assert matched is not None
    assert matched.checksum == checksum(matched.settings)
    assert matched.etag == f'"{matched.checksum}"'
    assert matched.body == (
        b'{"uuid":"'
        + matched.checksum.encode()
        + b'","checksum":"'
        + matched.checksum.encode()
        + b'","settings":'
        + dumps(matched.settings)
        + b"}"
    )


def test_empty_policy_serves_empty_settings():
    matched = policies([{"match": {}}]).match(who())
    assert matched is not None and matched.settings == {}
    assert matched.checksum == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_settings_alias_is_served_like_cli():
    a = policies([{"match": {}, "settings": {"env": {"A": "1"}}}]).match(who())
    b = policies([{"match": {}, "cli": {"env": {"A": "1"}}}]).match(who())
    assert a is not None and b is not None and a.body == b.body


def test_match_results_are_cached_per_groups_and_domain():
    ps = policies(POLICY_LIST)
    first = ps.match(who(("eng",), "a@example.com", sub="a"))
    again = ps.match(who(("eng",), "b@EXAMPLE.com", sub="b"))
    assert first is again
    assert len(ps._cache) == 1


# ---------------------------------------------------------------- model access

CATALOG_OPUS = ["claude-opus-5-5", "claude-opus-5", "claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6"]

# (availableModels, deniedModels, availableModelsMatch, model, allowed)
ACCESS = [
    # exact ids and their dated forms
    (["claude-sonnet-4-6"], None, None, "claude-sonnet-4-6", True),
    (["claude-sonnet-4-6"], None, None, "claude-sonnet-4-6-20260101", True),
    (["claude-sonnet-4-6"], None, None, "claude-sonnet-4-5", False),
    (["claude-haiku-4-5"], None, None, "claude-haiku-4-5-20251001", True),  # observed on the wire
    (["claude-haiku-4-5-20251001"], None, None, "claude-haiku-4-5", True),  # the alias of a listed dated id
    (["Claude-Sonnet-4-6"], None, None, "claude-sonnet-4-6", True),
    # family aliases
    (["opus"], None, None, "claude-opus-4-7", True),
    (["opus"], None, None, "claude-opus-4-1-20250805", True),
    (["opus"], None, None, "claude-sonnet-4-6", False),
    (["sonnet", "haiku"], None, None, "claude-haiku-5-5", True),
    (["fable"], None, None, "claude-fable-5-2", True),
    (["opusplan"], None, None, "claude-sonnet-5", True),
    # a bare family next to a narrower entry of the same family does not widen it
    (["opus", "opus-4-8"], None, None, "claude-opus-4-7", False),
    (["opus", "opus-4-8"], None, None, "claude-opus-4-8", True),
    (["opus", "claude-sonnet-4-6"], None, None, "claude-opus-4-7", True),
    # version prefixes, at a "-" boundary
    (["claude-opus-4"], None, None, "claude-opus-4-7", True),
    (["claude-opus-4"], None, None, "claude-opus-4-1-20250805", True),
    (["claude-opus-4"], None, None, "claude-opus-5", False),
    (["opus-4-5"], None, None, "claude-opus-4-5-20251101", True),
    (["claude-opus-4-5"], None, None, "claude-opus-4-50", False),
    (["claude-opus-5"], None, None, "claude-opus-5-5", True),
    # availableModelsMatch: exact
    (["claude-opus-5"], None, "exact", "claude-opus-5-5", False),
    (["claude-opus-5"], None, "exact", "claude-opus-5", True),
    (["claude-opus-5"], None, "exact", "claude-opus-5-20261001", True),
    (["claude-opus-4"], None, "exact", "claude-opus-4-7", False),
    (["opus"], None, "exact", "claude-opus-4-7", True),  # a family alias still names the family
    # deniedModels wins
    (["opus"], ["claude-opus-4-6"], None, "claude-opus-4-6", False),
    (["opus"], ["claude-opus-4-6"], None, "claude-opus-4-6-20260101", False),
    (["opus"], ["claude-opus-4-6"], None, "claude-opus-4-7", True),
    (None, ["fable"], None, "claude-fable-5-1", False),
    (None, ["fable"], None, "claude-opus-4-7", True),
    (None, ["claude-opus-4"], None, "claude-opus-4-8", False),
    (None, ["opus", "claude-opus-4-6"], None, "claude-opus-4-7", False),  # no narrowing in a deny-list
    # no lists: everything (routing refuses unknown ids separately)
    (None, None, None, "anything", True),
    # an empty allowlist allows nothing
    ([], None, None, "claude-opus-4-7", False),
]


@pytest.mark.parametrize(("available", "denied", "mode", "model", "allowed"), ACCESS)
def test_model_access(available, denied, mode, model, allowed):
    cli: dict[str, Any] = {"enforceAvailableModels": True}
    if available is not None:
        cli["availableModels"] = available
    if denied is not None:
        cli["deniedModels"] = denied
    if mode is not None:
        cli["availableModelsMatch"] = mode
    access = policies([{"match": {}, "cli": cli}]).access_for(who())
    assert access.allows(model) is allowed
    message = access.check(model)
    if allowed:
        assert message is None
    elif denied is not None and message and "deniedModels" in message:
        assert message.startswith(f"model {model} is blocked by your role's deniedModels list; ")
    else:
        assert message is not None
        assert message.startswith(f"model {model} is not in your role's availableModels allowlist; ")


def _offered(message: str) -> list[str]:
    return message.split("; models you may use: ", 1)[1].split(" and ", 1)[0].split(", ")


def test_a_refusal_names_the_models_the_person_may_use():
    access = policies([{"match": {}, "cli": {"availableModels": ["claude-sonnet-4-6", "haiku"]}}]).access_for(who())
    message = access.check("claude-opus-5-5")
    assert message is not None and message.startswith("model claude-opus-5-5 is not in your role's")
    # The ids /v1/models would list to this person, in its order.
    assert _offered(message) == ["claude-haiku-5-5", "claude-sonnet-4-6", "claude-haiku-4-5-20251001"]
    denied = policies([{"match": {}, "cli": {"deniedModels": ["opus", "fable", "sonnet"]}}]).access_for(who())
    message = denied.check("claude-opus-4-7")
    assert message is not None and _offered(message) == ["claude-haiku-5-5", "claude-haiku-4-5-20251001"]


def test_a_long_list_of_allowed_models_is_cut_short():
    # Long custom ids: the message stops by length...
    models = [{"id": f"team-model-{i:02d}-" + "x" * 100, "upstream_model": {"anthropic": "m"}} for i in range(30)]
    rule = [{"match": {}, "cli": {"deniedModels": ["team-model-00"]}}]
    access = policies(rule, models=models, auto_include_builtin_models=False).access_for(who())
    message = access.check("team-model-00-" + "x" * 100)
    assert message is not None and len(message) < 500
    assert len(_offered(message)) == 2 and message.endswith(" and 27 more (GET /v1/models lists them all)")
    # ... and many short ones by count.
    many = policies([{"match": {}, "cli": {"deniedModels": ["claude-opus-5-5"]}}]).access_for(who())
    assert len(_offered(many.check("claude-opus-5-5") or "")) == 10


def test_a_refusal_says_when_nothing_is_allowed():
    access = policies([{"match": {}, "cli": {"availableModels": []}}]).access_for(who())
    assert access.check("claude-opus-4-7") == (
        "model claude-opus-4-7 is not in your role's availableModels allowlist; "
        "your role allows none of this gateway's models"
    )


def test_access_answers_are_cached_and_bounded():
    access = ModelAccess(["opus"], None, False, {})
    for i in range(2000):
        access.check(f"claude-opus-{i}")
    assert len(access._cache) <= 1024
    assert access.check("claude-opus-4-7") is None


# ---------------------------------------------------------------- boot warnings


def test_warns_when_the_starting_model_is_not_allowed():
    ps = policies([{"match": {}, "cli": {"availableModels": ["claude-sonnet-4-6"]}}])
    assert (
        len(ps.warnings) == 1
        and "claude-opus-4-7" in ps.warnings[0]
        and "managed.policies[0]" in ps.warnings[0]
    )


def test_every_client_default_model_is_checked():
    # The list lives in data/models.json: the sign-in default and the ANTHROPIC_BASE_URL one.
    defaults = {d.id: d for d in client_defaults()}
    assert {"claude-opus-4-7", "claude-opus-5-5"} <= set(defaults)
    assert defaults["claude-opus-4-7"].reads_managed_settings and not defaults["claude-opus-5-5"].reads_managed_settings
    for d in defaults.values():
        others = [m for m in defaults if m != d.id]
        ps = policies([{"match": {}, "cli": {"availableModels": [*others, "claude-haiku-4-5"]}}])
        assert len(ps.warnings) == 1 and f"does not allow {d.id} (" in ps.warnings[0], ps.warnings
        assert all(f"allow {m} " not in ps.warnings[0] for m in others)
    base_url_only = policies([{"match": {}, "cli": {"availableModels": ["claude-opus-4-7"]}}]).warnings
    assert "ANTHROPIC_BASE_URL" in base_url_only[0] and "never reads managed settings" in base_url_only[0]


@pytest.mark.parametrize(
    "cli",
    [
        {"availableModels": ["claude-sonnet-4-6"], "model": "claude-sonnet-4-6"},
        {"availableModels": ["claude-sonnet-4-6"], "enforceAvailableModels": True},
        {"availableModels": ["opus"]},
        {"availableModels": ["claude-opus-4-7", "claude-opus-5-5", "claude-haiku-4-5"]},
        {"env": {"A": "1"}},
    ],
)
def test_no_warning_when_the_start_is_covered(cli):
    assert policies([{"match": {}, "cli": cli}]).warnings == []


def test_warns_on_an_empty_allowlist_and_unreachable_policies():
    ps = policies([{"match": {}, "cli": {"availableModels": []}}, {"match": {"groups": ["eng"]}}])
    assert any("availableModels is empty" in w for w in ps.warnings)
    assert any("managed.policies[1] never applies" in w for w in ps.warnings)


def test_warning_uses_the_merged_policy():
    ps = policies(
        [
            {"match": {"groups": ["eng"]}, "cli": {"env": {"X": "1"}}},
            {"match": {}, "cli": {"availableModels": ["claude-sonnet-4-6"], "model": "claude-sonnet-4-6"}},
        ]
    )
    assert ps.warnings == []


# ---------------------------------------------------------------- pricing injection and hint headers

ROWS = {"claude-opus-4-7": {"input": 5, "output": 25}}


def test_model_pricing_is_injected_unless_the_policy_sets_its_own():
    ps = policies(
        [
            {
                "match": {"groups": ["own"]},
                "cli": {"modelPricing": {"claude-opus-4-7": {"input": 1, "output": 2}}},
            },
            {"match": {"groups": ["optout"]}, "cli": {"modelPricing": {}}},
            {"match": {}, "cli": {"env": {"A": "1"}}},
        ],
        pricing_rows=ROWS,
        admin={"write_keys": [{"id": "w", "key": "w" * 32}]},
        pricing={"multiplier": 1},
    )
    base = ps.match(who())
    own = ps.match(who(("own",)))
    optout = ps.match(who(("optout",)))
    assert base is not None and own is not None and optout is not None
    assert base.settings["modelPricing"] == ROWS
    assert own.settings["modelPricing"] == {"claude-opus-4-7": {"input": 1, "output": 2}}
    assert optout.settings["modelPricing"] == {}
    assert base.checksum == checksum(base.settings)  # the injection is part of what is checksummed


def test_no_injection_without_pricing():
    matched = policies([{"match": {}}]).match(who())
    assert matched is not None and "modelPricing" not in matched.settings


def test_hint_header_policies_are_flagged():
    ps = policies(
        [
            {"match": {"groups": ["hints"]}, "cli": {"env": {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"}}},
            {"match": {}},
        ]
    )
    assert ps.hint_headers
    assert ps.match(who(("hints",))).hint_headers  # type: ignore[union-attr]
    assert not ps.match(who()).hint_headers  # type: ignore[union-attr]


# ---------------------------------------------------------------- boot checks of cli


@pytest.mark.parametrize(
    ("cli_key", "cli", "path", "words"),
    [
        (
            "cli",
            {"availableModel": ["x"]},
            "managed.policies[0].cli.availableModel",
            "not a managed-settings key",
        ),
        ("settings", {"foo": 1}, "managed.policies[0].settings.foo", "not a managed-settings key"),
        ("cli", {"mcpServers": {}}, "managed.policies[0].cli.mcpServers", "managedMcpServers"),
        ("cli", {"availableModels": "opus"}, "managed.policies[0].cli.availableModels", "expected a list"),
        (
            "cli",
            {"enforceAvailableModels": "yes"},
            "managed.policies[0].cli.enforceAvailableModels",
            "true/false",
        ),
        ("cli", {"cleanupPeriodDays": "30"}, "managed.policies[0].cli.cleanupPeriodDays", "a number"),
        ("cli", {"model": None}, "managed.policies[0].cli.model", "expected a string"),
        ("cli", {"statusLine": {"padding": 1e400}}, "managed.policies[0].cli.statusLine.padding", "finite"),
        ("cli", {"env": {"BIG": 2**60}}, "managed.policies[0].cli.env.BIG", "too large"),
    ],
)
def test_cli_is_checked_at_boot(cli_key, cli, path, words):
    issues = boot_issues([{"match": {}, cli_key: cli}])
    assert [p for p, _ in issues] == [path]
    assert words in issues[0][1]


def test_open_subtrees_take_any_keys_and_known_keys_pass():
    cfg = config(
        [
            {
                "match": {},
                "cli": {
                    "env": {"ANYTHING_AT_ALL": "x"},
                    "pluginConfigs": {"p@m": {"whatever": {"deep": [1, 2]}}},
                    "permissions": {"allow": ["Read"], "futureKey": True},
                    "availableModels": ["opus"],
                    "availableModelsMatch": "exact",
                    "deniedModels": ["fable"],
                    "managedMcpServers": [{"name": "x", "type": "http", "url": "https://mcp.example.com"}],
                    "attribution": False,
                    "hooks": {"PreToolUse": []},
                },
            }
        ]
    )
    assert cfg.managed is not None


def test_the_key_list_is_dated_and_covers_the_documented_keys():
    keys = key_list()
    assert keys.compiled
    for name in (
        "availableModels",
        "enforceAvailableModels",
        "model",
        "env",
        "permissions",
        "hooks",
        "modelPricing",
        "managedMcpServers",
        "forceLoginMethod",
        "forceLoginGatewayUrl",
        "parentSettingsBehavior",
        "deniedMcpServers",
        "blockedMarketplaces",
        "modelOverrides",
        "skillOverrides",
        "apiKeyHelper",
    ):
        assert name in keys.types, name
    assert "mcpServers" not in keys.types and "mcpServers" in keys.rejected
    assert keys.open == {"env", "pluginConfigs", "permissions"}


def test_desktop_blocks_are_served_and_checked():
    # Served since the Desktop bootstrap landed (tests/unit/policy/test_desktop.py); keys are checked at boot.
    assert unsupported(config([{"match": {}, "desktop": {}}])) == []
    assert boot_issues([{"match": {}, "desktop": {"anything": {"goes": 1}}}])[0][0] == "managed.policies[0].desktop.anything"
