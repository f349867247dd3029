"""Benchmarks (`make bench`): throughput, API-budget efficiency, memory and freshness."""
