"""The admin API's logic apart from HTTP: parsing, data access, replies, retention.

A handler in :mod:`gateway.http.admin` parses with ``requests``, calls one
method of ``store.AdminStore`` and renders the rows with ``docs``:

* :mod:`~gateway.admin.requests` parses and validates what admin clients send
  (bodies, queries, cursors), without touching the network;
* :mod:`~gateway.admin.store` (edge) reads and writes spend limits and the
  admin audit trail with the statements of ``sql/queries/admin_*.sql``; each
  mutation, its audit row and the ``NOTIFY`` to the replicas commit in one
  transaction;
* :mod:`~gateway.admin.docs` shapes database rows into the wire documents
  (amounts as strings of cents, spend with three decimals);
* :mod:`~gateway.admin.retention` (edge) deletes audit entries, idle principals
  and spend counters past their retention, periodically, on every replica.

The handlers and authorization are in :mod:`gateway.http.admin`; spend caps
themselves in :mod:`gateway.spend`. Public surface: the parse functions and
request types of ``requests``, ``store.AdminStore`` (with ``UnknownCursor`` and
the ``EffectiveRows`` it returns), the document builders of ``docs``,
``retention.prune`` and ``retention.sweep`` (one round of the ``retention`` job of
:mod:`gateway.app.jobs`).
"""
