"""The fully-jitted driver: every agent runs on it, runs are deterministic, resume exactly, vmapped seeds
equal separate runs, and chunks neither retrace nor leave the device."""
import jax
import numpy as np
import pytest

from helpers import EVAL_OFF, METRICS_OFF, rows, strip_timing
from plastic.config import build
from plastic.drivers import HostOffPolicy, HostOnPolicy, JitOffPolicy, JitOnPolicy, make_trainer

SMALL = {"td3": {"hidden": "32,32", "batch_size": 32, "buffer_size": 2000, "learning_starts": 100},
         "sac": {"hidden": "32,32", "batch_size": 32, "buffer_size": 2000, "learning_starts": 100},
         "dqn": {"hidden": "32,32", "batch_size": 32, "buffer_size": 2000, "learning_starts": 100,
                 "train_frequency": 2, "target_update_period": 20},
         "ppo": {"hidden": "32,32", "num_envs": 2, "num_steps": 25, "minibatches": 2, "anneal_lr": "false"}}
ENVS = {"td3": "gymnax:Pendulum-v1", "sac": "gymnax:Pendulum-v1", "dqn": "gymnax:CartPole-v1",
        "ppo": "gymnax:CartPole-v1"}


def trainer(agent, steps=400, intervention="none", seeds=1, seed=0, env=None, extra=None, metrics=False):
    ov = {f"{agent}.{k}": v for k, v in SMALL[agent].items()}
    if not metrics:
        ov.update(METRICS_OFF)
    ov.update({"run.progress": "off", "run.tensorboard": "false", "run.log_every": 100,
               "run.checkpoint_every": 200, **EVAL_OFF})
    if "grama" in intervention:
        ov["grama.period"] = 20
    ov.update(extra or {})
    cfg = build(agent, intervention, overrides=ov, env=env or ENVS[agent], steps=steps, seeds=seeds, seed=seed)
    return make_trainer(cfg)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_driver_choice():
    assert type(trainer("dqn")) is JitOffPolicy
    assert type(trainer("ppo")) is JitOnPolicy
    assert type(trainer("dqn", extra={"run.driver": "host"})) is HostOffPolicy  # gymnax env on the host driver
    with pytest.raises(ValueError, match="jitted driver needs a JAX-native env"):
        make_trainer(build("td3", overrides={"run.driver": "jit"}, env="Pendulum-v1"))
    assert type(make_trainer(build("ppo", env="CartPole-v1"))) is HostOnPolicy
    assert type(trainer("ppo", extra={"run.driver": "host"})) is HostOnPolicy
    with pytest.raises(ValueError, match="jitted driver needs a JAX-native env"):
        make_trainer(build("ppo", overrides={"run.driver": "jit"}, env="CartPole-v1"))


# td3 and dqn are `slow` variants: the DQN jitted resume with grama, swd and six more methods is
# tests/test_stacks.py::test_a_stack_trains_and_resumes; sac and ppo keep the metrics on across the cut
@pytest.mark.parametrize("agent,intervention", [pytest.param("td3", "grama+swd", marks=pytest.mark.slow),
                                                ("sac", "grama"),
                                                pytest.param("dqn", "grama+swd", marks=pytest.mark.slow),
                                                ("ppo", "grama")])
def test_resume_is_bit_identical(tmp_path, agent, intervention):
    """...evaluations included: every 200 env steps, the split point, so the cut run evaluates there too."""
    ev = {"run.eval_every": 200, "run.eval_episodes": 2}
    full = trainer(agent, 400, intervention, metrics=True, extra=ev)
    full.run(tmp_path / "full")
    trainer(agent, 200, intervention, metrics=True, extra=ev).run(tmp_path / "split")
    resumed = trainer(agent, 400, intervention, metrics=True, extra=ev)
    resumed.run(tmp_path / "split", resume=True)
    assert_trees_equal(full.final_state, resumed.final_state)
    rf, rr = strip_timing(rows(tmp_path / "full")), strip_timing(rows(tmp_path / "split"))
    assert rf == rr and [r["step"] for r in rf] == [r["step"] for r in rr]
    assert sorted({r["step"] for r in rf if "eval/episode_return" in r}) == [200, 400]
    assert any(r["episodes"] for r in rf)
    ts = full.final_state[0]
    net = "q" if agent == "dqn" else "critic"
    assert int(ts.interventions["grama"][net]["events"][0]) > 0  # resets happened under the jitted loop
    for key in (f"dormant_ratio_tau_0/{net}/hidden_0", f"grama_ratio_tau_0/{net}", f"loss/{net}"):
        assert all(key in r for r in rf), key


@pytest.mark.parametrize("agent", [pytest.param("dqn", marks=pytest.mark.slow), "ppo"])
def test_vmapped_seeds_match_separate_runs(tmp_path, agent):
    both = trainer(agent, 300, seeds=2, seed=5)
    both.run(tmp_path / "both")
    for i in range(2):
        single = trainer(agent, 300, seeds=1, seed=5 + i)
        single.run(tmp_path / f"s{i}")
        a = jax.tree.map(lambda x: np.asarray(x[i]), both.final_state[0].agent.nets)
        b = jax.tree.map(lambda x: np.asarray(x[0]), single.final_state[0].agent.nets)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        ra = [r["episode_return"] for r in rows(tmp_path / "both") if r["seed"] == i]
        rb = [r["episode_return"] for r in rows(tmp_path / f"s{i}")]
        assert ra == pytest.approx(rb, rel=1e-4)


def test_chunks_do_not_retrace_or_leave_the_device(tmp_path):
    """Four equal chunks: the chunk program is traced once, env.step / env.reset run as Python only while
    tracing, and the program holds no host callback but the SciPy SVD that feature ranks fall back on
    when the device SVD returns non-finite values (docs/metrics.md §5; a branch taken only then)."""
    tr = trainer("dqn", 400, metrics=True)
    calls = {"step": 0, "reset": 0}
    env = tr.env
    step, reset = env.step, env.reset

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    env.step, env.reset = counting("step", step), counting("reset", reset)
    carry = tr.init_carry()
    jaxpr = jax.make_jaxpr(tr.chunk, static_argnums=(1,))(carry, 100)
    callbacks = [e for e in _eqns(jaxpr.jaxpr) if "callback" in e.primitive.name]
    assert all("scipy_svdvals" in str(e.params.get("callback")) for e in callbacks)
    after_init = dict(calls)
    with jax.transfer_guard("disallow"):
        carry, sums, _ = tr.chunk_program(carry, 100)
    traced = dict(calls)
    assert traced["step"] > after_init["step"]
    for _ in range(3):
        with jax.transfer_guard("disallow"):
            carry, sums, _ = tr.chunk_program(carry, 100)
    assert calls == traced and tr.chunks.traces == 1
    assert int(carry[1]["env_steps"]) == 400 and int(sums["count"][0]) > 0


def _eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else [v]):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from _eqns(getattr(inner, "jaxpr", inner))


def test_dqn_learns_gymnax_cartpole(tmp_path):
    """The jitted twin of the host-driver CartPole test: 3 vmapped seeds, 20k steps, return >= 100."""
    ov = {"dqn.learning_starts": 1000, "dqn.epsilon_decay_steps": 10_000, "dqn.train_frequency": 1,
          "dqn.lr": 1e-3, "dqn.target_update_period": 500, "dqn.hidden": "64,64", "dqn.batch_size": 64,
          "dqn.buffer_size": 20_000, "run.log_every": 2000, "run.progress": "off", "run.tensorboard": "false",
          **METRICS_OFF}
    make_trainer(build("dqn", overrides=ov, env="gymnax:CartPole-v1", steps=20_000, seeds=3)).run(tmp_path / "r")
    for seed in range(3):
        late = [r["episode_return"] for r in rows(tmp_path / "r") if r["seed"] == seed and r["step"] > 12_000]
        assert np.mean(late) >= 100, (seed, late)
