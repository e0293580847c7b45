"""Unit tests of the OTLP relay's pure modules: destinations and the export queue."""
