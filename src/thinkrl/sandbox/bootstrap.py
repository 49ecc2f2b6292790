"""The code that runs in the child, before and around the program: it makes the namespaces,
drops to the slot's uid, sets the resource limits, no_new_privs and Landlock, runs the PID
namespace's init, installs the audit hook and then runs the program as `__main__`. It is source
text (`_BOOTSTRAP`), run by a fresh `python -I -S -B -X utf8 -c`; see the package docstring for
what each layer does."""

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
        if flags & 0x10000000:  # a user namespace: our own ids only, then no capabilities
            try:
                for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (outer_uid, outer_uid)),
                                   ("gid_map", "%d %d 1" % (outer_gid, outer_gid))):
                    with open("/proc/self/" + name, "w") as f:
                        f.write(text)
            except OSError as e:
                fail("namespaces", "user namespace id maps: %s" % e)
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)
            if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
                fail("namespaces", "capset: %s" % err())
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

    if flags & 0x20000000:
        # a PID namespace holds our children, not us: this process stays outside and waits; its
        # child is the namespace's init, which runs the program as its own child (so the program
        # keeps ordinary signal semantics), reaps orphans, and passes the program's wait status
        # out through a pipe; when init exits the kernel kills everything left in the namespace
        import _signal  # not `signal`: its enums cost milliseconds
        r, w = os.pipe()
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # for init; the program gets it back
        pid = os.fork()
        if pid:
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
        pid = os.fork()
        if pid:
            os.close(cfg["started_fd"])
            while True:
                done, status = os.waitpid(-1, 0)
                if done == pid:
                    break
            os.write(w, str(status).encode())
            os._exit(0)
        os.close(w)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)


def _guard(tmp):
    """The audit hook. It keeps its state in default arguments and uses no module globals, so
    the program cannot reconfigure it by patching modules."""
    import _posixsubprocess, _signal

    def no_process(*a, **k):
        raise PermissionError("[sandbox] process creation is not allowed")

    def no_signal(*a, **k):
        raise PermissionError("[sandbox] signalling other processes is not allowed")

    _posixsubprocess.fork_exec = no_process  # not audited itself
    for mod, name in ((os, "pidfd_open"), (sys.modules.get("posix"), "pidfd_open"),  # not audited
                      (_signal, "pidfd_send_signal"), (sys.modules.get("signal"), "pidfd_send_signal")):
        if mod is not None and hasattr(mod, name):
            setattr(mod, name, no_signal)

    watched = {}
    for kind, events in (
        ("process creation", "os.fork os.forkpty os.system os.exec os.posix_spawn os.spawn subprocess.Popen "
                             "os.startfile pty.spawn"),
        ("signalling other processes", "os.kill os.killpg signal.pthread_kill"),
        ("network access", "socket.connect socket.bind socket.sendto socket.sendmsg socket.getaddrinfo "
                           "socket.gethostbyname socket.gethostbyname_ex socket.gethostbyaddr "
                           "socket.getnameinfo socket.sethostname"),
        ("changing resource limits", "resource.setrlimit resource.prlimit"),
        ("enumerating the interpreter's objects", "gc.get_objects gc.get_referrers gc.get_referents"),
        ("creating links", "os.link os.symlink"),
    ):
        for e in events.split():
            watched[e] = kind
    paths = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
             "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
             "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
             "os.mknod": ((0, 3),), "os.mkfifo": ((0, 2),)}
    for e in paths:
        watched[e] = "path"
    watched["open"] = "open"
    watched["sqlite3.connect"] = "sqlite"
    watched["import"] = "import"
    watched["object.__setattr__"] = watched["object.__delattr__"] = "setattr"

    def norm(path, dir_fd=None, _getcwd=os.getcwd, _readlink=os.readlink, _fspath=os.fspath,
             _isinstance=isinstance, _str=str, _bytes=bytes):
        """(absolute lexically normalised path, whether it was given absolute); lexical is
        enough because no link can be made inside the sandbox directory."""
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        elif not _isinstance(path, _str):
            path = _fspath(path)
            if _isinstance(path, _bytes):
                path = path.decode("utf-8", "surrogateescape")
        absolute = path.startswith("/")
        if not absolute:
            base = _getcwd() if dir_fd in (None, -1, -100) else _readlink("/proc/self/fd/%d" % dir_fd)
            path = base + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts), absolute

    me = os.readlink("/proc/self")  # this process's number in /proc (not os.getpid() in a PID namespace)
    protected_modules = frozenset({"_posixsubprocess", "posix", "_signal", "_ctypes", "ctypes"})
    from types import MappingProxyType

    # the hook's state is immutable (a program can reach the hook's frame from the traceback of
    # a refusal and read its locals), and its helper function cannot be rewritten
    def audit(event, args, _watched=MappingProxyType(watched), _paths=MappingProxyType(paths),
              _tmp=tmp, _tmp_slash=tmp + "/", _me=me, _norm=norm, _isinstance=isinstance, _int=int, _str=str,
              _PE=PermissionError, _protected=protected_modules,
              _write=os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC):
        kind = _watched.get(event)
        if kind is None:
            if event.startswith("ctypes."):
                raise _PE("[sandbox] ctypes is not allowed (%s)" % event)
            return
        if kind == "setattr":  # (__code__, __defaults__, ...) of the hook's one Python helper
            if args[0] is _norm:
                raise _PE("[sandbox] rewriting the sandbox's functions is not allowed (%s)" % args[1])
            return
        if kind == "import":
            if args[0] in _protected:
                raise _PE("[sandbox] importing %s is not allowed" % args[0])
            return
        if kind == "open":
            path, flags = args[0], args[2]
            if _isinstance(path, _int) or path is None:
                return
            p, absolute = _norm(path)
            if not _isinstance(flags, _int) or flags & _write:
                if p == "/dev/null":
                    return
                if p != _tmp and not p.startswith(_tmp_slash):
                    raise _PE("[sandbox] writing outside the sandbox directory is not allowed (%s)" % p)
                if not absolute and args[1] is None:  # os.open: its dir_fd is not in the event
                    raise _PE("[sandbox] os.open of a relative path for writing is not allowed; use an "
                              "absolute path or open()")
                return
            if p.startswith("/proc/"):
                pid = p[6:].split("/", 1)[0]
                if pid.isdigit() and pid != _me:
                    raise _PE("[sandbox] reading other processes' /proc entries is not allowed (%s)" % p)
                if p.endswith("/mem"):
                    raise _PE("[sandbox] reading process memory is not allowed (%s)" % p)
            return
        if kind == "path":
            for i, j in _paths[event]:
                target = args[i]
                if _isinstance(target, _int):
                    continue
                p = _norm(target, None if j is None else args[j])[0]
                if p != _tmp and not p.startswith(_tmp_slash):
                    raise _PE("[sandbox] changing files outside the sandbox directory is not allowed (%s %s)"
                              % (event, p))
            return
        if kind == "sqlite":
            db = args[0]
            if db in (":memory:", "", b":memory:", b""):
                return
            p = _norm(db)[0] if not (_isinstance(db, _str) and db.startswith("file:")) else "file:"
            if p != _tmp and not p.startswith(_tmp_slash):
                raise _PE("[sandbox] databases outside the sandbox directory are not allowed (%s)" % p)
            return
        raise _PE("[sandbox] %s is not allowed (%s)" % (kind, event))

    sys.addaudithook(audit)


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
