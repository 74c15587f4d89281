#!/usr/bin/env bash
# Create .venv and install ogkernels with everything its demo and tests use (CPU machine,
# no GPU needed). Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# torch 2.14.1 (a CUDA build that also runs on the CPU) pins triton 3.8; torchvision is for SAM 2.
$PIP install "torch==2.14.1" "torchvision==0.29.1" "triton==3.8.0" "transformers==5.23.0" \
  "numpy>=1.24" "pytest>=8" "pytest-benchmark>=5" "hypothesis>=6.100" "pycocotools>=2.0" \
  "safetensors>=0.4" "accelerate==1.16.0" "peft==0.21.2" "tqdm>=4.60" "pillow>=9" "matplotlib>=3.7" "setuptools>=68" "wheel"
if ! .venv/bin/python -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 $PIP install --no-build-isolation "sam2==1.1.0"
fi
$PIP install --no-build-isolation --no-deps -e .
.venv/bin/python -c "import ogkernels, sam2, transformers, triton; print('ogkernels', ogkernels.__version__, 'ready')"
