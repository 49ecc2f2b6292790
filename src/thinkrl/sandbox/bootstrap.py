"""The code that runs in the child, before and around the program: it makes the namespaces,
mounts the run directory's tmpfs (the disk quota), forks the PID namespace's init (which mounts
that namespace's own /proc), drops to the slot's uid, sets the resource limits, no_new_privs and
Landlock, installs the audit hook (`guard`) and then runs the program as `__main__`, init's
child. Mounts come first: a dropped uid has no CAP_SYS_ADMIN and Landlock forbids them. It is
source text (`_BOOTSTRAP`), run by a fresh `python -I -S -B -X utf8 -c`; see the package
docstring for what each layer does."""

from .guard import _GUARD

_SETUP_EXIT = 125  # the bootstrap's exit code when a layer it was asked for cannot be set up
_MARKER = "thinkrl-sandbox: setup failed"
_REFUSED_PREFIX = "PermissionError: [sandbox]"

# Runs as `python -I -S -B -X utf8 -c _BOOTSTRAP CONFIG` in the private directory. It must use
# only the standard library; it applies the layers named in CONFIG and fails closed (exit 125
# with a `thinkrl-sandbox: setup failed [layer] ...` line) when one cannot be applied.

_BOOTSTRAP = r'''
import os, sys

def _setup(cfg):
    import ctypes, resource
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    uid, flags, tmp = cfg["uid"], cfg["unshare"], cfg["tmp"]

    def fail(layer, what):
        os.write(2, ("%s [%s] %s\n" % (cfg["marker"], layer, what)).encode())
        os._exit(cfg["setup_exit"])

    def err():
        return os.strerror(ctypes.get_errno())

    if uid is not None:
        # the interpreter may sit where the sandbox uid cannot go: open the import path now
        moved = []
        for p in sys.path:
            try:
                moved.append((p, "/proc/self/fd/%d" % os.open(p, os.O_RDONLY | os.O_DIRECTORY)))
            except OSError:
                pass
        sys.path[:] = [new for _, new in moved]
        sys.path_importer_cache.clear()
        for mod in list(sys.modules.values()):  # packages imported at startup (collections, ...)
            search = getattr(mod, "__path__", None)
            if isinstance(search, list):
                for i, entry in enumerate(search):
                    for old, new in moved:
                        if entry.startswith(old + "/"):
                            search[i] = new + entry[len(old):]
                            break

    def drop_to_uid():
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        except OSError as e:
            fail("uid", "cannot become uid %d: %s" % (uid, e))
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            fail("uid", "could become root again")
        if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
            fail("uid", "credentials are not those of uid %d" % uid)

    def drop_caps():
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
            fail("namespaces", "capset: %s" % err())

    def mount(what, where, kind, mflags, data=None):
        if libc.mount(what, where.encode(), kind, ctypes.c_ulong(mflags), data and data.encode()) != 0:
            fail("mounts", "mount %s on %s: %s" % (what.decode(), where, err()))

    # namespaces need privilege: made first, then the uid is dropped; but a user namespace is
    # made by the unprivileged uid itself (root without CAP_SYS_ADMIN, e.g. in a container)
    if uid is not None and flags & 0x10000000:
        drop_to_uid()
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: our /proc/self/*_map become ours to write
        uid = None
    if flags:
        outer_uid, outer_gid = os.getuid(), os.getgid()
        if libc.unshare(ctypes.c_int(flags)) != 0:
            fail("namespaces", "unshare(0x%x): %s" % (flags, err()))
        if flags & 0x10000000:  # a user namespace: our own ids only (capabilities dropped below)
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (outer_uid, outer_uid)),
                                   ("gid_map", "%d %d 1" % (outer_gid, outer_gid))):
                    with open("/proc/self/" + name, "w") as f:
                        f.write(text)
            except OSError as e:
                fail("namespaces", "user namespace id maps: %s" % e)
    if flags & 0x00020000:
        # a mount namespace: nothing propagates back to the host; the run's directory becomes a
        # tmpfs of the disk quota (main.py, written there by the parent, is carried over)
        mount(b"none", "/", None, 0x4000 | 0x40000)  # MS_REC | MS_PRIVATE
        with open(tmp + "/main.py", "rb") as f:
            source = f.read()
        owner = ",uid=%d,gid=%d" % (uid, uid) if uid is not None else ""
        mount(b"tmpfs", tmp, b"tmpfs", 2 | 4, "size=%d,nr_inodes=%d,mode=0700%s"  # MS_NOSUID | MS_NODEV
              % (cfg["disk"], max(64, cfg["disk"] // 4096), owner))
        fd = os.open(tmp + "/main.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.write(fd, source)
        if uid is not None:
            os.fchown(fd, uid, uid)
        os.close(fd)

    if flags & 0x20000000:
        # a PID namespace holds our children, not us: this process stays outside and waits; its
        # child is the namespace's init (it mounts the namespace's own /proc, then applies the
        # layers below), which runs the program as its own child (so the program keeps ordinary
        # signal semantics), reaps orphans, and passes the program's wait status out through a
        # pipe; when init exits the kernel kills everything left in the namespace
        import _signal  # not `signal`: its enums cost milliseconds
        r, w = os.pipe()
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # for init; the program gets it back
        pid = os.fork()
        if pid:
            if flags & 0x10000000:
                drop_caps()
            os.close(w)
            os.close(cfg["started_fd"])
            os.waitpid(pid, 0)
            data = os.read(r, 32)
            status = int(data) if data.strip().isdigit() else 9  # init killed: as if by SIGKILL
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                try:
                    _signal.signal(sig, _signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
                os.kill(os.getpid(), sig)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        os.close(r)
        if cfg["proc"] and flags & 0x00020000:  # a procfs of this PID namespace: its processes only
            mount(b"proc", "/proc", b"proc", 2 | 4 | 8)  # MS_NOSUID | MS_NODEV | MS_NOEXEC
    if flags & 0x10000000:
        drop_caps()
    if uid is not None:
        drop_to_uid()

    for name, soft, hard in cfg["rlimits"]:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError) as e:
            fail("rlimits", "%s: %s" % (name, e))

    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        fail("no_new_privs", err())

    abi = cfg["landlock"]
    if abi:
        sc, L = libc.syscall, ctypes.c_long
        fs = 0x1ff2  # write, remove dir/file, make char/dir/reg/sock/fifo/block/sym
        fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)  # refer, truncate
        attr = (ctypes.c_uint64 * 3)(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
        ruleset = sc(L(444), attr, L(24 if abi >= 6 else 16 if abi >= 4 else 8), L(0))
        if ruleset < 0:
            fail("landlock", "create_ruleset: %s" % err())

        class Beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

        for path, allowed in ((tmp, fs), ("/dev/null", (1 << 1) | (1 << 14 if abi >= 3 else 0))):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            if sc(L(445), L(ruleset), L(1), ctypes.byref(Beneath(allowed, fd)), L(0)) != 0:
                fail("landlock", "add_rule %s: %s" % (path, err()))
            os.close(fd)
        if sc(L(446), L(ruleset), L(0)) != 0:
            fail("landlock", "restrict_self: %s" % err())
        os.close(ruleset)

    os.chdir(tmp)
    os.umask(0o077)

    if flags & 0x20000000:  # init: the program is its child
        pid = os.fork()
        if pid:
            libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the program cannot read init's /proc entries
            os.close(cfg["started_fd"])
            while True:
                done, status = os.waitpid(-1, 0)
                if done == pid:
                    break
            os.write(w, str(status).encode())
            os._exit(0)
        os.close(w)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)


''' + _GUARD + r'''
def _run(cfg):
    import types
    path = cfg["tmp"] + "/main.py"
    with open(path, "rb") as f:
        source = f.read()
    for name in ("ctypes", "_ctypes", "ctypes._endian", "resource"):
        sys.modules.pop(name, None)
    if cfg["hook"]:
        _guard(cfg["tmp"])
    os.write(cfg["started_fd"], b"1")  # tells the parent that what follows is the program's doing
    os.close(cfg["started_fd"])
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv = [path]
    try:
        exec(compile(source, path, "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        tb = e.__traceback__
        e.__traceback__ = tb = tb.tb_next if tb is not None else None  # the program's frames only
        sys.excepthook(type(e), e, tb)
        sys.exit(1)


_cfg = eval(sys.argv[1], {"__builtins__": {}})  # a literal written by the parent (json would import re)
try:
    _setup(_cfg)
except Exception as e:
    os.write(2, ("%s [setup] %s: %s\n" % (_cfg["marker"], type(e).__name__, e)).encode())
    os._exit(_cfg["setup_exit"])
del _setup
_run(_cfg)
'''
