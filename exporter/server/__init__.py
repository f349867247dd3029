"""The daemon's HTTP server (waitress): /healthz, /readyz, /metrics and POST /webhooks/duvo.

app.py routes and runs the server, health.py decides readiness, metrics.py defines the metrics,
webhooks.py receives Duvo's webhooks (the queue is processed by exporter.source.webhook_queue).
"""
