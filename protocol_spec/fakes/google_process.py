"""Google's token endpoint and Vertex AI, fakes run together as one process.

For the bench and out-of-process runs: starts a
:class:`~protocol_spec.fakes.google.FakeGoogleToken` and a
:class:`~protocol_spec.fakes.google.FakeVertex` that accepts its tokens, makes
a throwaway service account and writes its key file (``token_uri`` pointing at
the fake token endpoint). Both fakes check everything they check in tests:
the assertion's RS256 signature and claims, the bearer on every Vertex request.

With ``--front-door-port``, a :class:`~protocol_spec.fakes.front_door.FrontDoor`
answers ``CONNECT oauth2.googleapis.com:443`` with the fake token endpoint and
its CA goes to ``--ca-file``: for a gateway that posts to Google's own token URL
whatever the key file says (Anthropic's), given ``HTTPS_PROXY`` and that CA.

    python -m protocol_spec.fakes.google_process --key-file sa.json \\
        [--token-port N] [--vertex-port M] [--front-door-port P --ca-file ca.pem] [--no-record] [--uvloop]

Prints ``token on URL``, ``vertex on URL`` (and ``front door on URL``) once all listen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol_spec.fakes.front_door import GOOGLE_TOKEN_HOST, FrontDoor
from protocol_spec.fakes.google import FakeGoogleToken, FakeVertex
from protocol_spec.fakes.loopback import run, until_signalled

__all__ = ["main"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m protocol_spec.fakes.google_process", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--vertex-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--key-file", type=Path, required=True, help="where to write the service account key")
    parser.add_argument("--email", default="gatehouse-bench@lab-proj.iam.gserviceaccount.com")
    parser.add_argument("--front-door-port", type=int, default=None, help="also answer for oauth2.googleapis.com here")
    parser.add_argument("--ca-file", type=Path, default=None, help="where to write the front door's CA")
    parser.add_argument("--no-record", action="store_true", help="keep no request log of Vertex calls")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    if (args.front_door_port is None) != (args.ca_file is None):
        parser.error("--front-door-port and --ca-file go together")
    return args


async def serve(args: argparse.Namespace) -> None:
    token = FakeGoogleToken(args.host, args.token_port)
    vertex = FakeVertex(token, args.host, args.vertex_port, record=not args.no_record)
    door: FrontDoor | None = None
    await token.start()
    try:
        token.new_service_account(args.key_file, email=args.email)
        if args.front_door_port is not None:
            door = FrontDoor({GOOGLE_TOKEN_HOST: token.port}, host=args.host, port=args.front_door_port)
            door.write_ca(args.ca_file)
            await door.start()
        # Vertex listens last: once it answers, the key file and the CA are written.
        await vertex.start()
        print(f"token on {token.url}", flush=True)
        print(f"vertex on {vertex.url}", flush=True)
        if door is not None:
            print(f"front door on {door.url}", flush=True)
        await until_signalled()
        tunnels = f" tunnels={door.tunnels}" if door is not None else ""
        print(f"stats grants={token.grants} refusals={len(token.refusals)} vertex_refused={vertex.refused}{tunnels}",
              flush=True)
    finally:
        if door is not None:
            await door.close()
        await vertex.close()
        await token.close()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    run(serve(args), use_uvloop=args.uvloop)


if __name__ == "__main__":
    main()
