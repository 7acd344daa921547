#!/usr/bin/env bash
# Two source trees for an A/B run on the device machine, which gets the working tree but not the git
# history: `bash benchmarks/ab_trees.sh OLD [NEW]` writes _ab/prev (OLD) and _ab/cur (NEW, default HEAD),
# untracked, so they travel with the tree; then `bash benchmarks/h200_run.sh ab` times both. Remove
# _ab afterwards.
set -euo pipefail
rm -rf _ab
mkdir -p _ab/prev _ab/cur
git archive "$1" | tar -x -C _ab/prev
git archive "${2:-HEAD}" | tar -x -C _ab/cur
echo "_ab/prev: $(git rev-parse --short "$1"), _ab/cur: $(git rev-parse --short "${2:-HEAD}")"
