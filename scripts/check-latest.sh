#!/usr/bin/env bash
# Drift check: installs the NEWEST releases that pyproject.toml's ranges allow (not the lock) into a scratch
# venv, prints which of them differ from the lock, and runs the fast tests there. Run it before refreshing the
# lock (`bash scripts/lock.sh --upgrade`) so an upstream release that breaks mmsafe is seen before users see it.
#   bash scripts/check-latest.sh                 # newest releases, fast tier
#   bash scripts/check-latest.sh --oldest        # the LOWEST versions pyproject.toml claims (needs uv): are the
#                                                # ranges' floors true?
#   bash scripts/check-latest.sh -- -m ""        # arguments after -- go to pytest (here: every tier)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
mode=newest
[ "${1:-}" = "--oldest" ] && { mode=oldest; shift; }
[ "${1:-}" = "--" ] && shift
TORCH_VERSION="${MMSAFE_TORCH_VERSION:-2.13.0}"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/mmsafe-$mode.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
echo "scratch venv ($mode releases): $scratch/venv"
"$py" -m pip install -q "torch==$TORCH_VERSION"
if [ "$mode" = newest ]; then
  # torch stays the pinned build: "newest" must never pull another (CUDA) torch in through a dependency
  echo "torch==$("$py" -c 'import torch; print(torch.__version__)')" > "$scratch/torch-pin.txt"
  "$py" -m pip install -q --upgrade --upgrade-strategy eager -c "$scratch/torch-pin.txt" -e ".[all,dev]"
else
  # every direct requirement at the lowest version its range allows (their own dependencies: newest that fit)
  uv pip compile -q pyproject.toml --extra all --extra dev --resolution lowest-direct --python-version \
    "$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" \
    --no-emit-package torch --no-header --no-annotate -o "$scratch/oldest.in"
  grep -vE '^(nvidia-|cuda-|triton)' "$scratch/oldest.in" > "$scratch/oldest.txt"
  names=$(python3 -c 'import re,sys; print("|".join(sorted(set(re.findall(r"\"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?[<>=~!]", open("pyproject.toml").read())))))')
  echo "lowest direct requirements: $(grep -iE "^($names)==" "$scratch/oldest.txt" | tr '\n' ' ')"
  "$py" -m pip install -q --no-deps -r "$scratch/oldest.txt"
  "$py" -m pip install -q --no-deps --no-build-isolation -e .
fi
"$py" -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was pulled in'"
"$py" -m pip check
"$py" scripts/lockcheck.py --compare-installed requirements/dev.txt
"$py" -m pytest -q -p no:cacheprovider "$@"
