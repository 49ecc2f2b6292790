"""The wire format of values between the judge and the program of an assert-style code test
(`rewards.code_harness`): JSON lines, read with json's own C scanner (without importing json
and re: a run's start-up counts) and written by `dumps`.

A value (`encode`/`decode`): None, bool, str and ints under 2**53 as themselves; {"x": hex} a
larger int, {"f": repr} a float (nan and inf included), {"c": [re, im]} a complex, {"b": hex}
bytes, {"l": [...]}, {"t": [...]}, {"s": [...]}, {"z": [...]} a list, tuple, set, frozenset,
{"d": [[k, v], ...]} a dict, and in a request only {"r": name}, one of the solution's own
names. `encode` takes exactly these types (not their subclasses); `decode` builds genuine
builtin values of them and nothing else, nested at most MAX_DEPTH deep.

Self-contained, standard library only: the sandbox runs this file's source, then
`code_harness`'s, as one program.
"""

try:  # json's own C scanner and string quoting, without the cost of importing json (and re)
    from _json import encode_basestring_ascii as _quote
    from _json import make_scanner as _make_scanner
except ImportError:  # pragma: no cover
    from json.encoder import py_encode_basestring_ascii as _quote
    from json.scanner import py_make_scanner as _make_scanner

MAX_DEPTH = 100
_SEQ = {list: "l", tuple: "t", set: "s", frozenset: "z"}


class NotPlain(Exception):
    """A value that is not made of plain types; the message names what it is."""


def encode(v, ref=None, depth=0):
    """`v` in the wire format; NotPlain unless its type, and all of its parts', is exactly one
    of the plain types (`ref`, if given, names a proxy for a request)."""
    t = type(v)
    if v is None or t is bool or t is str:
        return v
    if t is int:
        return v if -2 ** 53 < v < 2 ** 53 else {"x": format(v, "x")}
    if t is float:
        return {"f": repr(v)}
    if t is complex:
        return {"c": [repr(v.real), repr(v.imag)]}
    if t is bytes:
        return {"b": v.hex()}
    if depth >= MAX_DEPTH:
        raise NotPlain("value nested more than %d deep" % MAX_DEPTH)
    if t in _SEQ:
        return {_SEQ[t]: [encode(x, ref, depth + 1) for x in v]}
    if t is dict:
        return {"d": [[encode(k, ref, depth + 1), encode(x, ref, depth + 1)] for k, x in v.items()]}
    name = ref(v) if ref is not None else None
    if name is not None:
        return {"r": name}
    raise NotPlain(_type_name(v))


def _type_name(v):
    t = type(v)
    return t.__name__ if type(getattr(t, "__name__", None)) is str else "object"


def decode(j, resolve=None, depth=0):
    """The value a wire-format tree stands for, built from builtin types only; ValueError or
    TypeError for anything else (`resolve` maps {"r": name} in a request)."""
    t = type(j)
    if j is None or t is bool or t is str or t is int:
        return j
    if t is not dict or len(j) != 1 or depth >= MAX_DEPTH:
        raise ValueError("not a plain value")
    (tag, x), = j.items()
    tx = type(x)
    if tag == "f" and tx is str:
        return float(x)
    if tag == "x" and tx is str:
        return int(x, 16)
    if tag == "c" and tx is list and len(x) == 2 and all(type(p) is str for p in x):
        return complex(float(x[0]), float(x[1]))
    if tag == "b" and tx is str:
        return bytes.fromhex(x)
    if tag == "r" and tx is str and resolve is not None:
        return resolve(x)
    if tx is not list:
        raise ValueError("not a plain value")
    if tag == "d":
        out = {}
        for pair in x:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("not a plain value")
            out[decode(pair[0], resolve, depth + 1)] = decode(pair[1], resolve, depth + 1)
        return out
    items = [decode(e, resolve, depth + 1) for e in x]
    if tag == "l":
        return items
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "z":
        return frozenset(items)
    raise ValueError("not a plain value")


class _Strict:
    """json's scanner settings: standard JSON only (no NaN or Infinity)."""
    strict, object_hook, object_pairs_hook, parse_float, parse_int, memo = True, None, None, float, int, {}

    @staticmethod
    def parse_constant(name):
        raise ValueError("not JSON: %s" % name)


_scan = _make_scanner(_Strict())


def loads(line):
    """One line of JSON (bytes), strictly: ValueError for anything else."""
    text = line.decode("ascii").rstrip("\n")
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("not one JSON value")
    return obj


def dumps(obj):
    """JSON text (ASCII) of a tree of None, bool, int, str, list and str-keyed dict."""
    t = type(obj)
    if obj is None:
        return "null"
    if t is bool:
        return "true" if obj else "false"
    if t is int:
        return str(obj)
    if t is str:
        return _quote(obj)
    if t is list:
        return "[" + ",".join([dumps(x) for x in obj]) + "]"
    if t is dict:
        return "{" + ",".join([_quote(str(k)) + ":" + dumps(v) for k, v in obj.items()]) + "}"
    raise TypeError("cannot write a %s" % t.__name__)
