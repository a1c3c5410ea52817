"""The seed axis sharded across local devices (`run.devices`, plastic/sharding.py).

The pytest process has one device (conftest.py), so the sharded runs happen in a subprocess with
N_DEVICES host devices (flags.xla_flags): this file run as a script (`worker` below) trains each
case with `--run.devices 1` and with `--run.devices N_DEVICES`, cuts the sharded run and resumes it, and
reports what it saw on the shardings and donations; the tests compare the runs' rows and final states.
Each device holds two seeds, so its program is vmapped as well as sharded: with one seed per device the
seed axis of a device is trivial, and a batched kernel that waits on the shared thread pool (the CPU
SVD, metrics/rank.py `device_svdvals`) never ran batched there.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from flags import xla_flags

HERE = Path(__file__).resolve().parent
N_DEVICES, SEEDS = 2, 4  # two seeds per device
METRIC_GROUPS = ("activity", "grad", "rank", "churn", "ntk")  # all off unless a case turns some on

# Tiny runs: 300 env steps, a log row every 100, a checkpoint at 200 (where the resumed run is cut; the host
# driver restarts the episodes in flight on resume, so its envs end every episode there: one-step probes,
# Pendulum's 200 steps).
CASES = {
    "dqn": {"agent": "dqn", "env": "probe:d_obs", "driver": "jit", "steps": 300, "split": 200,
            "metrics": {"rank", "ntk"},  # the metric groups made of SVDs, custom calls no compiler partitions
            "small": {"hidden": "16,16", "batch_size": 16, "learning_starts": 100, "train_frequency": 2}},
    "ppo": {"agent": "ppo", "env": "gymnax:CartPole-v1", "driver": "jit", "steps": 300, "split": 200,
            "small": {"hidden": "16,16", "num_envs": 2, "num_steps": 25, "minibatches": 2, "anneal_lr": "false"}},
    "dqn_host": {"agent": "dqn", "env": "probe:d_obs", "driver": "host", "steps": 300, "split": 200,
                 "small": {"hidden": "16,16", "batch_size": 16, "learning_starts": 100, "train_frequency": 2}},
    "td3_host": {"agent": "td3", "env": "Pendulum-v1", "driver": "host", "steps": 300, "split": 200,
                 "small": {"hidden": "16,16", "batch_size": 16, "learning_starts": 100}},
}


# ---- in the subprocess ---------------------------------------------------------------------------------
def worker(case: str, out: Path) -> None:
    import jax
    from plastic.checkpoint import Checkpointer
    from plastic.config import build
    from plastic.drivers import make_trainer

    assert jax.local_device_count() == N_DEVICES, jax.local_devices()
    spec = CASES[case]
    donation_warnings = []

    def trainer(devices: int, steps: int):
        ov = {f"{spec['agent']}.{k}": v for k, v in spec["small"].items()}
        ov.update({f"metrics.{g}_every": 0 for g in METRIC_GROUPS if g not in spec.get("metrics", ())})
        ov.update({"run.progress": "off", "run.tensorboard": "false", "run.log_every": 100,
                   "run.checkpoint_every": 200, "run.driver": spec["driver"], "run.devices": devices,
                   "run.eval_every": 100, "run.eval_episodes": 2})  # sharded agents evaluate too
        return make_trainer(build(spec["agent"], "none", overrides=ov, env=spec["env"], steps=steps, seeds=SEEDS))

    def fresh_carry(t):
        return t.init_carry() if hasattr(t, "init_carry") else t.init_state()

    def leaves_report(t, tree) -> dict:
        batched = [jax.tree.leaves(sub) for sub, b in zip(tree, t.SEED_BATCHED) if b]
        shared = [jax.tree.leaves(sub) for sub, b in zip(tree, t.SEED_BATCHED) if not b]
        batched, shared = sum(batched, []), sum(shared, [])
        return {"placed": t.placement.is_placed(tree, t.SEED_BATCHED),
                "batched_devices": sorted({len(x.sharding.device_set) for x in batched}),
                "batched_shard_rows": sorted({x.addressable_shards[0].data.shape[0] for x in batched}),
                "shared_devices": sorted({len(x.sharding.device_set) for x in shared}),
                "n_batched": len(batched), "n_shared": len(shared)}

    def run(t, name, resume=False):
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t.run(out / name, resume=resume)
        print(f"{name}{' resumed' if resume else ''}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        donation_warnings.extend(str(w.message) for w in caught if "donat" in str(w.message))
        np.savez(out / f"{name}.npz", *[np.asarray(x) for x in jax.tree.leaves(t.final_state)])
        return t

    one = run(trainer(1, spec["steps"]), "d1")
    report = {"one_device": sorted({len(x.sharding.device_set) for x in jax.tree.leaves(one.final_state)}),
              "one_placement_sharded": one.placement.sharded}
    sharded = trainer(N_DEVICES, spec["steps"])
    report["startup"] = sharded.placement.describe()
    report["initial"] = leaves_report(sharded, fresh_carry(sharded))
    if spec["driver"] == "jit":  # the chunk program consumes its (sharded) input: donation works
        carry, n = fresh_carry(sharded), 100 // sharded.unit
        hlo = sharded.chunk_program.lower(carry, n).compile().as_text()
        report["collectives"] = sorted(set(re.findall(r" (all-gather|all-reduce|all-to-all|collective-permute|"
                                                      r"reduce-scatter)(?:-start)?\(", hlo)))
        donated = jax.tree.leaves(carry)
        jax.block_until_ready(sharded.chunk_program(carry, n))
        report["chunk_donated"] = all(x.is_deleted() for x in donated)
    report["final"] = leaves_report(sharded, run(sharded, "dk").final_state)
    run(trainer(N_DEVICES, spec["split"]), "rk")
    resumed = trainer(N_DEVICES, spec["steps"])
    ckpt = Checkpointer(out / "rk" / "checkpoints")
    _, restored, _ = ckpt.restore(fresh_carry(resumed))
    ckpt.close()
    report["restored"] = leaves_report(resumed, restored)
    report["resumed_final"] = leaves_report(resumed, run(resumed, "rk", resume=True).final_state)
    report["donation_warnings"] = donation_warnings
    (out / "report.json").write_text(json.dumps(report))


# ---- in pytest ---------------------------------------------------------------------------------------
def run_worker(case: str, out: Path) -> dict:
    # os.environ carries the suite's compilation cache and its thresholds (conftest.py): the sharded run, its
    # split and its resume share programs
    env = {**os.environ, "XLA_FLAGS": xla_flags(N_DEVICES),
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, case, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def load_rows(run_dir: Path) -> list[dict]:
    from helpers import rows, strip_timing
    return strip_timing(rows(run_dir))


# Sharded and unsharded runs agree to float32 rounding, not to the bit: each device runs the program on its
# own [S / k, ...] slice, and XLA:CPU picks its dot kernels, tilings and fusions (hence the order of float
# sums) by shape, so a step's floats can differ in the last bit (measured: at most ~6e-8 after 300 steps;
# the same holds on one device between a 4-seed run and single-seed runs of its seeds, test_jit_driver.py).
# Integers (counters, replay indices, actions, keys, episode counts) must match exactly.
RTOL, ATOL = 1e-5, 1e-6


def assert_states_equal(a: Path, b: Path, exact: bool = True) -> None:
    with np.load(a) as x, np.load(b) as y:
        assert len(x.files) == len(y.files)
        for k in x.files:
            if exact or not np.issubdtype(x[k].dtype, np.floating):
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
            else:
                np.testing.assert_allclose(x[k], y[k], rtol=RTOL, atol=ATOL, err_msg=k)


def assert_rows_close(a: list[dict], b: list[dict]) -> None:
    assert [(r["step"], r["seed"], sorted(r)) for r in a] == [(r["step"], r["seed"], sorted(r)) for r in b]
    for x, y in zip(a, b):
        for k, v in x.items():
            if isinstance(v, float) and isinstance(y[k], float):
                assert y[k] == pytest.approx(v, rel=RTOL, abs=ATOL), (k, x["step"], x["seed"])
            else:
                assert y[k] == v, (k, x["step"], x["seed"])


@pytest.mark.parametrize("case", ["dqn", "dqn_host", pytest.param("ppo", marks=pytest.mark.slow),
                                  pytest.param("td3_host", marks=pytest.mark.slow)])
def test_sharded_run_equals_single_device_run(case, tmp_path):
    report = run_worker(case, tmp_path)
    # devices 1: nothing sharded; devices k: the whole run on k devices, S / k seeds each
    assert report["one_device"] == [1] and not report["one_placement_sharded"]
    assert report["startup"] == f" sharded over {N_DEVICES} cpu devices ({SEEDS // N_DEVICES} each)"
    for stage in ("initial", "final", "restored", "resumed_final"):
        r = report[stage]
        assert r["placed"], (stage, r)
        assert r["batched_devices"] == [N_DEVICES] and r["batched_shard_rows"] == [SEEDS // N_DEVICES], (stage, r)
        assert r["shared_devices"] == [N_DEVICES] and r["n_shared"] > 0 and r["n_batched"] > 10, (stage, r)
    assert report.get("chunk_donated", True)
    # every device trains its own seeds: no data moves between devices inside a chunk (with the metrics on,
    # whose SVDs the compiler could not partition: plastic.sharding.SeedPlacement.per_device)
    assert report.get("collectives", []) == []
    assert report["donation_warnings"] == []
    # the same training: every log row (timing aside) and every leaf of the final state (see RTOL)
    rows1 = load_rows(tmp_path / "d1")
    assert [r["step"] for r in rows1] == [s for s in (100, 200, 300) for _ in range(SEEDS)]
    assert_rows_close(rows1, load_rows(tmp_path / "dk"))
    assert_states_equal(tmp_path / "d1.npz", tmp_path / "dk.npz", exact=False)
    # a sharded run cut at its checkpoint and resumed ends where the uninterrupted one does, to the bit
    assert load_rows(tmp_path / "rk") == load_rows(tmp_path / "dk")
    assert_states_equal(tmp_path / "rk.npz", tmp_path / "dk.npz")


def test_device_count_rules():
    from plastic.config import ConfigError
    from plastic.sharding import device_count
    assert device_count(0, 4, 4) == 4
    assert device_count(0, 6, 4) == 3   # the largest count <= 4 dividing 6
    assert device_count(0, 5, 4) == 1
    assert device_count(0, 2, 8) == 2   # never more devices than seeds
    assert device_count(0, 16, 1) == 1
    assert device_count(2, 6, 4) == 2
    with pytest.raises(ConfigError, match=r"^run.devices=8 but this node has 4 local device\(s\)"):
        device_count(8, 8, 4)
    with pytest.raises(ConfigError, match=r"^run.devices=3 does not divide run.seeds=4"):
        device_count(3, 4, 4)


def test_one_device_places_nothing():
    import jax.numpy as jnp
    from plastic.sharding import SeedPlacement
    placement = SeedPlacement(0, 4)  # the pytest process has one device
    tree = ({"w": jnp.zeros((4, 3))}, {"env_steps": jnp.zeros((), jnp.int32)})
    assert not placement.sharded and placement.describe() == ""
    assert placement.place(tree, (True, False)) is tree


@pytest.mark.parametrize("argv, needle", [
    (["--seeds", "4", "--run.devices", "3"], "run.devices=3 does not divide run.seeds=4; use a divisor"),
    (["--seeds", "2", "--run.devices", "2"], "run.devices=2 but this node has 1 local device(s)"),
    (["--run.devices", "-1"], "run.devices must be >= 0"),
])
def test_bad_devices_is_one_line_error(argv, needle, tmp_path, capsys):
    from helpers import assert_cli_error
    assert_cli_error(["--agent", "dqn", "--env", "probe:d_obs", *argv], needle, tmp_path, capsys)
    assert not (tmp_path / "r").exists()


def run_unsplit(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """A fresh process whose XLA_FLAGS leave the CPU device count unset (the suite's flags set it to 1)."""
    from flags import XLA_TEST_FLAGS
    env = {**os.environ, "XLA_FLAGS": XLA_TEST_FLAGS,
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def test_run_devices_splits_the_cpu(tmp_path):
    """`--run.devices 2` on a CPU makes two host devices (`split_cpu`, before JAX starts) and trains two seeds
    on each; no import of the package starts JAX's backends, which would make that impossible."""
    run = [str(HERE.parent / "experiments" / "run.py"), "--agent", "dqn", "--env", "probe:d_obs", "--seeds", "4",
           "--steps", "300", "--run.devices", "2", "--run.progress", "off", "--run.tensorboard", "false",
           "--run.run_dir", str(tmp_path / "r"),
           *[f"--dqn.{k}={v}" for k, v in CASES["dqn"]["small"].items()]]
    proc = run_unsplit(run, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "4 seed(s) sharded over 2 cpu devices (2 each)" in proc.stdout, proc.stdout
    assert [(r["step"], r["seed"]) for r in load_rows(tmp_path / "r")] == [(300, i) for i in range(4)]
    imports = ("import jax, pkgutil, importlib, agents, metrics, plastic, plastic.interventions, experiments\n"
               "for pkg in (agents, metrics, plastic, plastic.interventions):\n"
               "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
               "        importlib.import_module(m.name)\n"
               "jax.config.update('jax_num_cpu_devices', 3)\n"  # raises once the backends run
               "assert jax.local_device_count() == 3")
    proc = run_unsplit(["-c", imports], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_single_seed_vmap_runs_the_unbatched_program():
    """`SeedPlacement.vmap` with one seed: the same values as `jax.vmap` (shared arguments and outputs
    included), without a dot over a batch axis of size 1 (slow on XLA:CPU) in the program."""
    import jax
    import jax.numpy as jnp

    from plastic.sharding import SeedPlacement

    def f(params, count, x):
        y = jnp.tanh(x @ params["w"]) @ params["w"].T
        return {"y": y, "s": y.sum()}, count + 1

    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8))}
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 8))
    count = jnp.asarray(3)
    axes = dict(in_axes=(0, None, 0), out_axes=(0, None))
    got = SeedPlacement(1, 1).vmap(f, **axes)(params, count, x)
    want = jax.vmap(f, **axes)(params, count, x)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    def dot_batch_dims(fn, params, x):
        eqns = jax.make_jaxpr(fn)(params, count, x).jaxpr.eqns
        return [tuple(e.params["dimension_numbers"][1][0]) for e in eqns if e.primitive.name == "dot_general"]

    assert dot_batch_dims(SeedPlacement(1, 1).vmap(f, **axes), params, x) == [(), ()]  # plain matmuls
    assert dot_batch_dims(jax.vmap(f, **axes), params, x) == [(0,), (0,)]  # what the squeeze avoids
    params2, x2 = jax.tree.map(lambda a: jnp.concatenate([a, -a]), (params, x))  # several seeds: jax.vmap
    assert dot_batch_dims(SeedPlacement(1, 2).vmap(f, **axes), params2, x2) == [(0,), (0,)]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    worker(sys.argv[1], Path(sys.argv[2]))
