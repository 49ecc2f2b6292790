"""The sandbox against hostile programs. Each must end not ok with a reason, leave the host
unharmed (checked), and leave the sandbox working. Where the OS layers exist, hostile programs
also run with the audit hook off (`hook=False`), to show those layers hold on their own; with
only the fallback layers (no root, no namespaces, no Landlock) the hook must hold alone."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from thinkrl.sandbox import detect as sandbox  # `_iso`, the cached isolation, lives in sandbox.detect
from thinkrl.sandbox import Job, Limits, SandboxPool, isolation, run_python

REPO = Path(__file__).resolve().parents[1]
FAST = Limits(cpu_s=1, wall_s=3)


@pytest.fixture(scope="module")
def iso():
    found = isolation()
    print("sandbox layers:", found.summary(), "| missing:", "; ".join(found.notes) or "nothing")
    return found


def need(hook: bool, available: bool, what: str):
    """Hostile runs without the audit hook only where an OS layer stops them."""
    if not hook and not available:
        pytest.skip(f"needs a {what}, missing here; the same program is tested with the audit hook on")


def token() -> str:
    return f"{random.randrange(10 ** 6, 10 ** 7)}.{random.randrange(10 ** 6, 10 ** 7)}"


def live_processes() -> dict[int, tuple[str, str]]:
    """pid -> (uid line, cmdline) of every live (non-zombie) process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        out[int(name)] = (fields.get("Uid", "").strip(), cmd)
    return out


def leftovers(iso, marker: str | None = None) -> list:
    """Live processes of the sandbox: of a slot uid, running the bootstrap, or carrying marker."""
    uids = {str(u) for u in iso.uids}
    found = []
    for pid, (uid, cmd) in live_processes().items():
        if (uid.split()[:1] and uid.split()[0] in uids) or "thinkrl-sandbox:" in cmd \
                or (marker is not None and marker in cmd):
            found.append((pid, uid, cmd[:120]))
    return found


def assert_healthy(iso):
    ex = run_python("print(6 * 7)")
    assert ex.status == "ok" and ex.stdout == "42\n", ex
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes
    assert leftovers(iso) == []


def assert_failed(ex):
    assert ex.status != "ok", ex
    assert ex.reason and "\n" not in ex.reason, ex


# ---------------------------------------------------------------- normal programs


def test_normal_programs_run(iso):
    ex = run_python("import sys\nname = input()\nprint('hello', name)\nprint('warn', file=sys.stderr)", "world\n")
    assert (ex.status, ex.returncode, ex.stdout, ex.stderr) == ("ok", 0, "hello world\n", "warn\n"), ex
    assert ex.reason == "exited normally" and ex.wall_s > 0
    ex = run_python("import sys; data = sys.stdin.buffer.read(); print(len(data), data[:3])", b"\xff\x00abc" * 50_000)
    assert ex.stdout == "250000 b'\\xff\\x00a'\n", ex
    # the standard library is there (also when the interpreter lives where the sandbox uid cannot go)
    ex = run_python("import collections.abc, dataclasses, fractions, heapq, json, re, threading, typing\n"
                    "from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
                    "t = threading.Thread(target=print, args=(P(1, 2),)); t.start(); t.join()\n"
                    "print(fractions.Fraction(1, 3) * 3, __name__)")
    assert ex.stdout == "P(x=1, y=2)\n1 __main__\n", ex


def test_failures_have_statuses_and_reasons(iso):
    cases = [
        ("1 / 0", "error", "exit code 1: ZeroDivisionError: division by zero"),
        ("def f(:", "error", "SyntaxError: invalid syntax"),
        ("import sys; sys.exit(3)", "error", "exit code 3"),
        ("import ctypes", "refused", "refused: importing ctypes is not allowed"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "refused",
         "refused: signalling other processes is not allowed (os.kill)"),
    ]
    for code, status, text in cases:
        ex = run_python(code, limits=FAST)
        assert ex.status == status and text in ex.reason, (code, ex)
    # without the hook the signal is delivered
    ex = run_python(cases[-1][0], limits=FAST, audit_hook=False)
    assert (ex.status, ex.returncode, ex.reason) == ("killed", -signal.SIGSEGV, "killed by SIGSEGV"), ex
    assert_healthy(iso)


def test_misuse_raises():
    with pytest.raises(TypeError):
        run_python(b"print(1)")
    with pytest.raises(TypeError):
        run_python("print(1)", stdin=5)
    with pytest.raises(ValueError):
        Limits(cpu_s=0)
    with pytest.raises(ValueError):
        Limits(memory_mb=8)
    with pytest.raises(ValueError):
        SandboxPool(workers=0)


# ---------------------------------------------------------------- hostile programs


@pytest.mark.parametrize("hook", [True, False])
def test_fork_bomb(iso, hook):
    need(hook, iso.contains_processes, "dedicated uid or PID namespace")
    t = time.monotonic()
    ex = run_python("import os\nwhile True:\n    os.fork()", limits=Limits(cpu_s=1, wall_s=2), audit_hook=hook)
    assert_failed(ex)
    assert ex.status == "refused" if hook else ex.status in ("error", "timeout", "killed"), ex
    # one that shrugs off failed forks and keeps every process it got spinning
    ex = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                    limits=Limits(cpu_s=1, wall_s=2), audit_hook=hook)
    assert_failed(ex)
    assert ex.status == "timeout", ex
    assert time.monotonic() - t < 5
    assert_healthy(iso)


def test_infinite_loop_and_sleep(iso):
    t = time.monotonic()
    ex = run_python("while True:\n    pass", limits=Limits(cpu_s=1, wall_s=5))
    assert ex.status == "timeout" and "CPU" in ex.reason, ex
    ex2 = run_python("import time\nwhile True:\n    time.sleep(1)", limits=Limits(cpu_s=5, wall_s=1))
    assert ex2.status == "timeout" and "wall-clock" in ex2.reason, ex2
    assert time.monotonic() - t < 4.5
    assert_healthy(iso)


def test_allocating_10_gb(iso):
    ex = run_python("x = bytearray(10 * 2 ** 30)\nprint(len(x))", limits=Limits(memory_mb=256))
    assert (ex.status, ex.stdout) == ("memory", ""), ex
    assert "memory limit of 256 MB" in ex.reason
    ex = run_python("x = []\nwhile True:\n    x.append(bytearray(2 ** 20))", limits=Limits(memory_mb=256, cpu_s=5))
    assert ex.status == "memory", ex
    assert_healthy(iso)


@pytest.mark.parametrize("hook", [True, False])
def test_writing_into_home_and_working_tree(iso, hook):
    need(hook, iso.write_protection, "Landlock or dedicated uid")
    name = f"thinkrl-sandbox-pwned-{token()}.txt"
    targets = [Path(os.environ.get("HOME") or Path.home()) / name, REPO / name, REPO / "src" / "thinkrl" / name]
    try:
        for target in targets:
            for code in (f"open({str(target)!r}, 'w').write('pwned')",
                         f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
                         f"import pathlib\npathlib.Path({str(target)!r}).write_text('pwned')"):
                ex = run_python(code, audit_hook=hook)
                assert_failed(ex)
                assert not target.exists(), (target, ex)
        # nor by renaming its own file out of its directory
        ex = run_python(f"import os\nopen('x', 'w').write('pwned')\nos.rename('x', {str(targets[1])!r})",
                        audit_hook=hook)
        assert_failed(ex)
        assert not targets[1].exists()
    finally:
        for target in targets:
            if target.exists():
                target.unlink()
    assert_healthy(iso)


@pytest.mark.parametrize("hook", [True, False])
def test_network_to_localhost(iso, hook):
    need(hook, iso.network_namespace, "network namespace")
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        tcp.setblocking(False)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        code = f"""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"leak", ("127.0.0.1", {udp.getsockname()[1]}))
    print("udp sent")
except OSError as e:
    print("udp:", e)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(2)
s.connect(("127.0.0.1", {tcp.getsockname()[1]}))
s.sendall(b"leak")
print("tcp connected")
"""
        ex = run_python(code, audit_hook=hook)
        assert_failed(ex)
        assert "tcp connected" not in ex.stdout and "udp sent" not in ex.stdout, ex
        with pytest.raises(BlockingIOError):
            tcp.accept()
        with pytest.raises(BlockingIOError):
            udp.recvfrom(100)
    finally:
        tcp.close()
        udp.close()
    assert_healthy(iso)


@pytest.mark.parametrize("hook", [True, False])
def test_network_to_outside(iso, hook):
    need(hook, iso.network_namespace, "network namespace")
    for host in ("1.1.1.1", "10.255.255.1"):
        code = f"import socket\ns = socket.create_connection(({host!r}, 80), timeout=1)\nprint('connected')"
        ex = run_python(code, limits=FAST, audit_hook=hook)
        assert_failed(ex)
        assert "connected" not in ex.stdout
        # refused by the hook, Landlock or the empty network namespace: at once, not by timing out
        assert ex.status in ("refused", "error") and "timed out" not in ex.reason, ex
    ex = run_python("import socket\nprint(socket.gethostbyname('example.com'))", limits=FAST, audit_hook=hook)
    assert_failed(ex)
    assert_healthy(iso)


@pytest.mark.parametrize("hook", [True, False])
def test_parent_environment_secrets(iso, hook, monkeypatch):
    need(hook, iso.dedicated_uids or iso.user_namespace, "dedicated uid or user namespace")
    secret = "thinkrl-secret-" + token()
    monkeypatch.setenv("THINKRL_SECRET", secret)
    hostile = ["import os\nprint(os.environ['THINKRL_SECRET'])",
               f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",
               "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())"]
    for code in hostile:
        ex = run_python(code, audit_hook=hook)
        assert_failed(ex)
        assert secret not in ex.stdout + ex.stderr
    # what it does see: the scrubbed environment only
    ex = run_python("import json, os\nprint(json.dumps(dict(os.environ)))", audit_hook=hook)
    env = json.loads(ex.stdout)
    assert secret not in ex.stdout
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONDONTWRITEBYTECODE",
                        "PYTHONIOENCODING", "THINKRL_SANDBOX_RUN"}, env
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin" and env["HOME"] == env["TMPDIR"]
    assert_healthy(iso)


@pytest.mark.parametrize("hook", [True, False])
def test_signalling_the_parent(iso, hook):
    need(hook, iso.dedicated_uids or iso.pid_namespace or iso.landlock_signals,
         "dedicated uid, PID namespace or Landlock signal scoping")
    received = []
    old = signal.signal(signal.SIGTERM, lambda *a: received.append(a))
    me = os.getpid()
    try:
        for code in (f"import os, signal\nos.kill({me}, signal.SIGTERM)",
                     f"import os, signal\nos.kill({me}, signal.SIGKILL)",
                     f"import os, signal\nos.killpg(os.getpgid({me}), signal.SIGTERM)",
                     "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)\nos.kill(os.getppid(), signal.SIGKILL)"):
            ex = run_python(code, audit_hook=hook)
            if hook or not iso.pid_namespace or "getppid" not in code:
                assert_failed(ex)
            # else its parent is the PID namespace's own init, which ignores it: harmless
        time.sleep(0.1)
        assert received == []
    finally:
        signal.signal(signal.SIGTERM, old)
    assert_healthy(iso)


def test_printing_a_gigabyte(iso):
    code = "import sys\nchunk = 'x' * 2 ** 20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
    t = time.monotonic()
    ex = run_python(code, limits=Limits(max_output_bytes=100_000))
    assert ex.status == "output_limit" and "100,000 bytes" in ex.reason, ex
    assert len(ex.stdout) == 100_000 and set(ex.stdout) == {"x"}
    ex = run_python("import sys\nwhile True:\n    sys.stderr.write('e' * 4096)", limits=Limits(max_output_bytes=50_000))
    assert ex.status == "output_limit" and len(ex.stderr) <= 50_000, ex
    assert time.monotonic() - t < 5
    assert_healthy(iso)


@pytest.mark.parametrize("hook", [True, False])
def test_deleting_files_outside(iso, hook, tmp_path):
    need(hook, iso.write_protection, "Landlock or dedicated uid")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for code in (f"import os\nos.remove({str(victim)!r})",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                 f"import os\nos.rename({str(victim)!r}, {str(victim) + '.moved'!r})",
                 f"open({str(victim)!r}, 'w').close()"):
        ex = run_python(code, audit_hook=hook)
        assert_failed(ex)
        assert victim.read_text() == "precious"
    assert_healthy(iso)


def test_private_directory_is_removed(iso):
    code = ("import os, tempfile\nopen('data.txt', 'w').write('x' * 1000)\n"
            "f = tempfile.NamedTemporaryFile(delete=False)\nf.write(b'y')\nf.close()\n"
            "os.makedirs('a/b')\nos.chmod('a', 0)\n"  # even a directory it made unreadable
            "print(os.getcwd(), os.environ['HOME'], os.path.dirname(f.name))")
    ex = run_python(code)
    assert ex.ok, ex
    cwd, home, tmpdir = ex.stdout.split()
    assert cwd == home == tmpdir and Path(cwd).name.startswith("thinkrl-sandbox-")
    assert Path(cwd).parent == Path(tempfile.gettempdir()).resolve()
    assert not Path(cwd).exists()
    assert_healthy(iso)


def test_no_leftover_processes(iso):
    """A background child and a double-forked daemon in its own session are killed when the
    run ends (a dedicated uid, a PID namespace, or the process group and environment marker)."""
    mark = token()
    sleep = shutil.which("sleep")
    code = f"""
import os, subprocess, time
subprocess.Popen([{sleep!r}, {mark!r}])
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv({sleep!r}, ["sleep", {mark!r}])
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(0.3)
alive = 0
for d in os.listdir("/proc"):
    try:
        alive += d.isdigit() and {mark!r} in open(f"/proc/{{d}}/cmdline").read()
    except OSError:
        pass
print("alive", alive)
"""
    ex = run_python(code, audit_hook=False)
    assert ex.stdout == "alive 2\n", ex  # both were running when the program ended
    assert leftovers(iso, mark) == []
    # with the hook, they are not even started
    ex = run_python(code, audit_hook=True)
    assert ex.status == "refused", ex
    assert_healthy(iso)


def test_pool_runs_in_parallel(iso):
    with SandboxPool(workers=2) as pool:
        assert pool.workers == 2
        run_python("pass")  # warm
        t = time.monotonic()
        results = pool.map([Job("import time\ntime.sleep(0.5)\nprint('done')")] * 4)
        dt = time.monotonic() - t
    assert [r.stdout for r in results] == ["done\n"] * 4, results
    assert 0.95 < dt < 1.6, dt
    with SandboxPool() as pool:
        assert pool.workers == len(os.sched_getaffinity(0))
        results = pool.map(["print(1)", Job("print(input())", "x"), ("import sys; sys.exit(2)",)])
    assert [r.status for r in results] == ["ok", "ok", "error"] and results[1].stdout == "x\n"
    assert_healthy(iso)


def test_claimed_layers_are_real(iso, tmp_path):
    """Each layer `isolation()` reports is checked from inside (audit hook off)."""
    assert iso.root == (os.geteuid() == 0)
    probe = f"thinkrl-sandbox-layer-{token()}"
    code = f"""
import json, os, socket
out = {{"uid": os.getuid(), "pid": os.getpid(), "ifaces": [n for _, n in socket.if_nameindex()]}}
try:
    open("/tmp/{probe}", "w").close()
    out["tmp_write"] = True
except OSError:
    out["tmp_write"] = False
print(json.dumps(out))
"""
    try:
        ex = run_python(code, audit_hook=False)
        seen = json.loads(ex.stdout)
        if iso.dedicated_uids:
            assert seen["uid"] in iso.uids and seen["uid"] != 0
        else:
            assert seen["uid"] == os.getuid()
        if iso.network_namespace:
            assert seen["ifaces"] == ["lo"]
        if iso.pid_namespace:
            assert seen["pid"] == 2  # init is 1, the program its child
        if iso.landlock_writes:
            assert seen["tmp_write"] is False
    finally:
        if Path("/tmp", probe).exists():
            Path("/tmp", probe).unlink()
    assert "audit hook (per run)" in iso.layers()


def test_fallback_layers_alone(iso, monkeypatch, tmp_path):
    """With none of the OS layers (no dedicated uid, namespaces or Landlock: a non-root user on
    a locked-down kernel), rlimits, the process group and the audit hook must still hold."""
    bare = dataclasses.replace(iso, dedicated_uids=False, uids=(), unshare_flags=0, network_namespace=False,
                               pid_namespace=False, ipc_namespace=False, user_namespace=False, landlock_abi=0)
    monkeypatch.setattr(sandbox, "_iso", bare)
    monkeypatch.setenv("THINKRL_SECRET", "fallback-secret")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    home_target = Path(os.environ.get("HOME") or Path.home()) / f"thinkrl-sandbox-pwned-{token()}"
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    tcp.setblocking(False)
    hostile = [  # (one fork, not a bomb: as root nothing else would stop one here)
        "import os\nos.fork()",
        "import subprocess\nsubprocess.run(['true'])",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()",
        f"open({str(home_target)!r}, 'w').write('x')",
        f"open({str(REPO / home_target.name)!r}, 'w').write('x')",
        f"import os\nos.remove({str(victim)!r})",
        f"import socket\nsocket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1)",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('1.1.1.1', 53))",
        f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)",
        f"print(open('/proc/{os.getpid()}/environ').read())",
        "import ctypes",
        "open('/proc/self/mem', 'wb')",
        "import os\nos.symlink('/', 'root')",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
        # reconfigure the hook through its frame, reached from a refusal's traceback
        f"try:\n    open({str(home_target)!r}, 'w')\nexcept PermissionError as e:\n    tb = e.__traceback__\n"
        "    while tb.tb_next:\n        tb = tb.tb_next\n    hook = tb.tb_frame.f_locals\n"
        "    try:\n        hook['_watched'].clear()\n    except AttributeError:\n        pass\n"
        "    hook['_norm'].__code__ = (lambda path, dir_fd=None: ('/tmp', True)).__code__\n"
        f"open({str(home_target)!r}, 'w').write('x')",
    ]
    try:
        for code in hostile:
            ex = run_python(code, limits=FAST)
            assert ex.status == "refused" and ex.reason.startswith("refused: "), (code, ex)
            assert "fallback-secret" not in ex.stdout + ex.stderr
        assert victim.read_text() == "precious"
        assert not home_target.exists() and not (REPO / home_target.name).exists()
        with pytest.raises(BlockingIOError):
            tcp.accept()
        # but ordinary work inside its own directory goes on
        ex = run_python("import os, shutil\nos.makedirs('d/e')\nopen('d/e/f', 'w').write('1')\n"
                        "os.rename('d/e/f', 'd/g')\nshutil.rmtree('d')\nprint(os.listdir('.'))")
        assert ex.stdout == "['main.py']\n", ex
    finally:
        tcp.close()
        for p in (home_target, REPO / home_target.name):
            if p.exists():
                p.unlink()
    assert_healthy(iso)


def test_a_layer_that_fails_fails_closed(iso, monkeypatch):
    broken = dataclasses.replace(iso, unshare_flags=0x1)  # not a namespace: unshare refuses it
    monkeypatch.setattr(sandbox, "_iso", broken)
    ex = run_python("print('ran')")
    assert ex.status == "sandbox_error" and "namespaces" in ex.reason, ex
    assert "ran" not in ex.stdout
    monkeypatch.undo()
    # a program cannot pose as a sandbox failure
    ex = run_python("import sys\nsys.stderr.write('thinkrl-sandbox: setup failed [uid] no\\n')\nsys.exit(125)")
    assert (ex.status, ex.returncode) == ("error", 125), ex
