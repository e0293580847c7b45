"""The Claude Code gateway protocol, as Gatehouse reads it.

This package is importable on its own (it never imports ``gateway``): the wire
types in :mod:`protocol_spec.wire`, the recorded client transcripts, the fake
upstream the tests and benchmarks drive, and the conformance suite.
"""
