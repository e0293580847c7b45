"""The HTTP handlers, and only those: every route is listed in :mod:`~gateway.http.routes`.

* :mod:`~gateway.http.messages` is the hot path, ``POST /v1/messages`` and
  ``/v1/messages/count_tokens``: read ``messages`` top to bottom for the
  protocol's request rules in order. :mod:`~gateway.http.spend_gate` is its
  companion that admits, tops up and settles against :mod:`gateway.spend`.
* :mod:`~gateway.http.signin` is the OAuth surface ``claude /login`` drives
  (metadata, the device flow, the IdP callback, tokens, revocation) over
  :mod:`gateway.auth`; :mod:`~gateway.http.forms` parses its form bodies.
* :mod:`~gateway.http.managed` serves managed settings and the client's
  bootstrap from :mod:`gateway.policy`; :mod:`~gateway.http.admin` is the
  spend-limits admin API over :mod:`gateway.admin`; :mod:`~gateway.http.meta`
  holds probes, the landing page, ``/v1/models`` and small stubs.
* :mod:`~gateway.http.keys` holds what every handler shares: the ``RUNTIME``
  app key, the ``REQUEST_ID`` and ``CLIENT_IP`` request keys, ``authenticate``
  (the one bearer check), ``read_body`` (the one size check),
  ``SECURITY_HEADERS`` and ``new_request_id``.
* :mod:`~gateway.http.runtime` is the :class:`Runtime`: every value a handler
  needs, computed once at boot, so no handler looks anything up per request;
  it is made complete on startup, edges included. :mod:`~gateway.http.sightings`
  counts the managed-settings checksums clients report (held by the runtime).

Handlers import the feature packages and the base, never :mod:`gateway.app`.
"""
