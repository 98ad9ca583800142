#!/usr/bin/env bash
# The committed book must pass the README's test command on a fresh clone under every CPU code path a
# reader's machine may take. This script clones the current commit (committed files only, as CI sees it)
# once, installs it, and runs `make test` (no `make book` first) once per environment below, printing one
# line per run and exiting non-zero if any run failed. Logs: $OUT_DIR/<name>.log.
#
#   scripts/test-matrix.sh [OUT_DIR]        # default OUT_DIR: a new temporary folder
#
# The environments: the default; MKL's SSE2 code path (MKL_CBWR=COMPATIBLE); MKL capped at AVX2
# (MKL_ENABLE_INSTRUCTIONS=AVX2); PyTorch's non-vectorised kernels (ATEN_CPU_CAPABILITY=default); and
# 1 and 2 OpenMP threads. About 5-6 minutes per run on the 2-core machine.
set -uo pipefail
src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
out=${1:-$(mktemp -d -t prefdyn-matrix-XXXXXX)}
mkdir -p "$out"
clone="$out/clone"
rm -rf "$clone"
git clone -q "$src" "$clone" || { echo "test-matrix: cannot clone $src"; exit 2; }
echo "test-matrix: $(git -C "$clone" log -1 --format='%h %s') -> $out"
(cd "$clone" && make install > "$out/install.log" 2>&1) || { echo "test-matrix: make install failed (see $out/install.log)"; exit 2; }
status=0
run() {
  local name=$1; shift
  local t0=$SECONDS
  if (cd "$clone" && env "$@" make test > "$out/$name.log" 2>&1); then
    res=pass
  else
    res=FAIL; status=1
  fi
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$out/$name.log" | tail -1)
  printf '%-28s %-4s %4d s  %s\n' "$name" "$res" $((SECONDS - t0)) "$summary"
}
run default              PREFDYN_MATRIX=default
run mkl-compatible       MKL_CBWR=COMPATIBLE
run mkl-avx2             MKL_ENABLE_INSTRUCTIONS=AVX2
run aten-default         ATEN_CPU_CAPABILITY=default
run omp-1                OMP_NUM_THREADS=1
run omp-2                OMP_NUM_THREADS=2
exit $status
