# Shared set-up for scripts/demo and scripts/test (sourced, not run).
#
# Creates .venv beside the checkout if it is missing and installs graphlrp into it with the
# extras named in GRAPHLRP_EXTRAS. A stamp file records what was installed, so a second run
# with an unchanged pyproject.toml installs nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null 2>&1 || PYTHON_BIN=python3
TORCH_VERSION="${GRAPHLRP_TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${GRAPHLRP_TORCHVISION_VERSION:-0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

# test references installed without their dependencies: lxt's explicit rule functions need torch
# alone, while its package requires transformers, accelerate, bitsandbytes and open_clip
NO_DEPS_TEST_PACKAGES=("lxt==2.1")
stamp_key() {
    cat "$ROOT/pyproject.toml"
    echo "extras=$GRAPHLRP_EXTRAS torch=$TORCH_VERSION torchvision=$TORCHVISION_VERSION no-deps=${NO_DEPS_TEST_PACKAGES[*]}"
}
STAMP="$VENV/.graphlrp-installed-$(echo "$GRAPHLRP_EXTRAS" | tr ',' '-')"
if [ ! -f "$STAMP" ] || [ "$(stamp_key | sha256sum)" != "$(cat "$STAMP")" ]; then
    echo "[setup] installing torch==$TORCH_VERSION and graphlrp[$GRAPHLRP_EXTRAS]"
    "${PIP[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    "${PIP[@]}" -e "$ROOT[$GRAPHLRP_EXTRAS]"
    if [[ ",$GRAPHLRP_EXTRAS," == *",test,"* ]]; then
        "${PIP[@]}" --no-deps "${NO_DEPS_TEST_PACKAGES[@]}"
    fi
    stamp_key | sha256sum > "$STAMP"
fi
