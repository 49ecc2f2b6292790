"""The audit hook of the sandbox, as source text (`_GUARD`) that the bootstrap (`bootstrap.py`)
runs in the child just before the program: `_guard(tmp)` installs a `sys.addaudithook` hook that
refuses what the package docstring lists. It is the only barrier where the OS layers are missing;
in-process, it can be got around by a determined program, so where those exist they are the real
barrier."""

_GUARD = r'''
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
    watched["object.__setattr__"] = watched["object.__delattr__"] = watched["object.__getattr__"] = "setattr"
    watched["os.listdir"] = watched["os.scandir"] = "list"

    def norm(path, dir_fd=None, raw=False, _getcwd=os.getcwd, _readlink=os.readlink, _fspath=os.fspath,
             _isinstance=isinstance, _str=str, _bytes=bytes):
        """(absolute lexically normalised path, whether it was given absolute); lexical is
        enough for writes because no link can be made inside the sandbox directory. raw: (the
        path as text, whether absolute)."""
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        elif not _isinstance(path, _str):
            path = _fspath(path)
            if _isinstance(path, _bytes):
                path = path.decode("utf-8", "surrogateescape")
        absolute = path.startswith("/")
        if raw:
            return path, absolute
        if not absolute:
            try:  # (a bad dir_fd: the call itself fails; no traceback through here)
                base = _getcwd() if dir_fd in (None, -1, -100) else _readlink("/proc/self/fd/%d" % dir_fd)
            except (OSError, TypeError):
                base = "/dev/fd/%r" % (dir_fd,)
            path = base + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts), absolute

    def resolve(path, dir_fd=None, follow=True, _norm=norm, _lstat=os.lstat, _readlink=os.readlink):
        """(the path the kernel reaches, symlinks followed (the last one only if `follow`), where a
        component cannot be examined the rest taken lexically; whether absolute; the path as text)"""
        text, absolute = _norm(path, None, True)
        full = text if absolute else _norm(".", dir_fd)[0] + "/" + text
        pending, done, hops = full.split("/")[::-1], [], 0
        while pending:
            part = pending.pop()
            if part == "..":
                done = done[:-1]
            elif part and part != ".":
                done.append(part)
                if hops < 0 or not (follow or pending):
                    continue
                try:
                    cur = "/" + "/".join(done)
                    if _lstat(cur).st_mode & 0o170000 == 0o120000:
                        target, hops, done = _readlink(cur), hops + 1 if hops < 40 else -1, done[:-1]
                        done = [] if target.startswith("/") else done
                        pending.extend(target.split("/")[::-1])
                except OSError:
                    hops = -1  # not examined further
        return "/" + "/".join(done), absolute, text

    me = os.readlink("/proc/self")  # this process's number in /proc (not os.getpid() in a PID namespace)

    def denied(p, _me=me):
        """Why reading p is refused: another process's /proc entry, or process memory."""
        if p.startswith("/proc/"):
            pid = p[6:].split("/", 1)[0]
            if pid.isdigit() and pid != _me:
                return "[sandbox] reading other processes' /proc entries is not allowed (%s)" % p
            if p.endswith("/mem"):
                return "[sandbox] reading process memory is not allowed (%s)" % p
        return None

    def readlink(path, *, dir_fd=None, _readlink=os.readlink, _resolve=resolve, _denied=denied):
        try:  # (on failure its locals go before the traceback could show them)
            why = _denied(_resolve(path, dir_fd, False)[0])
            if why is None:
                return _readlink(path, dir_fd=dir_fd)
        except BaseException:
            del _readlink, _resolve, _denied
            raise
        del _readlink, _resolve, _denied
        raise PermissionError(why)

    own = (norm, resolve, denied, readlink)
    for mod in (os, sys.modules.get("posix")):  # readlink raises no audit event: checked here
        if mod is not None:
            mod.readlink = readlink
    protected_modules = frozenset({"_posixsubprocess", "posix", "_signal", "_ctypes", "ctypes"})
    from types import MappingProxyType

    # the hook's state is immutable (a program can reach the hook's frame from the traceback of
    # a refusal and read its locals), and its helper function cannot be rewritten
    def audit(event, args, _watched=MappingProxyType(watched), _paths=MappingProxyType(paths),
              _tmp=tmp, _tmp_slash=tmp + "/", _norm=norm, _resolve=resolve, _denied=denied, _own=own,
              _isinstance=isinstance, _int=int, _str=str, _PE=PermissionError, _protected=protected_modules,
              _write=os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC):
        kind = _watched.get(event)
        if kind is None:
            if event.startswith("ctypes."):
                raise _PE("[sandbox] ctypes is not allowed (%s)" % event)
            return
        if kind == "setattr":  # (__code__, __defaults__, ...) of the hook's Python helpers
            if (event != "object.__getattr__" or args[1] in ("__defaults__", "__kwdefaults__")) and (
                    args[0] is _own[0] or args[0] is _own[1] or args[0] is _own[2] or args[0] is _own[3]):
                raise _PE("[sandbox] the sandbox's functions cannot be read or rewritten (%s)" % args[1])
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
            p, absolute, text = _resolve(path)
            if not absolute and args[1] is None:
                # os.open: its dir_fd is not in the event. Another process's /proc entry is reached
                # from a directory only through its number (or ".." from one's own): refused
                for part in text.split("/"):
                    if part == ".." or part.isdigit():
                        raise _PE("[sandbox] os.open of a relative path through '..' or a number is not "
                                  "allowed (its dir_fd cannot be checked); use an absolute path or open()")
            why = _denied(p)
            if why is not None:
                raise _PE(why)
            return
        if kind == "list":  # os.listdir / os.scandir (a path, an fd, or None for the cwd)
            p = _resolve(".", args[0]) if _isinstance(args[0], _int) else _resolve(args[0] or ".")
            if p[0] == "/proc" or _denied(p[0]) is not None:
                raise _PE("[sandbox] listing processes or other processes' /proc entries is not allowed "
                          "(%s)" % p[0])
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


'''
