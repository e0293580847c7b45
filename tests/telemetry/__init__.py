"""The OTLP relay against real loopback collectors, scriptable to fail, stall, reject and recover."""
