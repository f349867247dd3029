"""Code shared by `exporter` and `sinks` about talking HTTP to a remote service.

It imports neither package, so `sinks` can use it without depending on `exporter`.
"""
