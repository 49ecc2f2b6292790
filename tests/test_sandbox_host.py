"""The sandbox against programs that look at the host or fill its disk: a program must not read
other processes' /proc entries (command lines, working directories, fd links), by any route,
and must not write more than `Limits.max_disk_mb` in its directory. Each is tested with all the
layers here, with the OS layers alone (audit hook off, where detected) and with the audit hook
alone (no uid, namespaces or Landlock: where the machine offers none, it is the only barrier)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from thinkrl.sandbox import detect as sandbox  # `_iso`, the cached isolation, lives in sandbox.detect
from thinkrl.sandbox import Limits, isolation, run_python

FAST = Limits(cpu_s=2, wall_s=5)


@pytest.fixture(scope="module")
def iso():
    return isolation()


def bare(iso):
    """No dedicated uid, namespaces or Landlock: only the always-on layers and the audit hook."""
    return dataclasses.replace(iso, dedicated_uids=False, uids=(), unshare_flags=0, network_namespace=False,
                               pid_namespace=False, ipc_namespace=False, user_namespace=False, landlock_abi=0,
                               mount_namespace=False, private_proc=False)


def layers(request, iso, monkeypatch, mode: str) -> bool:
    """Sets up the isolation for `mode`; returns whether the audit hook is on."""
    if mode == "os layers alone" and not iso.private_proc:
        pytest.skip(f"no private /proc here ({'; '.join(iso.notes) or 'needs a mount and a PID namespace'}); "
                    "the same program is tested with the audit hook on")
    if mode == "audit hook alone":
        monkeypatch.setattr(sandbox, "_iso", bare(iso))
    return mode != "os layers alone"


MODES = ["all layers", "os layers alone", "audit hook alone"]

SNOOP = r"""
import os
pids = PIDS
def show(how, f):
    try:
        print(how, "->", repr(f()))
    except Exception as e:
        print(how, "-> failed:", type(e).__name__)
def read_at(dir_fd, name):
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    return os.read(fd, 65536).replace(b"\0", b" ").decode("utf-8", "replace")
proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
for pid in pids:
    show("dir_fd cmdline", lambda: read_at(proc, "%d/cmdline" % pid))
    show("dir_fd environ", lambda: read_at(proc, "%d/environ" % pid))
    show("root fd cmdline", lambda: read_at(os.open("proc", os.O_RDONLY, dir_fd=root), "%d/cmdline" % pid))
    show("self/root", lambda: open("/proc/self/root/proc/%d/cmdline" % pid).read())
    show("dev/fd", lambda: open("/dev/fd/../../%d/cmdline" % pid).read())
    show("self/fd", lambda: open("/proc/self/fd/%d/%d/cmdline" % (proc, pid)).read())
    show("readlink cwd", lambda: os.readlink("/proc/%d/cwd" % pid))
    show("readlink cwd dir_fd", lambda: os.readlink("%d/cwd" % pid, dir_fd=proc))
    show("readlink fd", lambda: [os.readlink("/proc/%d/fd/%s" % (pid, n)) for n in os.listdir("/proc/%d/fd" % pid)])
    show("listdir fd", lambda: os.listdir(os.open("%d/fd" % pid, os.O_RDONLY, dir_fd=proc)))
print("listed", sorted(int(n) for n in os.listdir(proc) if n.isdigit()))
"""


@pytest.mark.parametrize("mode", MODES)
def test_program_cannot_read_host_process_cmdline_via_dir_fd(request, iso, monkeypatch, tmp_path, mode):
    """os.open("/proc") then os.open(f"{pid}/cmdline", dir_fd=...) (and the other routes: /proc/self/root,
    /dev/fd/.., readlink of cwd and fd links, listdir on an fd) show nothing of the scorer's process."""
    hook = layers(request, iso, monkeypatch, mode)
    monkeypatch.chdir(tmp_path)  # the scorer's cwd: a unique name, also behind an fd it holds open
    held = open(tmp_path / "held-open.txt", "w")
    me = os.getpid()
    cmdline = Path(f"/proc/{me}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    try:
        ex = run_python(SNOOP.replace("PIDS", repr([me, os.getppid()])), limits=FAST, audit_hook=hook)
    finally:
        held.close()
    assert ex.status in ("ok", "refused"), ex
    assert "dir_fd cmdline" in ex.stdout, ex
    assert cmdline not in ex.stdout and str(tmp_path) not in ex.stdout, ex.stdout
    listed = ex.stdout.rsplit("listed ", 1)[-1]
    assert str(me) not in listed and str(os.getppid()) not in listed, ex.stdout


@pytest.mark.parametrize("mode", MODES)
def test_program_cannot_list_host_processes(request, iso, monkeypatch, mode):
    hook = layers(request, iso, monkeypatch, mode)
    ex = run_python("import os\nprint(sorted(int(n) for n in os.listdir('/proc') if n.isdigit()))",
                    limits=FAST, audit_hook=hook)
    assert ex.status in ("ok", "refused"), ex
    if ex.status == "ok":  # only the sandbox's own processes (its PID namespace's init and the program)
        assert max(eval(ex.stdout)) <= 3, ex
    assert str(os.getpid()) not in ex.stdout


def test_private_proc_keeps_the_program_working(iso):
    """/proc/self, the standard library (reached through /proc/self/fd as a dropped uid) and
    os.listdir of the program's own fds still work."""
    ex = run_python("import os, json, collections.abc\nprint(os.readlink('/proc/self') == str(os.getpid()),"
                    " len(os.listdir('/proc/self/fd')) > 2, open('/proc/self/cmdline').read() != '')")
    same_pid = iso.private_proc or not iso.pid_namespace  # else /proc/self is the pid outside
    assert (ex.status, ex.stdout) == ("ok", f"{same_pid} True True\n"), ex


WRITE_MANY = """
import os, sys
for i in range(200):
    with open("f%d" % i, "wb") as f:
        f.write(b"x" * 2 ** 20)
    print(i + 1, flush=True)
"""


@pytest.mark.parametrize("where", ["kernel", "parent"])
def test_disk_quota_stops_a_program_writing_many_files(iso, monkeypatch, where):
    if where == "kernel" and not iso.mount_namespace:
        pytest.skip("no private mount namespace here: the quota is enforced by the parent (tested too)")
    if where == "parent":
        monkeypatch.setattr(sandbox, "_iso", dataclasses.replace(iso, mount_namespace=False, private_proc=False,
                                                                 unshare_flags=iso.unshare_flags & ~0x00020000))
    ex = run_python(WRITE_MANY, limits=Limits(max_disk_mb=8, wall_s=10))
    assert ex.status == "disk_limit" and "disk quota of 8 MB exceeded" in ex.reason, ex
    written = int(ex.stdout.split()[-1]) if ex.stdout.split() else 0
    # what reached the disk: within the quota (the kernel); or over it by what the program wrote
    # between two polls, which depends on the machine's speed: stopped long before its 200 files
    assert written <= 8 if where == "kernel" else written < 100, ex.stdout
    assert Limits(max_disk_mb=8).max_disk_mb == 8
    with pytest.raises(ValueError):
        Limits(max_disk_mb=0)
    ex = run_python("open('f', 'wb').write(b'x' * 2 ** 20)\nprint('fine')", limits=Limits(max_disk_mb=8))
    assert (ex.status, ex.stdout) == ("ok", "fine\n"), ex
