"""Backends behind one small interface (`sinks.base.Sink`); `sinks.registry` lists them."""
