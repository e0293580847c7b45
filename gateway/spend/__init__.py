"""Spend limits: caps per person, group and organization, enforced across replicas.

A request's cost is estimated before it is sent upstream and reserved against
every counter it draws on; while a stream runs the reservation grows in steps;
when the request ends its actual cost replaces the reservation. A cap holds on
any number of replicas because admissions are judged in PostgreSQL under row
locks (or, for a person who keeps sending, against a lease of their headroom
reserved in advance). The hot path's side of this is :mod:`gateway.http.spend_gate`;
the admin API that sets the caps is :mod:`gateway.http.admin`.

The modules, pure unless marked edge:

* :mod:`~gateway.spend.caps`: periods, which cap applies to a person, and the
  headers, 429 and usage JSON the client reads (the vocabulary: limit row,
  cap, pool, snapshot);
* :mod:`~gateway.spend.pricing`: what a request costs, in integer money;
* :mod:`~gateway.spend.budget`: how much output to reserve, and when a
  running stream needs a top-up;
* :mod:`~gateway.spend.plans`: the counters and caps a person's request draws on;
* :mod:`~gateway.spend.rows`: reading the spend SQL functions' rows;
* :mod:`~gateway.spend.leases`: the local book of leases and their rules;
* :mod:`~gateway.spend.identities`: who is due to be written to ``principals``;
* :mod:`~gateway.spend.store` (edge): reserve, top up, settle, expire against
  PostgreSQL, with :mod:`~gateway.spend.settlements` (edge) storing costs in
  batches and :mod:`~gateway.spend.lease_keeper` (edge) asking for, renewing
  and giving back leases.

Public surface: ``store.SpendStore``, ``caps.Snapshot`` and the header and
usage functions of ``caps``, ``pricing.Pricing``, ``pricing.Rates``,
``budget.AllowanceTracker``, ``budget.StreamBudget``, ``settlements.Owed``.

Theory of operation:

* **Limits live in memory.** Every replica keeps the spend_limits rows in a
  :class:`gateway.spend.plans.Plans`, reloaded when an admin change sends
  ``NOTIFY gatehouse_spend_limits`` (heard on the process's one LISTEN
  connection, :mod:`gateway.db.listener`; reloaded too after it reconnects)
  and every 30 s regardless, so a lost notification costs at most 30 s.
  Which counters and caps a request draws on comes from the pure
  :mod:`gateway.spend.plans`, cached per (sub, groups) until the next reload.
* **One round trip to admit, shared.** ``SpendStore.reserve`` queues the request and a
  reserver task sends what is queued to the SQL function
  ``spend_reserve_many`` (sql/migrations/0006_spend_batches.sql), up
  to ``RESERVE_BATCH`` requests per call: it creates missing counter rows,
  locks every counter of the batch (each person's day, week and month, and
  the month of every pool they draw from) in one fixed order, then judges the
  requests one after another, admitting one iff every capped counter has room
  for spent + reserved + its estimate and adding the estimate to all of them,
  in one transaction. Concurrent batches on any number of replicas queue on
  those row locks, so admissions can never sum past a cap. Nothing waits on
  purpose: a lone request is sent at once, and whatever arrives while a call
  is in flight goes in the next one, so under load one round trip (and one
  lock queue entry) serves many requests instead of one each.
* **Leases** (``gatehouse.spend.leases``): once a person's request was
  admitted through the database with plenty of headroom left, the replica
  reserves a slice of that headroom for them (a lease: an open reservation
  row of its own) and admits their next requests against it in memory; a
  settlement then moves the actual cost out of the lease. The rules (size,
  fairness near a cap, renewal, a dead replica's leases) are in
  :mod:`gateway.spend.leases`; :mod:`gateway.spend.lease_keeper` asks for,
  renews and gives back leases, renewing from the store's background round.
* **People without a cap skip the database on admission**; their spend is
  still charged to their counters at settlement (caps can be added at any
  time and must then see the spend to date).
* **Top-ups** grow an open reservation while a stream runs, once per step
  (never per chunk), and share round trips the same way through
  ``spend_top_up_many``, which reads the batch's counters once, judges the
  top-ups in a loop over arrays and writes back with one statement per table
  (admissions keep a few statements per request: for the small batches the
  request path usually forms, that measured faster). A refused step marks the
  counter exhausted at its current cap, which closes admission until the cap
  is raised or the period ends.
* **Settling** replaces the reservation with the actual cost, once per
  request id whatever the number of calls, through ``spend_settle_many``
  (sql/migrations/0005_spend_batch.sql). The batching, the retries after an
  outage and the ``spend.unsettled`` lines for what cannot be stored live in
  :mod:`gateway.spend.settlements`; the store's background round drains
  its retry queue.
* **Expiry.** A replica that dies leaves open reservations. A background
  sweep on every replica expires those past their expiry (reserve time +
  ``reservation_ttl_s``, pushed forward by each top-up), charging the reserved
  amount and writing an ``admin_audit`` row; ``FOR UPDATE SKIP LOCKED``
  keeps replicas from sweeping the same row. If the owner settles after all,
  the expired charge is replaced by the actual cost.
* **Timeouts.** Every call on the request path is bounded by ``timeout_s``;
  a timeout or an unreachable database raises StoreUnavailable and the relay
  applies ``enforcement.fail_closed_on_error``. A request let through then is
  settled like any other: its charge is owed (:mod:`gateway.spend.settlements`) and lands
  once the database answers, exactly once. While the owed queue is full,
  ``reserve`` raises :class:`gateway.spend.settlements.Owed` at once, for
  everyone (leased and uncapped people too): what cannot be charged is not
  served.
* **One request's values never fail another's.** A batch of admissions or
  top-ups the database refuses for anything but an outage is sent again in
  halves (:class:`gateway.db.coalescing.Coalescer`) until the refusal is pinned
  on single requests; a request whose values the database refuses (a NUL byte
  in its model, say) gets :class:`gateway.db.store.StoreRefused`, and nothing of
  it was reserved.
* **principals** (last-seen email, name, groups) are written in batches from
  the store's background round; :mod:`gateway.spend.identities` decides who is due.
* **The background round** (``SpendStore.background_round``) does the periodic
  work above, in order, every second and at once when a limit changes: in the
  app it is the ``spend`` job of :mod:`gateway.app.jobs`; a store used alone
  (tests, tools) runs it in a task of its own.
"""
