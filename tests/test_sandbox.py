"""The code sandbox under attack: an adversarial corpus (issue 5, item 3), the verifier, `combine`.

Every corpus program runs with small limits (wall 2 s, CPU 2 s, 256 MB, 16 processes) and the test
asserts: its classified outcome; that the call returned within the wall limit + MARGIN_S; that no
process of the sandbox uid is alive afterwards; that host canaries are untouched (files the program
tries to create in the host /tmp, $HOME, the repo and /etc; a world-writable folder of victims it
tries to change or delete); and that the TCP and UDP listeners opened here received nothing.

Guarantees are asserted only where the run reports them enforced (`SandboxResult.isolation`):
without root or namespaces a program that needs one is skipped, with the reason measured at run
time (the isolation the machine gave), never unconditionally.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from credo.errors import CredoError
from credo.rewards import code as code_module
from credo.rewards.code import combine, extract_code, score_program
from credo.rewards.sandbox import SandboxResult, run_sandboxed

LIMITS = dict(wall_time_s=2.0, cpu_time_s=2.0, memory_mb=256, max_output_bytes=64_000, max_processes=16)
MARGIN_S = 2.0
REPO = Path(__file__).resolve().parents[1]


def live_processes_of(uid: int) -> list[int]:
    """Independent of the sandbox's own scan: pids whose real or effective uid is `uid`, not zombies."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if uid in [int(x) for x in fields.get("Uid", "").split()] and not fields.get("State", "").strip().startswith("Z"):
            pids.append(int(name))
    return pids


@pytest.fixture(scope="module")
def isolation():
    """What this machine enforces, measured once by running a trivial program."""
    result = run_sandboxed("print('ready')", **LIMITS)
    assert result.outcome == "ok" and result.stdout == "ready\n", result
    print(f"\nsandbox isolation on this machine: {result.isolation}")
    return result.isolation


class Host:
    """Things outside the sandbox that no program may change or reach."""

    def __init__(self):
        tag = secrets.token_hex(6)
        self.canaries = [Path(f"/tmp/credo_canary_{tag}"), Path.home() / f"credo_canary_{tag}",
                         REPO / f"credo_canary_{tag}", Path(f"/etc/credo_canary_{tag}")]
        # A world-writable, non-sticky folder: without isolation, any uid could change it.
        self.victim_dir = Path(f"/var/tmp/credo_victims_{tag}")
        self.victim_dir.mkdir()
        self.victim_dir.chmod(0o777)
        self.victim = self.victim_dir / "victim.txt"
        self.victim.write_text(f"victim {tag}\n")
        self.victim.chmod(0o666)
        self.secret_token = f"secret-{secrets.token_hex(8)}"
        self.secret = self.victim_dir / "secret.txt"
        self.secret.write_text(self.secret_token)
        self.secret.chmod(0o644)  # world-readable: only the private filesystem hides it
        self.before = self._snapshot()
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)

    def _snapshot(self):
        return {p.name: (p.read_bytes(), p.stat().st_mode) for p in self.victim_dir.iterdir()}

    def header(self) -> str:
        """Python assignments prepended to each program: what it will attack."""
        return (
            f"CANARIES = {[str(c) for c in self.canaries]!r}\n"
            f"VICTIM_DIR = {str(self.victim_dir)!r}\nVICTIM = {str(self.victim)!r}\n"
            f"SECRET = {str(self.secret)!r}\nREPO_FILE = {str(REPO / 'pyproject.toml')!r}\n"
            f"TCP_PORT = {self.tcp.getsockname()[1]}\nUDP_PORT = {self.udp.getsockname()[1]}\n"
            f"TEST_PID = {os.getpid()}\n"
        )

    def assert_untouched(self, result: SandboxResult) -> None:
        for canary in self.canaries:
            assert not canary.exists(), f"the program created {canary}"
        assert self.victim_dir.stat().st_mode & 0o7777 == 0o777
        assert self._snapshot() == self.before, "the victim folder changed"
        with pytest.raises(BlockingIOError):
            self.tcp.accept()  # no connection was ever made
        with pytest.raises(BlockingIOError):
            self.udp.recvfrom(100)
        if result.uid is not None:
            assert live_processes_of(result.uid) == [], "a sandbox process survived"

    def close(self):
        self.tcp.close()
        self.udp.close()
        shutil.rmtree(self.victim_dir, ignore_errors=True)
        for canary in self.canaries:
            if canary.is_file():
                canary.unlink()


@pytest.fixture
def host():
    h = Host()
    yield h
    h.close()


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    expected: frozenset
    needs: tuple = ()  # Isolation flags this program's assertions depend on
    stdin: str = ""
    check: Callable[[SandboxResult, Host], None] | None = None


def _no_secret(result, host):
    assert host.secret_token not in result.stdout + result.stderr


def _no_shadow(result, host):
    assert "root:" not in result.stdout and "daemon:" not in result.stdout


def _no_repo_text(result, host):
    assert "[project]" not in result.stdout


def _nothing_killed(result, host):
    assert "killed" not in result.stdout.replace(" not killed", "")


def _printed(text):
    def check(result, host):
        assert result.stdout == text, (result.stdout, result.stderr[-500:])
    return check


CORPUS = [
    Case("infinite_loop", "while True:\n    pass\n", frozenset({"timeout"})),
    Case("sleep_forever", "import time\ntime.sleep(1000)\n", frozenset({"timeout"})),
    Case("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
         frozenset({"timeout"}), needs=("separate_uid",)),
    Case("thread_bomb", "import threading, time\nfor _ in range(10000):\n"
         "    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()\n",
         frozenset({"crash", "memory"}), needs=("separate_uid",)),
    Case("alloc_10_gb", "x = bytearray(10 * 1024 ** 3)\n", frozenset({"memory"})),
    Case("alloc_growing", "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))\n",
         frozenset({"memory"})),
    Case("write_outside",
         "import os\nfor path in CANARIES + [os.path.join(VICTIM_DIR, 'new.txt'), VICTIM]:\n"
         "    try:\n        with open(path, 'a') as f:\n            f.write('pwned')\n        print('wrote', path)\n"
         "    except OSError as exc:\n        print(path, exc.strerror)\n",
         frozenset({"ok"}), needs=("private_filesystem",)),
    Case("delete_outside",
         "import os, shutil\nfor act in (lambda: os.remove(VICTIM), lambda: os.rename(VICTIM, VICTIM + '.x'),\n"
         "            lambda: os.chmod(VICTIM_DIR, 0o700), lambda: shutil.rmtree(VICTIM_DIR)):\n"
         "    try:\n        act()\n    except OSError as exc:\n        print(exc.strerror)\n",
         frozenset({"ok"}), needs=("private_filesystem",)),
    Case("read_shadow", "print(open('/etc/shadow').read())\n", frozenset({"crash"}),
         needs=("separate_uid",), check=_no_shadow),
    Case("read_world_readable_secret", "print(open(SECRET).read())\n", frozenset({"crash"}),
         needs=("private_filesystem",), check=_no_secret),
    Case("read_repo", "print(open(REPO_FILE).read())\n", frozenset({"crash"}),
         needs=("private_filesystem",), check=_no_repo_text),
    Case("connect_localhost", "import socket\nsocket.create_connection(('127.0.0.1', TCP_PORT), timeout=1)\n",
         frozenset({"crash"}), needs=("no_network",)),
    Case("udp_localhost", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.sendto(b'x', ('127.0.0.1', UDP_PORT))\n", frozenset({"crash"}), needs=("no_network",)),
    Case("connect_public_ip", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n",
         frozenset({"crash"}), needs=("no_network",)),
    Case("kill_parent",
         "import os, signal\nfor pid in (os.getppid(), 1, TEST_PID):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
         "        print('killed', pid)\n    except OSError as exc:\n        print(pid, 'not killed:', exc.strerror)\n"
         "os.kill(os.getppid(), signal.SIGKILL)\n",
         frozenset({"crash"}), needs=("separate_uid",), check=_nothing_killed),
    Case("kill_everyone",  # kill(-1) reaches only the sandbox's own processes: here, a sleeping child
         "import os, signal, time\nif os.fork() == 0:\n    time.sleep(100)\nos.kill(-1, signal.SIGKILL)\n"
         "print('still here')\n",
         frozenset({"ok"}), needs=("separate_uid",), check=_printed("still here\n")),
    Case("daemon_double_fork_setsid",
         "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n"
         "    os._exit(0)\nprint('parent done')\n",
         frozenset({"ok"}), needs=("kills_all",), check=_printed("parent done\n")),
    Case("os_system_background", "import os\nos.system('sleep 100 &')\nprint('done')\n",
         frozenset({"ok"}), needs=("kills_all",), check=_printed("done\n")),
    Case("huge_stdout", "while True:\n    print('x' * 1000)\n", frozenset({"output_limit"})),
    Case("huge_stderr", "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)\n", frozenset({"output_limit"})),
    # Python-to-Python calls do not use the C stack in 3.11; recursion through map() does: SIGSEGV.
    Case("deep_recursion", "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(n):\n    return list(map(f, [n + 1]))\nf(0)\n",
         frozenset({"crash"})),
    Case("regex_bomb", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')\n", frozenset({"timeout"})),
    Case("int_power_bomb", "x = 9 ** 9 ** 9\nprint(x % 10)\n", frozenset({"timeout", "memory"})),
    Case("stdin_forever", "import sys\nwhile True:\n    sys.stdin.read()\n", frozenset({"timeout"}), stdin="data\n"),
    Case("disk_bomb", "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * 2 ** 20)\n",
         frozenset({"crash"}), needs=("private_filesystem",)),
    Case("inode_bomb", "import os\nfor i in range(10 ** 6):\n    open(f'f{i}', 'w').close()\n",
         frozenset({"crash"}), needs=("private_filesystem",)),
    Case("forge_status_pipe", "import os\nfor fd in range(3, 64):\n    os.write(fd, b'{\"exit\": 0}\\n')\n",
         frozenset({"crash"})),
    Case("setuid_root", "import os\nos.setuid(0)\n", frozenset({"crash"}), needs=("separate_uid",)),
    Case("host_processes_hidden", "import os\nprint(TEST_PID in [int(p) for p in os.listdir('/proc') if p.isdigit()])\n",
         frozenset({"ok"}), needs=("pid_namespace",), check=_printed("False\n")),
    Case("correct_program", "print(sum(map(int, input().split())))\n", frozenset({"ok"}), stdin="2 3\n",
         check=_printed("5\n")),
]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 15 and len({c.name for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_adversarial_program(case: Case, host: Host, isolation):
    missing = [flag for flag in case.needs if not getattr(isolation, flag)]
    if missing:
        pytest.skip(f"not enforced on this machine: {missing} ({'; '.join(isolation.problems) or 'not root'})")
    started = time.monotonic()
    result = run_sandboxed(host.header() + case.source, stdin=case.stdin, **LIMITS)
    elapsed = time.monotonic() - started
    assert result.outcome in case.expected, (result.outcome, result.detail, result.stderr[-1500:])
    assert elapsed <= LIMITS["wall_time_s"] + MARGIN_S, elapsed
    host.assert_untouched(result)
    if case.check is not None:
        case.check(result, host)


def test_work_folder_is_private_home_and_deleted(isolation):
    program = ("import os, tempfile\nopen('here.txt', 'w').write('x')\n"
               "print(os.getcwd(), os.environ['HOME'], tempfile.gettempdir())\n")
    result = run_sandboxed(program, **LIMITS)
    assert result.outcome == "ok", result
    cwd, home, tmp = result.stdout.split()
    assert cwd == home == tmp
    assert not os.path.exists(cwd), "the work folder was not deleted"


def test_concurrent_runs_use_distinct_uids(isolation):
    if not isolation.separate_uid:
        pytest.skip(f"no separate uid on this machine ({'; '.join(isolation.problems) or 'not root'})")
    results = [None] * 3

    def go(i):
        results[i] = run_sandboxed("import os, time\ntime.sleep(0.3)\nprint(os.getuid())", **LIMITS)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.outcome == "ok" for r in results), results
    uids = {int(r.stdout) for r in results}
    assert len(uids) == 3 and uids == {r.uid for r in results}


def test_a_broken_sandbox_is_a_sandbox_error_not_a_program_outcome():
    result = run_sandboxed("print(1)", python="/nonexistent/bin/python3", **LIMITS)
    assert result.outcome == "sandbox_error" and result.detail, result


def test_require_refuses_weaker_isolation(isolation):
    result = run_sandboxed("print(1)", require=("separate_uid", "no_network"), **LIMITS)
    expected = "ok" if isolation.separate_uid and isolation.no_network else "sandbox_error"
    assert result.outcome == expected, result
    with pytest.raises(ValueError, match="unknown isolation"):
        run_sandboxed("print(1)", require=("magic",))
    with pytest.raises(ValueError, match="wall_time_s"):
        run_sandboxed("print(1)", wall_time_s=0)


# ---- the code verifier -------------------------------------------------------------------------

ADD_TESTS = [("2 3\n", "5\n"), ("10 -4\n", "6")]


def test_score_program_ok_and_wrong():
    score, outcome = score_program("```python\nprint(sum(map(int, input().split())))\n```", ADD_TESTS, **LIMITS)
    assert (score.reward, score.correct, score.formatted, outcome) == (1.0, True, True, "ok")
    score, outcome = score_program("<answer>print(5)</answer>", ADD_TESTS, **LIMITS)  # right once only
    assert (score.reward, score.correct, score.formatted, outcome) == (0.0, False, True, "wrong")
    score, outcome = score_program("I cannot write code.", ADD_TESTS, **LIMITS)
    assert (score.reward, score.formatted, outcome) == (0.0, False, "wrong")


def test_score_program_passes_the_sandbox_outcome_through():
    score, outcome = score_program("```python\nwhile True:\n    pass\n```", ADD_TESTS, **LIMITS)
    assert (score.reward, outcome) == (0.0, "timeout")
    score, outcome = score_program("```python\nraise SystemExit(3)\n```", ADD_TESTS, **LIMITS)
    assert outcome == "crash"


def test_score_program_reports_a_sandbox_error_as_such(monkeypatch):
    score, outcome = score_program("```python\nprint(5)\n```", ADD_TESTS, error_reward=-0.5,
                                   python="/nonexistent/bin/python3", **LIMITS)
    assert (score.reward, score.correct, outcome) == (-0.5, False, "sandbox_error")
    broken = SandboxResult("sandbox_error", None, "", "", 0.0, detail="unshare failed")
    monkeypatch.setattr(code_module, "run_sandboxed", lambda *a, **k: broken)
    assert score_program("```python\nprint(5)\n```", ADD_TESTS)[1] == "sandbox_error"


def test_score_program_never_raises_on_hostile_text():
    for text in [None, "", "```", "```python\n", "<answer>", "\udcff```python\nprint(5)\n```", "x" * 10**6]:
        score, outcome = score_program(text, [("", "5")], **LIMITS)
        assert outcome in ("ok", "wrong", "crash") and score.reward in (0.0, 1.0)
    with pytest.raises(CredoError, match="tests"):
        score_program("```python\nprint(1)\n```", [])


@pytest.mark.parametrize("text, code", [
    ("a\n```python\nx = 1\n```\nb\n```python\nprint(2)\n```", "print(2)\n"),  # the last python fence
    ("```py\nprint(1)\n```", "print(1)\n"),
    ("<answer>\n```python\nprint(3)\n```\n</answer>", "print(3)\n"),
    ("<answer> print(4) </answer>", "print(4)"),
    ("```\nprint(5)\n```", "print(5)\n"),
    ("<answer></answer>", None),
    ("print(6)", None),
])
def test_extract_code(text, code):
    assert extract_code(text) == code


# ---- combine -----------------------------------------------------------------------------------


def test_combine_weighted_sum_and_failures():
    def good(text):
        return len(text)

    def raises(text):
        raise ValueError("bug in a reward function")

    def invalid(text):
        return float("nan")

    reward = combine([2.0, 0.5, 1.0], [good, raises, invalid], error_reward=-1.0)
    assert reward("abc") == 2.0 * 3 + 0.5 * -1.0 + 1.0 * -1.0
    assert reward.counts["raised"] == 1 and reward.counts["invalid"] == 1 and reward.counts["raised/raises"] == 1
    assert combine([1.0], [lambda text: True])("x") == 0.0  # a bool is not a reward


def test_combine_times_out_a_hung_function_and_stops_calling_it():
    release = threading.Event()

    def hangs(text):
        release.wait(30)
        return 1.0

    reward = combine([1.0, 2.0], [lambda text: 0.5, hangs], error_reward=-1.0, timeout_s=0.2, max_hung=1)
    try:
        started = time.monotonic()
        assert reward("x") == 0.5 - 2.0
        assert time.monotonic() - started < 2.0
        assert reward.counts["timeout"] == 1 and reward.hung_threads == 1
        assert reward("x") == 0.5 - 2.0  # not called again while its thread is still stuck
        assert reward.counts["skipped_hung"] == 1
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while reward.hung_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reward.hung_threads == 0


@pytest.mark.parametrize("args", [
    ([1.0], []), ([1.0, 2.0], [len]), ([float("nan")], [len]), (["1"], [len]), ([1.0], ["not callable"]),
])
def test_combine_rejects_bad_configuration(args):
    with pytest.raises(CredoError):
        combine(*args)
