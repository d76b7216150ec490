# Installs torch_scatter into .venv (sourced after _setup.sh).
#
# torch_scatter is published as source only and must be compiled against the installed torch.
# The built wheel is kept in a cache outside the checkout, keyed by the torch version and by
# whether it has CUDA kernels (built only where a GPU and nvcc are present), so fresh clones reuse
# it instead of compiling again (about five minutes). Set GRAPHLRP_NO_SCATTER=1 to skip it; the
# pure-torch reductions are then tested alone.
SCATTER_VERSION="2.1.2"
if [ "${GRAPHLRP_NO_SCATTER:-0}" != "1" ] && ! "$PY" -c "import torch_scatter" >/dev/null 2>&1; then
    installed_torch="$("$PY" -c 'import torch; print(torch.__version__)')"
    WHEEL_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/graphlrp/wheels/torch-$installed_torch"
    if command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
        export FORCE_CUDA=1  # CUDA kernels, kept apart from a build without them
        WHEEL_DIR="$WHEEL_DIR-cuda"
    fi
    mkdir -p "$WHEEL_DIR"
    if ! ls "$WHEEL_DIR"/torch_scatter-"$SCATTER_VERSION"-*.whl >/dev/null 2>&1; then
        echo "[setup] compiling torch_scatter $SCATTER_VERSION for torch $installed_torch (once; ~5 min)"
        "$PY" -m pip install --quiet --disable-pip-version-check wheel setuptools
        "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --no-cache-dir \
            -w "$WHEEL_DIR" "torch-scatter==$SCATTER_VERSION"
    fi
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
        "$WHEEL_DIR"/torch_scatter-"$SCATTER_VERSION"-*.whl
fi
