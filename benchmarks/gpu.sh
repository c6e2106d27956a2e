#!/usr/bin/env bash
# The one-call GPU check of convc's CUDA kernels (docs/gpu.md).
#
# On the CPU machine, from the repository root (a few minutes; nothing needs a GPU):
#   bash benchmarks/gpu.sh prepare      # .gpucheck/: every example's CUDA .so (batch 1, 8; AlexNet and
#                                       # cifar10_11pct at 128), the oracle's references, a lark wheel;
#                                       # .gpu/a, .gpu/b: TVM bundles (../shared/gpu/pack.sh); sizes printed
#   bash benchmarks/gpu.sh rehearse     # the device half here: a dry run, then llvm builds in place of the
#                                       # CUDA modules against the same references (no GPU here)
# On the GPU machine, through the device tool's `run`, two calls back to back:
#   run 1, carry [".gpu/a"]:               bash .gpu/a/stage.sh
#   run 2, carry [".gpu/b", ".gpucheck"]:  bash benchmarks/gpu.sh device        (timeout_s 540)
# `device` installs TVM and lark, runs benchmarks/gpu_check.py on every case and writes one
# results file, $OUT/gpu-results.md (GPU name, command, error per example, ms per net vs cuDNN).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
check=.gpucheck
site=/var/tmp/convc-site

prepare() {
  rm -rf "$check" && mkdir -p "$check/wheels"
  python3 benchmarks/gpu_prepare.py --out "$check" "$@"
  # convc parses its networks with lark, which the GPU machine's image lacks
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$check/wheels" "lark==$(python3 -c 'import lark; print(lark.__version__)')"
  [ -f .gpu/b/install.sh ] || bash ../shared/gpu/pack.sh || bash /work/shared/gpu/pack.sh
  du -sh .gpu/a .gpu/b "$check"
  total=$(du -cm .gpu/b "$check" | tail -1 | cut -f1)
  tree=$(git ls-files -z | xargs -0 du -cm 2>/dev/null | tail -1 | cut -f1)
  echo "run 2 carries ${total} MiB plus the ${tree} MiB working tree (limit 64 MiB)"
  [ $((total + tree)) -le 64 ] || { echo "too big for one run: carry .gpucheck in a third run" >&2; exit 1; }
}

device() {
  started=$(date +%s)
  [ -d "$check" ] || { echo "no $check/: run 'bash benchmarks/gpu.sh prepare' first and carry it" >&2; exit 2; }
  if [ -f .gpu/b/install.sh ]; then bash .gpu/b/install.sh; fi
  [ -d "$site/tvm" ] || { echo "TVM is not installed in $site: run 1 (carry .gpu/a: bash .gpu/a/stage.sh) first" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$check"/wheels/*.whl
  export PYTHONPATH="$site:$root" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  out=${OUT:-$root/out}; mkdir -p "$out"
  status=0
  python3 benchmarks/gpu_check.py --dir "$check" --out "$out" || status=$?
  echo "device half took $(( $(date +%s) - started )) s; results in $out/gpu-results.md"
  exit $status
}

rehearse() {
  [ -d "$check" ] || prepare --quick
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  out=${OUT:-$root/out}; mkdir -p "$out"
  python3 benchmarks/gpu_check.py --dir "$check" --out "$out" --dry       # regenerated inputs match
  python3 benchmarks/gpu_check.py --dir "$check" --out "$out" --cpu       # comparison logic, on llvm builds
  sed -n '1,30p' "$out/gpu-results.md"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  device) device ;;
  rehearse) rehearse ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
