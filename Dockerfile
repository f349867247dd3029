# duvo-exporter container image.
#
#   docker build -t duvo-exporter .
#   docker run -v "$PWD/config/exporter.yaml:/etc/duvo-exporter/config.yaml:ro" \
#              -v duvo-state:/var/lib/duvo-exporter -e DUVO_API_KEY=dv_... duvo-exporter
#
# - Runs as the numeric user 10001:10001, so Kubernetes `runAsNonRoot` can verify it.
# - State lives on the volume /var/lib/duvo-exporter: point `state.path` (and a file sink's
#   `path`) there. A bind-mounted directory must be writable by uid 10001.
# - The config is read from $DUVO_EXPORTER_CONFIG (/etc/duvo-exporter/config.yaml).
# - `duvo-exporter` is PID 1 (exec form), so SIGTERM/SIGINT reach it and `run` stops gracefully.
# - HEALTHCHECK: set DUVO_EXPORTER_HEALTH_URL (e.g. http://127.0.0.1:9464/healthz) when the config
#   turns on the HTTP server; empty, the default, reports healthy without a request.
#
# pip in the build needs a private index or a proxy's CA? Give them as build secrets, which no
# layer keeps: a pip.conf (id pip.conf, mounted as /etc/pip.conf) and a CA bundle (id pip-ca.crt,
# at /run/secrets/pip-ca.crt, for `cert =` in that pip.conf). Both are optional:
#   docker build --secret id=pip.conf,src=./pip.conf --secret id=pip-ca.crt,src=/path/ca.crt .
# `make container-test` builds it with podman, mirroring the host's pip configuration this way.

FROM python:3.11-slim AS build

RUN python -m venv /opt/duvo-exporter
WORKDIR /usr/src/duvo-exporter
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY sinks ./sinks
COPY transport ./transport
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-ca.crt \
    /opt/duvo-exporter/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/duvo-exporter/bin/duvo-exporter --version


FROM python:3.11-slim

LABEL org.opencontainers.image.title="duvo-exporter" \
      org.opencontainers.image.description="Exports Duvo Jobs to Datadog Logs, Splunk HEC, Grafana Loki and files" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/duvo-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DUVO_EXPORTER_CONFIG=/etc/duvo-exporter/config.yaml \
    DUVO_EXPORTER_HEALTH_URL=""

RUN groupadd --system --gid 10001 duvo \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/duvo-exporter \
      --shell /usr/sbin/nologin duvo \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/duvo-exporter \
 && install -d -m 0755 /etc/duvo-exporter

COPY --from=build /opt/duvo-exporter /opt/duvo-exporter

USER 10001:10001
WORKDIR /var/lib/duvo-exporter
VOLUME ["/var/lib/duvo-exporter"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r; u = os.environ.get('DUVO_EXPORTER_HEALTH_URL'); u and r.urlopen(u, timeout=4).close()"]

ENTRYPOINT ["duvo-exporter"]
CMD ["run"]
