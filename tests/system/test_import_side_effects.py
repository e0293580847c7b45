"""Cloud SDKs, OpenTelemetry exporters and grpc load only when a config uses them."""

import subprocess
import sys
import textwrap

HEAVY = ("aiobotocore", "botocore", "google.auth", "grpc", "opentelemetry.exporter", "opentelemetry.sdk")


def test_serving_a_minimal_config_imports_no_cloud_sdk(pg_url):
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from tests.harness import make_config, start_gateway, upstream_block
        import aiohttp

        async def main():
            cfg = make_config({pg_url!r}, [upstream_block("http://127.0.0.1:9")])
            gw = await start_gateway(cfg)
            async with aiohttp.ClientSession() as s:
                async with s.get(gw.url + "/healthz") as r:
                    assert r.status == 200
            await gw.close()

        asyncio.run(main())
        heavy = sorted(m for m in sys.modules if m.startswith({HEAVY!r}))
        print("HEAVY:" + ",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("HEAVY:")][0]
    assert line == "HEAVY:", line
