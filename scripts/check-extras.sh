#!/usr/bin/env bash
# Per-extra import check: for each extra, a new empty venv holding ONLY that extra's lock
# (requirements/extra-EXTRA.txt; core.txt for the package alone), torch first where the extra needs it, then
# scripts/extra_smoke.py EXTRA: every mmsafe module imports, every third-party module the code imports for that
# extra imports, and one real use of the extra runs. A requirement missing from an extra fails here.
#   bash scripts/check-extras.sh                  # core hf ocr api diffusion gemma llamacpp judges train detoxify report ray
#   bash scripts/check-extras.sh gemma judges     # some of them
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
TORCH_VERSION="${MMSAFE_TORCH_VERSION:-2.13.0}"
extras=("$@")
[ ${#extras[@]} -eq 0 ] && extras=(core hf ocr api diffusion gemma llamacpp judges train detoxify report ray)
scratch="$(mktemp -d "${TMPDIR:-/tmp}/mmsafe-extras.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
status=0
for extra in "${extras[@]}"; do
  lock="requirements/extra-$extra.txt"; [ "$extra" = core ] && lock=requirements/core.txt
  venv="$scratch/$extra"
  t0=$(date +%s)
  {
    python3 -m venv "$venv" &&
    if grep -qE '^\s+#\s+(via )?torch$' "$lock"; then  # an extra with torch: torch first, setuptools locked
      "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" &&
      "$venv/bin/python" -m pip install -q --require-hashes --no-deps -r "$lock" &&
      "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    else
      "$venv/bin/python" -m pip install -q --require-hashes --no-deps -r "$lock" &&
      "$venv/bin/python" -m pip install -q --no-deps -e .
    fi &&
    "$venv/bin/python" -m pip check >/dev/null
  } > "$scratch/$extra.install.log" 2>&1 || { echo "[$extra] INSTALL FAILED"; grep -v "is ignored" "$scratch/$extra.install.log" | tail -5; status=1; continue; }
  repo="$PWD"
  (cd "$scratch" && "$venv/bin/python" "$repo/scripts/extra_smoke.py" "$extra") > "$scratch/$extra.log" 2>&1 || status=1
  grep '^\[' "$scratch/$extra.log" || tail -20 "$scratch/$extra.log"
  echo "[$extra] $(( $(date +%s) - t0 )) s, $(du -sm "$venv" | cut -f1) MB"
  rm -rf "$venv"
done
exit $status
