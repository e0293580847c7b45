"""The admin API's logic apart from HTTP: parsing requests, shaping replies, retention.

* :mod:`~gateway.admin.requests` parses and validates what admin clients send
  (bodies, queries, cursors), without touching the network;
* :mod:`~gateway.admin.docs` shapes database rows into the wire documents
  (amounts as strings of cents, spend with three decimals);
* :mod:`~gateway.admin.retention` deletes audit entries, idle principals and
  spend counters past their retention, periodically, on every replica.

The handlers, authorization and the transactions are in
:mod:`gateway.http.admin`; spend caps themselves in :mod:`gateway.spend`.
Public surface: the parse functions and request types of ``requests``, the
document builders of ``docs``, ``retention.prune`` and ``retention.prune_forever``.
"""
