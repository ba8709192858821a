# syntax=docker/dockerfile:1
# flywheel images (docs/deploy-compose.md, docs/deploy-kubernetes.md, docs/ci-cd.md).
#
#   docker build --target serve -t flywheel-serve .   # the serve-only install: no scikit-learn
#   docker build --target train -t flywheel-train .   # pipelines, monitor, worker, MLflow server
#
# The base is pinned by digest: python:3.11-slim-bookworm (Python 3.11.16, Debian 12) as
# published on Docker Hub on 2026-08-24. No container engine was available where this file
# was written, so the digest was not pulled here: check it before the first build with
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# and move it forward the same way (Renovate or Dependabot can do it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# ---------------------------------------------------------------- base: shared settings
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# ---------------------------------------------------------------- wheel: flywheel itself
FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Only the project's own wheel is built here (setuptools from the build-system table);
# every runtime dependency comes from a lock, with hashes.
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- serve-venv
FROM base AS serve-venv
RUN python -m venv /opt/flywheel
COPY requirements/serve.lock /tmp/serve.lock
# --require-hashes: every wheel must match a hash in the lock; --no-deps: the lock is the
# whole closure; --only-binary: nothing is compiled, so nothing unhashed is fetched to build.
RUN /opt/flywheel/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r /tmp/serve.lock
COPY --from=wheel /wheels /wheels
RUN /opt/flywheel/bin/pip install --no-deps /wheels/*.whl \
    && /opt/flywheel/bin/python -m compileall -q /opt/flywheel/lib

# ---------------------------------------------------------------- train-venv
FROM base AS train-venv
RUN python -m venv /opt/flywheel
COPY requirements/main.lock /tmp/main.lock
RUN /opt/flywheel/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r /tmp/main.lock
COPY --from=wheel /wheels /wheels
RUN /opt/flywheel/bin/pip install --no-deps /wheels/*.whl \
    && /opt/flywheel/bin/python -m compileall -q /opt/flywheel/lib

# ---------------------------------------------------------------- runtime: user and paths
FROM base AS runtime
# A fixed non-root uid/gid (Kubernetes' runAsNonRoot checks the number).
RUN groupadd --system --gid 10001 flywheel \
    && useradd --system --uid 10001 --gid flywheel --home-dir /var/lib/flywheel \
        --shell /usr/sbin/nologin flywheel \
    && mkdir -p /var/lib/flywheel /etc/flywheel \
    && chown flywheel:flywheel /var/lib/flywheel
ENV PATH=/opt/flywheel/bin:$PATH \
    FLYWHEEL_HOME=/var/lib/flywheel \
    HOME=/var/lib/flywheel
WORKDIR /var/lib/flywheel
LABEL org.opencontainers.image.title="flywheel" \
      org.opencontainers.image.description="MLOps for tabular models" \
      org.opencontainers.image.licenses="Apache-2.0"

# ---------------------------------------------------------------- serve
FROM runtime AS serve
COPY --from=serve-venv /opt/flywheel /opt/flywheel
# In a container the server listens on every interface (the default is loopback).
ENV FLYWHEEL_SERVING__HOST=0.0.0.0
USER 10001:10001
EXPOSE 8080 8081
# /v2/health/ready: 200 once every served model is loaded (docs/serving.md). slim has no
# curl, so Python asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('FLYWHEEL_SERVING__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/v2/health/ready', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["flywheel"]
CMD ["serve"]

# ---------------------------------------------------------------- train
FROM runtime AS train
COPY --from=train-venv /opt/flywheel /opt/flywheel
USER 10001:10001
# The worker writes a heartbeat each tick; --healthcheck exits 0 while it is fresh. A
# one-off command (flywheel retrain, run, mlflow server) overrides the health check in
# compose or Kubernetes.
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD ["flywheel", "worker", "--healthcheck"]
ENTRYPOINT ["flywheel"]
CMD ["worker"]
