"""A private single-node Slurm cluster for the tests: the session fixture `slurm_cluster`.

It starts munged (its own key and socket), slurmctld and slurmd (Debian's slurm-wlm; `.ci/slurm-setup`
installs them) from a slurm.conf in a fresh directory under /tmp, on free ports, and waits until the
node is idle. Tests talk to it through `cluster.env` (SLURM_CONF points at that conf; inherited Slurm
variables are removed). At the end every job is cancelled, the daemons stop, and the directory goes.

If the cluster cannot start (no binaries, a daemon dies, the node never turns idle) the tests that use it
skip with a one-line reason and the daemon's last log line; with PLASTIC_REQUIRE_SLURM=1 (CI) they fail.

Settings chosen for the tests (not what a production cluster would use): no cgroups (proctrack/linuxproc,
task/none), no accounting, CR_CPU (memory is not a consumable, so jobs without --mem do not take the whole
node), the scheduler runs every second, a requeued job is eligible again after cred_expire=10 s (Slurm's
default is 120 s), KillWait=30 s for a task to checkpoint after SIGTERM.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PREFIX = "plastic-slurm-"
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


@dataclasses.dataclass
class SlurmCluster:
    root: Path          # the cluster's directory (conf, state, logs, munge socket)
    conf: Path
    env: dict           # environment for subprocesses that use the cluster
    partition: str
    cpus: int

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def states(self, job_id: str) -> dict[str, str]:
        from plastic.slurm import job_states
        return job_states(job_id, env=self.env)

    def info(self, job: str) -> dict[str, str]:
        from plastic.slurm import job_info
        return job_info(job, env=self.env)

    def wait(self, job_id: str, timeout: float, until=None) -> dict[str, str]:
        """Poll the array job's task states until `until(states)` holds (default: every task finished);
        returns the states, or fails with them and the daemons' log tails after `timeout` seconds."""
        until = until or (lambda st: bool(st) and all(s in FINAL for s in st.values()))
        end = time.monotonic() + timeout
        while True:
            st = self.states(job_id)
            if until(st):
                return st
            if time.monotonic() > end:
                raise AssertionError(f"job {job_id} still {st} after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:])
                         for p in sorted((self.root / "log").glob("*.log")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_processes_of(directory: Path) -> None:
    """End the processes started for a cluster directory: daemons name it on their command line, job
    processes and slurmstepd carry SLURM_CONF=<it>/slurm.conf in their environment."""
    needle = str(directory).encode()
    me = {os.getpid(), os.getppid()}
    victims = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in me:
            continue
        try:
            if needle in (p / "cmdline").read_bytes() or needle in (p / "environ").read_bytes():
                victims.append(int(p.name))
        except OSError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        end = time.monotonic() + 5
        while sig == signal.SIGTERM and any(_alive(p) for p in victims) and time.monotonic() < end:
            time.sleep(0.1)


def _base() -> Path:
    """Where cluster directories go: /tmp when it is there (munged needs every directory above its socket
    searchable by all, and a socket path under 108 bytes), else the temp dir."""
    tmp = Path("/tmp")
    return tmp if tmp.is_dir() and tmp.stat().st_mode & 0o001 else Path(tempfile.gettempdir())


def _clean_stale() -> None:
    """Remove the clusters of earlier test sessions whose pytest process is gone (a crashed or killed run
    leaves its daemons behind); clusters of sessions still running are left alone."""
    for d in _base().glob(PREFIX + "*"):
        try:
            owner = int((d / "owner").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and _alive(owner):
            continue
        _kill_processes_of(d)
        shutil.rmtree(d, ignore_errors=True)


def _memory_mb() -> int:
    try:
        kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
        return max(256, int(kb / 1024 * 0.9))
    except (OSError, StopIteration, ValueError):
        return 1024


def write_conf(d: Path, user: str, cpus: int) -> Path:
    host = socket.gethostname().split(".")[0] or "localhost"
    (d / "plugstack.conf").write_text("")
    conf = f"""# private single-node test cluster (tests/slurm_cluster.py)
ClusterName=plastictest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/run/munge.sock,cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={d}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
InactiveLimit=0
MessageTimeout=30
SlurmctldTimeout=300
SlurmdTimeout=300
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    path = d / "slurm.conf"
    path.write_text(conf)
    return path


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def _give_up(reason: str):
    if os.environ.get("PLASTIC_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm test cluster: {reason}", pytrace=False)
    pytest.skip(f"Slurm test cluster: {reason}")


def _start(d: Path) -> tuple[SlurmCluster, list]:
    """Start munged, slurmctld and slurmd for directory `d`; returns the cluster and the daemon processes
    (calls _give_up if any step fails)."""
    tools = {n: _which(n) for n in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol",
                                    "scancel")}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        _give_up(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/slurm-setup)")
    for sub in ("run", "state", "spool", "log", "munge"):
        (d / sub).mkdir()
    os.chmod(d, 0o755)          # munged wants its socket's directories searchable by everyone
    os.chmod(d / "run", 0o755)
    os.chmod(d / "munge", 0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    user = getpass.getuser()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    conf = write_conf(d, user, cpus)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
    procs = []

    def daemon(name, *args):
        out = open(d / "log" / f"{name}.stdout.log", "w")
        procs.append((name, subprocess.Popen([tools[name], *args], stdout=out, stderr=subprocess.STDOUT,
                                             env=env, start_new_session=True)))
        out.close()

    def died() -> str | None:
        for name, p in procs:
            if p.poll() is not None:
                log = d / "log" / (f"{name}.log" if name != "munged" else "munged.log")
                stdout = d / "log" / f"{name}.stdout.log"
                return f"{name} exited with {p.returncode}: {_tail(log)} {_tail(stdout)}"
        return None

    def wait_for(what: str, ok, timeout: float):
        end = time.monotonic() + timeout
        while not ok():
            why = died()
            if why:
                _give_up(why)
            if time.monotonic() > end:
                _give_up(f"{what} after {timeout:.0f} s; slurmctld: {_tail(d / 'log' / 'slurmctld.log')}; "
                         f"slurmd: {_tail(d / 'log' / 'slurmd.log')}")
            time.sleep(0.2)

    sock = d / "run" / "munge.sock"
    daemon("munged", "-F", "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d}/run/munged.pid",
           f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/munged.seed")
    cluster = SlurmCluster(d, conf, env, "test", cpus)
    try:
        wait_for("munged made no socket", sock.exists, 10)
        daemon("slurmctld", "-D", "-f", str(conf))
        daemon("slurmd", "-D", "-f", str(conf), "-N", socket.gethostname().split(".")[0] or "localhost")

        def idle():
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env)
            return r.returncode == 0 and r.stdout.strip() == "idle"
        wait_for("the node is not idle", idle, 60)
    except BaseException:
        _stop(cluster, procs)
        raise
    return cluster, procs


def _stop(cluster: SlurmCluster, procs: list) -> None:
    env = cluster.env
    if any(n == "slurmctld" and p.poll() is None for n, p in procs):
        subprocess.run(["scancel", "--user", getpass.getuser()], capture_output=True, env=env, timeout=30)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env)
            if r.returncode != 0 or not r.stdout.strip():
                break
            time.sleep(0.3)
    for _, p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for _, p in reversed(procs):
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _kill_processes_of(cluster.root)    # job processes that outlived slurmd


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm cluster (SlurmCluster); skips the test if it cannot start."""
    if not hasattr(os, "sched_getaffinity") or not Path("/proc").is_dir():
        _give_up("needs Linux")
    _clean_stale()
    d = Path(tempfile.mkdtemp(prefix=PREFIX, dir=_base()))
    (d / "owner").write_text(str(os.getpid()))
    try:
        cluster, procs = _start(d)
        try:
            yield cluster
        finally:
            _stop(cluster, procs)
    finally:
        shutil.rmtree(d, ignore_errors=True)
