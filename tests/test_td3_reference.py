"""TD3's update against a reference: CleanRL's TD3-JAX update (github.com/vwxyzjn/cleanrl @fe8d8a03,
`td3_continuous_action_jax.py`: `update_critic`, then `update_actor` with the Polyak step of all three targets
every second update), written out below as separate twin critics with their own Adam each, from the same
parameters, batches and target noise. docs/validation/sanity.md cites this test for the TD3 pair."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from agents.td3 import TD3, TD3Config
from plastic.agent import init_counters
from plastic.core import Update

OBS, ACT, BATCH, UPDATES = 5, 3, 32, 6
GAMMA, TAU, NOISE, CLIP = 0.99, 0.005, 0.2, 0.5


def mlp(p, x):
    for name in ("hidden_0", "hidden_1"):
        x = jax.nn.relu(x @ p[name]["kernel"] + p[name]["bias"])
    return x @ p["output"]["kernel"] + p["output"]["bias"]


def reference_updates(actor, q1, q2, batches, noises):
    """The reference: each critic its own MSE and Adam; the actor (on Q1 after this update's critic step) and the
    targets every second update; target actions clipped to [-1, 1] after the clipped smoothing noise."""
    adam = optax.adam(3e-4)
    nets = {"actor": actor, "q1": q1, "q2": q2}
    opt = {k: adam.init(v) for k, v in nets.items()}
    targ = dict(nets)
    for t, (b, z) in enumerate(zip(batches, noises)):
        na = jnp.clip(jnp.tanh(mlp(targ["actor"], b["next_obs"])) + jnp.clip(z * NOISE, -CLIP, CLIP), -1.0, 1.0)
        nx = jnp.concatenate([b["next_obs"], na], -1)
        q_next = jnp.minimum(mlp(targ["q1"], nx)[:, 0], mlp(targ["q2"], nx)[:, 0])
        y = b["reward"] + (1 - b["terminated"]) * GAMMA * q_next
        x = jnp.concatenate([b["obs"], b["action"]], -1)
        for q in ("q1", "q2"):
            g = jax.grad(lambda p: jnp.mean((mlp(p, x)[:, 0] - y) ** 2))(nets[q])
            step, opt[q] = adam.update(g, opt[q])
            nets[q] = optax.apply_updates(nets[q], step)
        if (t + 1) % 2 == 0:
            def actor_loss(p):
                return -jnp.mean(mlp(nets["q1"], jnp.concatenate([b["obs"], jnp.tanh(mlp(p, b["obs"]))], -1)))
            step, opt["actor"] = adam.update(jax.grad(actor_loss)(nets["actor"]), opt["actor"])
            nets["actor"] = optax.apply_updates(nets["actor"], step)
            targ = {k: optax.incremental_update(nets[k], targ[k], TAU) for k in nets}
    return nets, targ


def test_td3_update_equals_cleanrl_reference():
    agent = TD3(TD3Config(hidden=(16, 16)), OBS, ACT)
    state = agent.init(jax.random.PRNGKey(0))
    actor, critic = state.nets["actor"].params, state.nets["critic"].params
    member = lambda tree, e: jax.tree.map(lambda v: v[e], tree)  # noqa: E731
    rng = np.random.default_rng(0)
    batches = [{"obs": rng.normal(size=(BATCH, OBS)), "action": rng.uniform(-1, 1, (BATCH, ACT)),
                "next_obs": rng.normal(size=(BATCH, OBS)), "reward": rng.normal(size=BATCH),
                "terminated": (rng.uniform(size=BATCH) < 0.2) * 1.0} for _ in range(UPDATES)]
    batches = [{k: jnp.asarray(v, jnp.float32) for k, v in b.items()} for b in batches]
    keys = [jax.random.PRNGKey(10 + t) for t in range(UPDATES)]
    # the smoothing noise TD3.update draws: the first of its three keys, standard normal of the action's shape
    noises = [jax.random.normal(jax.random.split(k, 3)[0], (BATCH, ACT)) for k in keys]

    u = Update(state, counters=init_counters(agent))
    step = jax.jit(agent.update)
    for b, k in zip(batches, keys):
        u = step(u, b, k)
    nets, targ = reference_updates(actor, member(critic, 0), member(critic, 1), batches, noises)

    ours = u.state
    assert int(u.counters["critic"]) == UPDATES and int(u.counters["actor"]) == UPDATES // 2
    pairs = [(ours.nets["actor"].params, nets["actor"]), (ours.targets["actor"], targ["actor"])]
    for e, q in ((0, "q1"), (1, "q2")):
        pairs += [(member(ours.nets["critic"].params, e), nets[q]), (member(ours.targets["critic"], e), targ[q])]
    for got, want in pairs:
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(nets["actor"]), jax.tree.leaves(actor)))
    assert moved > 1e-4  # the comparison is not between two untouched copies
