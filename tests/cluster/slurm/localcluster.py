"""A throw-away one-node SLURM cluster on localhost, for the cluster tests.

Used by tests/cluster/conftest.py (session fixture ``slurm_cluster``) and usable by hand:

    python tests/cluster/slurm/localcluster.py install          # apt-get slurm + munge
    python tests/cluster/slurm/localcluster.py start /tmp/astrodag-slurm
    export SLURM_CONF=/tmp/astrodag-slurm/slurm.conf            # printed by "start"
    ...  sinfo / sbatch / snakemake --profile profiles/slurm ...
    python tests/cluster/slurm/localcluster.py stop /tmp/astrodag-slurm

What it does (Debian/Ubuntu, root only):

* ``install_slurm()`` installs Debian's ``slurmctld slurmd slurm-client munge`` with
  apt-get when the binaries are missing (Debian's postinst creates /etc/munge/munge.key).
* ``LocalSlurm.start()`` renders slurm.conf/gres.conf/task_prolog.sh from the ``*.in``
  templates next to this file into the cluster directory (nothing is written to
  /etc/slurm), starts munged (unless one already answers), slurmctld and
  ``slurmd -N localhost``, and waits until the node is idle.  The node has one fake
  GPU (gres.conf maps it to /dev/null) and two partitions, ``cpu`` (default) and
  ``gpu``.  Client commands find the cluster through ``SLURM_CONF``.
* ``LocalSlurm.stop()`` cancels left-over jobs and stops exactly the daemons it
  started, by the PIDs in their pid files.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SLURM_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
SLURM_BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel", "munged"]
MUNGE_PIDFILE = Path("/run/munge/munged.pid")


class SlurmUnavailable(RuntimeError):
    """A prerequisite (root, apt-get, a package) is missing; the message says which."""


def _which(name: str) -> str | None:
    # the daemons live in /usr/sbin, which is not on every PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if _which(b) is None]


def install_slurm(log=print, timeout: int = 600) -> None:
    """Install SLURM + munge with apt-get if they are missing (needs root and apt)."""
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"SLURM is not installed (missing: {', '.join(missing)}) and installing it "
            "with apt-get needs root"
        )
    apt = _which("apt-get")
    if apt is None:
        raise SlurmUnavailable(
            f"SLURM is not installed (missing: {', '.join(missing)}) and there is no apt-get"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *SLURM_PACKAGES]

    def run(cmd):
        log("$ " + " ".join(cmd))
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)

    res = run(install)
    if res.returncode != 0:
        # typical on a fresh container: empty package lists
        upd = run([apt, "update", "-q"])
        if upd.returncode != 0:
            raise SlurmUnavailable(f"apt-get update failed:\n{upd.stdout[-2000:]}{upd.stderr[-2000:]}")
        res = run(install)
    if res.returncode != 0:
        raise SlurmUnavailable(f"apt-get install failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    still = missing_binaries()
    if still:
        raise SlurmUnavailable(f"after apt-get install still missing: {', '.join(still)}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 4096


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still "exists"; treat it as gone
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_pid(pid: int, name: str, log=print, timeout: float = 15.0) -> None:
    if not _pid_alive(pid):
        return
    log(f"stopping {name} (pid {pid})")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.2)
    log(f"{name} (pid {pid}) ignored SIGTERM, sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def running_daemons(names=("slurmctld", "slurmd")) -> dict[str, int]:
    """Live (non-zombie) processes with these command names, name -> pid."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names and _pid_alive(int(proc.name)):
            found[comm] = int(proc.name)
    return found


TEST_DIR_PREFIX = "astrodag-slurm-"


def _slurm_conf_of(pid: int) -> str:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    for item in environ:
        if item.startswith(b"SLURM_CONF="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return ""


def _is_test_daemon(pid: int) -> bool:
    """Started by this helper (for any cluster directory named astrodag-slurm-*)?"""
    return Path(_slurm_conf_of(pid)).parent.name.startswith(TEST_DIR_PREFIX)


def _started_from(pid: int, cluster_dir: Path) -> bool:
    return Path(_slurm_conf_of(pid)).parent == cluster_dir


def munge_works() -> bool:
    munge, unmunge = _which("munge"), _which("unmunge")
    if not munge or not unmunge:
        return False
    try:
        cred = subprocess.run([munge, "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        res = subprocess.run([unmunge], input=cred.stdout, capture_output=True, timeout=10)
        return res.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalSlurm:
    """One-node SLURM cluster whose config, state and logs live in ``cluster_dir``."""

    def __init__(self, cluster_dir: os.PathLike | str, log=print):
        self.dir = Path(cluster_dir).resolve()
        self.log = log
        self.conf = self.dir / "slurm.conf"
        self.logdir = self.dir / "log"
        self.rundir = self.dir / "run"
        self.started_munge_pid: int | None = None

    # -- paths -------------------------------------------------------------------------
    @property
    def slurmctld_log(self) -> Path:
        return self.logdir / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.logdir / "slurmd.log"

    @property
    def taskprolog_log(self) -> Path:
        return self.logdir / "taskprolog.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands (sbatch, squeue, snakemake's plugin)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    # -- helpers -----------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        exe = _which(cmd[0]) or cmd[0]
        return subprocess.run(
            [exe, *cmd[1:]], env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def tail_logs(self, n: int = 40) -> str:
        out = []
        for p in (self.slurmctld_log, self.slurmd_log, self.logdir / "munged.log"):
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {p} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        return "\n".join(out)

    def _render(self, cpus: int, mem_mb: int) -> None:
        user = os.environ.get("ASTRODAG_SLURM_USER", "slurm")
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            user, pw = "root", pwd.getpwnam("root")
        self.ctld_port = _free_port()
        values = {
            "@CLUSTER_DIR@": str(self.dir),
            "@CTLD_PORT@": str(self.ctld_port),
            "@SLURMD_PORT@": str(_free_port()),
            "@SLURM_USER@": user,
            "@CPUS@": str(cpus),
            "@MEM_MB@": str(mem_mb),
        }
        for sub in ("state", "spool", "log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # slurmctld runs as SlurmUser: it must reach the directory and own its state/log/pid dirs
        os.chmod(self.dir, 0o755)
        for sub in ("state", "log", "run"):
            os.chown(self.dir / sub, pw.pw_uid, pw.pw_gid)
        # jobs (run as the submitting user) append to the TaskProlog record
        self.taskprolog_log.touch()
        os.chmod(self.taskprolog_log, 0o666)
        for name in ("slurm.conf", "gres.conf", "task_prolog.sh"):
            text = (HERE / f"{name}.in").read_text()
            for key, val in values.items():
                text = text.replace(key, val)
            target = self.dir / name
            target.write_text(text)
            os.chmod(target, 0o755 if name.endswith(".sh") else 0o644)

    def _start_munge(self, timeout: float) -> None:
        if munge_works():
            self.log("munged already running, reusing it")
            return
        munged = _which("munged")
        try:
            mpw = pwd.getpwnam("munge")
        except KeyError as e:
            raise SlurmUnavailable("no 'munge' user (is the munge package installed?)") from e
        rundir = MUNGE_PIDFILE.parent
        rundir.mkdir(parents=True, exist_ok=True)
        os.chown(rundir, mpw.pw_uid, mpw.pw_gid)
        os.chmod(rundir, 0o755)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            mungekey = _which("mungekey")
            if mungekey:
                subprocess.run(["runuser", "-u", "munge", "--", mungekey, "--create"], check=True)
            else:
                key.write_bytes(os.urandom(1024))
                os.chown(key, mpw.pw_uid, mpw.pw_gid)
                os.chmod(key, 0o400)
        self.log("starting munged")
        res = subprocess.run(
            ["runuser", "-u", "munge", "--", munged], capture_output=True, text=True, timeout=30
        )
        if res.returncode != 0:
            raise RuntimeError(f"munged failed to start: {res.stdout}{res.stderr}")
        deadline = time.monotonic() + timeout
        while not munge_works():
            if time.monotonic() > deadline:
                raise RuntimeError("munged started but 'munge -n | unmunge' does not work")
            time.sleep(0.2)
        self.started_munge_pid = _read_pid(MUNGE_PIDFILE)
        (self.rundir / "munged.pid.started").write_text(f"{self.started_munge_pid}\n")

    def _start_daemon(self, name: str, args: list[str], pidfile: Path, timeout: float) -> int:
        exe = _which(name)
        self.log(f"starting {name}")
        res = subprocess.run([exe, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{name} failed ({res.returncode}): {res.stdout}{res.stderr}\n{self.tail_logs()}")
        deadline = time.monotonic() + timeout
        while True:
            pid = _read_pid(pidfile)
            if pid and _pid_alive(pid):
                return pid
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not write a live pid to {pidfile}\n{self.tail_logs()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        # one line per partition the node is in; all say the same
        res = self.run("sinfo", "-h", "-N", "-n", "localhost", "-o", "%T", timeout=15)
        if res.returncode != 0:
            return f"(sinfo failed: {res.stderr.strip()})"
        return ",".join(sorted(set(res.stdout.split())))

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 90, cpus: int | None = None, mem_mb: int | None = None) -> "LocalSlurm":
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmctld/slurmd/munged needs root")
        missing = missing_binaries()
        if missing:
            raise SlurmUnavailable(f"SLURM binaries missing: {', '.join(missing)}")
        # daemons left behind by an earlier, killed test session: stop them (by pid)
        for name, pid in running_daemons().items():
            if _is_test_daemon(pid) and not _started_from(pid, self.dir):
                self.log(f"stopping stale test {name} (pid {pid}) of an earlier session")
                _stop_pid(pid, name, self.log)
        # never start a second slurmd next to a real one (it would also take over
        # /run/slurm/conf, where slurmd keeps the configuration for jobs on the node)
        others = running_daemons()
        if others:
            raise SlurmUnavailable(
                "SLURM daemons already run on this machine "
                + ", ".join(f"{n} (pid {p})" for n, p in others.items())
                + "; not starting a test cluster next to them"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        # a "virtual" node (SlurmdParameters=config_overrides), big enough for any rule
        cpus = cpus or max(os.cpu_count() or 1, 32)
        mem_mb = mem_mb or max(_mem_total_mb(), 256 * 1024)
        self._render(cpus, mem_mb)
        t0 = time.monotonic()
        self._start_munge(timeout=30)
        self._start_daemon("slurmctld", ["-f", str(self.conf)], self.rundir / "slurmctld.pid", timeout=30)
        self._start_daemon(
            "slurmd",
            ["-N", "localhost", "--conf-server", f"localhost:{self.ctld_port}"],
            self.rundir / "slurmd.pid",
            timeout=30,
        )
        deadline = t0 + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                self.log(f"SLURM node idle after {time.monotonic() - t0:.1f} s")
                return self
            if state in ("drained", "draining", "down", "fail"):
                # e.g. after a restart with stale state: bring it back once
                self.run("scontrol", "update", "nodename=localhost", "state=resume")
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout} s (state: {state!r})\n{self.tail_logs()}")

    def stop(self) -> None:
        # cancel whatever is left, then stop the daemons this instance (or a previous
        # "start" on the same directory) started -- by pid file, nothing else
        if (self.rundir / "slurmctld.pid").exists():
            try:
                self.run("scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name, timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for name in ("slurmd", "slurmctld"):
            pid = _read_pid(self.rundir / f"{name}.pid")
            if pid:
                _stop_pid(pid, name, self.log)
        # configless slurmd links /run/slurm/conf to its cache in our spool directory
        link = Path("/run/slurm/conf")
        try:
            if link.is_symlink() and str(self.dir) in os.readlink(link):
                link.unlink()
        except OSError:
            pass
        munge_pid = self.started_munge_pid or _read_pid(self.rundir / "munged.pid.started")
        if munge_pid:
            _stop_pid(munge_pid, "munged", self.log)
            self.started_munge_pid = None
            (self.rundir / "munged.pid.started").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    usage = "usage: localcluster.py install | start DIR | stop DIR"
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    cmd = argv[0]
    try:
        if cmd == "install":
            install_slurm()
            return 0
        if cmd in ("start", "stop") and len(argv) == 2:
            cluster = LocalSlurm(argv[1], log=lambda m: print(m, file=sys.stderr))
            if cmd == "start":
                install_slurm(log=lambda m: print(m, file=sys.stderr))
                cluster.start()
                print(f"export SLURM_CONF={cluster.conf}")
            else:
                cluster.stop()
            return 0
    except SlurmUnavailable as e:
        print(f"SLURM unavailable: {e}", file=sys.stderr)
        return 3
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
