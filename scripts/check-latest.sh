#!/usr/bin/env bash
# Drift check: installs the NEWEST releases that pyproject.toml's ranges allow (not the lock) into a scratch
# venv, prints which of them differ from the lock, and runs the fast tests there. Run it before refreshing
# the lock (scripts/lock.sh) so an upstream release that breaks mmsafe is seen before users see it.
#   bash scripts/check-latest.sh                 # fast tier
#   bash scripts/check-latest.sh -m ""           # every tier (arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
TORCH_VERSION="${MMSAFE_TORCH_VERSION:-2.13.0}"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/mmsafe-latest.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
echo "scratch venv: $scratch/venv"
"$py" -m pip install -q "torch==$TORCH_VERSION"
"$py" -m pip install -q --upgrade --upgrade-strategy eager -e ".[all,dev]"
"$py" -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was pulled in'"
"$py" -m pip check
"$py" scripts/lockcheck.py --compare-installed requirements/dev.txt
"$py" -m pytest -q -p no:cacheprovider "$@"
