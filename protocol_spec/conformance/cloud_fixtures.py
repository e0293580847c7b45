"""The cloud half of the fixtures: fake Bedrock, fake Vertex and Google's token endpoint, on loopback.

* :class:`~protocol_spec.fakes.bedrock.FakeBedrock` in the fixture's Bedrock
  region, knowing one access key (the one gateway.env gives the gateway), so
  every request it accepts carries a SigV4 signature botocore recomputed;
* :class:`~protocol_spec.fakes.google.FakeGoogleToken`, which verifies the
  service account's signed assertion and issues bearer tokens, and
  :class:`~protocol_spec.fakes.google.FakeVertex`, which serves only live ones;
* :class:`~protocol_spec.fakes.sts.FakeSts`, sharing the fake Bedrock's
  keyring, so the credentials its AssumeRole hands out sign Bedrock requests
  for an hour (``AWS_ENDPOINT_URL_STS`` in gateway.env points AWS SDKs at it);
* :class:`~protocol_spec.fakes.front_door.FrontDoor`, so a gateway that
  ignores the key file's ``token_uri`` or ``AWS_ENDPOINT_URL_STS`` still
  reaches those two fakes by their public names.

``run`` drives the Bedrock and Vertex fakes through their ``/_fake/*`` control
endpoints and the fake STS through :class:`StsControl`; the token endpoint
needs none (any gateway that gets a Vertex answer got its bearer there). Written next to the config: ``<stem>.google-sa.json``
(the key file, mode 0600, ``token_uri`` = the token endpoint) and
``<stem>.front-door-ca.pem`` (the front door's throwaway CA).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

import msgspec
from aiohttp import web

from protocol_spec.conformance.fixtures import BEDROCK_REGION, HOST, VERTEX_PROJECT, CloudUrls
from protocol_spec.fakes.aws_auth import AwsKeyring
from protocol_spec.fakes.bedrock import FakeBedrock
from protocol_spec.fakes.front_door import GOOGLE_TOKEN_HOST, FrontDoor, sts_host
from protocol_spec.fakes.google import FakeGoogleToken, FakeVertex, ServiceAccount
from protocol_spec.fakes.sts import FakeSts, Outcome

SERVICE_ACCOUNT_EMAIL = f"conformance@{VERTEX_PROJECT}.iam.gserviceaccount.com"


class CloudFakes:
    def __init__(self, config_out: Path, access_key_id: str, secret_access_key: str) -> None:
        keyring = AwsKeyring()
        keyring.add(access_key_id, secret_access_key)
        self.bedrock = FakeBedrock(keyring, region=BEDROCK_REGION, host=HOST)
        self.token = FakeGoogleToken(HOST)
        self.vertex = FakeVertex(self.token, HOST)
        self.front: FrontDoor | None = None
        self.sts = FakeSts(keyring, region=BEDROCK_REGION, host=HOST)
        self.sts_control = StsControl(self.sts)
        self.key_file = config_out.with_name(config_out.stem + ".google-sa.json")
        self.ca_file = config_out.with_name(config_out.stem + ".front-door-ca.pem")

    async def start(self) -> CloudUrls:
        await self.bedrock.start()
        await self.token.start()
        await self.vertex.start()
        await self.sts.start()
        await self.sts_control.start()
        routes = {GOOGLE_TOKEN_HOST: self.token.port, sts_host(BEDROCK_REGION): self.sts.port}
        self.front = await FrontDoor(routes, host=HOST, target_host=HOST).start()
        account = self.token.register(ServiceAccount.generate(SERVICE_ACCOUNT_EMAIL, VERTEX_PROJECT))
        account.write(self.key_file, self.token.token_uri)
        os.chmod(self.key_file, 0o600)
        self.front.write_ca(self.ca_file)
        return CloudUrls(
            bedrock_url=self.bedrock.url,
            vertex_url=self.vertex.url,
            service_account_path=str(self.key_file.resolve()),
            google_token_url=self.token.token_uri,
            front_door_url=self.front.url,
            front_door_ca_path=str(self.ca_file.resolve()),
            sts_url=self.sts.url,
            sts_control_url=self.sts_control.url,
        )

    async def close(self) -> None:
        if self.front is not None:
            await self.front.close()
        await self.sts_control.close()
        await self.sts.close()
        await self.vertex.close()
        await self.token.close()
        await self.bedrock.close()
        self.key_file.unlink(missing_ok=True)
        self.ca_file.unlink(missing_ok=True)


class StsControl:
    """``/_fake/*`` for the fake STS, which has none of its own: a loopback server beside it.

    ``GET /_fake/received``: every AssumeRole so far (role, session name, the key
    that signed it, outcome, the access key issued); ``POST /_fake/script`` a JSON
    list of outcomes ("ok", "down", "access_denied") for the next calls;
    ``POST /_fake/reset`` forgets the log.
    """

    def __init__(self, sts: FakeSts) -> None:
        self.sts = sts
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> StsControl:
        app = web.Application()
        app.router.add_get("/_fake/received", self._received)
        app.router.add_post("/_fake/script", self._script)
        app.router.add_post("/_fake/reset", self._reset)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _received(self, request: web.Request) -> web.Response:
        calls = [
            {
                "role_arn": call.role_arn,
                "session_name": call.session_name,
                "principal": call.principal,
                "outcome": call.outcome,
                "access_key_id": call.access_key_id,
            }
            for call in self.sts.calls
        ]
        return web.json_response(calls)

    async def _script(self, request: web.Request) -> web.Response:
        try:
            outcomes = msgspec.json.decode(await request.read(), type=list[str])
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            return web.json_response({"error": str(err)}, status=400)
        known = set(get_args(Outcome))
        if not set(outcomes) <= known:
            return web.json_response({"error": f"outcomes are {sorted(known)}"}, status=400)
        self.sts.script(*outcomes)  # type: ignore[arg-type]  # checked against Outcome above
        return web.json_response({"queued": len(outcomes)})

    async def _reset(self, request: web.Request) -> web.Response:
        self.sts.calls.clear()
        return web.json_response({"ok": True})
