#!/usr/bin/env bash
# The GPU figures (docs/benchmarks.md, "GPU"), in one script that finishes in under 8 minutes on one GPU:
#   1. PPO on gymnax:CartPole-v1 at 1 / 256 / 4096 vmapped seeds, default config (metrics on) and metrics off
#   2. rejax 0.1.3 beside it on the same PPO work (benchmarks/peers.py), at the same seed counts
#   3. TD3 and SAC on gymnax:Pendulum-v1 at 1 / 8 / 64 seeds (256-256 MLPs, batch 256), metrics on and off
#   4. MuJoCo Playground CheetahRun: the bare env at 1 / 4096 envs per backend, SAC and PPO at 1 / 64 seeds
#      (benchmarks/playground.py; only where mujoco_playground imports: the image lacks it, and its wheels with
#      MuJoCo's do not fit run's carry beside the others)
# with compile times. Each part has a time limit, so the script ends in time whatever the machine; a part cut
# short says so in its file. Figures go to $OUT, or to the folder given as the first argument.
# On the lent machine, whose image lacks gymnax and rejax: run benchmarks/gpu-wheels.sh here first, then
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-figures}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -d .whl/plastic ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/plastic/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
rejax_py=${REJAX_PYTHON:-}
if [ -z "$rejax_py" ] && [ -d .whl/rejax ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rejax-site .whl/rejax/*.whl
  printf '#!/bin/sh\nPYTHONPATH=/tmp/rejax-site exec %s "$@"\n' "$(command -v $py)" > /tmp/rejax-python
  chmod +x /tmp/rejax-python
  rejax_py=/tmp/rejax-python
fi
{ date; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  $py -c "import jax; print('jax', jax.__version__, jax.devices())"; } > "$out/machine.txt" 2>&1
part() {  # part NAME SECONDS COMMAND...: run with a time limit, output to $out/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "(cut short at ${limit}s)" >> "$out/$name.txt"
  grep -v "Warning\|warn(" "$out/$name.txt" | tail -n 12
}
part ppo_seeds 150 $py benchmarks/seeds.py --parts metrics --agents ppo --seeds "${PPO_SEEDS:-1,256,4096}" \
  --ppo-window "${PPO_WINDOW:-16}" --rounds 2
if [ -n "$rejax_py" ]; then
  part ppo_rejax 110 $py benchmarks/peers.py --rejax-python "$rejax_py" --only ppo --ppo-seeds "${PPO_SEEDS:-1,256,4096}" \
    --ppo-steps "${PPO_STEPS:-131072}"
else
  echo "no rejax: run benchmarks/gpu-wheels.sh and carry .whl, or set REJAX_PYTHON" > "$out/ppo_rejax.txt"
fi
part offpolicy_seeds 140 $py benchmarks/seeds.py --parts metrics --agents td3,sac --seeds "${OFF_SEEDS:-1,8,64}" \
  --hidden 256,256 --batch 256 --window "${OFF_WINDOW:-1000}" --rounds 2
if $py -c "import mujoco_playground" > /dev/null 2>&1; then
  part playground 80 $py benchmarks/playground.py --env CheetahRun --envs 1,4096 --agents sac,ppo --seeds 1,64
else
  echo "no mujoco_playground on this machine" > "$out/playground.txt"
fi
echo "figures in $out"
