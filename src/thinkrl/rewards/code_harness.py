"""The two sides of an assert-style code test (see `rewards.code`), each run by the sandbox in a
process of its own (`sandbox.run_pair`), which relays lines between them:

- `program_main(source)`: loads the solution as module `solution`, says what it defines (its
  first line), then answers calls, one line per request, until its stdin ends.
- `judge_main()`: reads its configuration (tests, entry point, trusted context), then runs the
  tests, in which the solution's functions are `Remote` proxies: a call sends the arguments to
  the program and turns the reply back into a value with `decode`, which builds genuine
  builtin values of plain types only. It writes one verdict line per test; requests to the
  program go out on the same channel prefixed `C `.

Nothing of the solution ever runs in the judge, so it cannot reach the verdicts, the tests or
the comparisons; an object that claims to equal anything is not a plain value and is refused.

Standard library only: the sandbox runs `code_wire`'s source and then this file's as one
program (`rewards.code._harness`), followed by a call of one of the two.
"""

import builtins
import os
import sys
import types

if __name__ != "__main__":  # imported in the parent (tests, tools); in the sandbox code_wire's source runs first
    from .code_wire import NotPlain, decode, dumps, encode, loads

_MUTABLE = (list, dict, set)


def _send(fd, obj, prefix=b""):
    data = prefix + dumps(obj).encode("ascii") + b"\n"
    while data:
        data = data[os.write(fd, data):]


def _channel():
    """(a reader of the original stdin, the original stdout's fd); fds 0 and 1 are then
    /dev/null and stderr, so that print() and input() in the code run here stay off it."""
    r, w = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return os.fdopen(r, "rb"), w


def _describe(e, source=None, filename="<test>"):
    """One line: the exception, and the line of `source` where it was raised."""
    try:
        text = "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__
    except BaseException:
        text = type(e).__name__
    line, tb = None, e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is not None and source is not None:
        lines = source.splitlines()
        if 0 < line <= len(lines):
            text += " at: " + lines[line - 1].strip()
    return " ".join(text.split())[:300]


# ---------------------------------------------------------------- the program's side


def program_main(source):
    channel, out = _channel()
    module = types.ModuleType("solution")
    module.__file__ = "solution.py"
    sys.modules["solution"] = module
    try:
        exec(compile(source, "solution.py", "exec"), module.__dict__)
        names = {}
        for name, v in list(module.__dict__.items()):
            if name.startswith("__") and name.endswith("__"):
                continue
            if isinstance(v, types.ModuleType):
                names[name] = {"m": str(v.__name__)}
            elif callable(v):
                names[name] = {"f": 1}
            else:
                try:
                    names[name] = {"v": encode(v)}
                except NotPlain as e:
                    names[name] = {"o": str(e)}
    except BaseException as e:
        _send(out, {"loadfail": _describe(e, source, "solution.py")})
        return
    _send(out, {"hello": names})
    for line in channel:
        try:
            request = loads(line)
            reply = _serve(module.__dict__, request)
        except BaseException as e:
            reply = {"id": None, "raise": [["RuntimeError"], "bad request: %s" % _describe(e)]}
        _send(out, reply)


def _serve(space, request):
    rid = request["id"]
    try:
        fn = space[request["call"]]
        args = [decode(a, space.__getitem__) for a in request["args"]]
        kwargs = {k: decode(v, space.__getitem__) for k, v in request["kwargs"]}
    except Exception as e:
        return {"id": rid, "raise": [["TypeError"], "the call could not be made: %s" % _describe(e)]}
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:
        try:
            text = str(e)
        except BaseException:
            text = ""
        return {"id": rid, "raise": [[c.__name__ for c in type(e).__mro__], text[:1000]]}
    try:
        value = encode(result)
    except NotPlain as e:
        return {"id": rid, "notvalue": str(e)}
    after = []
    try:  # the state of mutable arguments after the call, so that in-place changes are seen
        after = [[i, encode(a)] for i, a in enumerate(args) if type(a) in _MUTABLE]
        after += [[k, encode(a)] for k, a in kwargs.items() if type(a) in _MUTABLE]
    except NotPlain as e:
        return {"id": rid, "notvalue": "%s in an argument after the call" % e}
    return {"id": rid, "ok": value, "after": after}


# ---------------------------------------------------------------- the judge's side


class ProgramGone(BaseException):
    """The program has ended: no call can be answered (not an Exception: a test's `except
    Exception` does not swallow it)."""


class SolutionError(Exception):
    """An exception the solution raised that has no builtin class among its bases."""


class BadReply(Exception):
    """The program's reply to a call is not a plain value in the wire format."""


_EXCEPTIONS = {name: c for name, c in vars(builtins).items() if isinstance(c, type) and issubclass(c, Exception)
               and c not in (StopIteration, StopAsyncIteration)}


def _raised(names, text):
    """The exception to raise in the judge for one the solution raised (class names, message)."""
    if type(names) is not list or not names or not all(type(n) is str for n in names) or type(text) is not str:
        return BadReply("an unreadable exception")
    text = text[:300]
    shown = text if names[0] in _EXCEPTIONS else "%s: %s" % (names[0][:60], text)
    for name in names:
        c = _EXCEPTIONS.get(name)
        if c is not None:
            try:
                return c(shown)
            except Exception:
                break
    return SolutionError(shown)


class Link:
    """The judge's end of the channel to the program."""

    def __init__(self, channel, out):
        self.channel, self.out, self.next_id, self.gone = channel, out, 0, 0

    def read(self):
        line = self.channel.readline() if self.gone == 0 else b""
        if not line:
            self.gone += 1
            raise ProgramGone("the program has ended")
        return line

    def call(self, name, args, kwargs):
        try:
            request = {"call": name, "args": [encode(a, _ref) for a in args],
                       "kwargs": [[k, encode(v, _ref)] for k, v in kwargs.items()]}
        except NotPlain as e:
            raise TypeError("%s() was given a %s, which cannot be passed to the solution" % (name, e)) from None
        self.next_id += 1
        request["id"] = rid = self.next_id
        if self.gone:
            self.gone += 1
            raise ProgramGone("the program has ended")
        _send(self.out, request, b"C ")
        while True:
            try:
                reply = loads(self.read())
            except (ValueError, RecursionError):
                raise BadReply("%s(): the program's reply is not readable" % name) from None
            got = reply.get("id") if type(reply) is dict else None
            if type(got) is int and got < rid:
                continue  # a stale or unasked-for line
            if type(got) is not int or got != rid:
                raise BadReply("%s(): the program's reply is not readable" % name)
            break
        if "raise" in reply:
            raised = reply["raise"]
            raise _raised(*raised) if type(raised) is list and len(raised) == 2 else BadReply("unreadable exception")
        if "notvalue" in reply:
            what = reply["notvalue"] if type(reply["notvalue"]) is str else "value"
            raise TypeError("%s() returned a %s, which is not a plain value" % (name, what[:80]))
        try:
            value = decode(reply["ok"])
            for key, state in reply.get("after", ()):
                original = args[key] if type(key) is int else kwargs[key]
                new = decode(state)
                if type(new) is not type(original) or type(original) not in _MUTABLE:
                    raise ValueError("not a list, dict or set argument, or one that changed type")
                if type(original) is list:
                    original[:] = new
                else:
                    original.clear()
                    original.update(new)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError, MemoryError):
            raise BadReply("%s() returned something that is not a plain value" % name) from None
        return value


class Remote:
    """A function (or other callable) of the solution, called in the program's process."""

    def __init__(self, name, link):
        self.__name__, self._link = name, link

    def __call__(self, *args, **kwargs):
        return self._link.call(self.__name__, args, kwargs)

    def __repr__(self):
        return "<solution's %s>" % self.__name__


def _ref(v):
    return v.__name__ if type(v) is Remote else None


class Unplain:
    """A name of the solution bound to something that is neither a plain value, a function
    nor a module: any use of it raises, saying so."""

    def __init__(self, name, kind):
        self._why = "solution.%s is a %s, which is not a plain value" % (name, kind[:80])

    def _refuse(self, *args, **kwargs):
        raise TypeError(self._why)

    __call__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = _refuse
    __getitem__ = __contains__ = __add__ = __sub__ = __mul__ = __int__ = __float__ = __index__ = _refuse

    def __getattr__(self, name):
        self._refuse()


def judge_main():
    channel, out = _channel()

    def report(line):
        os.write(out, (line + "\n").encode("utf-8", "replace"))

    cfg = loads(channel.readline())
    tests, entry, context, stubs, used = cfg["tests"], cfg["entry"], cfg["context"], cfg["stubs"], cfg["used"]
    link = Link(channel, out)
    try:
        first = loads(link.read())
    except ProgramGone:
        report("GONE")
        return
    except (ValueError, RecursionError):
        first = None
    if type(first) is dict and "loadfail" in first:
        report("LOADFAIL %s" % " ".join(str(first["loadfail"]).split())[:300])
        return
    names = first.get("hello") if type(first) is dict else None
    if type(names) is not dict:
        report("LOADFAIL the program did not say what it defines")
        return

    space = {"__name__": "solution", "__builtins__": builtins}
    trusted = set()
    if context is not None:
        try:  # the row's own code (e.g. HumanEval's prompt): its helpers are the judge's, not the program's
            exec(compile(context, "<prompt>", "exec"), space)
            trusted = {k for k in space if not k.startswith("__")} - set(stubs) - {entry}
        except BaseException:
            space = {"__name__": "solution", "__builtins__": builtins}
    for name in set(stubs) | {entry}:
        space.pop(name, None)  # the program's to write: what it defines, or nothing
    for name, kind in names.items():
        if (type(name) is not str or type(kind) is not dict or name in trusted or name in space
                or (name.startswith("__") and name.endswith("__"))
                or (hasattr(builtins, name) and name != entry and name not in stubs)):
            continue
        if "f" in kind:
            space[name] = Remote(name, link)
        elif "m" in kind:
            if kind["m"] == name and (used is None or name in used):  # `import math`: the judge's own math
                try:
                    space[name] = __import__(name)
                except BaseException:
                    pass
        elif "v" in kind:
            try:
                space[name] = decode(kind["v"])
            except (ValueError, TypeError, RecursionError):
                space[name] = Unplain(name, "unreadable value")
        else:
            space[name] = Unplain(name, str(kind.get("o", "object")))

    for i, test in enumerate(tests):
        scope = dict(space)
        lost = link.gone
        try:
            exec(compile(test, "<test>", "exec"), scope)
            if entry is not None and "def check(" in test:
                if entry not in scope:
                    raise NameError("entry point %r is not defined" % entry)
                scope["check"](scope[entry])
        except BaseException as e:
            report("FAIL %d %s" % (i, "GONE" if link.gone > lost else _describe(e, test)))
        else:
            report("FAIL %d GONE" % i if link.gone > lost else "PASS %d" % i)
    report("DONE")
