"""Fixtures both relay test modules use: a Transport guarding loopback only, and
Relays over ForwardTo entries, each drained when the test ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from gateway.config.addresses import is_forbidden_address
from gateway.config.schema import ForwardTo, Telemetry
from gateway.telemetry.destinations import destinations
from gateway.telemetry.relay import Relay
from gateway.upstreams.transport import Transport


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    t = Transport(
        max_connections=50,
        connect_timeout_s=2.0,
        idle_read_timeout_s=5.0,
        is_forbidden=lambda ip: is_forbidden_address(ip, True),
    )
    await t.start()
    yield t
    await t.close()


@pytest.fixture
async def relays() -> AsyncIterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(entries: list[ForwardTo], transport: Transport, **kwargs) -> Relay:
        kwargs.setdefault("log", lambda level, msg: None)
        relay = Relay(destinations(Telemetry(forward_to=tuple(entries))), transport, **kwargs)
        relay.start()
        made.append(relay)
        return relay

    yield make
    for relay in made:  # senders a test left running (a second drain is a no-op)
        await relay.drain(0)
