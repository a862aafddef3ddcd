#!/usr/bin/env bash
# Refreshes the lock: requirements/*.txt, every package pinned with its sha256 hashes, resolved by uv
# (`uv pip compile`, pip-tools' format) from pyproject.toml's ranges, universally (every Python >= 3.11,
# Linux / macOS / Windows; markers say which line applies where).
#   bash scripts/lock.sh                  # re-resolve, keeping pins that still satisfy pyproject.toml
#   bash scripts/lock.sh --upgrade        # move every pin to the newest release the ranges allow
# torch is left out of every file on purpose: it is installed first, as the build the machine needs (CPU here,
# CUDA on a GPU box), and the packages torch pulls only for CUDA (nvidia-*, cuda-*, triton) are left out with it.
# Run `bash scripts/check-latest.sh` before --upgrade, then `bash .ci/run` after it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || { echo "uv is needed to refresh the lock: python3 -m pip install uv" >&2; exit 1; }
upgrade=()
[ "${1:-}" = "--upgrade" ] && upgrade=(--upgrade)
TORCH_VERSION="${MMSAFE_TORCH_VERSION:-2.13.0}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

# the packages torch needs only for CUDA: its Linux x86_64 requirements minus its Windows ones
echo "torch==$TORCH_VERSION" > "$tmp/torch.in"
for plat in x86_64-manylinux_2_28 x86_64-pc-windows-msvc; do
  uv pip compile -q "$tmp/torch.in" --python-version 3.11 --python-platform "$plat" --no-header --no-annotate \
    | sed -E 's/[=<>; ].*//' | sort > "$tmp/$plat"
done
cuda_only=$(comm -23 "$tmp/x86_64-manylinux_2_28" "$tmp/x86_64-pc-windows-msvc")
no_emit=(--no-emit-package torch)
for p in $cuda_only; do no_emit+=(--no-emit-package "$p"); done

hash=$(python3 scripts/lockcheck.py --pyproject-hash)
compile() {  # compile OUT EXTRA... : one lock file for the package with these extras
  local out="$1"; shift
  local extras=() e
  for e in "$@"; do extras+=(--extra "$e"); done
  local cons=()
  [ "$out" != requirements/dev.txt ] && cons=(--constraint requirements/dev.txt)
  # uv keeps the pins already in $out that still satisfy the ranges (unless --upgrade)
  uv pip compile -q pyproject.toml "${extras[@]}" "${cons[@]}" "${upgrade[@]}" --universal --python-version 3.11 \
    --generate-hashes "${no_emit[@]}" --custom-compile-command "bash scripts/lock.sh" -o "$out"
  { echo "# pyproject-hash: $hash"; echo "# extras: ${*:-(none)}"; grep -v '^# pyproject-hash: \|^# extras: ' "$out"; } > "$out.new"
  mv "$out.new" "$out"
}
mkdir -p requirements
compile requirements/dev.txt all dev        # CI: every runtime extra + the test tools
# ... and what only those CUDA packages need in turn (e.g. nvidia-cuda-cccl via nvidia-nvshmem-cu13)
for _ in 1 2 3; do
  more=$(python3 scripts/lockcheck.py --only-via requirements/dev.txt $cuda_only)
  [ -z "$more" ] && break
  cuda_only="$cuda_only $more"
  for p in $more; do no_emit+=(--no-emit-package "$p"); done
  compile requirements/dev.txt all dev
done
compile requirements/all.txt all            # scripts/install.sh
for extra in hf ocr api diffusion gemma llamacpp judges train detoxify report ray; do
  compile "requirements/extra-$extra.txt" "$extra"   # one extra alone (scripts/check-extras.sh)
done
compile requirements/core.txt               # the package with no extra
echo "lock written: $(ls requirements/*.txt | tr '\n' ' ')"
