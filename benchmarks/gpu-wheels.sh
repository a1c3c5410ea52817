#!/usr/bin/env bash
# Wheels for benchmarks/gpu.sh on the lent GPU machine (Python 3.12, x86-64, nothing fetched there; its image
# has jax with CUDA, flax, optax, chex, orbax, matplotlib, seaborn, pyyaml). Run here, in the repository root;
# `.whl/` is git-ignored and travels with `run(carry=[".whl"])`:
#   .whl/plastic  what this project needs beside the image (gymnax 1.0 and gymnasium, as in requirements.lock)
#   .whl/rejax    rejax 0.1.3 with gymnax < 1.0 and distrax, installed apart (its own site folder)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
get() {  # get DIR NAME==VERSION...
  local dir=$1; shift
  mkdir -p ".whl/$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d ".whl/$dir" "$@"
}
get plastic gymnax==1.0.1 gymnasium==1.3.0 farama-notifications==0.0.6
get rejax rejax==0.1.3 gymnax==0.0.9 gymnasium==1.3.0 farama-notifications==0.0.6 distrax==0.1.9 \
  tfp-nightly==0.26.0.dev20261027 dm-tree==0.1.10 gast==0.7.0 decorator==5.3.1
du -sh .whl
