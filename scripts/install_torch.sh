#!/bin/sh
# Install PyTorch into the project's venv: a CPU build where no NVIDIA GPU is visible, the
# default (CUDA) build where one is. TORCH_INDEX_URL, when set, wins (any build you choose).
# Called by `make setup` with PIP, PY, TORCH and TORCH_INDEX_URL set.
set -eu
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "install_torch: $TORCH from $TORCH_INDEX_URL"
    $PIP install -q "$TORCH" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install_torch: NVIDIA GPU found, installing the default (CUDA) build of $TORCH"
    $PIP install -q "$TORCH"
elif $PIP install -q --no-deps --no-index "$TORCH" >/dev/null 2>&1 \
        && $PY -c "import importlib.metadata as m, sys; sys.exit('+cpu' not in m.version('torch'))"; then
    # pip's configured wheelhouse (find-links) holds a CPU build: use it, then fetch its needs.
    echo "install_torch: no GPU, using the CPU build of $TORCH from the local wheelhouse"
    $PIP install -q "$TORCH"
else
    echo "install_torch: no GPU, installing the CPU build of $TORCH from PyTorch's CPU index"
    $PIP uninstall -q -y torch >/dev/null 2>&1 || true
    $PIP install -q --retries 1 "$TORCH" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
fi
$PY -c "import importlib.metadata as m; print('install_torch: installed torch', m.version('torch'))"
