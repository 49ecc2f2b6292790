"""Stages as a graph, each output cached under a hash of its config and inputs.

A stage is a kind of work (`grpo`, `sft`, `reject`, ...) with its settings. A setting that
names another stage's output, `${zero.model}`, makes that stage an input: the graph's edges
come from these references. A stage's key is the hash of its kind, its settings (references
spelled with the input's key, not its path), the contents of files it names with
`${file:PATH}`, and the thinkrl version. So:

- a re-run finds every stage's directory `ROOT/stages/NAME-KEY/` complete and does nothing;
- a changed stage gets a new key, and so does everything downstream of it: only they run;
- a killed run leaves `NAME-KEY.partial/`; the next run hands it back to the stage with
  `resume=True` (training stages continue from their checkpoints) and renames it into place
  only when the stage has finished, with its `stage.json` written last. A kind that cannot
  continue partial work (not in `resumable`) starts over in an emptied directory; a partial
  directory whose `stage.json` is written is only renamed. A complete directory is never
  deleted in place: it is renamed aside first, so a kill never leaves half of one.

A stage function takes a `StageContext` and returns a summary dict whose `outputs` maps
names (`model`, `data`, ...) to paths inside `ctx.out`; `${stage.NAME}` resolves to them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("thinkrl.pipeline")

REF = re.compile(r"\$\{([A-Za-z_][\w-]*)\.(\w+)\}")  # ${stage.output}
FILE_REF = re.compile(r"\$\{file:([^}]+)\}")  # ${file:PATH}: the file's contents are hashed
DONE = "stage.json"


class PipelineError(ValueError):
    """A pipeline that cannot run as written; the message says what to change."""


class StageStopped(RuntimeError):
    """A stage stopped before finishing (Ctrl-C, SIGTERM, or its own error); its partial
    directory is kept, and the next run resumes it."""


@dataclass
class Stage:
    name: str
    kind: str
    settings: dict = field(default_factory=dict)


@dataclass
class StageContext:
    name: str
    kind: str
    settings: dict  # references resolved to paths
    out: Path  # the stage's working directory (its outputs go here)
    resume: bool  # True when a killed run left this directory behind
    key: str


def _walk(value, fn):
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


def references(settings: dict) -> set[str]:
    found: set[str] = set()
    _walk(settings, lambda s: found.update(m.group(1) for m in REF.finditer(s)) or s)
    return found


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise PipelineError(f"${{file:{path}}}: no such file or directory")
    h = hashlib.sha256()
    files = [p] if p.is_file() else [x for x in p.rglob("*") if x.is_file() and "__pycache__" not in x.parts]
    for f in sorted(files):
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Graph:
    def __init__(self, stages: list[Stage], kinds: dict[str, Callable[[StageContext], dict]], root: str | Path,
                 version: str = "", resumable: set[str] | None = None):
        """`resumable`: the kinds that continue their own partial work (default: every kind)."""
        self.stages = {s.name: s for s in stages}
        if len(self.stages) != len(stages):
            raise PipelineError("two stages share a name; stage names must be unique")
        self.kinds, self.root, self.version = kinds, Path(root), version
        self.resumable = set(kinds) if resumable is None else set(resumable)
        for s in stages:
            if s.kind not in kinds:
                raise PipelineError(f"stage {s.name!r}: unknown kind {s.kind!r}; choose one of {sorted(kinds)}")
            for dep in references(s.settings):
                if dep not in self.stages:
                    raise PipelineError(f"stage {s.name!r} refers to ${{{dep}.…}} but there is no stage {dep!r}; "
                                        f"stages: {', '.join(self.stages)}")
        self.order = self._topological()
        self.keys = self._keys()

    def inputs(self, name: str) -> list[str]:
        return sorted(references(self.stages[name].settings))

    def _topological(self) -> list[str]:
        order, state = [], {}

        def visit(n, path):
            if state.get(n) == "done":
                return
            if state.get(n) == "active":
                raise PipelineError("the stages refer to each other in a cycle: " + " -> ".join(path + [n]))
            state[n] = "active"
            for dep in self.inputs(n):
                visit(dep, path + [n])
            state[n] = "done"
            order.append(n)

        for n in self.stages:  # in the order written, inputs first
            visit(n, [])
        return order

    def _keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        for n in self.order:
            s = self.stages[n]
            spelled = _walk(s.settings, lambda v: FILE_REF.sub(lambda m: "file:" + _file_digest(m.group(1)),
                                                               REF.sub(lambda m: f"{keys[m.group(1)]}.{m.group(2)}", v)))
            blob = json.dumps({"kind": s.kind, "settings": spelled, "version": self.version}, sort_keys=True)
            keys[n] = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return keys

    def directory(self, name: str) -> Path:
        return self.root / "stages" / f"{name}-{self.keys[name]}"

    def is_done(self, name: str) -> bool:
        return (self.directory(name) / DONE).exists()

    def record(self, name: str) -> dict:
        return json.loads((self.directory(name) / DONE).read_text())

    def plan(self, targets: list[str] | None = None) -> list[tuple[str, str]]:
        """(stage, "cached" | "resume" | "run") in run order, for the targets and their inputs."""
        wanted = set(self.order) if not targets else self._upstream(targets)
        out = []
        for n in self.order:
            if n in wanted:
                partial = self.directory(n).with_name(self.directory(n).name + ".partial")
                out.append((n, "cached" if self.is_done(n) else "resume" if partial.exists() else "run"))
        return out

    def _upstream(self, targets: list[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(targets)
        while stack:
            n = stack.pop()
            if n not in self.stages:
                raise PipelineError(f"no stage {n!r}; stages: {', '.join(self.order)}")
            if n not in seen:
                seen.add(n)
                stack += self.inputs(n)
        return seen

    def _resolve(self, settings: dict) -> dict:
        def sub(v: str) -> str:
            def one(m):
                outputs = self.record(m.group(1)).get("outputs", {})
                if m.group(2) not in outputs:
                    raise PipelineError(f"${{{m.group(1)}.{m.group(2)}}}: stage {m.group(1)!r} has outputs "
                                        f"{sorted(outputs)}, not {m.group(2)!r}")
                return outputs[m.group(2)]
            return FILE_REF.sub(lambda m: m.group(1), REF.sub(one, v))
        return _walk(settings, sub)

    def run(self, targets: list[str] | None = None, on_stage=None) -> dict[str, dict]:
        """Run what is not cached (for `targets` and their inputs; default: every stage).
        Returns {stage: its record}. One pipeline at a time per root (a lock file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PipelineError(f"another pipeline is running in {self.root}; wait for it or use another --out") from None
            for old in (self.root / "stages").glob("*.old"):  # older copies a killed run did not finish deleting
                shutil.rmtree(old, ignore_errors=True)
            records = {}
            for n, status in self.plan(targets):
                if status != "cached":
                    self._run_stage(n, resume=status == "resume")
                records[n] = self.record(n)
                if on_stage is not None:
                    on_stage(n, status, records[n])
            self._write_index()
            return records

    def _run_stage(self, name: str, resume: bool) -> None:
        s, final = self.stages[name], self.directory(name)
        partial = final.with_name(final.name + ".partial")
        if _finished(partial, self.keys[name]):  # killed between its stage.json and the rename
            log.info("stage %s had finished; moving it into place", name)
            _move_into_place(partial, final)
            return
        if resume and s.kind not in self.resumable:  # its partial work cannot be continued: start over
            log.info("stage %s (%s) cannot continue a killed run; starting it over", name, s.kind)
            shutil.rmtree(partial)
            resume = False
        partial.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(name, s.kind, self._resolve(s.settings), partial, resume, self.keys[name])
        log.info("stage %s (%s)%s -> %s", name, s.kind, " resumed" if resume else "", final)
        t0 = time.time()
        summary = _relocated(self.kinds[s.kind](ctx) or {}, str(partial), str(final))
        outputs = {k: str(v) for k, v in summary.pop("outputs", {}).items()}
        record = {"stage": name, "kind": s.kind, "key": self.keys[name], "settings": s.settings,
                  "inputs": {d: self.keys[d] for d in self.inputs(name)}, "outputs": outputs,
                  "summary": summary, "seconds": round(time.time() - t0, 1), "resumed": resume,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = partial / (DONE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, partial / DONE)
        _move_into_place(partial, final)

    def _write_index(self) -> None:
        index = {n: str(self.directory(n)) for n in self.order if self.is_done(n)}
        tmp = self.root / "stages.json.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.root / "stages.json")


def _finished(partial: Path, key: str) -> bool:
    """Did the stage in `partial` finish (its stage.json, written last, is there and whole)?"""
    try:
        return json.loads((partial / DONE).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def _move_into_place(partial: Path, final: Path) -> None:
    """Rename a finished `partial` to `final`. An older copy at `final` is renamed aside
    before it is deleted, so `final` is only ever absent or whole."""
    old = final.with_name(final.name + ".old")
    if old.exists():  # left by a run killed while deleting it
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def _relocated(obj, partial: str, final: str):
    """`obj` (a stage's summary, its outputs included) with every path inside the stage's
    `.partial` directory pointing into its final directory instead (the stage ran in the one
    and is read from the other)."""
    if isinstance(obj, dict):
        return {k: _relocated(v, partial, final) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relocated(v, partial, final) for v in obj]
    if isinstance(obj, (str, Path)) and (str(obj) == partial or str(obj).startswith(partial + os.sep)):
        return final + str(obj)[len(partial):]
    return obj
