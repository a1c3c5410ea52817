"""Determinism, resume equivalence, vmapped seeds = separate runs, checkpoint errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import make, rows, strip_timing
from plastic.checkpoint import CheckpointError
from plastic.config import build
from plastic.loop import checkpoint_due

ENV = "Pendulum-v1"  # deterministic given its reset seed; episodes of 200 steps


def params_of(trainer, seed=0):
    ts, counters = trainer.final_state
    return jax.tree.map(lambda x: np.asarray(x[seed]), ts.agent.nets), jax.device_get(counters)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def run_once(tmp, name, agent="td3", steps=400, intervention="grama+swd", seeds=1, seed=0, resume=False,
             pipelined=False, env=ENV, extra=None, metrics=False):
    ov = {f"{agent}.learning_starts": 100, "run.log_every": 100, "run.checkpoint_every": 200,
          "run.pipelined_acting": pipelined,
          "grama.period": 40, "swd.T": 150, "swd.sampler": "bucketed", "swd.bucket_size": 50}
    active = intervention.split("+")
    ov = {k: v for k, v in ov.items() if not k.startswith(("grama.", "swd.")) or k.split(".")[0] in active}
    ov.update(extra or {})
    _, t = make(agent, env, steps, intervention, overrides=ov, seeds=seeds, seed=seed, metrics=metrics)
    t.run(tmp / name, resume=resume)
    return t


def test_same_seed_same_results(tmp_path):
    a = run_once(tmp_path, "a", steps=300)
    b = run_once(tmp_path, "b", steps=300)
    assert_trees_equal(params_of(a), params_of(b))
    assert strip_timing(rows(tmp_path / "a")) == strip_timing(rows(tmp_path / "b"))


# pipelined acting (an opt-in switch; its step semantics: test_pipelined_acting_uses_the_parameters_of_one_update_
# earlier) resumes through the same checkpoint code: a `slow` variant
@pytest.mark.parametrize("pipelined", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resume_is_bit_identical(tmp_path, pipelined):
    full = run_once(tmp_path, "full", steps=400, pipelined=pipelined, metrics=True)
    run_once(tmp_path, "split", steps=200, pipelined=pipelined, metrics=True)
    resumed = run_once(tmp_path, "split", steps=400, resume=True, pipelined=pipelined, metrics=True)
    assert_trees_equal(params_of(full), params_of(resumed))
    ts_f, ts_r = full.final_state[0], resumed.final_state[0]
    assert_trees_equal(ts_f.replay, ts_r.replay)
    assert_trees_equal(ts_f.interventions, ts_r.interventions)
    rf, rr = strip_timing(rows(tmp_path / "full")), strip_timing(rows(tmp_path / "split"))
    assert [r["step"] for r in rr] == [100, 200, 300, 400]  # no duplicate or missing rows
    assert rf == rr
    assert int(ts_f.interventions["grama"]["critic"]["events"][0]) > 0  # resets happened in the test
    # every row carries the per-seed plasticity metrics and the ReGraMa diagnostics
    for key in ("dormant_ratio_tau_0/critic/hidden_0", "grama_ratio_tau_0.01/actor", "reset_fraction/critic/hidden_1",
                "grama/output_jump/critic", "grama/zero_grad_layer/actor/hidden_0", "reset_unit_step_ratio/critic",
                "loss/critic", "episode_return", "sps"):
        assert all(key in r for r in rows(tmp_path / "full")), key


def test_dqn_resume_is_bit_identical(tmp_path):
    """DQN with update rounds every 4th env step (a lax.cond in the step) on 2-step episodes."""
    kw = dict(agent="dqn", env="probe:d_two_step", extra={"dqn.train_frequency": 4, "dqn.epsilon_decay_steps": 300})
    full = run_once(tmp_path, "full", steps=400, **kw)
    run_once(tmp_path, "split", steps=200, **kw)
    resumed = run_once(tmp_path, "split", steps=400, resume=True, **kw)
    assert_trees_equal(params_of(full), params_of(resumed))
    assert_trees_equal(full.final_state[0], resumed.final_state[0])
    assert strip_timing(rows(tmp_path / "full")) == strip_timing(rows(tmp_path / "split"))
    assert int(full.final_state[1]["q"]) == (400 - 100) // 4  # one update per 4th env step after warm-up
    assert int(full.final_state[0].interventions["grama"]["q"]["events"][0]) > 0


def test_nonstationary_resume_is_bit_identical(tmp_path):
    """Gravity re-drawn every 150 steps on the host driver: the resumed run continues the schedule."""
    kw = dict(intervention="none", extra={"env.nonstationary": "dynamics", "env.dynamics": "gravity",
                                          "env.period": 150, "env.first_phase": "drawn"})
    full = run_once(tmp_path, "full", steps=400, **kw)
    run_once(tmp_path, "split", steps=200, **kw)
    resumed = run_once(tmp_path, "split", steps=400, resume=True, **kw)
    assert_trees_equal(params_of(full), params_of(resumed))
    rf = strip_timing(rows(tmp_path / "full"))
    assert rf == strip_timing(rows(tmp_path / "split"))
    assert [r["nonstationary/phase"] for r in rf] == [0, 1, 1, 2]  # the phase of each row's last step
    assert len({r["nonstationary/scale"] for r in rf}) == 3


def test_pipelined_acting_uses_the_parameters_of_one_update_earlier(tmp_path):
    """A pipelined learning step stores, acts, then updates; the fused step stores, updates, then acts.
    Same state afterwards, and the pipelined action is the policy's action before the updates."""
    _, tr = make("td3", ENV, 10, "none", seeds=2, overrides={"td3.learning_starts": 0, "td3.policy_delay": 1})
    S, O, A = 2, tr.envs.observation_size, tr.envs.action_size
    rng = np.random.default_rng(0)
    states = []
    for pipelined in (False, True):
        carry = tr.pack(*tr.init_state())
        for i in range(3):
            transition = {"obs": rng.normal(size=(S, O)), "action": rng.uniform(-1, 1, (S, A)),
                          "reward": rng.normal(size=S), "next_obs": rng.normal(size=(S, O)), "terminated": np.zeros(S),
                          "done": np.zeros(S)}
            nobs = rng.normal(size=(S, O)).astype(np.float32)
            ts, counters = tr.unpack(carry)
            before = np.asarray(tr.first_actions(ts, {**counters, "env_steps": counters["env_steps"] + 1}, nobs))
            carry, action, _ = tr.host_step(carry, transition, nobs, learn=True, pipelined=pipelined)
            after = np.asarray(tr.first_actions(*tr.unpack(carry), nobs))
            # the same policy on the same parameters, computed by another program: equal up to rounding
            np.testing.assert_allclose(action, before if pipelined else after, rtol=0, atol=1e-6)
            assert np.max(np.abs(before - after)) > 1e-4  # the update did move the policy
        rng = np.random.default_rng(0)
        states.append(jax.device_get(tr.unpack(carry)))
    assert_trees_equal(*states)




def test_resume_drops_rows_after_checkpoint(tmp_path):
    run_once(tmp_path, "r", steps=300)           # checkpoints at 200 and 300 (final)
    (tmp_path / "r" / "checkpoints" / "300").rename(tmp_path / "300.bak")
    import shutil
    shutil.rmtree(tmp_path / "300.bak")
    run_once(tmp_path, "r", steps=300, resume=True)  # resumes from 200: row 300 rewritten once
    assert [r["step"] for r in rows(tmp_path / "r")] == [100, 200, 300]


def test_vmapped_seeds_match_separate_runs(tmp_path):
    both = run_once(tmp_path, "both", steps=300, intervention="none", seeds=2, seed=3)
    for i in range(2):
        single = run_once(tmp_path, f"single{i}", steps=300, intervention="none", seeds=1, seed=3 + i)
        pa, ca = params_of(both, i)
        pb, cb = params_of(single, 0)
        assert ca == cb
        for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        ra = [r for r in rows(tmp_path / "both") if r["seed"] == i]
        rb = rows(tmp_path / f"single{i}")
        ret_a = [r["episode_return"] for r in ra if r["episode_return"] is not None]
        ret_b = [r["episode_return"] for r in rb if r["episode_return"] is not None]
        assert len(ret_a) == len(ret_b) > 0
        assert ret_a == pytest.approx(ret_b, rel=1e-4)


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    run_once(tmp_path, "c", steps=200, intervention="none")
    ckpt = tmp_path / "c" / "checkpoints" / "200"
    for f in ckpt.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "meta" not in str(f):
            f.write_bytes(b"garbage")
    before = (tmp_path / "c" / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="unreadable"):
        run_once(tmp_path, "c", steps=400, intervention="none", resume=True)
    assert (tmp_path / "c" / "metrics.jsonl").read_text() == before  # nothing already written is lost


def test_checkpoint_of_another_state_layout_is_a_clear_error(tmp_path):
    """A run saved by a version whose state had other fields: one line that says so (deleting the checkpoint
    to fall back on an earlier one cannot help: they all share the layout)."""
    from plastic.checkpoint import Checkpointer
    old = {"a": jnp.zeros(3, jnp.float32)}
    Checkpointer(tmp_path / "ck").save(10, old, {"step": 10})
    with pytest.raises(CheckpointError, match="another layout than this code builds") as e:
        Checkpointer(tmp_path / "ck").restore({**old, "tail": jnp.zeros(2, jnp.float32)})
    assert "\n" not in str(e.value) and "start a new run" in str(e.value)


def test_checkpoint_keeps_zero_size_arrays(tmp_path):
    """orbax cannot write a zero-size array (MJX states have some: `act` of a model without activations);
    they round-trip with their shapes and dtypes, and the rest of the state bit for bit."""
    from plastic.checkpoint import Checkpointer
    state = {"x": jnp.arange(3, dtype=jnp.float32), "act": jnp.zeros((2, 0), jnp.float32),
             "inner": (jnp.zeros((0,), jnp.int32), jnp.ones((2, 2), jnp.uint32))}
    Checkpointer(tmp_path / "ck").save(5, state, {"step": 5})
    step, got, meta = Checkpointer(tmp_path / "ck").restore(jax.tree.map(jnp.zeros_like, state))
    assert step == 5 and meta == {"step": 5} and jax.tree.structure(got) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state)):
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("agent,intervention,env,measures", [
    pytest.param("td3", "none", "Pendulum-v1", (False, True), marks=pytest.mark.slow),
    # the programs with the measuring code hold every replay read and write of those without, which the ReDo case
    # compiles on their own
    ("sac", "grama+swd", "Pendulum-v1", (True,)),
    ("td3", "redo", "Pendulum-v1", (False,)),  # ReDo's statistics batch is gathered from the replay inside its cond
    pytest.param("dqn", "grama+swd", "CartPole-v1", (False, True), marks=pytest.mark.slow)])
def test_env_step_never_copies_the_replay(agent, intervention, env, measures):
    """The compiled env step writes the replay in place: no op materialises a replay-sized array except
    the in-place writes themselves (a copy per step made 1M-slot buffers 7x slower). `measures`: the programs
    with (True) and without (False) the metrics collector's measuring code; ReDo's gather is in both, so its
    case compiles only the programs without."""
    capacity = 65_537  # a size no other array has
    _, tr = make(agent, env, 10, intervention, seeds=2,  # DQN: update rounds under lax.cond (train_frequency 10)
                 overrides={f"{agent}.buffer_size": capacity, f"{agent}.learning_starts": 0}, metrics=True)
    carry = tr.pack(*tr.init_state())
    S, O, A = 2, tr.envs.observation_size, tr.envs.action_size
    action = np.zeros(S, np.int32) if tr.agent.discrete else np.zeros((S, A))
    transition = {"obs": np.zeros((S, O)), "action": action, "reward": np.zeros(S),
                  "next_obs": np.zeros((S, O)), "terminated": np.zeros(S), "done": np.zeros(S)}
    learn = [tr.step_program("learn", measure) for measure in measures] + [tr.warm_program]
    programs = [fn.lower(carry, transition, np.zeros((S, O))) for fn in learn]
    updates = [tr.step_program("update", measure).lower(carry) for measure in measures]
    for lowered in programs + updates:
        hlo = lowered.compile().as_text()
        copies = [l.strip()[:120] for l in hlo.splitlines() if f"{capacity}" in l and " copy(" in l]
        assert not copies, copies


def test_checkpoints_land_on_the_first_log_point_after_each_multiple():
    cfg = build("td3", env=ENV, steps=1000, overrides={"run.log_every": 100, "run.checkpoint_every": 250})
    assert [d for d in range(100, 1001, 100) if checkpoint_due(cfg.run, d - 100, d)] == [300, 500, 800, 1000]
    cfg = build("td3", env=ENV, steps=950, overrides={"run.log_every": 100, "run.checkpoint_every": 0})
    assert [d for d in [*range(100, 901, 100), 950] if checkpoint_due(cfg.run, d - 100, d)] == [950]
    # after a resume from a checkpoint written between log points (a signal), the next chunk is (270, 300]
    cfg = build("td3", env=ENV, steps=1000, overrides={"run.log_every": 100, "run.checkpoint_every": 250})
    assert not checkpoint_due(cfg.run, 270, 300) and checkpoint_due(cfg.run, 240, 300)
