"""Reading any config dataclass: YAML files, `section.key=value` overrides, types checked
against the dataclass's annotations, unknown keys refused with the nearest known one, and
back to YAML. The commands' own configs (`config.Config`, `SFTConfig`, ...) are declared
and validated where they belong; this module only fills them."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import yaml

from . import checks
from .checks import ConfigError
from .sections import MOVED


# ---------------------------------------------------------------------------- loading


def _coerce(value, typ, where: str):
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if typ is float:
        number = None
        if isinstance(value, str):  # YAML reads 3e-6 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if number is None:
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(number):  # .inf or .nan: no setting of thinkrl means anything by them
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return number
    if typ in (int, str, bool):
        if typ is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {typ.__name__}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return value


def _apply(obj, values: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            if where in MOVED:
                raise ConfigError(f"'{where}' is now '{MOVED[where]}' (the run section every command shares)")
            raise ConfigError(f"unknown config key '{where}'" + checks.suggest(key, names))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                first = dataclasses.fields(current)[0].name
                raise ConfigError(f"'{where}' is a section; give it keys such as {where}.{first}")
            _apply(current, value, where + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], where))


def parse_overrides(overrides: list[str]) -> dict:
    """['optim.lr=1e-5', 'rollout.group_size=16'] -> nested dict; values parsed as YAML."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=1e-5")
        path, raw = item.split("=", 1)
        node = out
        parts = path.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                head = ".".join(parts[:i + 1])
                raise ConfigError(f"override {item!r} sets a key inside '{head}', but an earlier override set "
                                  f"'{head}' itself to {node!r}; drop '{head}={node}' ('{head}' is set key by key: "
                                  f"{head}.KEY=VALUE)")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                              "quote it, e.g. key='text'") from None
    return out


def read_yaml(path: str | Path):
    """A YAML file's contents. ConfigError, naming the file and line, for a file that is not
    UTF-8 or not valid YAML (a tab in the indentation, an unclosed bracket, ...)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        hint = "; YAML indents with spaces, never tabs" if "\\t" in problem or "\t" in problem else ""
        raise ConfigError(f"{where}: not valid YAML: {problem}{hint}") from None


def load_into(obj, path: str | Path | None = None, overrides: list[str] | None = None):
    """Fill any config dataclass (`Config`, `SFTConfig`, ...) from a YAML file, then from
    `section.key=value` overrides; unknown keys and wrong types raise ConfigError. No
    validation: the caller validates what it loaded."""
    if path is not None:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
        _apply(obj, data)
    if overrides:
        _apply(obj, parse_overrides(overrides))
    return obj


def to_yaml(obj) -> str:
    """Any config dataclass as YAML (tuples as lists), loadable again by `load_into`."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return yaml.safe_dump(plain(dataclasses.asdict(obj)), sort_keys=False)
