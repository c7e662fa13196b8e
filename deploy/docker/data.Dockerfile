# syntax=docker/dockerfile:1.7
# The data service (gRPC 50051): uploads, validation, preparation. Tokenizers only: no torch, no CUDA.
# Build from the repository root: docker build -f deploy/docker/data.Dockerfile -t finetune/data:latest .
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
# Only this service's extra, plus the drivers a deployment needs (PostgreSQL, S3 artifact store).
RUN pip install -c requirements/constraints.txt ".[data,postgres,s3]"

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/finetune finetune \
    && install -d -o finetune -g finetune /var/lib/finetune
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/grpc_healthcheck.py /opt/finetune/grpc_healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FT_DATA_HOST=0.0.0.0 \
    FT_DATA_PORT=50051 \
    FT_DATA_METRICS_PORT=9100 \
    FT_DATA_DATA_DIR=/var/lib/finetune
USER 10001:10001
WORKDIR /var/lib/finetune
EXPOSE 50051 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s \
    CMD ["python", "/opt/finetune/grpc_healthcheck.py", "127.0.0.1:50051"]
CMD ["python", "-m", "services.data.server"]
