"""SPEC TEL-6: with telemetry.forward_to and public_url, every served policy's env
tells the client to export OTLP to the gateway; a policy's own value wins."""

from gateway.config.load import loads
from gateway.policy.policies import Policies

BASE = """
listen: {{host: 127.0.0.1, port: 8080, public_url: https://gw.example.com/}}
oidc: {{issuer: https://idp.example.com, client_id: c, client_secret: s}}
session: {{jwt_secret: 0123456789abcdef0123456789abcdef}}
store: {{postgres_url: postgres://u@db/x}}
upstreams: [{{provider: anthropic, auth: {{api_key: k}}}}]
managed:
  policies:
    - match: {{groups: [eng]}}
      cli: {{env: {{OTEL_METRICS_EXPORTER: console}}}}
    - match: {{}}
      cli: {{}}
{telemetry}
"""


def policies(telemetry: str) -> Policies:
    return Policies(loads(BASE.format(telemetry=telemetry), {}), ())


def test_no_destinations_no_telemetry_env():
    p = policies("")
    assert "env" not in p._served[1].settings


def test_every_policy_gains_the_exporter_env_and_its_own_values_win():
    p = policies("telemetry:\n  forward_to:\n    - {url: https://otel.example.com, logs: true}\n")
    everyone = p._served[1].settings["env"]
    assert everyone == {
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw.example.com",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    assert p._served[0].settings["env"]["OTEL_METRICS_EXPORTER"] == "console"
    assert p._served[0].checksum != policies("")._served[0].checksum


def test_resource_attributes_are_pushed_as_otel_resource_attributes():
    p = policies(
        "telemetry:\n  forward_to:\n    - {url: https://otel.example.com}\n"
        "  resource_attributes: {deployment.environment: prod, team: tools}\n"
    )
    assert p._served[1].settings["env"]["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=prod,team=tools"
