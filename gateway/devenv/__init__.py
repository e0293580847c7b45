"""Helpers for developing and testing Gatehouse; never imported by the gateway itself."""
