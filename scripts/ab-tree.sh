#!/usr/bin/env bash
# A/B runs across commits in one GPU call. The GPU machine gets a copy of the working tree but no
# git history, so the other side of a comparison travels as a source archive: this script (here)
# writes ab/<rev>.tar.gz — what the library and benchmarks build from at REV (CMakeLists.txt,
# cmake/, src/, bench/, python/; about 0.7 MB) — and scripts/ab-build.sh (there) builds it.
#
#   bash scripts/ab-tree.sh REV          # e.g. HEAD~1; then carry "ab" in the device call
# Prints the archive's path. ab/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 REV" >&2; exit 2; }
rev=$(git rev-parse --short "$1^{commit}")
mkdir -p ab
git archive --format=tar.gz -o "ab/$rev.tar.gz" "$rev" CMakeLists.txt cmake src bench python
echo "ab/$rev.tar.gz"
