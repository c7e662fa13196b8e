# syntax=docker/dockerfile:1.7
# The web console (HTTP 8080): pages for people over the services' gRPC APIs and the gateway's chat API.
# A client only: no torch, no model weights; its own database holds operators and sessions.
# Build from the repository root: docker build -f deploy/docker/console.Dockerfile -t finetune/console:latest .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stubs are generated in the build (they are git-ignored); grpcio-tools stays in this stage.
FROM ${PYTHON_IMAGE} AS stubs
WORKDIR /src
RUN pip install --no-cache-dir grpcio-tools==1.85.1 protobuf==7.36.2
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/
RUN python scripts/gen_protos.py

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/
COPY ftcommon/ ftcommon/
COPY services/ services/
COPY ftctl/ ftctl/
COPY --from=stubs /src/finetune/ finetune/
# Only the console's extra, plus the PostgreSQL driver for its accounts.
RUN pip install -c requirements/constraints.txt ".[console,postgres]"

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/finetune finetune \
    && install -d -o finetune -g finetune /var/lib/finetune
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FT_CONSOLE_HOST=0.0.0.0 \
    FT_CONSOLE_PORT=8080 \
    FT_CONSOLE_DATA_DIR=/var/lib/finetune
USER 10001:10001
WORKDIR /var/lib/finetune
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
CMD ["python", "-m", "services.console.server"]
