"""duvo-exporter: exports Duvo Jobs to observability backends, durably."""

__version__ = "0.1.0"
