"""`thinkrl pipeline`: the four-stage R1 pipeline and distillation as one cached graph.

    thinkrl pipeline                      # the whole pipeline on the embedded tiny model and task
    thinkrl pipeline --config r1.yaml     # stages of your own (configs/r1.yaml spells out the default)
    thinkrl pipeline --plan               # what would run, what is cached
    thinkrl pipeline zero.train.steps=50  # a stage's setting from the command line

The default graph (docs/R1-PIPELINE.md §How thinkrl maps the pipeline), every model
evaluated the same way at the end:

    zero (R1-Zero GRPO on the base) ─▶ coldstart (readable, correct answers) ─▶ sft_coldstart (SFT of the base)
      ─▶ reasoning_rl (GRPO: accuracy + format + language) ─▶ reject (rejection sampling + general data)
      ─▶ sft_stage3 (SFT of the base) ─▶ all_rl (GRPO: rules on reasoning rows, reward models on general rows)
    general (synthetic non-reasoning task + preference pairs) ─▶ rm_helpful, rm_harmless (Bradley-Terry)
    all_rl ─▶ distill (teacher samples, student SFT)      student_rl (the same student, GRPO directly)
"""

from __future__ import annotations

import copy
import fcntl
import logging
import shutil
import sys
import time
from pathlib import Path

import yaml

from ..config import ConfigError
from ..config_io import read_yaml
from .graph import Graph, PipelineError, Stage, StageStopped

log = logging.getLogger("thinkrl.pipeline")

LONG = 120  # completion budget once answers carry a summary (R1's readable form)
EVAL = {"samples": 8, "max_new_tokens": LONG}
SFT_OPTIM = {"lr": 1e-3}  # the tiny model needs a high rate to learn a few hundred rows in a few dozen steps
SFT_BATCH = {"batch_size": 32, "micro_batch_size": 32}
REASONING_REWARDS = {"accuracy": 1.0, "format_lenient": 1.0, "language": 0.2}  # R1 stage 2: the three weights


def default_stages() -> list[Stage]:
    """The R1 pipeline on the embedded tiny model (Qwen2, 1M parameters) and task; the student
    is the embedded student (Llama, 0.2M parameters, its own tokenizer)."""
    grpo_long = {"rollout": {"max_new_tokens": LONG}, "eval": {"max_new_tokens": LONG, "every": 0}}
    st = [
        Stage("general", "general", {"seed": 0}),
        Stage("zero", "grpo", {"train": {"steps": 100, "save_every": 50}, "eval": {"every": 0}}),
        Stage("coldstart", "coldstart", {"model": "${zero.model}", "prompts": {"limit": 1600}, "sampling": {"n": 2},
                                         "keep": {"max_per_prompt": 1}}),
        Stage("sft_coldstart", "sft", {"model": {"path": "embedded"}, "data": {"train": "${coldstart.data}"},
                                       "optim": SFT_OPTIM, "train": {"epochs": 3, **SFT_BATCH}}),
        Stage("reasoning_rl", "grpo", {"model": {"path": "${sft_coldstart.model}"},
                                       "rewards": {"weights": REASONING_REWARDS}, "train": {"steps": 50},
                                       **grpo_long}),
        Stage("reject", "reject", {"checkpoint": "${reasoning_rl.model}", "prompts": {"limit": 1000},
                                   "sampling": {"n": 4}, "keep": {"max_per_prompt": 2},
                                   "mix": {"data": "${general.train}", "ratio": 0.5}}),
        Stage("rm_helpful", "rm", {"data": {"train": "${general.prefs_helpful_train}", "rule": "helpfulness",
                                            "test": "${general.prefs_helpful_test}", "part": "summary"},
                                   "train": {"steps": 1500}}),  # held-out 0.85 in about 60 s (0.97 without near misses)
        Stage("rm_harmless", "rm", {"data": {"train": "${general.prefs_harmless_train}", "rule": "harmlessness",
                                             "test": "${general.prefs_harmless_test}", "part": "whole"},
                                    "train": {"steps": 150}}),
        # R1's stage-3 SFT ran 2 epochs; the tiny model reached 88.9% after 4, 82.3% after 2
        Stage("sft_stage3", "sft", {"model": {"path": "embedded"}, "data": {"train": "${reject.data}"},
                                    "optim": SFT_OPTIM, "train": {"epochs": 4, **SFT_BATCH}}),
        Stage("mix", "mix", {"sources": [{"path": "embedded", "type": "reasoning", "limit": 2000},
                                         {"path": "${general.train}", "type": "general", "answer_field": "response"}]}),
        Stage("all_rl", "grpo", {"model": {"path": "${sft_stage3.model}"}, "data": {"train": "${mix.data}"},
                                 "rollout": {"temperature": 0.7, "max_new_tokens": LONG},  # R1 stage 4: T 0.7
                                 "eval": {"max_new_tokens": LONG, "every": 0}, "train": {"steps": 50},
                                 "rewards": {"weights": REASONING_REWARDS,
                                             "by_type": {"reasoning": REASONING_REWARDS,
                                                         "general": {"helpfulness": 1.0, "harmlessness": 1.0}},
                                             "params": {"helpfulness": {"model": "${rm_helpful.model}"},
                                                        "harmlessness": {"model": "${rm_harmless.model}"}}}}),
        Stage("distill", "distill", {"teacher": {"path": "${all_rl.model}"}, "student": {"path": "embedded-student"},
                                     "data": {"prompts": "embedded", "max_prompts": 1500}, "sample": {"n": 2},
                                     "filter": {"format": "format_lenient", "max_per_prompt": 2},  # the readable form
                                     "sft": {"optim": {"lr": 2e-3}, "train": {"epochs": 4, **SFT_BATCH}}}),
        # the 0.2M student: lr 2e-3 x 4 epochs gave 36.5% pass@1, lr 1e-3 x 2 gave 16.8%
        Stage("student_rl", "grpo", {"model": {"path": "embedded-student"}, "train": {"steps": 100},
                                     "eval": {"every": 0}}),
    ]
    models = {"base": ("embedded", "base"), "R1-Zero": ("${zero.model}", "zero"),
              "cold-start SFT": ("${sft_coldstart.model}", "sft_coldstart"),
              "reasoning RL": ("${reasoning_rl.model}", "reasoning_rl"),
              "rejection SFT": ("${sft_stage3.model}", "sft_stage3"), "R1 (all-scenario RL)": ("${all_rl.model}", "all_rl"),
              "student base": ("embedded-student", "student"), "student distilled": ("${distill.model}", "distill"),
              "student RL only": ("${student_rl.model}", "student_rl")}
    rows = {}
    for label, (model, slug) in models.items():
        name = f"eval_{slug}"
        st.append(Stage(name, "eval", {"model": model, **EVAL, "general": "${general.test}", "label": label}))
        rows[label] = "${%s.metrics}" % name
    st.append(Stage("report", "report", {"rows": rows, "compute": {"student distilled": "${distill.dir}",
                                                                   "student RL only": "${student_rl.dir}"}}))
    return st


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def stages_to_yaml(stages: list[Stage]) -> str:
    return yaml.dump({"stages": {s.name: {"kind": s.kind, "settings": copy.deepcopy(s.settings)} for s in stages}},
                     Dumper=_NoAliases, sort_keys=False, width=120)


def load_stages(path: str | None, overrides: list[str]) -> list[Stage]:
    if path is None:  # a copy per stage: stages share setting dicts, and an override must reach one stage
        stages = [Stage(s.name, s.kind, copy.deepcopy(s.settings)) for s in default_stages()]
    else:
        try:
            data = read_yaml(path) or {}
        except (ConfigError, OSError) as e:
            raise PipelineError(str(e)) from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise PipelineError(f"{path}: expected a mapping `stages:` of NAME: {{kind: ..., settings: {{...}}}}")
        stages = []
        for name, spec in data["stages"].items():
            if not isinstance(spec, dict) or "kind" not in spec or set(spec) - {"kind", "settings"}:
                raise PipelineError(f"{path}: stage {name!r} must have `kind:` and optionally `settings:`, nothing else")
            stages.append(Stage(name, spec["kind"], copy.deepcopy(spec.get("settings") or {})))
    by_name = {s.name: s for s in stages}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise PipelineError(f"override {item!r} must look like STAGE.key=value, e.g. zero.train.steps=50")
        path_, raw = item.split("=", 1)
        name, *keys = path_.split(".")
        if name not in by_name:
            raise PipelineError(f"override {item!r}: no stage {name!r}; stages: {', '.join(by_name)}")
        node = by_name[name].settings
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise PipelineError(f"override {item!r}: '{k}' of stage {name!r} is {node!r}, not a section")
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise PipelineError(f"override {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)})") from None
    return stages


def build(path: str | None, overrides: list[str], out: str | Path) -> Graph:
    """The graph; its keys include the thinkrl version and the shipped models' weights, so a
    rebuilt embedded model or student invalidates what was computed from it."""
    from .. import __version__
    from ..task import STUDENT_DIR, TINY_DIR
    from .graph import _file_digest
    from .stages import KINDS, RESUMABLE

    shipped = [_file_digest(str(d / "model.safetensors")) for d in (TINY_DIR, STUDENT_DIR)]
    code = _file_digest(str(Path(__file__).resolve().parent.parent))  # thinkrl's own source: code is an input too
    stages = load_stages(path, overrides)
    check_stages(stages)
    return Graph(stages, KINDS, out, version=f"{__version__}+{'+'.join(shipped)}+{code}", resumable=RESUMABLE)


def check_stages(stages: list[Stage]) -> None:
    """Every stage's settings validated before any stage runs (and for --plan): a wrong key
    or value in the last stage must not be found after hours of the earlier ones."""
    from ..config import ConfigError
    from .stages import check

    errors = []
    for s in stages:
        try:
            check(s.kind, s.settings)
        except (ConfigError, TypeError, ValueError) as e:
            errors.append(f"stage {s.name!r} ({s.kind}): {e}".replace("\n", "\n    "))
    if errors:
        raise PipelineError("the settings of " + ("a stage are" if len(errors) == 1 else "some stages are")
                            + " invalid; nothing was run:\n  " + "\n  ".join(errors))


def command(args, out: Path | None, config: str | None) -> int:
    """`thinkrl pipeline` (thinkrl.cli parses the arguments). The root (`--out`, default runs/r1)
    is a cache: a run always continues what an earlier one finished, so `--resume` is what it
    does anyway; `--overwrite` empties the root first."""
    out = out or Path("runs/r1")
    args.out = str(out)
    if args.overwrite:
        refused = _empty_root(out)
        if refused:
            print(f"thinkrl pipeline: {refused}", file=sys.stderr)
            return 2
    if args.threads:
        import torch  # deferred: --plan and --help need no torch

        torch.set_num_threads(args.threads)
    args.config = config
    try:
        graph = build(config, args.overrides, out)
        plan = graph.plan(args.only or None)
    except PipelineError as e:
        print(f"thinkrl pipeline: {e}", file=sys.stderr)
        return 2
    width = max(len(n) for n, _ in plan)
    print(f"thinkrl pipeline: {len(plan)} stages under {args.out}")
    for n, status in plan:
        ins = ", ".join(graph.inputs(n))
        print(f"  {n:<{width}}  {graph.stages[n].kind:<9} {status:<7} {graph.keys[n]}" + (f"  <- {ins}" if ins else ""))
    if args.plan:
        return 0
    t0 = time.time()
    todo = sum(s != "cached" for _, s in plan)
    done = [0]

    def on_stage(name, status, record):
        if status != "cached":
            done[0] += 1
            print(f"thinkrl pipeline: [{done[0]}/{todo}] {name} done in {record['seconds']:.0f}s "
                  f"({time.time() - t0:.0f}s so far)", flush=True)

    try:
        records = graph.run(args.only or None, on_stage=on_stage)
    except PipelineError as e:
        print(f"thinkrl pipeline: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, StageStopped) as e:
        print(f"\nthinkrl pipeline: {e or 'interrupted'}; finished stages are kept: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    except Exception as e:  # a stage failed: say which, keep what is finished
        log.exception("a stage failed")
        print(f"thinkrl pipeline: a stage failed ({type(e).__name__}: {e}); finished stages are kept, and the "
              "next run starts from the failed one", file=sys.stderr)
        return 1
    if "report" in records and all(s == "cached" for _, s in plan):
        print(Path(records["report"]["outputs"]["table"]).read_text())
    print(f"thinkrl pipeline: done in {time.time() - t0:.0f}s; stages in {Path(args.out) / 'stages.json'}")
    return 0



def _empty_root(root: Path) -> str | None:
    """--overwrite: delete a pipeline root's stages (why not, or None). Never a directory the
    pipeline did not make, nor one another pipeline is running in."""
    if not root.exists():
        return None
    if any(root.iterdir()) and not ((root / "stages.json").exists() or (root / ".lock").exists()):
        return f"--overwrite: {root} is not a thinkrl pipeline root (no stages.json); nothing was deleted"
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"--overwrite: another pipeline is running in {root}; nothing was deleted"
        for p in root.iterdir():
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None
