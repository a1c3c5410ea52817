"""Named continual suites: `--env continual:NAME` (or `--env.suite NAME`).

A suite is a fixed sequence of phases, each `env.period` env steps per seed long, built from the
non-stationary kinds of plastic/nonstationary.py: a task sequence (`tasks`), a re-drawn physical quantity
(`dynamics`) or a re-drawn observation permutation (`permute_obs`). Choosing a suite sets the run env and the
`env.*` fields below, and `run.steps` to `phases x env.period`; every one of them can still be set by a
preset or an override (`--env.period 20000` shortens every phase; `--steps` cuts or extends the sequence, a
task sequence cycling on). The resolved config (config.yaml) keeps the expanded fields and `env.suite`, and
every log row carries `nonstationary/phase` (and `nonstationary/task`, or `/scale`), which
`experiments/report.py` and `experiments/plot.py` group by.

Each entry cites what it follows and says where it differs. Budgets are the sources' where they give one.
"""
from __future__ import annotations

from dataclasses import dataclass

PREFIX = "continual:"


@dataclass(frozen=True)
class Suite:
    env: dict                    # EnvConfig fields
    phases: int                  # run.steps = phases * env.period unless set
    about: str                   # one line: what it is, the driver it runs on
    source: str = ""             # what it follows, and where it differs
    run_env: str = ""            # the run env when it is not env.tasks[0]


def _chain(ids, period, **extra):
    return dict(nonstationary="tasks", tasks=tuple(ids), period=period, **extra)


_DMC_NOTE = ("Plasticine (RLE-Foundation/Plasticine, plasticine/continual/td3_dmc_*.py, dmc_wrappers.ContinualDMC, "
             "cont_mode=task): the tasks of one DMC domain in turn, 1M env steps each. Differences: a fixed order "
             "(Plasticine shuffles its list with the run seed); a switch ends the running episode as a truncation; "
             "the replay buffer and optimizer carry over, as there.")
_CCHAIN_NOTE = (" The order is C-CHAIN's continual DMC (bluecontra/C-CHAIN README: walker stand-walk-run, quadruped "
                "walk-run-walk, dog stand-walk-run-trot).")
_MINATAR_NOTE = ("LucMc/continual-learning (continual_learning/envs/minatar.py): MinAtar games in sequence with the "
                 "6-action set and observations zero-padded on the channel axis. Differences: gymnax's games (jitted) "
                 "instead of the MinAtar package; Breakout instead of Seaquest (gymnax's Seaquest does not step: its "
                 "step returns 6 values); channels padded to 6, not 10; the sequence runs twice so that the second "
                 "visit of a game can be compared with the first; 1M env steps per game (our choice).")
_SLIPPERY_NOTE = ("Dohare et al., Nature 2024 (shibhansh/loss-of-plasticity lop/envs/slippery_ant.py, run_ppo.py): "
                  "friction of every Ant geom re-drawn every 2M steps in [0.02, 2], per seed, already in the first "
                  "phase (plastic/nonstationary.py, slippery Ant, says where the draws differ); 10 phases (20M steps) "
                  "here.")
_PERMUTED_NOTE = ("Dohare et al. 2024's permuted-input streams and Abbas et al. 2023: the flattened observation is "
                  "re-permuted at every phase, a permutation stream per seed; phase 0 is the unpermuted env.")

SUITES = {
    "dmc_chain": Suite(_chain(["dmc:walker-stand", "dmc:walker-walk", "dmc:walker-run"], 1_000_000), 6,
                       "walker stand -> walk -> run, twice, on dm_control (host driver)", _DMC_NOTE),
    "dmc_chain_humanoid": Suite(_chain(["dmc:humanoid-stand", "dmc:humanoid-walk", "dmc:humanoid-run"],
                                       1_000_000), 6,
                                "humanoid stand -> walk -> run, twice: Plasticine's own list (host driver)", _DMC_NOTE),
    "dmc_chain_quadruped": Suite(_chain(["dmc:quadruped-walk", "dmc:quadruped-run"], 1_000_000), 3,
                                 "quadruped walk -> run -> walk, on dm_control (host driver)",
                                 _DMC_NOTE + _CCHAIN_NOTE),
    "dmc_chain_dog": Suite(_chain(["dmc:dog-stand", "dmc:dog-walk", "dmc:dog-run", "dmc:dog-trot"], 1_000_000), 8,
                           "dog stand -> walk -> run -> trot, twice, on dm_control (host driver)",
                           _DMC_NOTE + _CCHAIN_NOTE),
    "playground_chain": Suite(_chain(["playground:WalkerStand", "playground:WalkerWalk", "playground:WalkerRun"],
                                     1_000_000), 6,
                              "walker stand -> walk -> run, twice, on MuJoCo Playground (jitted driver)",
                              _DMC_NOTE + " Playground's Control Suite differs from dm_control's as "
                              "docs/environments.md says."),
    "playground_chain_humanoid": Suite(_chain(["playground:HumanoidStand", "playground:HumanoidWalk",
                                               "playground:HumanoidRun"], 1_000_000), 6,
                                       "humanoid stand -> walk -> run, twice, on MuJoCo Playground (jitted driver)",
                                       _DMC_NOTE),
    "minatar_sequence": Suite(_chain(["gymnax:SpaceInvaders-MinAtar:full", "gymnax:Asterix-MinAtar:full",
                                      "gymnax:Breakout-MinAtar:full"], 1_000_000, pad_obs=True), 6,
                              "MinAtar space invaders -> asterix -> breakout, twice, 6 actions, padded channels "
                              "(gymnax, jitted driver)", _MINATAR_NOTE),
    "slippery_ant": Suite(dict(nonstationary="dynamics", dynamics="friction", period=2_000_000, scale_low=0.02,
                               scale_high=2.0, first_phase="drawn", per_seed=True), 10,
                          "Ant-v5 whose friction is re-drawn every 2M steps (gymnasium MuJoCo, host driver)",
                          _SLIPPERY_NOTE, run_env="Ant-v5"),
    "slippery_ant_brax": Suite(dict(nonstationary="dynamics", dynamics="friction", period=2_000_000, scale_low=0.02,
                                    scale_high=2.0, first_phase="drawn", per_seed=True), 10,
                               "brax's ant whose friction is re-drawn every 2M steps (jitted driver)",
                               _SLIPPERY_NOTE + " LucMc/continual-learning runs it on brax too.", run_env="brax:ant"),
    "permuted_cartpole": Suite(dict(nonstationary="permute_obs", period=50_000, per_seed=True), 10,
                               "CartPole whose 4 observations are re-permuted every 50k steps (gymnax, jitted)",
                               _PERMUTED_NOTE, run_env="gymnax:CartPole-v1"),
    "permuted_minatar": Suite(dict(nonstationary="permute_obs", period=500_000, per_seed=True), 10,
                              "Breakout-MinAtar whose 400 observation cells are re-permuted every 500k steps "
                              "(gymnax, jitted)", _PERMUTED_NOTE, run_env="gymnax:Breakout-MinAtar"),
}
NAMES = tuple(SUITES)


def get(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown continual suite {name!r}; valid: {', '.join(PREFIX + n for n in SUITES)}")
    return SUITES[name]


def requested(env_id: str, suite_field: str) -> str:
    """The suite a run asks for: `continual:NAME` as its env, else its `env.suite` ('' for none)."""
    if env_id.startswith(PREFIX):
        name = env_id[len(PREFIX):]
        get(name)
        if suite_field and suite_field != name:
            raise ValueError(f"--env {env_id} contradicts env.suite={suite_field}; set one of them")
        return name
    if suite_field:
        get(suite_field)
    return suite_field


def apply(cfg, name: str, given: set, steps_given: bool) -> None:
    """Expand suite `name` into `cfg` (an ExperimentConfig): its `env.*` fields where neither a preset nor an
    override set them, the run env, and `run.steps = phases * env.period` unless `steps_given`."""
    suite = get(name)
    for k, v in suite.env.items():
        if ("env", k) not in given:
            setattr(cfg.env, k, v)
    cfg.env.suite = name
    env = suite.run_env or cfg.env.tasks[0]
    if cfg.run.env not in ("", PREFIX + name, env):
        raise ValueError(f"--env {cfg.run.env} contradicts env.suite={name}, whose env is {env}; set one of them")
    cfg.run.env = env
    if not steps_given:
        cfg.run.steps = suite.phases * int(cfg.env.period)


def env_tag(cfg) -> str:
    """The env part of a run directory's name: `continual_NAME` for a suite, else the env id; path-safe."""
    env = f"continual_{cfg.env.suite}" if cfg.env.suite else cfg.run.env
    return env.replace(":", "_").replace("/", "_")


def listing() -> str:
    """One line per suite, for --help and docs."""
    return "\n".join(f"  {PREFIX}{n}: {s.about}; {s.phases} phases x {s.env['period']:,} steps"
                     for n, s in SUITES.items())
