"""Gatehouse: a self-hosted gateway for Claude Code.

Importing this package does no I/O and imports no cloud SDK.
"""

__version__ = "0.1.0"
NAME = "gatehouse"
