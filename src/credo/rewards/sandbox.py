"""Run untrusted, model-written Python in a sandboxed subprocess.

Threat model
------------
The code is hostile. It may loop forever, fork without end, allocate or print without end, fill the
disk, read or write host files, open network connections, signal other processes, forge the
sandbox's own status messages, or leave daemons behind. The sandbox must (a) return within its
wall-time limit plus a small overhead, (b) leave no process behind, (c) change nothing on the host
outside its private working folder (deleted afterwards), (d) make no network connection, and
(e) never report a failure of the sandbox itself as a program outcome ("sandbox_error" instead).
It is not a defence against kernel exploits: code of real consequence also belongs in a VM.

Process tree
------------
    caller (threads allowed; no preexec_fn)    Popen(start_new_session=True)
    └─ L  launcher: `python -I -S sandbox.py`; child subreaper; unshare(mount, net, ipc, uts, pid)
       └─ S  supervisor: pid 1 of the new pid namespace; builds the private root, reports the
             isolation it achieved, waits for P, reports P's exit status and CPU time
          └─ P  the program: rlimits, chroot, a dedicated uid/gid, no_new_privs,
                `python -I -S main.py` (standard library only, no site-packages)

Status travels on a private pipe as JSON lines that P cannot reach (closed before exec).

What is enforced, and how
-------------------------
- wall time: the caller's deadline, counted from P's start; then SIGKILL to S (the kernel kills
  the whole pid namespace with it), to every other descendant of L and to every process of P's uid.
- CPU time: RLIMIT_CPU in whole seconds: SIGXCPU at the limit, SIGKILL a second later.
- memory: RLIMIT_AS per process (so the total is at most max_processes x memory_mb); every tmpfs
  has a fixed size and inode count.
- processes: RLIMIT_NPROC, effective because P's uid is used by no other process.
- output: read incrementally; more than max_output_bytes on either stream kills P.
- files: a mount namespace in which every host mount is remounted read-only + nosuid; P is
  chrooted into a tmpfs holding read-only binds of /usr /bin /lib* /etc and the interpreter's
  prefix, /dev/{null,zero,full,random,urandom}, a fresh /proc, a private /tmp and /dev/shm, and
  the work folder (a tmpfs of disk_mb; also HOME and TMPDIR); RLIMIT_FSIZE. Host data (/root,
  /home, the repo, data sets) is not visible at all, so it can be neither read nor changed.
- network: a new network namespace: only a loopback device, and it is down.
- IPC: a new IPC namespace (SysV shared memory cannot outlive the run).
- no survivors: the pid namespace; L is a child subreaper, so orphans (double fork + setsid) stay
  its descendants; the kill of every descendant of L and every process of P's uid (scanning /proc)
  is repeated until none is alive, and L reaps them all (no zombies). A survivor makes the outcome
  "sandbox_error".
- privileges: setgroups([]) + setresgid/setresuid to a uid from UID_RANGE, no_new_privs, and no
  setuid binaries (nosuid everywhere).

Degraded modes. A dedicated uid needs root. Not root, L creates the namespaces inside an
unprivileged user namespace that maps only the caller's uid (S keeps the capabilities to build the
root; P loses them at exec), so the filesystem, network and pid isolation still hold where the
kernel allows unprivileged user namespaces. Where something is refused (EPERM) the run goes on with
what is possible and `SandboxResult.isolation` says exactly what was enforced; pass
`require=("separate_uid", ...)` to refuse weaker runs as "sandbox_error". Without a separate uid
RLIMIT_NPROC counts all of the user's processes (in a user namespace, only those inside it); without
a pid namespace or a separate uid, P can signal the caller's processes (same uid) and can kill L,
after which its orphans escape the kill; without a mount namespace the host filesystem is reachable
with the user's permissions; without a network namespace the network is reachable. Root without
namespaces runs P as the sandbox uid without a chroot, so the interpreter must be reachable by that
uid (not under /root), else every run is a "sandbox_error" (P never runs as root).

Not enforced: P can read world-readable files under /usr, /etc and the interpreter's prefix; CPU
time is limited per process (a fork bomb is bounded by max_processes x cpu_time_s and by the wall
limit); memory is limited per process, not with a cgroup. A reward function that runs in the
caller's own Python process (see `credo.rewards.code.combine`) is not sandboxed by any of this.

Outcomes: "ok", "timeout" (wall or CPU), "memory", "crash" (any other non-zero exit or signal),
"output_limit", "sandbox_error". The code verifier adds "wrong".
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import random
import re
import resource
import signal
import stat
import sys
import time
from dataclasses import dataclass, field, replace

OUTCOMES = ("ok", "timeout", "memory", "crash", "output_limit", "sandbox_error")
ISOLATION_FLAGS = ("separate_uid", "private_filesystem", "no_network", "pid_namespace", "kills_all")

# Dedicated sandbox uids (gid = uid). A uid is used only if no account, group or process has it,
# and it is held with a lock file for the whole run, so concurrent sandboxes never share one.
UID_RANGE = range(61000, 62000)
SETUP_TIMEOUT_S = 10.0  # the time L and S may take to set up before P starts
DRAIN_TIMEOUT_S = 1.0  # reading what is left in the pipes after every process is gone
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
_LAUNCH_FLAG = "--credo-sandbox-launch"
_SETUP_EXIT = 125
_MEMORY_MARKERS = re.compile(rb"MemoryError|Cannot allocate memory|[Oo]ut of memory|bad_alloc")

# Linux constants (include/uapi/linux/{sched,mount,prctl}.h).
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
_KEPT_MOUNT_FLAGS = {"nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                     "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


@dataclass(frozen=True)
class Isolation:
    """What a run actually enforced (rlimits, the process group and output caps always are).

    separate_uid: P ran as a dedicated unprivileged uid/gid (RLIMIT_NPROC effective, host files
        protected by permissions, every process of the run found and killed by uid).
    private_filesystem: P ran chrooted in a private mount namespace with the host read-only.
    no_network: P ran in a new network namespace (no interfaces but a down loopback).
    pid_namespace: P's processes lived in a pid namespace that dies with the supervisor.
    problems: why something was not enforced (e.g. "unshare: Operation not permitted").
    """

    separate_uid: bool = False
    private_filesystem: bool = False
    no_network: bool = False
    pid_namespace: bool = False
    problems: tuple[str, ...] = ()

    @property
    def kills_all(self) -> bool:
        """No process of the run can survive it (even one that called setsid())."""
        return self.separate_uid or self.pid_namespace


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run.

    outcome: one of OUTCOMES.  returncode: P's exit status (negative: killed by that signal; None
    when unknown, e.g. a sandbox error).  stdout/stderr: at most max_output_bytes each, decoded
    as UTF-8 with replacement.  wall_time_s: from P's start to its end.  cpu_time_s: P's user +
    system time (with the children it waited for).  detail: why, in words (the limit hit, the
    signal, the setup error).  uid: the sandbox uid used, or None.
    """

    outcome: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_time_s: float
    cpu_time_s: float = 0.0
    isolation: Isolation = field(default_factory=Isolation)
    detail: str = ""
    uid: int | None = None


@dataclass(frozen=True)
class _Limits:
    wall_time_s: float
    cpu_time_s: float
    memory_mb: int
    max_output_bytes: int
    max_processes: int
    disk_mb: int

    def __post_init__(self):
        for name in ("wall_time_s", "cpu_time_s", "memory_mb", "max_output_bytes", "max_processes", "disk_mb"):
            value = getattr(self, name)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or not value > 0 or not math.isfinite(value):
                raise ValueError(f"run_sandboxed: {name} must be a positive finite number, got {value!r}")

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.cpu_time_s))


def run_sandboxed(
    code: str,
    *,
    stdin: str = "",
    wall_time_s: float = 5.0,
    cpu_time_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 64_000,
    max_processes: int = 32,
    disk_mb: int = 64,
    python: str = sys.executable,
    require: tuple[str, ...] = (),
) -> SandboxResult:
    """Run `code` as a Python script in the sandbox, feeding it `stdin`; never raises on `code`.

    Limits: wall_time_s (from the program's start), cpu_time_s (rounded up to whole seconds),
    memory_mb (address space per process), max_output_bytes (per stream), max_processes (tasks
    of the sandbox uid), disk_mb (size of each private tmpfs and of any one file).
    python: the interpreter for the program (run with -I -S: standard library only).
    require: names of `Isolation` flags that must hold, else the outcome is "sandbox_error".
    Raises TypeError/ValueError only for bad arguments (a caller's bug, not model output).
    """
    if not isinstance(code, str) or not isinstance(stdin, str):
        raise TypeError("run_sandboxed: code and stdin must be str")
    limits = _Limits(wall_time_s, cpu_time_s, memory_mb, max_output_bytes, max_processes, disk_mb)
    unknown = [name for name in require if name not in ISOLATION_FLAGS]
    if unknown:
        raise ValueError(f"run_sandboxed: unknown isolation flags {unknown}; valid: {list(ISOLATION_FLAGS)}")
    started = time.monotonic()
    try:
        with _claimed_uid() as uid, _host_workdir() as workdir:
            result = _run(_encode(code), _encode(stdin), limits, uid, workdir, python)
    except Exception as exc:  # noqa: BLE001 - a failure of the sandbox is a result, never an exception
        return SandboxResult("sandbox_error", None, "", "", time.monotonic() - started,
                             detail=f"{type(exc).__name__}: {exc}")
    missing = [name for name in require if not getattr(result.isolation, name)]
    if missing and result.outcome != "sandbox_error":
        return replace(result, outcome="sandbox_error",
                       detail=f"required isolation not enforced: {missing}; {list(result.isolation.problems)}")
    return result


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # text decoded with surrogateescape round-trips
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# The caller's side: claim a uid, launch L, pump pipes under the limits, kill everything, classify.
# --------------------------------------------------------------------------------------------


def _why_no_uid() -> str | None:
    """Why no dedicated uid can be used here, or None when one can."""
    if os.geteuid() != 0:
        return "no separate uid: not running as root"
    with contextlib.suppress(OSError):
        with open("/proc/self/uid_map") as f:
            spans = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
        if not any(inside <= UID_RANGE.start and UID_RANGE.stop <= inside + count for inside, _, count in spans):
            return f"no separate uid: {UID_RANGE} is not mapped in this user namespace"
    return None


@contextlib.contextmanager
def _claimed_uid():
    """A uid from UID_RANGE that nothing else uses, locked for the run; None if none can be used."""
    if _why_no_uid() is not None:
        yield None
        return
    import fcntl
    import grp
    import pwd
    import tempfile

    # One fixed place for every process of this machine (not $TMPDIR, which differs between them).
    lock_dir = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), "credo-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    info = os.lstat(lock_dir)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise RuntimeError(f"{lock_dir} must be a folder owned by root with mode 700 (someone else made it?)")
    busy = {uid for _, _, _, ids in _scan_processes() for uid in ids}
    candidates = [uid for uid in UID_RANGE if uid not in busy]
    random.shuffle(candidates)
    for uid in candidates:
        with contextlib.suppress(KeyError):
            pwd.getpwuid(uid)
            continue
        with contextlib.suppress(KeyError):
            grp.getgrgid(uid)
            continue
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(os.path.join(lock_dir, f"{uid}.lock"), flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: also excludes other threads
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if any(uid in ids for _, _, _, ids in _scan_processes()):
                continue  # a leftover (e.g. an unreaped zombie): try another uid
            yield uid
            return
        finally:
            os.close(fd)  # releases the lock
    raise RuntimeError(f"no free sandbox uid in {UID_RANGE}")


@contextlib.contextmanager
def _host_workdir():
    """A fresh private folder (mode 700): the chroot's mount point, or the work folder if degraded."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="credo-sandbox-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _scan_processes() -> list[tuple[int, int, str, set[int]]]:
    """(pid, parent pid, state letter, ids) for every process; ids: its real/effective/saved/fs
    uids and gids. A zombie (state Z) holds nothing but its pid."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            continue
        ppid, state, ids = 0, "?", set()
        for line in lines:
            if line.startswith(b"State:"):
                state = line.split()[1].decode()
            elif line.startswith(b"PPid:"):
                ppid = int(line.split()[1])
            elif line.startswith((b"Uid:", b"Gid:")):
                ids.update(int(x) for x in line.split()[1:])
        found.append((int(name), ppid, state, ids))
    return found


def _sandbox_processes(launcher: int, uid: int | None) -> list[int]:
    """Live processes of a run: L's descendants (L is their subreaper) and every process of uid."""
    processes = _scan_processes()
    children: dict[int, list[int]] = {}
    for pid, ppid, _, _ in processes:
        children.setdefault(ppid, []).append(pid)
    tree, stack = set(), list(children.get(launcher, ()))
    while stack:
        pid = stack.pop()
        tree.add(pid)
        stack.extend(children.get(pid, ()))
    return [pid for pid, _, state, ids in processes if state != "Z" and (pid in tree or uid in ids)]


def _kill_everything(proc, uid: int | None) -> list[int]:
    """SIGKILL every live process of the run until none is left (killing S, pid 1 of its namespace,
    takes the namespace with it), then let L reap them and exit. Returns the survivors (normally [])."""
    import subprocess

    if proc.poll() is not None and proc.returncode != 0:  # L was killed: its group may hold the rest
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
    deadline, alive = time.monotonic() + 2.0, []
    while time.monotonic() < deadline:
        alive = _sandbox_processes(proc.pid, uid)
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    try:
        proc.wait(timeout=1.0)  # L exits by itself once it has reaped every child
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return [pid for pid, _, state, ids in _scan_processes() if state != "Z" and (pid in alive or uid in ids)]


def _interpreter_prefix(executable: str) -> str:
    """The installation folder of an interpreter (…/bin/python3 -> …), made visible in the chroot."""
    folder = os.path.dirname(executable)
    return os.path.dirname(folder) if os.path.basename(folder) == "bin" else folder


def _run(code: bytes, stdin: bytes, limits: _Limits, uid: int | None, workdir: str, python: str) -> SandboxResult:
    import subprocess

    if not python:
        raise RuntimeError("no Python interpreter to run the program with (sys.executable is empty)")
    executable = os.path.realpath(python)
    code_path = os.path.join(workdir, "main.py")
    with open(code_path, "wb") as f:
        f.write(code)
    os.chmod(code_path, 0o644)
    status_r, status_w = os.pipe()
    config = {
        "uid": uid, "workdir": workdir, "code_path": code_path, "python": executable,
        "keep": [_interpreter_prefix(executable)], "status_fd": status_w, "parent_pid": os.getpid(),
        "limits": limits.__dict__, "cpu_seconds": limits.cpu_seconds,
    }
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    proc = pump = None
    try:
        try:
            proc = subprocess.Popen(
                [os.path.realpath(sys.executable), "-I", "-S", os.path.realpath(__file__), _LAUNCH_FLAG,
                 json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                start_new_session=True, env=env, cwd="/",
            )
            os.close(status_w)
            status_w = None
            pump = _Pump(proc, status_r, stdin, limits.max_output_bytes)
            reason = _watch(pump, proc, limits)
            ended = time.monotonic()
        finally:
            if status_w is not None:
                os.close(status_w)
            survivors = _kill_everything(proc, uid) if proc is not None else []
        pump.drain(DRAIN_TIMEOUT_S)
        return _result(pump, reason, ended, survivors, limits, uid)
    finally:
        if pump is not None:
            pump.close()
        os.close(status_r)


def _watch(pump: _Pump, proc, limits: _Limits) -> str:
    """Pump the pipes until L exits or a limit is hit; returns "exited", "wall", "output" or "setup"."""
    setup_deadline = time.monotonic() + SETUP_TIMEOUT_S
    while True:
        if pump.overflow:
            return "output"
        if pump.finished or proc.poll() is not None:
            return "exited"
        now = time.monotonic()
        deadline = setup_deadline if pump.started_at is None else pump.started_at + limits.wall_time_s
        if now >= deadline:
            return "setup" if pump.started_at is None else "wall"
        pump.step(min(deadline - now, 0.02 if pump.pidfd is None else 1.0))


class _Pump:
    """Non-blocking I/O with L's pipes: feeds stdin, keeps at most `cap` bytes of each output stream
    (plus the last 4 KB of stderr, for classification) and parses the status messages."""

    def __init__(self, proc, status_fd: int, stdin: bytes, cap: int):
        import selectors

        self.cap, self.overflow, self.started_at, self.finished = cap, False, None, False
        self.buffers = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
        self.stderr_tail = b""
        self.selector = selectors.DefaultSelector()
        self.proc, self.stdin, self.stdin_offset = proc, stdin, 0
        for name, fd in (("stdout", proc.stdout.fileno()), ("stderr", proc.stderr.fileno()), ("status", status_fd)):
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, name)
        if stdin:
            os.set_blocking(proc.stdin.fileno(), False)
            self.selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        else:
            proc.stdin.close()
        self.pidfd = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(proc.pid)  # readable when L exits: no polling delay
            self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")

    def step(self, timeout: float) -> None:
        for key, _ in self.selector.select(max(timeout, 0.0)):
            if key.data == "stdin":
                self._write_stdin(key.fd)
            elif key.data == "exit":
                self.selector.unregister(key.fd)
            else:
                self._read(key.fd, key.data)

    def _write_stdin(self, fd: int) -> None:
        try:
            self.stdin_offset += os.write(fd, self.stdin[self.stdin_offset:self.stdin_offset + 65536])
        except BlockingIOError:
            return
        except OSError:  # the program exited or closed its stdin
            self.stdin_offset = len(self.stdin)
        if self.stdin_offset >= len(self.stdin):
            self.selector.unregister(fd)
            self.proc.stdin.close()

    def _read(self, fd: int, name: str) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.selector.unregister(fd)
            return
        buffer = self.buffers[name]
        if name == "status":
            buffer += data[: 1 << 20]
            self._parse_status()
            return
        if name == "stderr":
            self.stderr_tail = (self.stderr_tail + data)[-4096:]
        room = self.cap - len(buffer)
        buffer += data[: max(room, 0)]
        self.overflow |= len(data) > room

    def _parse_status(self) -> None:
        status = self.buffers["status"]
        if self.started_at is None and b'"started"' in status:
            self.started_at = time.monotonic()
        self.finished = b'"exit"' in status or b'"error"' in status  # P has ended (or never started)

    def messages(self) -> dict:
        merged: dict = {}
        for line in bytes(self.buffers["status"]).splitlines():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict):
                    if message.get("error") and not merged.get("error"):
                        merged["error"] = message["error"]  # the first error is the cause
                    merged.update({k: v for k, v in message.items() if k != "error"})
        return merged

    def drain(self, timeout_s: float) -> None:
        """Read what is left until every pipe is closed (all writers are dead by now)."""
        deadline = time.monotonic() + timeout_s
        while any(key.data in ("stdout", "stderr", "status") for key in self.selector.get_map().values()):
            if time.monotonic() >= deadline:
                break
            self.step(deadline - time.monotonic())

    def close(self) -> None:
        self.selector.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()


def _result(pump: _Pump, reason: str, ended: float, survivors: list[int], limits: _Limits, uid) -> SandboxResult:
    messages = pump.messages()
    status = messages.get("exit")
    returncode = None
    if isinstance(status, int):
        with contextlib.suppress(ValueError):
            returncode = os.waitstatus_to_exitcode(status)
    cpu = float(messages.get("cpu", 0.0) or 0.0)
    outcome, detail = _classify(reason, messages, returncode, cpu, pump, limits)
    if survivors:
        outcome, detail = "sandbox_error", f"processes of the run survived the kill: {survivors}"
    flags = messages.get("isolation") or {}
    isolation = Isolation(
        separate_uid=uid is not None and messages.get("uid") == uid,
        private_filesystem=bool(flags.get("private_filesystem")),
        no_network=bool(flags.get("no_network")),
        pid_namespace=bool(flags.get("pid_namespace")),
        problems=tuple(str(p) for p in messages.get("problems", ())) + tuple(filter(None, [_why_no_uid()])),
    )
    started = pump.started_at if pump.started_at is not None else ended
    return SandboxResult(
        outcome, returncode,
        bytes(pump.buffers["stdout"]).decode("utf-8", "replace"),
        bytes(pump.buffers["stderr"]).decode("utf-8", "replace"),
        max(0.0, ended - started), cpu, isolation, detail, uid if isolation.separate_uid else None,
    )


def _classify(reason: str, messages: dict, returncode, cpu: float, pump: _Pump, limits: _Limits) -> tuple[str, str]:
    """(outcome, detail). Sandbox failures first: they must never look like the program's fault."""
    if messages.get("error"):
        return "sandbox_error", str(messages["error"])
    if reason == "setup":
        return "sandbox_error", f"the sandbox did not start the program within {SETUP_TIMEOUT_S:g} s"
    if reason == "output" or pump.overflow:
        return "output_limit", f"more than {limits.max_output_bytes} bytes on stdout or stderr"
    if reason == "wall":
        return "timeout", f"wall-time limit of {limits.wall_time_s:g} s"
    if returncode is None:
        return "sandbox_error", "the supervisor ended without reporting the program's exit status"
    if returncode == 0:
        return "ok", ""
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu >= limits.cpu_seconds - 0.05):
        return "timeout", f"CPU-time limit of {limits.cpu_seconds} s"
    if _MEMORY_MARKERS.search(pump.stderr_tail):
        return "memory", f"memory limit of {limits.memory_mb} MB"
    if returncode == -signal.SIGXFSZ:
        return "crash", f"file-size limit of {limits.disk_mb} MB"
    if returncode < 0:
        return "crash", f"killed by {signal.Signals(-returncode).name}"
    return "crash", f"exit status {returncode}"


# --------------------------------------------------------------------------------------------
# Inside the sandbox: L (launcher), S (supervisor), P (program). Standard library only: this file
# runs as a script under `python -I -S`, without the credo package.
# --------------------------------------------------------------------------------------------

_libc = None


def _sys(name: str, *args) -> None:
    """Call a libc function that returns -1 and sets errno on failure; raise OSError on failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _mount(source, target: str, fstype, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else os.fsencode(s))
    try:
        _sys("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    except OSError as exc:
        raise OSError(exc.errno, f"mount {target} ({fstype or 'bind/remount'}): {exc.strerror}") from None


def _prctl(option: int, value: int) -> None:
    _sys("prctl", ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _report(fd: int, **message) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(message) + "\n").encode())


def _unshare() -> tuple[int, list[str]]:
    """Enter new namespaces, as many as allowed; returns (the CLONE_* flags applied, problems).

    Not root: the namespaces are created inside a new user namespace that maps only the caller's
    own uid and gid (unprivileged user namespaces), so there is still no separate uid.
    """
    problems = []
    base = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    user = 0 if os.geteuid() == 0 else CLONE_NEWUSER
    uid, gid = os.geteuid(), os.getegid()
    for flags in (user | base | CLONE_NEWPID, user | base):
        try:
            _sys("unshare", ctypes.c_int(flags))
        except OSError as exc:
            problems.append(f"unshare({flags:#x}): {exc.strerror}")
            continue
        if user:  # identity map: P keeps the caller's uid and loses every capability at exec
            for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        return flags, problems
    return 0, problems


def _launcher(config_json: str) -> None:
    """L: enter the namespaces, fork S (pid 1 of the new pid namespace), wait for it."""
    config = json.loads(config_json)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the caller died: take the whole sandbox down
    if os.getppid() != config["parent_pid"]:
        os._exit(_SETUP_EXIT)
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the run come to L, not to the host's init
        applied, problems = _unshare()
        child = os.fork()
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as a sandbox error
        _report(config["status_fd"], error=f"sandbox launcher: {exc!r}")
        os._exit(_SETUP_EXIT)
    if child == 0:
        try:
            _supervise(config, applied, problems)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller as a sandbox error
            _report(config["status_fd"], error=f"sandbox setup: {exc!r}")
        os._exit(_SETUP_EXIT)
    os.close(config["status_fd"])
    _to_devnull(0, 1, 2)
    while True:  # S, and (without a pid namespace) every orphan of the run: nothing stays a zombie
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)


def _to_devnull(*fds: int) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd)
    os.close(null)


def _supervise(config: dict, applied: int, problems: list[str]) -> None:
    """S: build the private root, fork P, reap every child until P ends, report P's status."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    status = config["status_fd"]
    with open(config["code_path"], "rb") as f:
        code = f.read()  # before the chroot's tmpfs hides the host folder
    root = None
    if applied & CLONE_NEWNS:
        root = _build_root(config, bool(applied & CLONE_NEWPID), problems)
    workdir = (root or "") + config["workdir"]
    _write_program(workdir, code, config["uid"])
    isolation = {"private_filesystem": root is not None, "no_network": bool(applied & CLONE_NEWNET),
                 "pid_namespace": bool(applied & CLONE_NEWPID)}
    _report(status, isolation=isolation, problems=problems)
    program = os.fork()
    if program == 0:
        _exec_program(config, root)
    os.set_inheritable(status, False)
    _to_devnull(0, 1, 2)  # only P and its children hold the output pipes
    while True:  # as pid 1, S also reaps orphans; when S exits the kernel kills the namespace
        try:
            pid, wait_status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            _report(status, error="the program's process disappeared")
            return
        if pid == program:
            _report(status, exit=wait_status, cpu=usage.ru_utime + usage.ru_stime)
            os._exit(0)


def _write_program(workdir: str, code: bytes, uid: int | None) -> None:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "main.py")
    with open(path, "wb") as f:
        f.write(code)
    os.chmod(path, 0o644)
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)


def _build_root(config: dict, pid_ns: bool, problems: list[str]) -> str:
    """In the new mount namespace: host read-only, then a tmpfs root for P's chroot."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    _remount_all_readonly(problems)
    root = config["workdir"]  # an empty host folder; the tmpfs hides it from here on
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    exposed = []
    for path in list(SYSTEM_PATHS) + config["keep"]:
        if not any(path == e or path.startswith(e.rstrip("/") + "/") for e in exposed):
            if _expose(root, path):
                exposed.append(path)
    _make_dev(root)
    disk, uid = int(config["limits"]["disk_mb"]), config["uid"]
    _tmpfs(root + "/tmp", f"size={disk}m,nr_inodes=4096,mode=1777")
    os.makedirs(root + "/var", exist_ok=True)
    os.symlink("/tmp", root + "/var/tmp")
    owner = "" if uid is None else f",uid={uid},gid={uid}"
    _tmpfs(root + config["workdir"], f"size={disk}m,nr_inodes=4096,mode=0700{owner}")
    os.makedirs(root + "/proc", exist_ok=True)
    if pid_ns:  # a fresh /proc shows only the sandbox's processes
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:
        _mount("/proc", root + "/proc", None, MS_BIND | MS_REC)
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return root


def _remount_all_readonly(problems: list[str]) -> None:
    """Remount every mount of this (private) namespace read-only and nosuid, keeping its other flags."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
        for option in fields[5].split(","):
            flags |= _KEPT_MOUNT_FLAGS.get(option, 0)
        try:
            _mount(None, target, None, flags)
        except OSError as exc:
            problems.append(f"read-only remount of {target}: {os.strerror(exc.errno)}")


def _expose(root: str, path: str) -> bool:
    """Make host `path` visible read-only at the same place under `root` (a symlink stays a symlink)."""
    if not os.path.lexists(path) or path == "/":
        return False
    target = root + path
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
        return True
    if not os.path.isdir(path):
        return False
    os.makedirs(target, mode=0o755, exist_ok=True)
    _mount(path, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return True


def _make_dev(root: str) -> None:
    dev = root + "/dev"
    os.makedirs(dev, mode=0o755, exist_ok=True)
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(f"{dev}/{name}", "wb").close()
            _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    _tmpfs(dev + "/shm", "size=16m,nr_inodes=1024,mode=1777")


def _tmpfs(target: str, options: str) -> None:
    os.makedirs(target, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)


def _set_limits(limits: dict, cpu_seconds: int) -> None:
    mb = 1024 * 1024
    for name, value in (
        ("RLIMIT_CPU", (cpu_seconds, cpu_seconds + 1)),  # SIGXCPU, then SIGKILL a second later
        ("RLIMIT_AS", (int(limits["memory_mb"] * mb),) * 2),
        ("RLIMIT_NPROC", (int(limits["max_processes"]),) * 2),
        ("RLIMIT_FSIZE", (int(limits["disk_mb"] * mb),) * 2),
        ("RLIMIT_CORE", (0, 0)),
        ("RLIMIT_NOFILE", (256, 256)),
    ):
        resource.setrlimit(getattr(resource, name), value)


def _exec_program(config: dict, root: str | None) -> None:
    """P: limits, chroot, drop to the sandbox uid, exec the interpreter. Never returns."""
    status, uid, workdir = config["status_fd"], config["uid"], config["workdir"]
    try:
        _set_limits(config["limits"], config["cpu_seconds"])
        if root is not None:
            os.chroot(root)
        os.chdir(workdir)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary can give privileges back
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setresuid, which clears it
        os.closerange(3, status)
        os.closerange(status + 1, 65536)
        os.set_inheritable(status, False)  # closed by exec: the program cannot forge messages
        _report(status, started=True, uid=os.getuid())
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        os.execve(config["python"], [config["python"], "-I", "-S", "main.py"], env)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as a sandbox error
        _report(status, error=f"starting the program: {exc!r}")
    os._exit(_SETUP_EXIT)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == _LAUNCH_FLAG:
    _launcher(sys.argv[2])
