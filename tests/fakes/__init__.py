"""Strict fake backends the sink tests talk to over real HTTP."""
