#!/usr/bin/env bash
# Installs every Debian package the CPU build and tests need. Idempotent.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-dev libopenblas-openmp-dev  # the OpenMP build: GEMMs share osp's OpenMP threads (issue 15)
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev
  libsentencepiece-dev sentencepiece
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev ffmpeg
  libpng-dev zlib1g-dev zstd
  libcpp-httplib-dev
  pybind11-dev python3-dev python3-numpy
  chromium
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -y
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
