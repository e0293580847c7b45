"""Drive a :class:`~protocol_spec.fakes.bedrock.FakeBedrock` in another process, through ``/_fake/*``."""

from __future__ import annotations

import msgspec

from protocol_spec.fakes.bedrock_replies import BedrockReply
from protocol_spec.fakes.remote import RemoteFake

__all__ = ["RemoteBedrock"]


class RemoteBedrock(RemoteFake):
    """:class:`RemoteFake` for the fake Bedrock: scripts :class:`BedrockReply` values.

    ``received()`` records carry the fake's extra members (``operation``,
    ``model_id``, ``principal``, ``refused``, ``payload``) next to the raw
    request. The fake has no default to replace; ``reset()`` restores its own.
    """

    async def script(self, *replies: BedrockReply) -> None:  # type: ignore[override]
        await self._post("/_fake/script", msgspec.json.encode(list(replies)))

    async def set_default(self, reply: object) -> None:
        raise NotImplementedError("the fake Bedrock's default answer is set when it starts")
