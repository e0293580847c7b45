"""Shared fixtures: one throwaway PostgreSQL cluster per test run, a fresh
database per test module, fake upstreams, and in-process gateways."""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings

from gateway.devenv.postgres import Cluster

os.environ.setdefault("CLAUDE_GATEWAY_ALLOW_LOOPBACK", "1")

# Property tests take their example counts from a profile: "small" keeps `make test`
# to seconds per test; `make fuzz` runs them again under "large" (HYPOTHESIS_PROFILE).
# No example database, so no run writes anything or depends on an earlier one.
# Registered here, before any test module builds its @settings from the default.
settings.register_profile("small", max_examples=100, deadline=None, database=None)
settings.register_profile(
    "large", max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "small"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    cluster = Cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def pg_url(pg_cluster: Cluster) -> str:
    return pg_cluster.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture
async def fake_upstream() -> AsyncIterator["object"]:
    from protocol_spec.fakes.upstream import FakeUpstream

    fake = FakeUpstream()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def gateway_factory(pg_url: str):
    """``await gateway_factory(upstream_urls, extra_yaml="", **build_kwargs)`` → RunningGateway."""
    from tests.harness import make_config, start_gateway, upstream_block

    started = []

    async def factory(upstreams, extra: str = "", *, issuer: str = "http://127.0.0.1:9", **build_kwargs):
        blocks = [u if u.lstrip().startswith("- provider") else upstream_block(u) for u in upstreams]
        cfg = make_config(pg_url, blocks, extra, issuer=issuer)
        gw = await start_gateway(cfg, **build_kwargs)
        started.append(gw)
        return gw

    try:
        yield factory
    finally:
        for gw in started:
            await gw.close()
