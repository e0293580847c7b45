"""Composition: the one place that builds the gateway out of its parts and runs it.

* :mod:`~gateway.app.build` computes the :class:`~gateway.http.runtime.Boot`
  values from a validated config, registers the route table of
  :mod:`gateway.http.routes`, installs the envelope middleware (request ids,
  access lists, every error in the protocol's envelope) and, on startup, opens
  the edges (store, transport, recorder, spend store, sign-in), makes the
  :class:`~gateway.http.runtime.Runtime` from both and starts the background
  jobs; cleanup stops them in reverse. :mod:`~gateway.app.jobs`
  lists every periodic job (period and what a run does) and schedules them,
  names the background work that is not periodic, and fixes the shutdown order.
* :mod:`~gateway.app.server` runs the app: one process or ``--workers N``
  forked ones on one port, with the open-file limit raised and a drain on
  SIGTERM. :mod:`~gateway.app.connections` puts deadlines on client
  connections; :mod:`~gateway.app.bad_requests` answers what aiohttp's parser
  refuses in our envelope.
* :mod:`~gateway.app.limits_cli` and :mod:`~gateway.app.sessions_cli` are the
  ``gatehouse limits`` and ``gatehouse sessions`` commands behind
  ``gateway/__main__.py``; :mod:`~gateway.app.cli_output` prints for both.

Public surface: ``build.build``, ``build.build_boot``, ``build.token_service``,
``build.BOOT``, ``build.envelope_middleware``, ``build.parser_limits``, ``server.run``,
``jobs.Scheduler`` and ``jobs.JOBS``.
Nothing below this layer imports it.
"""
