"""Gatehouse: a self-hosted gateway for Claude Code.

The floor plan, top to bottom; a package imports only from those below it
(tests/system/test_layering.py holds the rule):

* ``__main__`` the ``gatehouse`` command; ``app`` composition: building the
  app, the server process, CLI commands (``devenv``: ``make dev``);
* ``http`` the handlers, with one route table (``http/routes.py``); the hot
  path is ``http/messages.py``;
* ``admin`` over ``spend``; ``auth`` (sign-in, tokens, sessions), ``policy``
  (managed settings, model access), ``spend`` (caps, reservations, settling);
* ``upstreams`` routing, body view, SSE tap, transport, one module per provider;
* ``config`` (``gateway.yaml``) and ``db`` (PostgreSQL); then ``audit``; then
  ``errors`` (the one error table), ``client_text`` and ``netaccess``.

Importing this package, or any package's ``__init__``, does no I/O and
imports no cloud SDK.
"""

__version__ = "0.1.0"
NAME = "gatehouse"
