"""Do CleanRL's HalfCheetah-v4 (gymnasium 0.29.1, MuJoCo 2.3.3) and this project's HalfCheetah-v5 (gymnasium 1.x,
MuJoCo 3) have the same dynamics? Finding 7's TD3 pair runs one against the other (docs/validation/sanity.md).

    OLD_PYTHON experiments/validation/halfcheetah_versions.py record FILE   # in CleanRL's environment
    python experiments/validation/halfcheetah_versions.py compare FILE       # here

`record` rolls out uniform random actions and stores every state, action and reward; `compare` sets this
environment to each recorded state, takes the recorded action, and prints the largest difference in the next
state and reward (one step, so chaos cannot amplify rounding), then the mean random-action return of both sides.
"""
import sys

import gymnasium as gym
import numpy as np

EPISODES, STEPS = 20, 1000


def env_for(version: str):
    return gym.make(f"HalfCheetah-{version}").unwrapped


def record(path: str) -> None:
    env, rng = env_for("v4"), np.random.default_rng(0)
    qpos, qvel, act, rew, returns = [], [], [], [], []
    for ep in range(EPISODES):
        env.reset(seed=ep)
        total = 0.0
        for _ in range(STEPS):
            a = rng.uniform(-1, 1, env.action_space.shape)
            qpos.append(env.data.qpos.copy()), qvel.append(env.data.qvel.copy()), act.append(a)
            _, r, *_ = env.step(a)
            rew.append(r)
            total += r
        returns.append(total)
    np.savez(path, qpos=qpos, qvel=qvel, action=act, reward=rew, returns=returns)


def compare(path: str) -> None:
    old, env = np.load(path), env_for("v5")
    nxt = np.concatenate([old["qpos"][1:], old["qvel"][1:]], 1)
    state_err, reward_err, returns = 0.0, 0.0, []
    for i, (q, v, a, r) in enumerate(zip(old["qpos"], old["qvel"], old["action"], old["reward"])):
        env.set_state(q, v)
        _, r2, *_ = env.step(a)
        reward_err = max(reward_err, abs(r2 - r))
        if (i + 1) % STEPS:  # the next recorded state is this episode's
            state_err = max(state_err, np.abs(np.concatenate([env.data.qpos, env.data.qvel]) - nxt[i]).max())
    for ep in range(EPISODES):
        env.reset(seed=ep)
        rng, total = np.random.default_rng(1000 + ep), 0.0
        for _ in range(STEPS):
            total += env.step(rng.uniform(-1, 1, env.action_space.shape))[1]
        returns.append(total)
    se = lambda x: np.std(x) / np.sqrt(len(x))  # noqa: E731
    print(f"one step from {len(old['reward'])} recorded states: max |state diff| {state_err:.2e}, "
          f"max |reward diff| {reward_err:.2e}")
    print(f"random-action return over {EPISODES} episodes: recorded side {np.mean(old['returns']):.1f} "
          f"± {se(old['returns']):.1f}, this side {np.mean(returns):.1f} ± {se(returns):.1f} (mean ± s.e.)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("record", "compare"):
        sys.exit("usage: halfcheetah_versions.py record|compare FILE")
    {"record": record, "compare": compare}[sys.argv[1]](sys.argv[2])
