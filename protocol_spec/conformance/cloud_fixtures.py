"""The cloud half of the fixtures: fake Bedrock, fake Vertex and Google's token endpoint, on loopback.

* :class:`~protocol_spec.fakes.bedrock.FakeBedrock` in the fixture's Bedrock
  region, knowing one access key (the one gateway.env gives the gateway), so
  every request it accepts carries a SigV4 signature botocore recomputed;
* :class:`~protocol_spec.fakes.google.FakeGoogleToken`, which verifies the
  service account's signed assertion and issues bearer tokens, and
  :class:`~protocol_spec.fakes.google.FakeVertex`, which serves only live ones;
* :class:`~protocol_spec.fakes.google_front.GoogleFrontDoor`, so a gateway that
  ignores the key file's ``token_uri`` still reaches that token endpoint.

``run`` drives the Bedrock and Vertex fakes through their ``/_fake/*`` control
endpoints; the token endpoint needs none (any gateway that gets a Vertex answer
got its bearer there). Written next to the config: ``<stem>.google-sa.json``
(the key file, mode 0600, ``token_uri`` = the token endpoint) and
``<stem>.google-ca.pem`` (the front door's throwaway CA).
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol_spec.conformance.fixtures import BEDROCK_REGION, HOST, VERTEX_PROJECT, CloudUrls
from protocol_spec.fakes.aws_auth import AwsKeyring
from protocol_spec.fakes.bedrock import FakeBedrock
from protocol_spec.fakes.google import FakeGoogleToken, FakeVertex, ServiceAccount
from protocol_spec.fakes.google_front import GoogleFrontDoor

SERVICE_ACCOUNT_EMAIL = f"conformance@{VERTEX_PROJECT}.iam.gserviceaccount.com"


class CloudFakes:
    def __init__(self, config_out: Path, access_key_id: str, secret_access_key: str) -> None:
        keyring = AwsKeyring()
        keyring.add(access_key_id, secret_access_key)
        self.bedrock = FakeBedrock(keyring, region=BEDROCK_REGION, host=HOST)
        self.token = FakeGoogleToken(HOST)
        self.vertex = FakeVertex(self.token, HOST)
        self.front: GoogleFrontDoor | None = None
        self.key_file = config_out.with_name(config_out.stem + ".google-sa.json")
        self.ca_file = config_out.with_name(config_out.stem + ".google-ca.pem")

    async def start(self) -> CloudUrls:
        await self.bedrock.start()
        await self.token.start()
        await self.vertex.start()
        self.front = await GoogleFrontDoor(self.token.port, host=HOST, target_host=HOST).start()
        account = self.token.register(ServiceAccount.generate(SERVICE_ACCOUNT_EMAIL, VERTEX_PROJECT))
        account.write(self.key_file, self.token.token_uri)
        os.chmod(self.key_file, 0o600)
        self.front.write_ca(self.ca_file)
        return CloudUrls(
            bedrock_url=self.bedrock.url,
            vertex_url=self.vertex.url,
            service_account_path=str(self.key_file.resolve()),
            google_token_url=self.token.token_uri,
            google_front_url=self.front.url,
            google_ca_path=str(self.ca_file.resolve()),
        )

    async def close(self) -> None:
        if self.front is not None:
            await self.front.close()
        await self.vertex.close()
        await self.token.close()
        await self.bedrock.close()
        self.key_file.unlink(missing_ok=True)
        self.ca_file.unlink(missing_ok=True)
