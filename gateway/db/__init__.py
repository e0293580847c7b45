"""PostgreSQL access shared by every feature: the pool, migrations, usage rows, batching.

* :mod:`~gateway.db.store` connects at boot, applies the migrations in
  ``sql/migrations`` and loads the named queries of ``sql/queries``; it turns
  an unreachable database into ``StoreUnavailable`` and a refused value into
  ``StoreRefused``, so callers decide per feature what an outage means.
* :mod:`~gateway.db.recorder` writes usage rows in batches off the hot path,
  retrying through outages, so no request waits on the database to be recorded.
* :mod:`~gateway.db.listener` holds the process's one LISTEN connection:
  features subscribe to a channel with a callback and an ``on_connect`` that
  resynchronises what a dropped connection made them miss; it reconnects with
  back-off and runs every ``on_connect`` after each (re)connect.
* :mod:`~gateway.db.coalescing` turns concurrent calls into batched ones.
* :mod:`~gateway.db.tasks` keeps work a client hang-up must not cancel
  (settlements, top-ups) and drains it at shutdown.

Public surface: ``store.Store``, ``store.queries``, ``store.StoreUnavailable``,
``store.StoreRefused``, ``store.unavailable_as``, ``recorder.Recorder``,
``listener.Listener``, ``listener.Subscription``, ``coalescing.Coalescer``, ``tasks.TaskSet``, ``tasks.cancel_and_wait``.
"""
