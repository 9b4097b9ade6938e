#!/usr/bin/env bash
# Fuzzes every file parser under AddressSanitizer + UndefinedBehaviorSanitizer: safetensors
# header (fuzz_safetensors), sharded index JSON (fuzz_safetensors_index), .pth zip + pickle
# (fuzz_pth), the unpickler alone (fuzz_pickle), DiT config.json (fuzz_dit_config) and the
# video probe of `osp inspect` (fuzz_video_probe).
#
#   bash scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=5 bash scripts/fuzz.sh       # the short bounded run scripts/test.sh does
#   bash scripts/fuzz.sh fuzz_pth fuzz_pickle # some targets
#
# Each target starts from its corpus in tests/data/fuzz/<target>/ (the interesting inputs: add a
# file there when a finding is fixed) and runs deterministic mutations of it (fuzz/driver.cpp;
# FUZZ_SEED picks the sequence). A finding (sanitizer report, crash, or an exception other than
# osp::Error escaping a parser) stops the run with exit 1; the input is saved under
# $BUILD_DIR/findings/. Builds with GCC or Clang; needs nothing beyond scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_ITERATIONS=${FUZZ_ITERATIONS:-1000000000}
FUZZ_SEED=${FUZZ_SEED:-1}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOSP_ASAN=ON -DOSP_UBSAN=ON \
      -DOSP_FUZZ=ON -DOSP_TESTS=OFF -DOSP_BENCH=OFF -DOSP_CUDA=OFF -DOSP_MPI=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
status=0
for t in "${targets[@]}"; do
  if ! "$BUILD_DIR/$t" --seconds "$FUZZ_SECONDS" --iterations "$FUZZ_ITERATIONS" --seed "$FUZZ_SEED" \
       --findings "$BUILD_DIR/findings" "tests/data/fuzz/$t"; then
    echo "fuzz: $t found a problem (input in $BUILD_DIR/findings/)" >&2
    status=1
  fi
done
exit $status
