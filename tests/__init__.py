"""Gatehouse's tests, laid out like gateway/ itself.

- ``tests/unit/<package>/``: pure modules of that package (values in, values out:
  no sockets, no database). Tests of the top-level modules (errors, client_text,
  netaccess) and the property checks over every client-input parser sit directly
  in ``tests/unit/``; other parsers' property checks (upstream replies, config,
  keys, headers) sit beside their unit tests as ``test_<module>_properties.py``.
- ``tests/<package>/`` (admin, app, auth, config, db, http, spend): the same
  packages driven through real components: PostgreSQL, gateway processes, the
  OIDC provider, fake upstreams on loopback.
- ``tests/system/``: checks that cut across packages or guard the project as a
  whole: layering, packaging, the locks, schema drift, the conformance suite and
  its profiles, transcripts and replay, HTTP fuzzing, hostile input, process and
  boot behaviour, the dev environment, the bench smoke run, and the test tooling
  the other tests stand on (fake upstream, scripted browser, PostgreSQL helper).

A test file goes in the package it mostly tests. The helpers every test may use
(``harness.py``, ``conftest.py``, ``scripted_idp.py``, ``netfaults.py``) stay at
this top level so their fixtures reach every folder. No two test files share a
name anywhere in the tree (``tests/system/test_tree.py`` checks it), so a failure
report's file name is never ambiguous.
"""
