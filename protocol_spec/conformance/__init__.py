"""Conformance suite for the Claude Code gateway protocol (``protocol_spec/SPEC.md``).

It checks, from outside, any gateway that claims to speak the protocol:
Gatehouse in ``make test``, Anthropic's ``claude gateway`` in ``make interop``,
or yours. It never imports ``gateway``.

Two commands
------------

1. ``python -m protocol_spec.conformance fixtures --config-out gateway.yaml
   [--gateway-port N] [--postgres-url URL]``

   Starts, on 127.0.0.1, the fake Anthropic upstream
   (:mod:`protocol_spec.fakes`) and a test IdP (oidc-provider-mock, through
   :mod:`protocol_spec.idp_process`) with five users: a normal one, a member
   of ``contractors``, one whose email is unverified, a member of the admin
   group, and one from a domain the config does not allow. Then writes, side
   by side:

   * ``gateway.yaml``: a complete configuration (two upstreams on the fake, a
     custom model, managed policies, an admin block, limits); valid for
     Anthropic's gateway too once its ``gatehouse:`` section is removed;
   * ``gateway.env``: what the gateway's environment needs
     (``CLAUDE_GATEWAY_ALLOW_LOOPBACK=1``, secrets, the database URL);
   * ``gateway.fixtures.json``: the state ``run`` reads: where the fake and
     the IdP are, the users, the secrets. The state file is how ``run`` finds
     the fake upstream (``--fixtures``); it is deleted when the fixtures stop.

   It prints all three and stays up until Ctrl-C. Start your gateway with that
   config and environment.

2. ``python -m protocol_spec.conformance run --base-url URL
   [--fixtures gateway.fixtures.json] [--signin device | --token T]
   [--admin-key K] [--json FILE] [--only NAME_OR_ID] [--strict]``

   Runs the checks (:mod:`protocol_spec.conformance.checks`). ``--signin
   device`` (the default) signs people in through the device flow, driving the
   verification page like a browser (:mod:`protocol_spec.browser`); ``--token``
   uses one given token for the normal user, and checks that need other people
   or sign-in report SKIP. ``--admin-key`` enables the admin-API and spend
   checks.

Output
------

One line per requirement of SPEC.md, in document order::

    PASS  DISC-2      MUST   discovery document
    FAIL  MSG-12      MUST   [forwarding: …] upstream user-agent: observed '…', expected '…'
    SKIP  MANAGED-1   MUST   [managed settings document] the target answers 404 not configured …
    ----  ROLE-13     MUST   not checked from outside

then a summary per level. A requirement's outcome folds every check that
covers it: FAIL if any check failed it, else PASS if any passed it, else SKIP
with the reason (a feature the target does not offer, a missing option). A
requirement no check covers is NOT_CHECKED (shown as ``----``): it describes
the client, or cannot be seen from outside.

Exit status: 0 when no MUST requirement FAILed (``--strict``: and none was
skipped), 1 otherwise, 2 when the run could not start (no fixtures state,
target or fake upstream unreachable).

JSON report (``--json FILE``)::

    {
      "report_version": 1,
      "target": "http://127.0.0.1:8080",
      "started_at": "2026-11-24T10:00:00+00:00",
      "duration_s": 21.4,
      "signin": "device" | "token",
      "admin_key": true,
      "checks_selected": ["discovery document", ...],
      "ok": true,                       # the exit status, as a boolean
      "summary": {"MUST": {"PASS": 0, "FAIL": 0, "SKIP": 0, "NOT_CHECKED": 0},
                  "SHOULD": {...}, "MAY": {...}},
      "requirements": [                 # every requirement, in SPEC order
        {"id": "MSG-12", "level": "MUST", "source": "gatehouse", "section": "10.3",
         "endpoint": "POST /v1/messages",
         "outcome": "PASS" | "FAIL" | "SKIP" | "NOT_CHECKED",
         "checks": ["forwarding: headers, query and credential", ...],
         "reason": null | "not checked from outside" | "describes the client, not the gateway",
         "findings": [{"check": "...", "outcome": "FAIL", "what": "...",
                       "observed": "...", "expected": "..."}]}
      ],
      "checks": [
        {"name": "...", "ids": ["DISC-1", ...], "outcome": "PASS",
         "duration_s": 0.05, "per_id": {"DISC-1": "PASS", ...}}
      ]
    }

``findings`` hold the expectations that explain the outcome: the failures of
a FAIL, the reasons of a SKIP, and the passed expectations of a PASS.
"""
