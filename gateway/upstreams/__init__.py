"""Upstream providers: pure adapters that build requests, plus the transport edge."""
