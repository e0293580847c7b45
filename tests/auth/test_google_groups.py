"""oidc.google_groups end to end: the CLI's device flow through the gateway, a real OIDC
provider process, and a fake Google Workspace on loopback whose token endpoint verifies
the service account's delegated assertion and whose Directory API pages group lists.

Nothing here may leave 127.0.0.0/8: every connection and lookup in this process is
watched while a test runs.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
import uuid
from pathlib import Path

import aiohttp
import pytest

from gateway.auth.directory_groups import DIRECTORY_SCOPE
from protocol_spec.browser import ScriptedBrowser, approve_device
from protocol_spec.fakes.google import CLOUD_PLATFORM, FakeGoogleWorkspace
from protocol_spec.idp_process import IdpProcess
from tests.auth.test_signin import FakeClock, poll, refresh, start_device
from tests.harness import BASE_CONFIG, make_config, start_gateway, upstream_block

ADMIN = "directory-admin@example.com"
# Alice's id_token says "from-the-id-token"; the Directory knows better.
ALICE = {"sub": "alice", "email": "alice@example.com", "email_verified": True, "groups": ["from-the-id-token"]}
BOB = {"sub": "bob", "email": "bob@example.com", "email_verified": True}
CAROL = {"sub": "carol", "email": "carol@elsewhere.test", "email_verified": True}  # not in the Workspace
DANA = {"sub": "dana", "email": "dana@corp.example.com", "email_verified": True}  # for the example's domain
ALICE_GROUPS = ["eng@example.com", "all@example.com", "oncall@example.com", "claude@example.com", "ml@example.com"]
TTL_S = 36  # session.ttl_hours: 0.01

_seen: list[tuple[str, object]] | None = None


def _watch(event: str, args: tuple) -> None:
    if _seen is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _seen.append((event, args[1][0] if event == "socket.connect" else args[0]))


sys.addaudithook(_watch)


def _outside_loopback(host: object) -> bool:
    import ipaddress

    text = host.decode() if isinstance(host, bytes) else host
    if not isinstance(text, str) or text == "localhost" or text.startswith("/"):
        return False
    try:
        return not ipaddress.ip_address(text).is_loopback
    except ValueError:
        return True


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # google-auth must never look for a metadata server or the developer's gcloud login.
    global _seen
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    seen: list[tuple[str, object]] = []
    _seen = seen
    try:
        yield
    finally:
        _seen = None
    outside = [(event, host) for event, host in seen if _outside_loopback(host)]
    assert not outside, f"left loopback: {outside}"


@pytest.fixture(scope="module")
def idp():
    with IdpProcess([ALICE, BOB, CAROL, DANA]) as proc:
        yield proc


@pytest.fixture
async def workspace():
    async with FakeGoogleWorkspace() as fake:
        fake.admins.add(ADMIN)
        fake.members["alice@example.com"] = list(ALICE_GROUPS)
        fake.members["bob@example.com"] = ["all@example.com"]
        fake.page_size = 2  # Alice's five groups come in three pages
        yield fake


@pytest.fixture
def key_file(workspace, tmp_path) -> Path:
    path = tmp_path / "directory-reader.json"
    workspace.new_service_account(path)
    return path


@pytest.fixture
async def gateways(pg_cluster, fake_upstream, idp, key_file):
    """``await make(oidc_extra="", extra="", admin_email=ADMIN, **build_kwargs)`` → a gateway
    whose oidc: section has google_groups, on a fresh database."""
    db = pg_cluster.create_database("ggroups_" + uuid.uuid4().hex[:10])
    started = []

    async def make(oidc_extra: str = "", extra: str = "", *, admin_email: str = ADMIN, **kw):
        oidc = textwrap.indent(
            f"google_groups:\n  service_account_json_path: {key_file}\n  admin_email: {admin_email}\n"
            + textwrap.dedent(oidc_extra),
            "  ",
        )
        base = BASE_CONFIG.replace("  client_secret: gatehouse-tests-secret\n", "  client_secret: gatehouse-tests-secret\n" + oidc)
        base = base.replace("  jwt_secret: {jwt_secret}\n", "  jwt_secret: {jwt_secret}\n  ttl_hours: 0.01\n")
        cfg = make_config(db, [upstream_block(fake_upstream.url)], extra, issuer=idp.issuer, base=base)
        gw = await start_gateway(cfg, **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.close()


async def sign_in(gw, sub: str):
    dev = await start_device(gw)
    browser = ScriptedBrowser()
    try:
        page = await approve_device(browser, dev["verification_uri_complete"], idp_fields={"sub": sub})
    finally:
        await browser.close()
    status, _, doc = await poll(gw, dev["device_code"])
    return dev, page, status, doc


def claims_of(access_token: str) -> dict:
    payload = access_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def audit(capfd: pytest.CaptureFixture[str], evt: str) -> list[dict]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if f'"evt":"{evt}"' in line]


async def family_groups(gw, sub: str) -> list[str]:
    from gateway.http.keys import RUNTIME

    async with gw.app[RUNTIME].store.pool.acquire() as conn:
        return await conn.fetchval("SELECT groups FROM session_families WHERE sub = $1", sub)


# ---------------------------------------------------------------- sign-in


async def test_sign_in_takes_the_groups_from_the_directory_page_by_page(gateways, workspace):
    gw = await gateways()
    _, page, status, doc = await sign_in(gw, "alice")
    assert page.status == 200 and status == 200, (page.text, doc)
    # The Directory's group emails replace what the id_token said.
    assert claims_of(doc["access_token"])["groups"] == ALICE_GROUPS
    assert await family_groups(gw, "alice") == ALICE_GROUPS
    assert workspace.lookups == ["alice@example.com"] * 3
    # The token the gateway used acted for the admin, with only the groups scope.
    assert workspace.scopes_granted == [DIRECTORY_SCOPE] and workspace.directory_refusals == []


async def test_allowed_groups_and_policies_apply_to_the_directory_groups(gateways, workspace):
    managed = """
    managed:
      policies:
        - match: { groups: [oncall@example.com] }
          cli:
            availableModels: [claude-haiku-4-5]
        - match: {}
          cli:
            availableModels: [claude-sonnet-4-6]
    """
    gw = await gateways("allowed_groups: [all@example.com]\n", managed)
    _, _, status, doc = await sign_in(gw, "alice")
    assert status == 200
    async with aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {doc['access_token']}"}
        async with s.get(gw.url + "/managed/settings", headers=auth) as r:
            assert r.status == 200
            assert (await r.json())["settings"]["availableModels"] == ["claude-haiku-4-5"]
    # Carol is unknown to the Directory (404): in no group, so not in an allowed one.
    _, page, status, doc = await sign_in(gw, "carol")
    assert page.status == 403 and "not in a group allowed" in page.text
    assert (status, doc["error"]) == (400, "access_denied")


async def test_a_spend_cap_on_a_directory_group_applies_to_its_members(gateways, workspace):
    import asyncio

    write_key = "google-groups-write-key-0123456789abcdef"
    gw = await gateways("", f"admin:\n  write_keys: [{{id: tests, key: {write_key}}}]\n")
    _, _, _, alice = await sign_in(gw, "alice")
    _, _, _, bob = await sign_in(gw, "bob")
    cap = {"scope": {"type": "rbac_group", "rbac_group_id": "oncall@example.com"}, "amount": "100", "period": "daily"}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/organizations/spend_limits", json=cap, headers={"x-api-key": write_key}) as r:
            assert r.status == 200, await r.text()

        async def limits(doc) -> list:
            auth = {"Authorization": f"Bearer {doc['access_token']}"}
            async with s.get(gw.url + "/api/oauth/usage", headers=auth) as r:
                return (await r.json())["limits"]

        for _ in range(100):  # the limits cache picks the new cap up shortly
            if await limits(alice):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the group cap never applied to a member of the Directory group")
        assert await limits(bob) == []


async def test_a_person_the_directory_does_not_know_is_in_no_groups(gateways, workspace):
    gw = await gateways()
    _, _, status, doc = await sign_in(gw, "carol")
    assert status == 200 and claims_of(doc["access_token"]).get("groups", []) == []
    assert workspace.lookups == ["carol@elsewhere.test"]


async def test_directory_down_at_sign_in_refuses_with_a_retryable_page_and_an_audit_reason(
    gateways, workspace, capfd
):
    clock = FakeClock()
    gw = await gateways(clock=clock)
    workspace.directory_status = 503
    capfd.readouterr()
    dev, page, status, doc = await sign_in(gw, "alice")
    assert page.status == 503 and "Try again in a few minutes" in page.text
    (event,) = [e for e in audit(capfd, "session.mint") if e["result"] == "fail"]
    assert event["err"] == "google_groups_unavailable"
    # No session: the device code is still waiting, not denied and not signed in.
    assert (status, doc) == (400, {"error": "authorization_pending"})
    assert await family_groups(gw, "alice") is None
    # Trying again once the Directory is back completes the same sign-in.
    workspace.directory_status = None
    browser = ScriptedBrowser()
    try:
        page = await approve_device(browser, dev["verification_uri_complete"], idp_fields={"sub": "alice"})
    finally:
        await browser.close()
    assert page.status == 200
    clock.offset += 6  # past the polling interval
    status, _, doc = await poll(gw, dev["device_code"])
    assert status == 200 and claims_of(doc["access_token"])["groups"] == ALICE_GROUPS


async def test_a_scope_the_delegation_lacks_refuses_the_sign_in(gateways, workspace, key_file, capfd):
    account = workspace.new_service_account(key_file, delegated_scopes=(CLOUD_PLATFORM,))
    assert account.client_email  # the key file now holds an account delegated Vertex's scope only
    gw = await gateways()
    capfd.readouterr()
    _, page, status, _ = await sign_in(gw, "alice")
    assert page.status == 503 and status == 400
    assert [e["err"] for e in audit(capfd, "session.mint") if e["result"] == "fail"] == ["google_groups_unavailable"]
    assert any("unauthorized_client" in r for r in workspace.refusals)
    assert workspace.lookups == []


async def test_an_admin_email_that_is_no_admin_is_refused_by_the_directory(gateways, workspace, capfd):
    gw = await gateways(admin_email="bob@example.com")
    capfd.readouterr()
    _, page, status, _ = await sign_in(gw, "alice")
    assert page.status == 503 and status == 400
    err = capfd.readouterr().err
    assert "google_groups_unavailable" in err and "answered 403" in err and "domain-wide delegation" in err
    assert workspace.directory_refusals == ["acting as bob@example.com, not an admin"]


# ---------------------------------------------------------------- refresh


async def test_refreshes_within_the_ttl_use_the_remembered_groups_and_after_it_ask_again(gateways, workspace):
    clock = FakeClock()
    gw = await gateways(clock=clock)
    _, _, _, doc = await sign_in(gw, "alice")
    assert len(workspace.lookups) == 3
    status, _, doc = await refresh(gw, doc["refresh_token"])
    assert status == 200 and len(workspace.lookups) == 3  # no Directory call within the TTL
    workspace.members["alice@example.com"] = ["eng@example.com"]
    clock.offset += TTL_S + 1
    status, _, doc = await refresh(gw, doc["refresh_token"])
    assert status == 200, doc
    assert workspace.lookups == ["alice@example.com"] * 4
    assert claims_of(doc["access_token"])["groups"] == ["eng@example.com"]
    assert await family_groups(gw, "alice") == ["eng@example.com"]


async def test_a_refresh_that_cannot_ask_the_directory_keeps_the_session_groups_and_warns(gateways, workspace, capfd):
    clock = FakeClock()
    gw = await gateways(clock=clock)
    _, _, _, doc = await sign_in(gw, "alice")
    clock.offset += TTL_S + 1
    workspace.directory_status = 500
    capfd.readouterr()
    status, _, doc = await refresh(gw, doc["refresh_token"])
    assert status == 200, doc
    assert claims_of(doc["access_token"])["groups"] == ALICE_GROUPS
    err = capfd.readouterr().err
    assert "keeping the 5 group(s) the session of alice had" in err and "HTTP 500" in err
    # And again on the next one, as long as the Directory stays away.
    clock.offset += TTL_S + 1
    status, _, doc = await refresh(gw, doc["refresh_token"])
    assert status == 200 and claims_of(doc["access_token"])["groups"] == ALICE_GROUPS
    assert len(workspace.lookups) == 3 + 2


# ---------------------------------------------------------------- the edge on its own


@pytest.fixture
async def directory(workspace, key_file):
    """A started GoogleGroups for ``key_file`` (no gateway around it)."""
    from gateway.auth.google_groups import GoogleGroups
    from gateway.config.schema import GoogleGroups as Settings
    from gateway.config.schema import Oidc

    settings = Settings(service_account_json_path=str(key_file), admin_email=ADMIN)
    cfg = Oidc(issuer="https://accounts.google.com", client_id="gw", client_secret="s", google_groups=settings)
    groups = GoogleGroups.from_config(cfg, ttl_s=3600, allow_loopback=True)
    await groups.start()
    yield groups
    await groups.close()


def person(sub: str, email: str | None):
    from gateway.auth.identity import Identity

    return Identity(sub, email, None, ())


async def test_concurrent_lookups_share_one_token_refresh(directory, workspace):
    import asyncio

    people = [person("alice", "alice@example.com"), person("bob", "bob@example.com")] * 4
    found = await asyncio.gather(*(directory.at_sign_in(p) for p in people))
    assert [i.groups for i in found[:2]] == [tuple(ALICE_GROUPS), ("all@example.com",)]
    assert workspace.grants == 1 and len(workspace.lookups) == 4 * (3 + 1)


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ({"directory_body": b"[1, 2]"}, "something else than groups"),
        ({"directory_body": b"{not json"}, "not JSON"),
        ({"directory_body": b'{"groups": [{"name": "no email"}]}'}, "something else than groups"),
        ({"directory_body": b'{"groups": [], "x": "' + b"a" * 300_000 + b'"}'}, "larger than"),
        ({"page_size": 1, "members": {"alice@example.com": [f"g{i}@example.com" for i in range(11)]}}, "more than 10 pages"),
        ({"directory_status": 429}, "HTTP 429"),
    ],
    ids=["not-an-object", "not-json", "group-without-email", "too-large", "too-many-pages", "rate-limited"],
)
async def test_answers_that_are_no_group_list_make_the_lookup_fail(directory, workspace, script, why):
    from gateway.auth.google_groups import GroupsUnavailable

    for name, value in script.items():
        setattr(workspace, name, value)
    with pytest.raises(GroupsUnavailable) as failed:
        await directory.at_sign_in(person("alice", "alice@example.com"))
    assert why in str(failed.value)
    # Nothing was remembered, and a refresh keeps what the session had.
    assert len(directory.cache) == 0
    kept = await directory.at_refresh(person("alice", "alice@example.com"), ("kept@example.com",))
    assert kept.groups == ("kept@example.com",)


async def test_no_email_is_a_refusal_and_a_refresh_with_nothing_to_keep_fails(directory, workspace):
    from gateway.auth.google_groups import GroupsUnavailable
    from gateway.auth.identity import IdentityRejected

    with pytest.raises(IdentityRejected):
        await directory.at_sign_in(person("nobody", None))
    workspace.directory_status = 503
    with pytest.raises(GroupsUnavailable):
        await directory.at_refresh(person("alice", "alice@example.com"), None)


async def test_the_token_endpoint_down_is_unavailable_and_a_refused_token_is_replaced(directory, workspace):
    from gateway.auth.google_groups import GroupsUnavailable

    workspace.down = True
    with pytest.raises(GroupsUnavailable) as failed:
        await directory.at_sign_in(person("alice", "alice@example.com"))
    assert "no access token" in str(failed.value)
    workspace.down = False
    assert (await directory.at_sign_in(person("bob", "bob@example.com"))).groups == ("all@example.com",)
    # Google stops honouring the token early (a key rotated): one 401, then a new token.
    workspace.revoke_all()
    with pytest.raises(GroupsUnavailable, match="401"):
        await directory.at_sign_in(person("bob", "bob@example.com"))
    assert (await directory.at_sign_in(person("bob", "bob@example.com"))).groups == ("all@example.com",)
    assert workspace.grants == 2


# ---------------------------------------------------------------- the example


async def test_the_google_workspace_example_boots_and_signs_in_with_directory_groups(
    pg_cluster, fake_upstream, idp, workspace, tmp_path
):
    """conf/examples/cag/google-workspace.yaml as shipped, only its addresses on loopback."""
    import os

    import yaml

    from gateway.config.load import loads
    from tests.harness import JWT_SECRET, free_port

    example = Path(__file__).resolve().parents[2] / "conf" / "examples" / "cag" / "google-workspace.yaml"
    doc = yaml.safe_load(example.read_text())
    port = free_port()
    doc["listen"].update(host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}")
    doc["oidc"]["issuer"] = idp.issuer
    doc["upstreams"][0]["base_url"] = fake_upstream.url
    admin = doc["oidc"]["google_groups"]["admin_email"]
    workspace.admins = {admin}
    workspace.members["dana@corp.example.com"] = ["claude-users@corp.example.com", "contractors@corp.example.com"]
    key = tmp_path / "reader.json"
    workspace.new_service_account(key)
    env = {
        **os.environ, "CLAUDE_GATEWAY_ALLOW_LOOPBACK": "1", "OIDC_CLIENT_ID": "gatehouse-tests",
        "OIDC_CLIENT_SECRET": "gatehouse-tests-secret", "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_POSTGRES_URL": pg_cluster.create_database("ggexample_" + uuid.uuid4().hex[:10]),
        "ANTHROPIC_API_KEY": "sk-ant-example", "GOOGLE_GROUPS_KEY_FILE": str(key),
    }
    cfg = loads(yaml.safe_dump(doc, sort_keys=False), env, source=str(example))
    gw = await start_gateway(cfg)
    try:
        _, page, status, token = await sign_in(gw, "dana")
        assert page.status == 200 and status == 200, page.text
        assert claims_of(token["access_token"])["groups"] == workspace.members["dana@corp.example.com"]
        async with aiohttp.ClientSession() as s:
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            async with s.get(gw.url + "/managed/settings", headers=auth) as r:
                assert (await r.json())["settings"]["availableModels"] == ["claude-haiku-4-5"]
        # Alice's domain is not the example's: refused before any group lookup.
        before = len(workspace.lookups)
        _, page, _, _ = await sign_in(gw, "alice")
        assert page.status == 403 and len(workspace.lookups) == before
    finally:
        await gw.close()
