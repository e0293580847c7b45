"""Managed policies: what managed settings each caller gets, and which models they may use.

Everything is decided at boot from the config's ``managed.policies``
(:mod:`~gateway.policy.policies` holds the theory of operation): the policy
that applies to a caller is the first whose ``match`` fits their token, its
``cli`` document is merged over the base policy's, serialized canonically and
checksummed (:mod:`~gateway.policy.canonical_json`), and its model allowlist
compiled. A request then costs a cached match and a dict lookup. Pure: no I/O.

Public surface: ``policies.Policies`` (``match`` → ``Matched``: the document,
its checksum and ``access``), ``policies.ALLOW_ALL``, ``canonical_json.checksum``.
The HTTP side is :mod:`gateway.http.managed`.
"""
