# The component image: leukoflow with exactly the pinned dependency set of
# requirements.lock. Every KFP component names it as base_image
# (components.settings.COMPONENT_IMAGE). Build from the repository root:
#   docker build -f infra/docker/component.Dockerfile -t ghcr.io/leukoflow/leukoflow:0.1.0 .
# .dockerignore keeps data/, .venv/, .leukoflow/ and .git/ out of the context.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/leukoflow
COPY pyproject.toml requirements.lock README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
# -c pins every transitive dependency to requirements.lock; no dev extras.
RUN /opt/leukoflow/bin/pip install --no-cache-dir -c requirements.lock .

FROM python:3.11-slim-bookworm
# LEUKOFLOW_HOME must be writable: KFP steps and the drift check keep local state there.
ENV PATH=/opt/leukoflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LEUKOFLOW_HOME=/var/lib/leukoflow \
    KERAS_HOME=/var/lib/leukoflow/keras \
    TF_CPP_MIN_LOG_LEVEL=2
RUN groupadd --gid 10001 leukoflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin leukoflow \
    && mkdir -p /var/lib/leukoflow \
    && chown leukoflow:leukoflow /var/lib/leukoflow
COPY --from=build /opt/leukoflow /opt/leukoflow
USER 10001:10001
WORKDIR /var/lib/leukoflow
# The same image runs the request-logging proxy beside TF Serving (`leukoflow monitor proxy`,
# infra/k8s/serving): gRPC 8500, REST 8501, its Prometheus metrics 8502.
EXPOSE 8500 8501 8502
# KFP overrides the command (python3 -m kfp.dsl.executor_main ...); this is for manual use.
CMD ["leukoflow", "--help"]
