"""The far side of the relay in the telemetry scenario: an OTLP/HTTP sink that only counts.

    python -m bench.otlp_sink --port P [--uvloop]

``POST /v1/metrics|logs|traces`` is answered 200 with an empty body at once;
per signal the sink counts exports, bytes, and exports that carry the
gateway's identity stamp (the bytes ``gateway-oidc``, which only
``gatehouse.telemetry.stamp_identity`` writes into an export: a byte search,
not a decode, so the sink stays cheap). ``GET /_sink/stats`` returns the
counts as JSON; they only grow, so a reader takes differences.

Why not protocol_spec/fakes/otlp_collector.py: it keeps every request with its
headers and bytes for the conformance checks, which at a hundred and more
exports a second for minutes is memory and CPU on the load core the bench
would then be measuring instead of the gateway.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

from protocol_spec.fakes.loopback import run, until_signalled

SIGNALS = ("metrics", "logs", "traces")
STAMP_MARK = b"gateway-oidc"
# Far above the few kB the real client's exports weigh; a gateway relays up to its own body limit.
MAX_BODY_BYTES = 64 * 1024 * 1024


def new_counts() -> dict[str, dict[str, int]]:
    return {s: {"exports": 0, "bytes": 0, "stamped": 0} for s in SIGNALS}


def sink_app() -> web.Application:
    counts = new_counts()
    other = {"requests": 0}

    async def export(request: web.Request) -> web.Response:
        body = await request.read()
        signal = request.match_info["signal"]
        if signal not in counts:
            other["requests"] += 1
            return web.Response(status=404)
        seen = counts[signal]
        seen["exports"] += 1
        seen["bytes"] += len(body)
        seen["stamped"] += STAMP_MARK in body
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({**counts, "other": other}), content_type="application/json")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/{signal}", export)
    app.router.add_get("/_sink/stats", stats)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(sink_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"otlp sink listening on http://{host}:{port}", flush=True)
    try:
        await until_signalled()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    run(serve(args.host, args.port), use_uvloop=args.uvloop)


if __name__ == "__main__":
    main()
