"""Conformance suite for the Claude Code gateway protocol (``protocol_spec/SPEC.md``).

It checks, from outside, any gateway that claims to speak the protocol:
Gatehouse in ``make test``, Anthropic's ``claude gateway`` in ``make interop``,
or yours. It never imports ``gateway``.

Two commands
------------

1. ``python -m protocol_spec.conformance fixtures --config-out gateway.yaml
   [--gateway-port N] [--postgres-url URL] [--no-gatehouse-section] [--no-cloud-upstreams]
   [--no-telemetry]``

   Starts, on 127.0.0.1, the fake Anthropic upstream
   (:mod:`protocol_spec.fakes`), unless ``--no-cloud-upstreams`` a fake
   Bedrock runtime, a fake STS, a fake Vertex AI and its fake Google token
   endpoint (:mod:`protocol_spec.conformance.cloud_fixtures`), unless
   ``--no-telemetry`` a fake OTLP/HTTP collector with two sinks, one per
   ``telemetry.forward_to`` destination
   (:mod:`protocol_spec.fakes.otlp_collector`) and, with the ``gatehouse:``
   section, a fake OTLP/gRPC collector for a third destination and Gatehouse's
   own request spans (:mod:`protocol_spec.fakes.otlp_grpc_collector`), and a test IdP
   (oidc-provider-mock, through :mod:`protocol_spec.idp_process`) with five
   users: a normal one, a member of ``contractors``, one whose email is
   unverified, a member of the admin group, and one from a domain the config
   does not allow. Then writes, side by side:

   * ``gateway.yaml``: a complete configuration (two Anthropic upstreams on
     the fake, two Bedrock upstreams (one through an assumed role) and a
     Vertex upstream on theirs, custom models,
     managed policies, an admin block, limits, two telemetry destinations
     on the collector); valid for Anthropic's gateway
     too once what only Gatehouse reads is removed: its ``gatehouse:``
     section and the ``forward_to`` entry that has a ``gatehouse:`` key (the
     gRPC destination; :func:`~protocol_spec.conformance.fixtures.without_gatehouse`
     does both, ``--no-gatehouse-section`` writes neither);
   * ``gateway.env``: what the gateway's environment needs
     (``CLAUDE_GATEWAY_ALLOW_LOOPBACK=1``, secrets, the database URL,
     ``AWS_ENDPOINT_URL_STS``), and in a comment the proxy settings a gateway
     that ignores a key file's ``token_uri`` or that variable needs to reach
     the fake Google token endpoint and STS;
   * ``gateway.google-sa.json`` and ``gateway.front-door-ca.pem``: the Vertex
     upstream's key file and the throwaway CA of that proxy;
   * ``gateway.fixtures.json``: the state ``run`` reads: where the fakes and
     the IdP are, the users, the secrets. The state file is how ``run`` finds
     the fake upstreams (``--fixtures``); it is deleted when the fixtures stop.

   It prints all three and stays up until Ctrl-C. Start your gateway with that
   config and environment.

2. ``python -m protocol_spec.conformance run --base-url URL
   [--fixtures gateway.fixtures.json] [--signin device | --token T]
   [--admin-key K] [--json FILE] [--only NAME_OR_ID] [--profile P] [--strict]
   [--ping-interval SECONDS]``

   Runs the checks (:mod:`protocol_spec.conformance.checks`) of a profile
   (:mod:`protocol_spec.conformance.profiles`): ``--profile protocol`` judges
   only requirements whose source is the published protocol or the observed
   wire, which is what a gateway other than Gatehouse should be run with;
   ``--profile gatehouse`` (the default, used by ``make test``) judges every
   requirement, Gatehouse's own decisions included. ``make interop`` runs
   both on Anthropic's gateway and on Gatehouse.
   ``--signin
   device`` (the default) signs people in through the device flow, driving the
   verification page like a browser (:mod:`protocol_spec.browser`); ``--token``
   uses one given token for the normal user, and checks that need other people
   or sign-in report SKIP. ``--admin-key`` enables the admin-API and spend
   checks. ``--ping-interval`` (default 15, the protocol's) is the Bedrock
   silence after which the gateway pings (SSE-4); the check holds a stream
   silent for a third longer plus 1.5 s.

Output
------

One line per requirement of SPEC.md, in document order::

    PASS  DISC-2      MUST   discovery document
    FAIL  MSG-12      MUST   [forwarding: …] upstream user-agent: observed '…', expected '…'
    SKIP  MANAGED-1   MUST   [managed settings document] the target answers 404 not configured …
    ----  ROLE-13     MUST   not checked from outside
    OUT   DISC-3      MUST   source gatehouse is outside the protocol profile

then the profile, a summary per level and one per source::

    profile protocol: judges sources protocol, observed; 75 requirements out of profile (not counted); 3 checks not run (…)
    MUST: 110 pass, 2 fail, 4 skip, 50 not checked, 66 out of profile | SHOULD: … | MAY: …
    by source: protocol: 100 pass, 2 fail (2 MUST), 3 skip, 60 not checked | observed: … | gatehouse: 75 out of profile, not judged
    conformance (protocol profile): some MUST requirements failed

A requirement's outcome folds every check that covers it: FAIL if any check
failed it, else PASS if any passed it, else SKIP with the reason (a feature
the target does not offer, a missing option). A requirement no check covers
is NOT_CHECKED (shown as ``----``): it describes the client, or cannot be
seen from outside. A requirement whose source is outside the profile is
OUT_OF_PROFILE (shown as ``OUT``) whatever the checks saw: a check that
judges only such requirements is not run, and one that judges both kinds runs
for the others and its verdicts on these are set aside.

Exit status: 0 when no MUST requirement of the profile FAILed (``--strict``:
and none was skipped), 1 otherwise, 2 when the run could not start (no fixtures state,
target or fake upstream unreachable).

JSON report (``--json FILE``)::

    {
      "report_version": 2,              # 2 added the profile and the counts per source
      "target": "http://127.0.0.1:8080",
      "started_at": "2026-11-24T10:00:00+00:00",
      "duration_s": 21.4,
      "signin": "device" | "token",
      "admin_key": true,
      "profile": {"name": "protocol" | "gatehouse", "sources": ["protocol", "observed"]},
      "ping_interval_s": 15.0,          # --ping-interval
      "checks_selected": ["discovery document", ...],   # the checks that ran
      "checks_out_of_profile": ["revocation", ...],     # not run: they judge only requirements out of profile
      "ok": true,                       # the exit status, as a boolean
      "summary": {"MUST": {"PASS": 0, "FAIL": 0, "SKIP": 0, "NOT_CHECKED": 0, "OUT_OF_PROFILE": 0},
                  "SHOULD": {...}, "MAY": {...}},
      "summary_by_source": {"protocol": {"MUST": {"PASS": 0, ...}, "SHOULD": {...}, "MAY": {...}},
                            "observed": {...}, "gatehouse": {...}},
      "requirements": [                 # every requirement, in SPEC order
        {"id": "MSG-12", "level": "MUST", "source": "gatehouse", "section": "10.3",
         "endpoint": "POST /v1/messages",
         "outcome": "PASS" | "FAIL" | "SKIP" | "NOT_CHECKED" | "OUT_OF_PROFILE",
         "checks": ["forwarding: headers, query and credential", ...],
         "reason": null | "not checked from outside" | "describes the client, not the gateway"
                   | "source gatehouse is outside the protocol profile",
         "findings": [{"check": "...", "outcome": "FAIL", "what": "...",
                       "observed": "...", "expected": "..."}]}
      ],
      "checks": [
        {"name": "...", "ids": ["DISC-1", ...], "outcome": "PASS",
         "duration_s": 0.05, "per_id": {"DISC-1": "PASS", "DISC-3": "OUT_OF_PROFILE", ...}}
      ]
    }

``findings`` hold the expectations that explain the outcome: the failures of
a FAIL, the reasons of a SKIP, and the passed expectations of a PASS.
"""
