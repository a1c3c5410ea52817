"""The rejax side of finding 7 (experiments/validation/sanity.py). Run by the python of an environment with rejax
0.1.3 and gymnax < 1.0, never by this project's (it imports nothing of plastic):

    REJAX_PYTHON experiments/validation/rejax_peer.py '{"algo": "ppo", "config": {...}, "seeds": 5,
                                                        "seed": 0, "eval_episodes": 10}'

Trains `seeds` seeds vmapped in one jitted program with rejax's own `train`, evaluating every `eval_freq` env
steps (rejax's schedule) with `eval_episodes` episodes of rejax's evaluation policy (`make_act`), and prints one
JSON line: {"steps": [...], "returns": [[seed 0's mean returns per evaluation], ...], "wall_s": ...}.
"""
import json
import sys
import time

import jax
import numpy as np
from rejax import get_algo
from rejax.evaluate import evaluate


def main(spec: dict) -> dict:
    cls = get_algo(spec["algo"])
    algo = cls.create(**spec["config"])
    n = int(spec["eval_episodes"])

    def eval_callback(algo, ts, rng):
        _, returns = evaluate(algo.make_act(ts), rng, algo.env, algo.env_params, n,
                              algo.env_params.max_steps_in_episode)
        return returns.mean()

    algo = algo.replace(eval_callback=eval_callback, skip_initial_evaluation=True)
    train = jax.jit(jax.vmap(cls.train, in_axes=(None, 0)))
    keys = jax.random.split(jax.random.PRNGKey(int(spec.get("seed", 0))), int(spec["seeds"]))
    t0 = time.perf_counter()
    _, returns = jax.block_until_ready(train(algo, keys))
    wall = time.perf_counter() - t0
    returns = np.asarray(returns, dtype=np.float64)          # [seeds, evaluations]
    freq, total = int(algo.eval_freq), int(algo.total_timesteps)
    steps = [min(freq * (i + 1), total) for i in range(returns.shape[1])]
    return {"steps": steps, "returns": returns.tolist(), "wall_s": wall, "rejax_eval": "make_act",
            "jax": jax.__version__}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
