"""The `thinkrl` command: one table of commands, parsed one way.

    thinkrl zero      [--out DIR] [--resume] [section.key=value ...]   R1-Zero on the embedded tiny model
    thinkrl train     --config FILE.yaml ...     GRPO for any causal LM
    thinkrl sft | rm | distill | coldstart | reject | eval | pipeline  --config FILE.yaml ...
    thinkrl score | analyze | build-tiny         tools on files and runs (own flags)

Every command that runs something takes the same run options: `--config FILE.yaml` (the
command's settings; configs/ has one per command), `section.key=value` anywhere among the
flags (after the YAML), `--out DIR` (default a new runs/COMMAND-TIME-XXXX, claimed and
locked while the run works), `--resume` (continue the run in --out, or the newest one under
runs/, with the settings it started with), `--overwrite` (replace the thinkrl run in --out)
and `--no-progress`. A command's own flags are shortcuts for settings: `thinkrl distill
--teacher M` is `teacher.path=M`.

Data-parallel GRPO over N processes (see thinkrl.distributed): prefix `zero` or `train`
with torchrun, e.g. `torchrun --nproc_per_node N -m thinkrl.cli train --config FILE.yaml`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, describe, load_config
from .config_io import load_into, parse_overrides, to_yaml
from .data import DataError
from .rundir import RunDirError, claim, latest_run, run_claimed, write_text_atomic
from .train.loop import set_threads, threads_restored


@dataclass(frozen=True)
class Flag:
    """A command's own flag: a shortcut for one setting (`key`), or with `value` a switch that
    sets it. With no `key`, a plain option the command reads from `args` itself."""
    name: str
    help: str
    key: str | None = None
    value: str | None = None
    type: type = str
    action: str | None = None  # a plain option's argparse action ("append", "store_true")
    default: object = None


@dataclass(frozen=True)
class Command:
    help: str
    run: str  # "module:function", called as function(args, out, config) -> exit code
    flags: tuple[Flag, ...] = ()
    progress: str = "run.progress"  # the setting --no-progress turns off
    claims: bool = True  # --out is claimed and locked as this run's (the pipeline keeps its own cache root)
    config_help: str = ""
    load: str | None = None  # "module:function(config, overrides)": settings checked before --out is claimed


COMMANDS: dict[str, Command] = {
    "zero": Command("R1-Zero GRPO on the embedded tiny model and task (the main job)", ".cli:_grpo",
                    (Flag("--steps", "override train.steps", key="train.steps", type=int),
                     Flag("--profile", "time each phase of a step precisely (CUDA sync)", key="train.profile",
                          value="true")), claims=False),
    "train": Command("GRPO on any transformers causal LM from a YAML config", ".cli:_grpo",
                     (Flag("--steps", "override train.steps", key="train.steps", type=int),
                      Flag("--profile", "time each phase of a step precisely (CUDA sync)", key="train.profile",
                           value="true")), claims=False, config_help="see configs/"),
    "sft": Command("supervised fine-tuning (response tokens only, packing, chat templates)", ".train.sft:command",
                   load=".train.sft_config:load_sft_config", config_help="sections model, data, optim, train (configs/sft-tiny.yaml)"),
    "rm": Command("train a Bradley-Terry reward model on preference pairs", ".train.reward_model:command",
                  load=".train.reward_model_config:load_rm_config", config_help="sections model, data, train, log (configs/rm-tiny.yaml)"),
    "distill": Command(
        "distil a teacher into a student by SFT (or on-policy, reverse KL)", ".distill.run:command",
        (Flag("--teacher", "teacher model: a directory, a hub id or 'embedded'", key="teacher.path"),
         Flag("--student", "student model directory or hub id (its own tokenizer)", key="student.path"),
         Flag("--prompts", "question[/answer] rows (JSONL, JSON, parquet, save_to_disk dir, hf:ID), or 'embedded'",
              key="data.prompts"),
         Flag("--data", "reuse these prompt/response rows (a JSONL such as stage 3's, or any data source) instead of "
              "sampling the teacher", key="data.dataset"),
         Flag("--on-policy", "reverse-KL on-policy distillation (same tokenizer)", key="mode", value="on_policy")),
        config_help="sections mode, teacher, student, data, sample, filter, sft, on_policy, eval, run",
        load=".distill.config:load_distill_config"),
    "coldstart": Command(
        "stage 1: a cold-start set of readable long chains of thought", ".pipeline.coldstart:command",
        (Flag("--model", "an R1-Zero run or checkpoint directory, a model, 'embedded'", key="model"),
         Flag("--prompts", "'embedded' or question/answer rows (JSONL, JSON, parquet, save_to_disk dir, hf:ID)",
              key="prompts.data"),
         Flag("--mode", "refine | few_shot", key="mode")), progress="",
        config_help="defaults: the embedded model and task"),
    "reject": Command(
        "stage 3: rejection sampling (rules or a generative judge), filters, dedup, mix", ".pipeline.reject:command",
        (Flag("--checkpoint", "the stage-2 model: a run or checkpoint directory, a model", key="checkpoint"),
         Flag("--prompts", "'embedded' or question/answer rows (JSONL, JSON, parquet, save_to_disk dir, hf:ID)",
              key="prompts.data")), progress="",
        config_help="defaults: the embedded model and task, rule judging"),
    "eval": Command(
        "evaluate a model by the R1 protocol: K samples per question", ".cli:_eval",
        (Flag("--model", "local directory, hub id, or 'embedded'", key="model"),
         Flag("--benchmark", "gsm8k, math500, humaneval, aime, embedded, aime:PATH, jsonl:PATH[?question=COL&answer=COL] "
              "(repeatable or comma-separated)", key="benchmarks", action="append"),
         Flag("--samples", "K samples per question (default 16)", key="eval.samples", type=int),
         Flag("--limit", "at most this many questions per benchmark", key="eval.limit", type=int),
         Flag("--temperature", "default 0.6", key="eval.temperature", type=float),
         Flag("--top-p", "default 0.95", key="eval.top_p", type=float),
         Flag("--max-new-tokens", "completion budget (default: min(512, half the context))", key="eval.max_new_tokens",
              type=int),
         Flag("--template", "r1_zero, chat, none, or a string with {prompt}", key="eval.template"),
         Flag("--batch-size", "completions per generation call (default 64)", key="eval.batch_size", type=int),
         Flag("--seed", "default 0", key="run.seed", type=int),
         Flag("--data-dir", "where the benchmark files are (default $THINKRL_DATA)", key="data_dir"),
         Flag("--device", "auto, cpu, cuda", key="device")),
        config_help="model, benchmarks, data_dir, device, eval (the protocol), run"),
    "pipeline": Command(
        "the four-stage R1 pipeline and distillation, as a cached, resumable graph", ".pipeline.run:command",
        (Flag("--only", "run only this stage and its inputs (repeatable)", action="append", default=[]),
         Flag("--plan", "print what would run and what is cached, then stop", action="store_true"),
         Flag("--threads", "CPU threads for torch (default 1: the tiny models gain little from a second thread and "
              "lose 10-20x when another process competes for the cores; 0 = torch's default)", type=int, default=1)),
        progress="", claims=False, config_help="`stages:`; default the R1 pipeline on the embedded model "
        "(configs/r1.yaml); --out is the stage cache, default runs/r1; overrides are STAGE.key=value"),
}
# tools on files and runs: their own flags (below), no run directory
TOOLS = {"score": "score a JSONL file of completions with named rewards, with reasons",
         "analyze": "the paper's analyses of a run: length, reflective words, accuracy",
         "build-tiny": "rebuild the embedded tiny model, tokenizer and task data"}


def _parser(name: str, cmd: Command) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"thinkrl {name}", description=cmd.help)
    p.add_argument("--config", help="YAML settings" + (f" ({cmd.config_help})" if cmd.config_help else ""))
    p.add_argument("--out", help="run directory (default a new runs/<command>-<time>-XXXX; with --resume the newest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest complete "
                   "checkpoint, with the settings it started with")
    p.add_argument("--overwrite", action="store_true", help="replace the thinkrl run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    for f in cmd.flags:
        if f.value is not None:
            p.add_argument(f.name, action="store_true", help=f.help)
        elif f.action:
            p.add_argument(f.name, action=f.action, default=f.default, help=f.help)
        else:
            p.add_argument(f.name, type=f.type, default=f.default, help=f.help)
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=1e-5")
    return p


def parse(name: str, argv: list[str]) -> argparse.Namespace:
    """The run options of `name`, its flags turned into the settings they stand for (appended to
    `overrides`, so that they win over the YAML)."""
    cmd = COMMANDS[name]
    args = _parser(name, cmd).parse_intermixed_args(argv)  # overrides anywhere among the flags
    args.command, overrides = name, list(args.overrides)
    for f in cmd.flags:
        given = getattr(args, f.name.lstrip("-").replace("-", "_"))
        if f.key and given is not None and given is not False:
            if f.action == "append":  # a list setting: every value given, commas splitting too
                given = "[" + ", ".join(json.dumps(v.strip()) for g in given for v in g.split(",") if v.strip()) + "]"
            elif f.type is str and f.value is None:  # a path stays a string, whatever YAML would make of it
                given = json.dumps(given)
            overrides.append(f"{f.key}={f.value if f.value is not None else given}")
    if args.no_progress and cmd.progress:
        overrides.append(f"{cmd.progress}=false")
    args.overrides = overrides
    return args


def _function(target: str):
    module, _, fn = target.partition(":")
    if module == ".cli":
        return globals()[fn]
    return getattr(importlib.import_module(module, __package__), fn)  # deferred: each command's heavy imports


def run_command(name: str, argv: list[str]) -> int:
    args = parse(name, argv)
    cmd = COMMANDS[name]
    if cmd.load and not args.resume:  # a bad setting is refused before a run directory is made
        try:
            _function(cmd.load)(args.config, args.overrides)
        except (ConfigError, OSError) as e:
            print(f"thinkrl {name}: {e}", file=sys.stderr)
            return 2
    body = _function(cmd.run)
    if not cmd.claims:
        return body(args, Path(args.out) if args.out else None, args.config)
    return run_claimed(name, args, body)  # the run directory is this run's alone, locked while it works


def _grpo(args, out: Path | None, config_path: str | None) -> int:
    """`thinkrl zero` and `thinkrl train`: rank 0 claims the run directory, every process trains."""
    if args.command == "train" and config_path is None and not args.resume:
        print("thinkrl train: give --config FILE.yaml (or --resume --out DIR)", file=sys.stderr)
        return 2
    if args.resume and out is None:
        out = latest_run(Path("runs"))
        if out is None:
            print("thinkrl: --resume: no run under runs/ to resume; give --out DIR", file=sys.stderr)
            return 2
    if args.resume and config_path is None and (out / "config.yaml").exists():
        config_path = str(out / "config.yaml")  # continue the run with the settings it started with
    try:
        cfg = load_config(config_path, args.overrides)
    except (ConfigError, OSError) as e:
        print(f"thinkrl: {e}", file=sys.stderr)
        return 2

    from . import distributed  # deferred, as the three below: they import torch
    from .policy import resolve_device
    from .train.grpo import GRPOTrainer

    distributed.init(resolve_device(cfg.model.device))  # under torchrun: join the other processes
    run_dir = None
    try:
        is_main = distributed.is_main()  # only rank 0 prints; every process returns the same code
        claimed = None
        if is_main:  # rank 0 claims (and locks) the one run directory; the others learn its path
            try:
                run_dir = claim(out, resume=args.resume, overwrite=args.overwrite, command=args.command)
                claimed = str(run_dir.path)
            except RunDirError as e:
                print(f"thinkrl: {e}", file=sys.stderr)
        claimed = distributed.from_main(claimed)
        if claimed is None:
            return 2
        out = Path(claimed)
        if is_main:
            print(f"thinkrl: {describe(cfg)}")
        try:
            trainer = GRPOTrainer(cfg, out, resume=args.resume)
        except (DataError, ValueError) as e:
            if is_main:
                print(f"thinkrl: {e}", file=sys.stderr)
            return 2
        n_params = sum(p.numel() for p in trainer.policy.parameters())
        where = f"resuming from {trainer.resumed_from}" if trainer.resumed_from else "from step 0"
        procs = f" × {trainer.world} processes" if trainer.world > 1 else ""
        if is_main:
            print(f"thinkrl: model {cfg.model.path} ({n_params / 1e6:.2f}M parameters) on {trainer.device}{procs}; "
                  f"{len(trainer.train_rows)} train / {len(trainer.eval_rows)} held-out questions; {where}; "
                  f"run dir {out}")
        s = trainer.run()
        if s.get("error"):
            if is_main:
                print(f"thinkrl: {s['error']}", file=sys.stderr)
            return 1
        acc = ""
        if s.get("accuracy_start") is not None and s.get("accuracy_end") is not None:
            acc = f"held-out accuracy {s['accuracy_start']:.3f} -> {s['accuracy_end']:.3f}; "
        if is_main:
            print(f"thinkrl: {'interrupted at' if s['interrupted'] else 'done,'} step {s['steps']}; {acc}"
                  f"{s['wall_seconds']:.0f}s; report {out / 'report.html'}")
        return 130 if s["interrupted"] else 0
    finally:
        if run_dir is not None:
            run_dir.release()
        distributed.shutdown()


def _score(args) -> int:
    from .rewards import get_reward  # deferred, as below: math-verify, sympy
    from .evaluation.score import format_summary, score_file
    from .rewards.steps import split_problems

    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    if not 0 < args.timeout < float("inf"):
        print(f"thinkrl score: --timeout must be a positive number of seconds, got {args.timeout}", file=sys.stderr)
        return 2
    split_bad = [] if args.step_split is None else split_problems(args.step_split, "--step-split") or (
        [] if args.step_split else ["--step-split is empty; leave it out for each step reward's own split"])
    if split_bad:
        print(f"thinkrl score: {split_bad[0]}", file=sys.stderr)
        return 2
    try:
        for name in names:  # a user's module is imported within --timeout (one that hangs or exits is an error)
            get_reward(name, import_timeout_s=args.timeout)
        params = parse_overrides(args.param)
    except (ValueError, ConfigError) as e:
        print(f"thinkrl score: {e}", file=sys.stderr)
        return 2
    unknown = [p for p in params if p not in names]
    if unknown or any(not isinstance(v, dict) for v in params.values()):
        print(f"thinkrl score: --param must look like REWARD.key=value for a reward in --rewards, got {args.param}",
              file=sys.stderr)
        return 2
    if not Path(args.data).is_file():
        print(f"thinkrl score: no such file {args.data}", file=sys.stderr)
        return 2
    try:  # settings a reward does not take or refuses, an --out that is the input, data that is not UTF-8
        result = score_file(names, args.data, args.out, params, timeout_s=args.timeout, step_split=args.step_split)
    except (ValueError, OSError) as e:
        print(f"thinkrl score: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print(f"thinkrl score: wrote {args.out}")
    return 0


def _eval(args, out: Path, config: str | None) -> int:
    from .evaluation.run import EvalRunConfig, eval_problems, format_results, run_eval  # deferred: torch

    try:
        cfg = load_into(EvalRunConfig(), config, args.overrides)
    except (ConfigError, OSError) as e:
        print(f"thinkrl eval: {e}", file=sys.stderr)
        return 2
    cfg.benchmarks = [b.strip() for arg in cfg.benchmarks for b in str(arg).split(",") if b.strip()]
    cfg.eval.seed = cfg.run.seed
    problems = eval_problems(cfg)
    if problems:
        print("thinkrl eval: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        write_text_atomic(out / "config.yaml", to_yaml(cfg))  # --resume evaluates again with these settings
        with threads_restored():
            set_threads(cfg.run.threads)
            results = run_eval(cfg.model, cfg.benchmarks, out, cfg.eval, data_dir=cfg.data_dir, device=cfg.device,
                               show_progress=cfg.run.progress)
    except (DataError, ValueError, OSError) as e:
        print(f"thinkrl eval: {e}", file=sys.stderr)
        return 2
    print(format_results(results))
    print(f"thinkrl eval: wrote {out / 'results.json'} and samples.jsonl")
    return 0


def _analyze(args) -> int:
    from .evaluation.analyze import analyze_run, format_analysis

    run = Path(args.run_dir)
    if not (run / "metrics.jsonl").exists():
        print(f"thinkrl analyze: {run} has no metrics.jsonl; give the directory of a thinkrl run", file=sys.stderr)
        return 2
    result = analyze_run(run)
    print(format_analysis(result))
    print(f"thinkrl analyze: plots in {run / 'analysis'}")
    return 0


def _tool_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"thinkrl {name}", description=TOOLS[name])
    if name == "score":
        p.add_argument("--rewards", required=True, help="comma-separated reward names or import paths")
        p.add_argument("--data", required=True, help="JSONL with completion, and prompt/answer/tests/... columns")
        p.add_argument("--out", required=True, help="output JSONL: one row per input row")
        p.add_argument("--param", action="append", default=[], metavar="REWARD.KEY=VALUE",
                       help="a reward's setting, e.g. accuracy.source=final (repeatable)")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds a reward may take on one batch")
        p.add_argument("--step-split", default=None, metavar="REGEX",
                       help="separator of the steps the step rewards score (default: each step reward's own)")
    elif name == "analyze":
        p.add_argument("run_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: rank 0 logs progress, the others only problems
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="thinkrl: %(message)s" if rank == 0 else f"thinkrl[rank {rank}]: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "math_verify", "latex2sympy2_extended"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    if argv and argv[0] == "build-tiny":
        from .task.build import main as build_main

        return build_main(argv[1:]) or 0
    if argv and argv[0] in TOOLS:
        args = _tool_parser(argv[0]).parse_args(argv[1:])
        return _score(args) if argv[0] == "score" else _analyze(args)
    parser = argparse.ArgumentParser(prog="thinkrl", description="Reasoning through reinforcement learning (GRPO, "
                                     "DeepSeek-R1). `thinkrl COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=cmd.help, add_help=False)
    for name, text in TOOLS.items():
        sub.add_parser(name, help=text, add_help=False)
    parser.parse_args(argv)  # prints the help, or the error for an unknown command
    return 2


if __name__ == "__main__":
    sys.exit(main())
