#!/usr/bin/env bash
# Refreshes tests/data/golden/ from ../shared/golden (the source of the golden vectors).
# Each file is stored as <name>.tar.zst (zstd -19 packs the 53 MB of vectors into ~38 MB, which
# keeps the repository small enough to travel to a GPU machine); CMake unpacks them into
# <build>/golden at configure time, so tests never read anything outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/golden}
dst=tests/data/golden
mkdir -p "$dst"
for f in "$src"/*.safetensors "$src"/*.pth "$src"/README.md; do
  n=$(basename "$f")
  tar -C "$src" --owner=0 --group=0 --numeric-owner --mode=a+r,u+w --mtime=@0 -cf - "$n" \
    | zstd -19 -T0 -q -f -o "$dst/$n.tar.zst"
  echo "$dst/$n.tar.zst"
done
