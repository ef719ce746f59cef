"""A real SLURM cluster on this machine for the tests: munged, slurmctld and two node daemons
(n1, n2: two "nodes" on one host), configured in a temp folder (`SLURM_CONF`), stopped by PID.

    with SlurmCluster(tmp) as cluster:
        job = cluster.sbatch(["scripts/slurm_train.sbatch", ...], cwd=repo)
        cluster.wait(job, "COMPLETED")

Needs Debian's `slurm-wlm` and `munge` (scripts/setup.sh installs them) and root (the daemons
run as root, as on a test box; `SlurmUser=root`). See ../shared/SLURM.md for what was checked.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NODES = ("n1", "n2")
CPUS_PER_NODE = 2  # both "nodes" share this machine's cores; oversubscribed on purpose
START_TIMEOUT_S = 60


def available() -> str | None:
    """Why a cluster cannot start here (None: it can)."""
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch")
               if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return f"SLURM not installed ({', '.join(missing)}): scripts/setup.sh installs it"
    if os.geteuid() != 0:
        return "the SLURM daemons need root"
    return None


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.pids: list[int] = []

    def __enter__(self) -> SlurmCluster:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_conf()
            self._start_munge()
            self._daemon(["/usr/sbin/slurmctld", "-c", "-f", str(self.conf)], "slurmctld.pid")
            for node in NODES:
                self._daemon(["/usr/sbin/slurmd", "-f", str(self.conf), "-N", node],
                             f"slurmd-{node}.pid")
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.run("sinfo", "-h", "-N", "-o", "%T").stdout.split() != ["idle"] * 2:
                assert time.monotonic() < deadline, self.run("sinfo").stdout
                time.sleep(0.5)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for pid in self.pids:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)

    def _write_conf(self) -> None:
        host, f = socket.gethostname().split(".")[0], self.folder
        for sub in ("state", "spool"):
            (f / sub).mkdir(exist_ok=True)
        nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 "
                          f"Port={17001 + i} CPUs={CPUS_PER_NODE} RealMemory=4000"
                          for i, n in enumerate(NODES))
        self.conf.write_text(f"""ClusterName=test
SlurmctldHost={host}
SlurmctldPort=16817
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=600
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool/%n
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd-%n.pid
SlurmctldLogFile={f}/slurmctld.log
SlurmdLogFile={f}/slurmd-%n.log
{nodes}
PartitionName=test Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
""")
        for node in NODES:
            (f / "spool" / node).mkdir(exist_ok=True)

    def _start_munge(self) -> None:
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already serving this host
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        pid = Path("/run/munge/munged.pid")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not pid.exists():
            assert time.monotonic() < deadline, "munged did not start"
            time.sleep(0.1)
        self.pids.append(int(pid.read_text()))

    def _daemon(self, argv: list[str], pidfile: str) -> None:
        subprocess.run(argv, check=True, env=self.env)
        path = self.folder / pidfile
        deadline = time.monotonic() + START_TIMEOUT_S
        while not path.exists() or not path.read_text().strip():
            assert time.monotonic() < deadline, f"{argv[0]} wrote no pid file"
            time.sleep(0.1)
        self.pids.append(int(path.read_text()))

    def run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**self.env, **kwargs.pop("env", {})}, text=True,
                              capture_output=True, timeout=60, **kwargs)

    def sbatch(self, argv: list[str], cwd: Path, env: dict | None = None) -> str:
        out = self.run("sbatch", "--parsable", *argv, cwd=cwd, env=env or {})
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().split(";")[0]

    def job(self, job: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def wait(self, job: str, *states: str, timeout: float = 300) -> dict:
        """Wait for the job to reach one of `states`; a requeued job held for SLURM's ~120 s
        BeginTime is released at once (`scontrol update StartTime=now`)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job)
            if info.get("JobState") in states:
                return info
            if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                self.run("scontrol", "update", f"JobId={job}", "StartTime=now")
            assert time.monotonic() < deadline, f"job {job}: {info}"
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
