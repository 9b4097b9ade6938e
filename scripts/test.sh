#!/usr/bin/env bash
# Builds everything (CUDA sources too where nvcc exists) and runs every test but the `gpu`
# label, then rebuilds the file parsers under AddressSanitizer and runs their bad-input tests.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$JOBS}

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$JOBS"
(cd build && ctest -LE gpu --output-on-failure -j "$JOBS")

# AddressSanitizer pass over the parsers (safetensors, .pth) with their malformed-input tests.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DOSP_ASAN=ON -DOSP_CUDA=OFF \
      -DOSP_BENCH=OFF -DOSP_MPI=OFF
cmake --build build-asan -j "$JOBS" --target tests_io
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest -L io -LE gpu --output-on-failure)

# A short bounded fuzz run of every file parser under AddressSanitizer + UBSan (scripts/fuzz.sh:
# safetensors header, index JSON, .pth zip + pickle, config JSON, YAML configs, video probe; 5 s per target
# over the corpus in tests/data/fuzz/).
FUZZ_SECONDS=${FUZZ_SECONDS:-5} JOBS="$JOBS" bash scripts/fuzz.sh
