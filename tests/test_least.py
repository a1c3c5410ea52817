"""LEAST, reconstructed (docs/interventions.md, LEAST; the method's test invariants)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flags import in_default_build
from helpers import assert_cli_error, assert_resume_identical, rows, tiny_trainer
from plastic import fields
from plastic.config import build, from_dict
from plastic.interventions.least import LEAST, LEASTConfig, aggregate, gaussian_entropy_per_step, stop_rule
from plastic.interventions.least import histogram_entropy as _histogram_entropy

KEY = jax.random.PRNGKey(0)


def least(agent="sac", **kw):
    iv = LEAST(LEASTConfig(**{"t_start": 0, **kw}), agent)
    fields.check(iv.cfg, "least")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    return iv


class Scripted(LEAST):
    """LEAST with a scripted critic: Qhat = obs[0], G = obs[1] (the real signals are tested separately)."""

    def signals(self, agent, agent_state, transition, key):
        return transition["obs"][0], transition["obs"][1]


FAKE_AGENT = SimpleNamespace(obs_size=2, cfg=SimpleNamespace(exploration_noise=0.1, learning_starts=0))


def scripted(**kw):
    c = {"t_start": 0, "max_episode_steps": 6, "K_init": 4, "K_max": 8, "min_rows": 3, "entropy_period": 10**6, **kw}
    iv = Scripted(LEASTConfig(**c), "sac")
    fields.check(iv.cfg, "least")  # the declared ranges and switches (plastic.config checks them)
    iv.validate(None, None)
    return iv, iv.init(KEY, FAKE_AGENT)


def with_rows(state, q_rows, g_rows, lengths=None):
    """`state` with finished episodes (oldest first) in rows 0..n-1 and the pointer at row n."""
    q_rows, g_rows = np.asarray(q_rows, np.float32), np.asarray(g_rows, np.float32)
    n, L = q_rows.shape
    lengths = [L] * n if lengths is None else lengths
    return {**state, "B_Q": state["B_Q"].at[:n].set(q_rows), "B_G": state["B_G"].at[:n].set(g_rows),
            "row_valid": state["row_valid"].at[:n].set(True), "row_len": state["row_len"].at[:n].set(lengths),
            "write_ptr": jnp.asarray(n, jnp.int32)}


def play(iv, state, script, t0=0):
    """Feed a scripted transition sequence through the jitted hook. `script`: (q, g, done, terminated) per step;
    consecutive transitions of an episode share obs (next_obs of one is obs of the next)."""
    step = jax.jit(lambda s, tr, t: iv.on_env_step(s, tr, None, None, {"env_steps": t}))
    stops, states = [], []
    for k, (q, g, done, term) in enumerate(script):
        obs = jnp.array([q, g], jnp.float32)
        nxt = (jnp.array(script[k + 1][:2], jnp.float32) if k + 1 < len(script) and not done
               else jnp.array([-7.0, -7.0], jnp.float32))
        tr = {"obs": obs, "action": jnp.zeros(1), "reward": jnp.zeros(()), "next_obs": nxt,
              "terminated": jnp.float32(term), "done": jnp.float32(done)}
        state, stop = step(state, tr, jnp.int32(t0 + k))
        stops.append(bool(stop))
        states.append(state)
    return stops, states


# ---- the rule on hand-built tables ---------------------------------------------------------------
def rule(q, g, col_q, col_g, rows=None, **kw):
    cfg = LEASTConfig(**{"min_rows": 1, **kw})
    col_q, col_g = jnp.asarray(col_q, jnp.float32), jnp.asarray(col_g, jnp.float32)
    rows = jnp.ones(col_q.shape, bool) if rows is None else jnp.asarray(rows)
    return jax.jit(lambda *a: stop_rule(*a, cfg))(jnp.float32(q), jnp.float32(g), col_q, col_g, rows)


def test_sign_cases_by_hand():
    # eps = 2, omega = 1, kappa = 0.5: stop iff Qhat < 1
    col_q, col_g = [2.0, 1.0, 3.0, 2.0, 5.0], [1.0] * 5
    stop, eps, omega, thr, n = rule(0.999, 1.0, col_q, col_g, omega_coef=0.5)
    assert float(eps) == 2.0 and float(omega) == 1.0 and float(thr) == 1.0 and int(n) == 5 and bool(stop)
    assert not bool(rule(1.0, 1.0, col_q, col_g, omega_coef=0.5)[0])
    # eps = -2: the threshold is eps / (kappa omega) = -4
    neg = [-2.0, -1.0, -3.0]
    stop, eps, _, thr, _ = rule(-4.001, 1.0, neg, [1.0] * 3, omega_coef=0.5)
    assert float(eps) == -2.0 and float(thr) == -4.0 and bool(stop)
    assert not bool(rule(-4.0, 1.0, neg, [1.0] * 3, omega_coef=0.5)[0])
    # a surprising state (G above the usual: omega < 1) loosens the threshold for both signs
    assert float(rule(0.0, 4.0, col_q, col_g, omega_coef=0.5)[3]) == 0.25       # 0.5 * 0.25 * 2
    assert float(rule(0.0, 4.0, neg, [1.0] * 3, omega_coef=0.5)[3]) == -16.0     # -2 / (0.5 * 0.25)
    # omega forms: omega ** kappa and (1 - kappa) + kappa omega (here omega = 0.25)
    assert float(rule(0.0, 4.0, col_q, col_g, omega_coef=0.5, omega_form="power")[3]) == pytest.approx(1.0)
    assert float(rule(0.0, 4.0, col_q, col_g, omega_coef=0.5, omega_form="mix")[3]) == pytest.approx(1.25)
    # G = 0: omega's denominator is floored at 1e-12, no NaN
    assert np.isfinite(float(rule(0.0, 0.0, col_q, col_g)[2]))


def test_factor_cap_keeps_the_threshold_at_the_median():
    """omega > 1 / kappa (a transition fitted better than usual) would push the threshold past the step's median:
    the default cap (factor_max = 1) stops it there, so a trajectory at or above the median never stops;
    factor_max = 0 is the spec's uncapped rule."""
    col_q, col_g, neg = [2.0, 1.0, 3.0, 2.0, 5.0], [1.0] * 5, [-2.0, -1.0, -3.0]
    # G = 0.1: omega = 10, kappa omega = 5
    assert float(rule(0.0, 0.1, col_q, col_g, omega_coef=0.5)[3]) == 2.0               # capped: the median
    assert float(rule(0.0, 0.1, neg, [1.0] * 3, omega_coef=0.5)[3]) == -2.0
    assert not bool(rule(2.5, 0.1, col_q, col_g, omega_coef=0.5)[0])                     # above the median
    assert bool(rule(2.5, 0.1, col_q, col_g, omega_coef=0.5, factor_max=0.0)[0])         # spec: 2.5 < 10
    assert float(rule(0.0, 0.1, neg, [1.0] * 3, omega_coef=0.5, factor_max=0.0)[3]) == pytest.approx(-0.4)
    assert float(rule(0.0, 0.1, col_q, col_g, omega_coef=0.5, factor_max=2.0)[3]) == 4.0
    # the cap applies to every omega form; below it nothing changes
    assert float(rule(0.0, 0.1, col_q, col_g, omega_coef=0.5, omega_form="power")[3]) == 2.0   # 10 ** 0.5 > 1
    assert float(rule(0.0, 4.0, col_q, col_g, omega_coef=0.5, factor_max=0.0)[3]) == 0.25


def test_no_data_no_stop():
    col_q = [2.0, 2.0, np.nan, 2.0]
    # 3 finite entries, but the last row is inactive: 2 < min_rows = 3, so no stop however low Qhat is
    stop, _, _, _, n = rule(-1e9, 1.0, col_q, [1.0] * 4, rows=[True, True, True, False], min_rows=3)
    assert int(n) == 2 and not bool(stop)
    assert bool(rule(-1e9, 1.0, col_q, [1.0] * 4, min_rows=3)[0])
    # through the hook: an empty table never stops, even far below any threshold
    iv, st = scripted()
    stops, _ = play(iv, st, [(-1e6, 1.0, 0, 0)] * 5)
    assert not any(stops)


def test_median_ignores_nan_and_inactive_rows():
    rng = np.random.default_rng(0)
    v = rng.normal(size=40).astype(np.float32)
    ok = rng.random(40) < 0.6
    v[rng.random(40) < 0.2] = np.nan
    v_bad = np.where(ok, v, 1e6).astype(np.float32)  # inactive rows hold huge values: must not count
    ref = np.nanmedian(np.where(ok, v, np.nan))
    assert float(aggregate(jnp.asarray(v_bad), jnp.asarray(ok), "median")) == pytest.approx(ref, rel=1e-6)
    assert float(aggregate(jnp.asarray(v_bad), jnp.asarray(ok), "mean")) == pytest.approx(
        np.nanmean(np.where(ok, v, np.nan)), rel=1e-5)
    # the rule's eps: NaN rows and masked rows excluded
    stop, eps, _, _, n = rule(0.0, 1.0, v_bad, np.ones(40), rows=ok)
    assert float(eps) == pytest.approx(ref, rel=1e-6) and int(n) == int(np.sum(ok & np.isfinite(v)))
    # in the tables: entries beyond a row's length are padding even when they hold stale numbers
    iv, st = scripted(K_init=3, K_max=3, min_rows=1)
    st = with_rows(st, [[5.0] * 6, [1.0] * 6, [3.0] * 6], [[1.0] * 6] * 3, lengths=[6, 2, 6])
    _, eps, _ = iv.decide({**st, "step": jnp.int32(4)}, jnp.float32(0.0), jnp.float32(1.0))
    assert float(eps) == 4.0  # median of 5 and 3 (the row of length 2 has no value at step 4)


def test_a_stopped_row_holds_its_last_value_after_its_end():
    """stopped_tail=hold: a LEAST-stopped episode still counts at the steps after its end, with its last (Qhat,
    G); otherwise later medians come from the survivors alone (stopped_tail=nan, the spec's table)."""
    script = [(2.0, 1.0, 0, 0), (0.5, 1.0, 0, 0), (0.4, 2.0, 1, 0)]   # stop asked at step 1, ends at step 2
    for tail in ("hold", "nan"):
        iv, st = scripted(stopped_tail=tail)
        _, states = play(iv, with_rows(st, [[2.0] * 6] * 4, [[1.0] * 6] * 4), script)
        s = states[-1]
        assert int(s["stops"]) == 1 and int(s["row_len"][4]) == 3
        held = (float(s["tail_Q"][4]), float(s["tail_G"][4]))
        assert held == (float(np.float32(0.4)), 2.0) if tail == "hold" else all(np.isnan(held))
        # an episode that ends by termination or the time limit has no tail
        _, states = play(iv, with_rows(st, [[2.0] * 6] * 4, [[1.0] * 6] * 4), [(2.0, 1.0, 0, 0), (2.0, 1.0, 1, 1)])
        assert np.isnan(float(states[-1]["tail_Q"][4]))
    # by hand, at step 4: three full rows (Qhat 1, 3, 3) and two rows stopped at length 2 holding 0.2
    for tail, eps in (("hold", 1.0), ("nan", 3.0)):
        iv, st = scripted(K_init=5, K_max=5, min_rows=1, stopped_tail=tail)
        st = with_rows(st, [[1.0] * 6, [3.0] * 6, [3.0] * 6, [0.2] * 6, [0.2] * 6], [[1.0] * 6] * 5,
                       lengths=[6, 6, 6, 2, 2])
        if tail == "hold":
            st = {**st, "tail_Q": st["tail_Q"].at[3:5].set(0.2), "tail_G": st["tail_G"].at[3:5].set(1.0)}
        stop, got, _ = iv.decide({**st, "step": jnp.int32(4)}, jnp.float32(1.2), jnp.float32(1.0))
        assert float(got) == eps
        assert bool(stop) == (tail == "nan")     # threshold 0.5 * eps: the survivors' median stops Qhat 1.2


def test_fifo_window_and_per_seed_tables():
    iv, st = scripted(K_init=3, K_max=5, min_rows=1)
    script = []
    for e in range(7):  # 7 one-step episodes: Qhat = e
        script.append((float(e), 1.0, 1, 1))
    _, states = play(iv, st, script)
    for e, s in enumerate(states):
        active = np.asarray(iv.active_rows(s))
        vals = sorted(np.asarray(s["B_Q"])[active, 0].tolist())
        assert vals == [float(x) for x in range(max(0, e - 2), e + 1)]  # the K = 3 newest episodes
        assert int(s["episodes"]) == e + 1
    # after K + 1 pushes the oldest is gone; after K_max + 1 its row is reused
    s = states[6]
    assert 0.0 not in np.asarray(s["B_Q"])[np.asarray(s["row_valid"]), 0].tolist()
    assert int(np.sum(np.asarray(s["row_valid"]))) == 5
    # two seeds finishing episodes at the same step write into their own tables (vmapped)
    st2 = jax.tree.map(lambda x: jnp.stack([x, x]), st)
    tr = {"obs": jnp.array([[1.0, 1.0], [2.0, 1.0]]), "action": jnp.zeros((2, 1)), "reward": jnp.zeros(2),
          "next_obs": jnp.zeros((2, 2)), "terminated": jnp.ones(2), "done": jnp.ones(2)}
    out, _ = jax.jit(jax.vmap(lambda s, t: iv.on_env_step(s, t, None, None, {"env_steps": jnp.int32(0)})))(st2, tr)
    assert np.asarray(out["B_Q"])[:, 0, 0].tolist() == [1.0, 2.0]
    assert np.asarray(out["row_valid"])[:, 0].tolist() == [True, True]


def test_scripted_episode_stops_exactly_where_the_rule_says():
    iv, st = scripted(omega_coef=0.5)
    st = with_rows(st, [[2.0] * 6] * 4, [[1.0] * 6] * 4)  # eps_i = 2, median G = 1 at every step
    # step 0: Qhat 1.5 >= 1; step 1: Qhat 0.8 but G = 4 (omega 1/4, threshold 0.25); step 2: Qhat 0.8 < 1 stops;
    # step 3 arrives truncated by the env (terminated 0, done 1)
    script = [(1.5, 1.0, 0, 0), (0.8, 4.0, 0, 0), (0.8, 1.0, 0, 0), (0.7, 1.0, 1, 0), (0.1, 1.0, 0, 0)]
    stops, states = play(iv, st, script)
    assert stops == [False, False, True, False, True]  # the next episode's step 0 is below threshold too
    s = states[3]
    assert int(s["stops"]) == 1 and int(s["episodes"]) == 1 and int(s["ring_stop"][0]) == 2
    assert int(s["ring_len"][0]) == 4 and int(s["row_len"][4]) == 4 and bool(s["row_valid"][4])
    np.testing.assert_array_equal(np.asarray(s["B_Q"][4, :4]), np.float32([1.5, 0.8, 0.8, 0.7]))
    assert int(s["step"]) == 0 and int(states[4]["step"]) == 1 and int(states[4]["pending"]) == 0
    logs = jax.jit(iv.logs)(s)
    assert float(logs["least/stop_rate"]) == 1.0 and float(logs["least/mean_stopped_length"]) == 4.0
    assert int(logs["least/stops"]) == 1
    # an episode that terminates on the step after a stop request is not counted as stopped
    _, states_t = play(iv, st, script[:3] + [(0.7, 1.0, 1, 1)])
    assert int(states_t[-1]["stops"]) == 0 and int(states_t[-1]["ring_stop"][0]) == 6
    # before t_start (and with enabled=false) the same script never stops; the tables fill all the same
    for kw in ({"t_start": 100}, {"enabled": False}):
        iv2, st2 = scripted(omega_coef=0.5, **kw)
        stops2, states2 = play(iv2, with_rows(st2, [[2.0] * 6] * 4, [[1.0] * 6] * 4), script[:3])
        assert not any(stops2)
        np.testing.assert_array_equal(np.asarray(states2[-1]["B_Q"]), np.asarray(states[2]["B_Q"]))
    # steps past the table width L are never stopped
    iv3, st3 = scripted(max_episode_steps=2)
    st3 = with_rows(st3, [[2.0] * 2] * 4, [[1.0] * 2] * 4)
    stops3, _ = play(iv3, st3, [(9.0, 1.0, 0, 0), (9.0, 1.0, 0, 0), (0.0, 1.0, 0, 0)])
    assert stops3 == [False, False, False]


def test_the_agents_warm_up_is_neither_recorded_nor_acted_on():
    """Steps before the agent's learning_starts (random actions, an untrained critic) write NaN and never stop or
    add noise, even past t_start; the first learning step decides as usual."""
    iv, st = scripted(omega_coef=0.5)
    st = {**with_rows(st, [[2.0] * 6] * 4, [[1.0] * 6] * 4), "learning_starts": jnp.int32(3)}
    stops, states = play(iv, st, [(0.1, 1.0, 0, 0)] * 4)  # Qhat 0.1 < threshold 1 at every step
    assert stops == [False, False, False, True]
    row = np.asarray(states[-1]["B_Q"][4, :4])
    assert np.isnan(row[:3]).all() and row[3] == np.float32(0.1)
    assert np.isnan(np.asarray(states[-1]["B_G"][4, :3])).all()
    act = jax.jit(lambda s, t: iv.on_act(s, jnp.zeros(2), KEY, {"env_steps": t}))
    np.testing.assert_array_equal(np.asarray(act(states[-1], jnp.int32(2))), np.zeros(2))   # warm-up: no noise
    assert np.any(np.asarray(act(states[-1], jnp.int32(3))) != 0)                          # learning: noise


def test_only_the_stopping_seed_resets():
    iv, st = scripted(omega_coef=0.5)
    st = with_rows(st, [[2.0] * 6] * 4, [[1.0] * 6] * 4)
    both = jax.tree.map(lambda x: jnp.stack([x, x]), st)
    hook = jax.jit(jax.vmap(lambda s, t, k: iv.on_env_step(s, t, None, None, {"env_steps": k}),
                            in_axes=(0, 0, None)))

    def tr(q0, q1, done0, done1, nxt):
        return {"obs": jnp.array([[q0, 1.0], [q1, 1.0]]), "action": jnp.zeros((2, 1)), "reward": jnp.zeros(2),
                "next_obs": jnp.asarray(nxt, jnp.float32), "terminated": jnp.zeros(2),
                "done": jnp.array([done0, done1], jnp.float32)}

    both, stop = hook(both, tr(0.5, 1.5, 0, 0, [[0.6, 1.0], [1.6, 1.0]]), jnp.int32(0))
    assert np.asarray(stop).tolist() == [True, False]
    both, stop = hook(both, tr(0.6, 1.6, 1, 0, [[0.0, 0.0], [1.7, 1.0]]), jnp.int32(1))
    assert np.asarray(both["step"]).tolist() == [0, 2] and np.asarray(both["stops"]).tolist() == [1, 0]
    assert np.asarray(both["episodes"]).tolist() == [1, 0]


# ---- exploration noise -------------------------------------------------------------------------------
def noisy_state(iv, frac_early, m=20):
    st = iv.init(KEY, FAKE_AGENT)
    k = int(round(frac_early * m))
    ring = np.full(m, iv.cfg.max_episode_steps, np.int32)
    ring[:k] = 3  # stopped at decision step 3 < e
    return {**st, "ring_stop": jnp.asarray(ring), "episodes": jnp.int32(m)}


@pytest.mark.parametrize("agent", ["td3", "sac"])
def test_noise_bounds_monotone_and_construction(agent):
    base, cap = (0.1, 0.3) if agent == "td3" else (0.0, 0.2)
    iv = least(agent, noise_base=base, noise_cap=cap, max_episode_steps=100, t_start=50)
    scale = jax.jit(iv.noise_scale)
    sig = [float(scale(noisy_state(iv, r))) for r in np.linspace(0, 1, 21)]
    assert all(base <= s <= cap for s in sig) and all(b >= a for a, b in zip(sig, sig[1:]))
    assert sig[-1] > sig[0]
    assert float(scale(iv.init(KEY, FAKE_AGENT))) == pytest.approx(  # no episodes yet: r = 0
        base + (cap - base) * float(jax.nn.sigmoid(-5.0)), rel=1e-6)
    st = noisy_state(iv, 0.5)
    sigma = float(scale(st))
    keys = jax.random.split(KEY, 20000)
    act = jax.jit(jax.vmap(lambda k, t: iv.on_act(st, jnp.zeros(2), k, {"env_steps": t}), in_axes=(0, None)))
    # before t_start: the action is returned unchanged
    assert np.all(np.asarray(act(keys, jnp.int32(49))) == 0.0)
    extra = np.asarray(act(keys, jnp.int32(50)))
    want = np.sqrt(sigma ** 2 - 0.1 ** 2) if agent == "td3" else sigma  # TD3: total std sigma_t with its own 0.1
    assert np.std(extra) == pytest.approx(want, rel=0.03)
    big = np.asarray(jax.jit(jax.vmap(lambda k: iv.on_act(st, jnp.full(2, 0.99), k, {"env_steps": 60})))(keys))
    assert big.max() <= 1.0 and big.min() >= -1.0


# ---- window size and entropy -------------------------------------------------------------------
def test_entropy_estimators():
    histogram_entropy = jax.jit(_histogram_entropy, static_argnums=2)
    v = jnp.arange(64, dtype=jnp.float32)
    assert float(histogram_entropy(v, jnp.ones(64, bool), 32)) == pytest.approx(np.log(32), rel=1e-6)
    assert float(histogram_entropy(jnp.ones(10), jnp.ones(10, bool), 32)) == 0.0
    half = jnp.arange(64) < 32  # masked-out values do not count: 32 values in 32 bins
    assert float(histogram_entropy(jnp.where(half, v, 1e9), half, 32)) == pytest.approx(np.log(32), rel=1e-6)
    table = jnp.array([[0.0, 1.0], [2.0, 1.0], [np.nan, 5.0]])
    ok = jnp.array([[True, True], [True, True], [True, False]])
    h = 0.5 * np.log(2 * np.pi * np.e * (1.0 + 1e-12))  # column 0: {0, 2}, var 1; column 1: {1, 1}, var 0
    h0 = 0.5 * np.log(2 * np.pi * np.e * 1e-12)
    assert float(jax.jit(gaussian_entropy_per_step)(table, ok)) == pytest.approx((h + h0) / 2, rel=1e-5)


def test_window_grows_within_bounds_and_ref_updates_only_at_checks():
    iv, st = scripted(K_init=2, K_max=5, K_step=2, gamma_H=0.0, entropy_period=3, min_rows=1, K_can_shrink=True)
    rng = np.random.default_rng(1)
    script = []
    for e in range(12):  # 2-step episodes with ever wider Q spreads: the entropy keeps rising at first
        spread = float(e + 1)
        script += [(float(rng.normal() * spread), 1.0, 0, 0), (float(rng.normal() * spread), 1.0, 1, 1)]
    _, states = play(iv, st, script)
    Ks = [int(s["K"]) for s in states]
    checks = [int(s["H_checks"]) for s in states]
    refs = [float(s["H_ref"]) for s in states]
    assert all(2 <= k <= 5 for k in Ks) and max(Ks) == 5
    for t in range(1, len(states)):
        if (t + 1) % 3:  # H_ref and K only move at entropy checks (after every 3rd env step)
            assert refs[t] == refs[t - 1] and Ks[t] == Ks[t - 1] and checks[t] == checks[t - 1]
    # shrinking never goes below K_init; without K_can_shrink it never shrinks
    s = {**states[-1], "K": jnp.int32(2), "H_ref": jnp.float32(1e6), "H_checks": jnp.int32(5)}
    assert int(iv.entropy_check(s)[0]) == 2
    s = {**states[-1], "K": jnp.int32(5), "H_ref": jnp.float32(1e6), "H_checks": jnp.int32(5)}
    assert int(iv.entropy_check(s)[0]) == 3
    iv2, _ = scripted(K_init=2, K_max=5, K_step=2, entropy_period=3, min_rows=1)
    assert int(iv2.entropy_check(s)[0]) == 5


# ---- the critic signals of the real agents -----------------------------------------------------
@pytest.mark.parametrize("agent_name", ["td3", "sac"])
def test_signals_are_the_agents_own_q_and_td_error(agent_name):
    import agents
    cls = agents.get(agent_name)
    agent = cls(cls.Config(hidden=(8, 8)), 3, 2)
    st = agent.init(KEY)
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    tr = {"obs": jax.random.normal(k[0], (3,)), "action": jnp.array([0.3, -0.2]), "reward": jnp.float32(0.7),
          "next_obs": jax.random.normal(k[1], (3,)), "terminated": jnp.float32(0.0), "done": jnp.float32(1.0)}
    batch = jax.tree.map(lambda x: x[None], tr)
    sa = jnp.concatenate([batch["obs"], batch["action"]], -1)
    heads = ("min", "q1", "ensemble_mean")

    @jax.jit  # one program for everything compared here
    def compute(st):
        q2 = agent.critic.apply(st.nets["critic"].params, sa)[0][:, 0, 0]
        y = agent.td_target(st, batch, k[2])[0]
        sig = {h: least(agent_name, q_head=h).signals(agent, st, tr, k[2]) for h in heads}
        y_term = agent.td_target(st, {**batch, "terminated": jnp.ones(1)}, k[2])[0]
        det = [agent.td_target(st, batch, kk, deterministic=True)[0] for kk in jax.random.split(KEY, 2)]
        grad_norm = least(agent_name, g_signal="grad_norm").signals(agent, st, tr, k[2])[1]
        grads = jax.grad(lambda p: jnp.square(jnp.min(agent.critic.apply(p, sa)[0][:, 0, 0]) - y))(
            st.nets["critic"].params)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(grads)))
        return q2, y, sig, y_term, det, grad_norm, norm

    q2, y, sig, y_term, det, grad_norm, norm = jax.device_get(compute(st))
    for head, want in zip(heads, (np.min(q2), q2[0], np.mean(q2))):
        q, g = sig[head]
        assert float(q) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
        assert float(g) == pytest.approx((float(want) - float(y)) ** 2, rel=1e-4, abs=1e-7)
    # the stopped (truncated) transition bootstraps: terminated 0 adds gamma V(s') to the target
    assert float(y_term) == pytest.approx(0.7, rel=1e-6) and abs(float(y) - float(y_term)) > 1e-6
    # deterministic target: no noise, so independent of the key
    assert float(det[0]) == float(det[1])
    # grad_norm: |d (Qhat - y)^2 / d critic params|
    assert float(grad_norm) == pytest.approx(float(norm), rel=1e-4) and float(norm) > 0


# ---- config --------------------------------------------------------------------------------------
def test_t_start_resolves_once_and_agent_defaults():
    cfg = build("sac", "least", env="probe:truncated", steps=1000, overrides={"least.t_start_frac": 0.2})
    c = cfg.interventions["least"]
    assert c.t_start == 200 and (c.noise_base, c.noise_cap) == (0.0, 0.2)
    d = cfg.to_dict()
    d["run"]["steps"] = 5000  # a resume that extends the budget keeps the resolved start
    assert from_dict(d).interventions["least"].t_start == 200
    c = build("td3", "least", env="probe:truncated", steps=1000).interventions["least"]
    assert (c.t_start, c.noise_base, c.noise_cap) == (100, 0.1, 0.3)


@pytest.mark.parametrize("argv, needle", [
    (["--agent", "ppo", "--intervention", "least"], "intervention 'least' does not apply to agent 'ppo'; it supports: "
                                                   "td3, sac"),
    (["--agent", "dqn", "--intervention", "least"], "it supports: td3, sac"),
    (["--intervention", "least", "--least.factor_max", "-1"], "least.factor_max"),
    (["--intervention", "least", "--least.stopped_tail", "zero"], "least.stopped_tail"),
    (["--intervention", "least", "--least.omega_form", "add"],
     "least.omega_form='add' is not valid; choose one of: multiply_threshold, power, mix"),
    (["--intervention", "least", "--least.q_head", "q2"], "choose one of: min, q1, ensemble_mean"),
    (["--intervention", "least", "--least.stop_as_terminal", "true"], "least.stop_as_terminal=true is not supported"),
    (["--intervention", "least", "--least.min_rows", "600"], "least.min_rows must be in [1, least.K_max=500]"),
    (["--intervention", "least", "--least.K_init", "600"], "1 <= K_init <= K_max"),
    (["--agent", "td3", "--intervention", "least", "--least.noise_base", "0.05"], "below td3.exploration_noise=0.1"),
])
def test_bad_config_is_one_line_error(argv, needle, tmp_path, capsys):
    assert_cli_error(argv, needle, tmp_path, capsys)


# ---- tiny jitted runs: probe:truncated has 5-step episodes (reward 1, truncated by its time limit) -----
RUN = {"least.K_init": 5, "least.K_max": 12, "least.K_step": 2, "least.K_can_shrink": True, "least.min_rows": 3,
       "least.max_episode_steps": 8, "least.t_start": 150, "least.omega_coef": 4.0, "least.entropy_period": 50,
       "least.noise_window": 5, "least.factor_max": 0.0}  # uncapped: the probe's episodes are identical, so
                                                          # only a threshold above the median stops them


CAP = {"td3": 0.3, "sac": 0.2}


def trainer(agent, steps, intervention="least", extra=None, seeds=2):
    return tiny_trainer(agent, intervention, steps, {**(RUN if intervention == "least" else {}), **(extra or {})},
                        seeds, env="probe:truncated")


def episodes_of(replay, seed, n):
    """(start, length) of every finished episode among the first `n` stored transitions of one seed."""
    done = np.asarray(replay.data["done"][seed][:n]) > 0
    ends = np.flatnonzero(done)
    starts = np.r_[0, ends[:-1] + 1]
    return list(zip(starts.tolist(), (ends - starts + 1).tolist())), ends


def check_run(t, run_dir, steps, cap):
    ts = t.final_state[0]
    s = ts.interventions["least"]
    stops = np.asarray(s["stops"])
    assert np.all(stops > 0), stops
    assert np.all((np.asarray(s["K"]) >= 5) & (np.asarray(s["K"]) <= 12))
    for seed in range(2):
        eps, ends = episodes_of(ts.replay, seed, steps)
        short = [(a, n) for a, n in eps if n < 5]  # only LEAST ends a probe:truncated episode early
        assert short and all(a + n - 1 > 150 for a, n in short)  # ... and only after t_start
        assert len(short) <= stops[seed]  # a stop asked at step 3 coincides with the time limit
        term = np.asarray(ts.replay.data["terminated"][seed])
        for a, n in short:  # the stopped episode's last transition: a truncation (terminated 0, done 1)
            assert term[a + n - 1] == 0
        assert np.all(term[:steps] == 0)
    r = rows(run_dir)[-1]
    assert r["least/stops"] > 0 and 0 < r["least/stop_rate"] <= 1 and 5 <= r["least/K"] <= 12
    assert 2 <= r["least/mean_stopped_length"] <= 5 and r["least/sigma"] <= cap


def test_sac_run_stops_and_truncates(tmp_path):
    t = trainer("sac", 300)
    t.run(tmp_path / "run")
    check_run(t, tmp_path / "run", 300, CAP[t.cfg.agent])


@pytest.mark.slow
def test_td3_run_stops_and_truncates(tmp_path):
    t = trainer("td3", 400)
    t.run(tmp_path / "run")
    check_run(t, tmp_path / "run", 400, CAP[t.cfg.agent])


@pytest.mark.slow
def test_host_driver_run_stops_and_truncates(tmp_path):
    t = trainer("sac", 400, extra={"run.driver": "host"})
    t.run(tmp_path / "run")
    check_run(t, tmp_path / "run", 400, CAP[t.cfg.agent])


@pytest.mark.parametrize("extra", [{"least.t_start": 10**6},
                                   pytest.param({"least.enabled": False}, marks=pytest.mark.slow)])
def test_disabled_or_before_t_start_is_bit_identical_to_the_base_agent(tmp_path, extra):
    in_default_build("test_least", "check_disabled_is_base", str(tmp_path), extra)  # two programs: -O2 (flags.py)


def check_disabled_is_base(tmp_path, extra):
    tmp_path = Path(tmp_path)
    base = trainer("sac", 200, "none")
    base.run(tmp_path / "base")
    t = trainer("sac", 200, extra=extra)  # with least.t_start beyond the run: the program of the runs above
    t.run(tmp_path / "least")
    (b, _, b_env), (s, _, s_env) = base.final_state, t.final_state
    for x, y in zip(jax.tree.leaves((b.agent, b.replay, b_env)), jax.tree.leaves((s.agent, s.replay, s_env))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.all(np.asarray(s.interventions["least"]["stops"]) == 0)
    assert np.all(np.asarray(s.interventions["least"]["episodes"]) == 40)  # the tables were kept all the same


def test_resume_is_bit_identical(tmp_path):
    full = assert_resume_identical(lambda n: trainer("sac", n), tmp_path, 300, 200)
    assert np.all(np.asarray(full.final_state[0].interventions["least"]["stops"]) > 0)


def test_offline_replay_decides_each_episode_against_the_ones_before_it():
    """experiments/validation/least_stops.py: warm-up rows are skipped, each episode sees only the earlier ones,
    stale entries past a row's length are masked (unmasked, the -100s would drag the median below 0)."""
    from experiments.validation.least_stops import replay
    nan = np.nan
    q = [[nan] * 4,                     # the agent's warm-up: skipped
         [2, 2, 2, 2], [2, 2, -100, -100], [2, 2, -100, -100], [2, 2, 2, 2],  # two rows of length 2 (stale tails)
         [2, 2, 0.5, 2], [nan] * 4]     # 0.5 < 0.5 x median 2 at step 2; the last row is not valid
    tables = {"B_Q": np.float32([q]), "B_G": np.ones((1, 7, 4), np.float32),
              "row_valid": np.array([[True] * 6 + [False]]), "row_len": np.array([[4, 4, 2, 2, 4, 4, 0]]),
              "write_ptr": np.array([6])}
    out = replay(tables, 0, LEASTConfig(min_rows=2, K_init=4, omega_coef=0.5))
    assert out["first"] == [None, None, None, None, 2]
    assert out["fire_rate"] == pytest.approx(1 / 16)
