"""Claude Desktop's bootstrap (SPEC §17.4): the desktop block checked at boot, who is
opted in, inheritance from the match: {} base, and what the response holds.

Built from real configs (``gateway.config.load.loads``) and real :class:`Policies`, so
the tests see exactly what the gateway serves.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from gateway.auth.tokens import Principal
from gateway.config.load import ConfigError, loads, unsupported
from gateway.policy import desktop
from gateway.policy.desktop import Denied, DesktopBootstrap, Served, inherit
from gateway.policy.policies import Policies
from gateway.upstreams.routing import Routes

ENV = {"JWT": "j" * 40, "ORG": "00000000-0000-0000-0000-000000000001"}
BASE: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 18080, "public_url": "https://gw.example.com/"},
    "oidc": {"issuer": "https://idp.example.com", "client_id": "gw", "client_secret": "s"},
    "session": {"jwt_secret": "${JWT}"},
    "store": {"postgres_url": "postgres://gw@db.example.com:5432/gw"},
    "upstreams": [{"provider": "anthropic", "auth": {"api_key": "k"}}],
}
TELEMETRY = {"forward_to": [{"url": "https://otel.example.com"}], "resource_attributes": {"deployment.environment": "prod"}}
REQUEST_URL = "http://10.0.0.5:8080"


def config(policies: list[dict[str, Any]] | None, *, expand: bool = True, **extra: Any) -> Any:
    data = copy.deepcopy(BASE)
    if policies is not None:
        data["managed"] = {"policies": policies}
    for key, value in extra.items():
        data[key] = value
    return loads(yaml.safe_dump(data, sort_keys=False), ENV, expand=expand)


def bootstrap(policies: list[dict[str, Any]] | None, **extra: Any) -> DesktopBootstrap:
    cfg = config(policies, **extra)
    catalog = tuple(e.id for e in Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models).catalog)
    return DesktopBootstrap(cfg, Policies(cfg, catalog))


def who(groups: tuple[str, ...] = (), email: str | None = "dev@example.com", sub: str = "u1") -> Principal:
    return Principal(sub=sub, email=email, name=None, groups=groups, sid=None, exp=0)


def served(boot: DesktopBootstrap, principal: Principal | None = None) -> dict[str, Any]:
    answer = boot.answer(principal or who(), REQUEST_URL)
    assert isinstance(answer, Served), answer
    assert json.loads(answer.body) == answer.document
    return answer.document


def boot_issues(block: Any, index: int = 0) -> list[tuple[str, str]]:
    policies: list[dict[str, Any]] = [{"match": {"groups": [f"g{i}"]}} for i in range(index)]
    policies.append({"match": {}, "desktop": block})
    with pytest.raises(ConfigError) as err:
        config(policies)
    return err.value.issues


# ---------------------------------------------------------------- boot checks


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("someKey", True, "not a Claude Desktop key Gatehouse knows"),
        ("chatTabEnabld", False, "check the spelling"),
        # Computed by the gateway: the inference connection, the model list, the OTLP relay.
        ("inferenceProvider", "vertex", "computed by the gateway"),
        ("inferenceGatewayApiKey", "sk-shared", "own gateway sign-in"),
        ("inferenceModels", [{"name": "claude-opus-4-8"}], "availableModels"),
        ("modelDiscoveryEnabled", True, "availableModels"),
        ("inferenceVertexProjectId", "p", "inference connection"),
        ("otlpEndpoint", "https://otel.example.com", "OTLP relay"),
        ("otlpProtocol", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ("otlpDesktopLogLevel", "info", "OTLP relay"),
        # Read from the device's MDM profile only, or only with a claude.ai sign-in.
        ("bootstrapUrl", "https://gw.example.com/user/bootstrap", "MDM profile"),
        ("bootstrapOidc", {"issuer": "x"}, "MDM profile"),
        ("disableDeploymentModeChooser", True, "MDM profile"),
        ("forceLoginOrgUUID", "x", "claude.ai"),
        # Old names point at the new.
        ("isDxtEnabled", True, "use isDesktopExtensionEnabled"),
    ],
)
def test_keys_desktop_would_not_take_from_the_gateway_stop_the_boot(key, value, says):
    (issue,) = boot_issues({key: value}, index=2)
    assert issue[0] == f"managed.policies[2].desktop.{key}"
    assert says in issue[1]


@pytest.mark.parametrize(
    ("block", "path", "says"),
    [
        ({"chatTabEnabled": "no"}, "chatTabEnabled", "expected true/false, got a string"),
        ({"autoUpdaterEnforcementHours": 0}, "autoUpdaterEnforcementHours", "between 1 and"),
        ({"inferenceMaxTokensPerWindow": True}, "inferenceMaxTokensPerWindow", "whole number"),
        ({"coworkEgressAllowedHosts": "github.com"}, "coworkEgressAllowedHosts", "expected a list"),
        ({"coworkEgressAllowedHosts": ["github.com", "https://x.example.com/a"]}, "coworkEgressAllowedHosts[1]", "not a URL"),
        ({"disabledBuiltinTools": ["WebFetch", "Bash(npm *)"]}, "disabledBuiltinTools[1]", "bare tool name"),
        ({"allowedWorkspaceFolders": [" "]}, "allowedWorkspaceFolders[0]", "non-empty path"),
        ({"builtinToolPolicy": ["Bash"]}, "builtinToolPolicy", "mapping of tool name"),
        ({"builtinToolPolicy": {"Bash": "deny"}}, "builtinToolPolicy.Bash", "disabledBuiltinTools"),
        ({"banner": "hello"}, "banner", "expected a mapping"),
        ({"managedMcpServers": [{"name": "wiki"}]}, "managedMcpServers[0].url", "is required"),
        ({"managedMcpServers": {"wiki": {}}}, "managedMcpServers", "list of servers"),
        ({"organizationPluginsUrl": "http://plugins.example.com"}, "organizationPluginsUrl", "https://"),
        ({"deploymentOrganizationUuid": "org-1"}, "deploymentOrganizationUuid", "UUID"),
    ],
)
def test_values_desktop_would_reject_stop_the_boot_at_their_path(block, path, says):
    (issue,) = boot_issues(block)
    assert issue[0] == f"managed.policies[0].desktop.{path}"
    assert says in issue[1]


def test_every_problem_is_reported_not_only_the_first():
    issues = boot_issues({"someKey": 1, "bootstrapUrl": "https://x", "chatTabEnabled": 1, "banner": {1: "x"}})
    assert [p for p, _ in issues] == [
        "managed.policies[0].desktop.someKey",
        "managed.policies[0].desktop.bootstrapUrl",
        "managed.policies[0].desktop.chatTabEnabled",
        "managed.policies[0].desktop.banner.1",
    ]


def test_a_desktop_block_that_is_not_a_mapping_is_a_shape_issue():
    (issue,) = boot_issues(["chatTabEnabled"])
    assert issue[0] == "managed.policies[0].desktop"


def test_a_full_block_of_admin_keys_boots_and_is_supported():
    block = {
        "chatTabEnabled": False,
        "coworkTabEnabled": True,
        "isClaudeCodeForDesktopEnabled": True,
        "skillCreationEnabled": False,
        "allowedWorkspaceFolders": ["~/Documents/Claude"],
        "coworkEgressAllowedHosts": ["github.com", "*.corp.example.com", "*"],
        "disabledBuiltinTools": ["WebSearch", "computer-use"],
        "builtinToolPolicy": {"Bash": "ask", "Read": "allow"},
        "managedMcpServers": [{"name": "wiki", "transport": "http", "url": "https://wiki.example.com/mcp"}],
        "organizationPluginsUrl": "https://plugins.example.com/registry",
        "isDesktopExtensionEnabled": False,
        "disableAutoUpdates": False,
        "autoUpdaterEnforcementHours": 72,
        "disableNonessentialTelemetry": True,
        "inferenceMaxTokensPerWindow": 2_000_000,
        "inferenceTokenWindowHours": 24,
        "deploymentOrganizationUuid": "${ORG}",
        "banner": {"text": "Internal use only", "color": "amber"},
    }
    cfg = config([{"match": {}, "desktop": block}])
    assert unsupported(cfg) == []
    assert cfg.managed.policies[0].desktop["deploymentOrganizationUuid"] == ENV["ORG"]


def test_a_template_checked_without_its_environment_leaves_variables_unjudged():
    # gatehouse check-config --no-env: ${ORG} stands for any value.
    cfg = config([{"match": {}, "desktop": {"deploymentOrganizationUuid": "${ORG}", "chatTabEnabled": "${TABS}"}}], expand=False)
    assert cfg.managed.policies[0].desktop is not None


def test_deprecated_keys_and_relaxations_the_base_forbids_only_warn():
    cfg = config(
        [
            {"match": {"groups": ["eng"]}, "desktop": {"betaFeaturesEnabled": True, "builtinToolPolicy": {"Bash": "allow"}}},
            {"match": {}, "desktop": {"builtinToolPolicy": {"Bash": "ask"}}},
        ]
    )
    warnings = desktop.boot_warnings(cfg)
    assert len(warnings) == 2
    assert warnings[0].startswith("managed.policies[0].desktop.betaFeaturesEnabled: ")
    assert warnings[1].startswith("managed.policies[0].desktop.builtinToolPolicy.Bash: the match: {} base sets it to ask")
    assert desktop.boot_warnings(config(None)) == []


# ---------------------------------------------------------------- who gets a bootstrap


def test_without_any_desktop_block_everyone_is_told_it_is_not_configured():
    for boot in (bootstrap(None), bootstrap([{"match": {}, "cli": {"model": "opus"}}])):
        answer = boot.answer(who(), REQUEST_URL)
        assert isinstance(answer, Denied)
        assert (answer.reason, answer.policy_index) == ("not_configured", None)
        assert "desktop:" in answer.message


def test_a_caller_no_policy_matches_is_denied_as_such():
    answer = bootstrap([{"match": {"groups": ["eng"]}, "desktop": {}}]).answer(who(("sales",)), REQUEST_URL)
    assert isinstance(answer, Denied) and (answer.reason, answer.policy_index) == ("no_policy_matched", None)


def test_a_policy_without_desktop_and_without_an_opted_in_base_is_not_opted_in():
    boot = bootstrap(
        [
            {"match": {"groups": ["contractors"]}, "cli": {"availableModels": ["haiku"]}},
            {"match": {"groups": ["eng"]}, "desktop": {}},
            {"match": {}, "cli": {}},
        ]
    )
    answer = boot.answer(who(("contractors",)), REQUEST_URL)
    assert isinstance(answer, Denied) and (answer.reason, answer.policy_index) == ("policy_not_opted_in", 0)
    assert isinstance(boot.answer(who(("eng",)), REQUEST_URL), Served)
    answer = boot.answer(who(()), REQUEST_URL)
    assert isinstance(answer, Denied) and (answer.reason, answer.policy_index) == ("policy_not_opted_in", 2)


def test_an_empty_block_on_the_base_opts_in_every_policy():
    boot = bootstrap([{"match": {"groups": ["eng"]}, "cli": {}}, {"match": {}, "desktop": {}}])
    answer = boot.answer(who(("eng",)), REQUEST_URL)
    assert isinstance(answer, Served) and answer.policy_index == 0
    assert served(boot, who(("eng",)))["inferenceProvider"] == "gateway"


# ---------------------------------------------------------------- inheritance from the base


def test_unset_keys_come_from_the_base_and_set_ones_replace_it_whole():
    base: dict[str, Any] = {
        "chatTabEnabled": False,
        "banner": {"text": "base", "color": "red"},
        "allowedWorkspaceFolders": ["~/a", "~/b"],
        "disabledBuiltinTools": ["WebSearch"],
        "builtinToolPolicy": {"Bash": "ask", "Read": "allow", "Write": "allow"},
    }
    role = {
        "banner": {"text": "eng"},
        "allowedWorkspaceFolders": ["~/c"],
        "disabledBuiltinTools": ["WebFetch", "WebSearch"],
        "builtinToolPolicy": {"Bash": "allow", "Write": "ask", "Edit": "ask"},
    }
    merged = inherit(base, role)
    assert merged == {
        "chatTabEnabled": False,
        "banner": {"text": "eng"},
        "allowedWorkspaceFolders": ["~/c"],
        "disabledBuiltinTools": ["WebSearch", "WebFetch"],
        # The base's ask on Bash holds; a policy may tighten Write, and add Edit.
        "builtinToolPolicy": {"Bash": "ask", "Read": "allow", "Write": "ask", "Edit": "ask"},
    }
    assert base["builtinToolPolicy"]["Write"] == "allow"  # neither input changed


def test_served_documents_apply_inheritance_per_policy():
    boot = bootstrap(
        [
            {"match": {"groups": ["eng"]}, "desktop": {"chatTabEnabled": True, "disabledBuiltinTools": ["WebFetch"]}},
            {"match": {"groups": ["ops"]}, "cli": {}},
            {"match": {}, "desktop": {"chatTabEnabled": False, "disabledBuiltinTools": ["WebSearch"], "skillCreationEnabled": False}},
        ]
    )
    eng = served(boot, who(("eng",)))
    assert (eng["chatTabEnabled"], eng["skillCreationEnabled"]) == (True, False)
    assert eng["disabledBuiltinTools"] == ["WebSearch", "WebFetch"]
    ops = served(boot, who(("ops",)))
    assert (ops["chatTabEnabled"], ops["disabledBuiltinTools"]) == (False, ["WebSearch"])
    assert boot.effective_block(2) == {"chatTabEnabled": False, "disabledBuiltinTools": ["WebSearch"], "skillCreationEnabled": False}


# ---------------------------------------------------------------- what a bootstrap holds


def test_models_follow_available_models_order_and_skip_denied_ones():
    boot = bootstrap(
        [
            {
                "match": {},
                "cli": {"availableModels": ["sonnet", "claude-opus-4-8"], "deniedModels": ["claude-sonnet-4-5"]},
                "desktop": {},
            }
        ]
    )
    names = [m["name"] for m in served(boot)["inferenceModels"]]
    assert names[-1] == "claude-opus-4-8"
    assert names[:-1] and all("sonnet" in n for n in names[:-1])
    assert not any(n.startswith("claude-sonnet-4-5") for n in names)


def test_without_available_models_every_catalog_model_is_listed():
    cfg = config([{"match": {}, "desktop": {}}])
    catalog = tuple(e.id for e in Routes(cfg.upstreams, cfg.models, cfg.auto_include_builtin_models).catalog)
    doc = served(DesktopBootstrap(cfg, Policies(cfg, catalog)))
    assert [m["name"] for m in doc["inferenceModels"]] == list(catalog)


def test_disabled_tools_are_bare_deny_entries_united_with_the_block():
    boot = bootstrap(
        [
            {
                "match": {},
                "cli": {"permissions": {"deny": ["WebFetch", "Bash(npm *)", "mcp__wiki__search", "Read(./.env)", "Task"]}},
                "desktop": {"disabledBuiltinTools": ["WebSearch", "Task"]},
            }
        ]
    )
    assert served(boot)["disabledBuiltinTools"] == ["WebFetch", "Task", "WebSearch"]
    assert "disabledBuiltinTools" not in served(bootstrap([{"match": {}, "desktop": {}}]))


def test_egress_comes_from_the_sandbox_unless_the_block_names_hosts():
    sandbox = {"sandbox": {"network": {"allowedDomains": ["github.com", "pypi.org"]}}}
    assert served(bootstrap([{"match": {}, "cli": sandbox, "desktop": {}}]))["coworkEgressAllowedHosts"] == [
        "github.com",
        "pypi.org",
    ]
    own = {"coworkEgressAllowedHosts": ["*.corp.example.com"]}
    assert served(bootstrap([{"match": {}, "cli": sandbox, "desktop": own}]))["coworkEgressAllowedHosts"] == [
        "*.corp.example.com"
    ]
    assert "coworkEgressAllowedHosts" not in served(bootstrap([{"match": {}, "desktop": {}}]))


def test_inference_goes_to_public_url_or_else_where_the_request_came():
    assert served(bootstrap([{"match": {}, "desktop": {}}]))["inferenceGatewayBaseUrl"] == "https://gw.example.com"
    bare = copy.deepcopy(BASE["listen"])
    del bare["public_url"]
    boot = bootstrap([{"match": {}, "desktop": {}}], listen=bare)
    assert served(boot)["inferenceGatewayBaseUrl"] == REQUEST_URL


def test_without_telemetry_there_is_no_otlp_and_no_identity():
    doc = served(bootstrap([{"match": {}, "desktop": {}}]))
    assert not [k for k in doc if k.startswith("otlp")]
    # forward_to without public_url relays nothing to point Desktop at, as for Claude Code (TEL-6).
    bare = copy.deepcopy(BASE["listen"])
    del bare["public_url"]
    doc = served(bootstrap([{"match": {}, "desktop": {}}], listen=bare, telemetry=TELEMETRY))
    assert not [k for k in doc if k.startswith("otlp")]


def test_with_telemetry_desktop_exports_to_the_gateway_with_the_callers_identity():
    boot = bootstrap([{"match": {}, "desktop": {}}], telemetry=TELEMETRY)
    doc = served(boot, who(("eng", "oncall"), email="ada@example.com", sub="00u1"))
    assert doc["otlpEndpoint"] == "https://gw.example.com"
    assert doc["otlpProtocol"] == "http/protobuf"
    assert doc["otlpResourceAttributes"] == {
        "deployment.environment": "prod",
        "user.email": "ada@example.com",
        "user.groups": "eng,oncall",
        "enduser.id": "ada@example.com",
        "enduser.sub": "00u1",
    }
    other = served(boot, who((), email=None, sub="00u2"))["otlpResourceAttributes"]
    assert other == {"deployment.environment": "prod", "enduser.sub": "00u2"}


def test_the_protocol_follows_the_policy_env():
    json_env = {"env": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}}
    boot = bootstrap(
        [
            {"match": {"groups": ["web"]}, "cli": json_env},
            {"match": {"groups": ["grpc"]}, "cli": {"env": {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}}},
            {"match": {}, "desktop": {}},
        ],
        telemetry=TELEMETRY,
    )
    assert served(boot, who(("web",)))["otlpProtocol"] == "http/json"
    assert served(boot, who(("grpc",)))["otlpProtocol"] == "http/protobuf"
    assert served(boot, who(()))["otlpProtocol"] == "http/protobuf"


@pytest.mark.parametrize(
    ("principal", "left_out"),
    [
        (who(("a,b",)), "user.groups"),
        (who(("x=y",)), "user.groups"),
        (who(tuple(f"group-{i:03}" for i in range(40))), "user.groups"),
        (who(sub="a b"), "enduser.sub"),
        (who(sub="a;b"), "enduser.sub"),
        (who(sub="ü"), "enduser.sub"),
        (who(sub="s" * 256), "enduser.sub"),
        (who(email='"odd"@example.com'), "user.email"),
    ],
)
def test_identity_desktop_could_not_carry_is_left_out_not_cut(principal, left_out):
    attributes = desktop.identity_attributes(principal)
    assert left_out not in attributes
    assert attributes  # the rest is still there


def test_identity_at_the_limit_is_kept():
    assert desktop.identity_attributes(who(sub="s" * 255))["enduser.sub"] == "s" * 255


def test_the_same_caller_gets_the_same_bytes():
    boot = bootstrap(
        [{"match": {}, "cli": {"availableModels": ["opus"]}, "desktop": {"banner": {"z": 1, "a": 2}}}], telemetry=TELEMETRY
    )
    first = boot.answer(who(("eng",)), REQUEST_URL)
    second = boot.answer(who(("eng",)), REQUEST_URL)
    assert isinstance(first, Served) and isinstance(second, Served)
    assert first.body == second.body
    assert first.body.startswith(b'{"banner":{"a":2,"z":1},')
    assert first.document is not second.document
