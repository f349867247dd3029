"""Insights: health aggregates per Assignment over rolling windows, and the alerts derived from
them, computed from the Jobs the exporter already read (README "Insights").

- facts.py: what is kept of each finished Job, recorded with its run.finished event;
- aggregates.py: counts, failure rate and duration statistics over a window;
- alerts.py: failure-rate and latency-regression episodes with hysteresis;
- summary.py: the run.summary and alert.* events;
- engine.py: once per pass, evaluates everything and enqueues the events with their state.
"""
