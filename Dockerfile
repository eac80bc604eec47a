# The ccq application image (api, worker, beat, flower) for compose.yaml and other
# deployments with a registry. Session containers use worker_image/, not this.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# iptables: the worker installs the isolated session network's chain on the host (it runs
# with the host's network and NET_ADMIN in compose.yaml).
RUN apt-get update && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY setup.cfg pyproject.toml README.md ./
COPY orchestrator orchestrator
COPY api api
COPY gateway gateway
COPY tasks tasks
COPY cli cli
COPY client client
COPY ops ops
COPY model_server model_server
COPY migrations migrations
COPY worker_image worker_image
COPY scripts scripts
RUN pip install --no-cache-dir . && useradd --uid 10001 --create-home ccq
# The worker needs the host's Docker socket; api, beat and flower run unprivileged.
USER ccq
EXPOSE 8080 8090 8091 5555
CMD ["ccq", "api"]
