"""The soak: three Gatehouse replicas behind HAProxy, driven through faults, on loopback.

``python -m bench.soak`` (``make soak``) starts one throwaway PostgreSQL, two fake
Anthropic upstreams (a primary and a secondary, the gateway fails over from one to
the other), the test IdP, three ``gatehouse serve`` processes sharing the database
with spend limits on, and HAProxy from Debian in front of them (roundrobin, health
checks on ``/readyz``). It then runs its steps in order (``bench/soak/steps.py``),
each under a bounded load, and checks invariants the README promises. Any violated
invariant makes the run exit 1; the summary goes to ``bench/results/<date>-<host>-soak/``
(``summary.json`` and ``summary.md``; logs and configs beside them, not committed).

Layout: ``lab.py`` (the processes), ``traffic.py`` (clients and their tallies),
``steps.py`` (the faults and what each must show), ``report.py`` (the summary).
"""
