"""Upstreams: which provider serves a model, and talking to it without re-framing anything.

* :mod:`~gateway.upstreams.routing` decides which configured upstreams may
  serve a model and under which id (aliases, ``upstream_model``, the built-in
  catalog), in failover order;
* :mod:`~gateway.upstreams.bodyview` reads the few fields the gateway needs
  from a Messages body and splices ``model`` when an upstream needs another id;
* :mod:`~gateway.upstreams.sse` is the usage tap over relayed SSE bytes;
* one module per provider (:mod:`~gateway.upstreams.anthropic`) builds the
  upstream request and filters headers, purely;
* :mod:`~gateway.upstreams.transport` is the outbound HTTP edge: one client
  session, guarded DNS resolution, connect and idle-read deadlines.

Everything but ``transport`` is pure. Public surface: ``routing.Routes``,
``bodyview.decode_view``, ``sse.UsageTap``, ``sse.UsageTotals``,
``transport.Transport``, ``transport.UpstreamFailure``, ``anthropic.prepare``.
"""
