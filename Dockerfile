# duvo-exporter container image. Untested here (no Docker engine on the build machines):
# build with `docker build -t duvo-exporter .`, run with the config mounted and state on a volume:
#   docker run -v $PWD/config/exporter.yaml:/etc/duvo-exporter/config.yaml:ro \
#              -v duvo-state:/var/lib/duvo-exporter -e DUVO_API_KEY=... duvo-exporter
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DUVO_EXPORTER_CONFIG=/etc/duvo-exporter/config.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY sinks ./sinks
COPY transport ./transport
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /var/lib/duvo-exporter duvo \
 && mkdir -p /var/lib/duvo-exporter /etc/duvo-exporter \
 && chown duvo /var/lib/duvo-exporter

USER duvo
WORKDIR /var/lib/duvo-exporter
VOLUME ["/var/lib/duvo-exporter"]
# Point state.path at /var/lib/duvo-exporter/state.db in the mounted config.
ENTRYPOINT ["duvo-exporter"]
CMD ["run"]
