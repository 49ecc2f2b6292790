"""The `thinkrl` command.

    thinkrl zero  [--out DIR] [--resume] [section.key=value ...]   R1-Zero on the embedded tiny model
    thinkrl train --config FILE.yaml [--out DIR] [--resume] [...]   the same GRPO for any causal LM
    thinkrl build-tiny [--out DIR]                                  rebuild the embedded model and task
    thinkrl score --rewards A,B --data IN.jsonl --out OUT.jsonl     rewards on a file of completions
    thinkrl eval --model M --benchmark B[,B...] --samples K --out DIR   pass@1, cons@K, pass@k (R1 protocol)
    thinkrl analyze RUN_DIR                                         length, reflection, accuracy plots of a run

Data-parallel training over N processes (see thinkrl.distributed): prefix `zero` or `train`
with torchrun, e.g. `torchrun --nproc_per_node N -m thinkrl.cli train --config FILE.yaml`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, describe, load_config


def _run_training(args, config_path: str | None) -> int:
    from .data import DataError
    from .rundir import RunDirError, claim, latest_run

    out = Path(args.out) if args.out else None
    if args.resume and out is None:
        out = latest_run(Path("runs"))
        if out is None:
            print("thinkrl: --resume: no run under runs/ to resume; give --out DIR", file=sys.stderr)
            return 2
    if args.resume and config_path is None and (out / "config.yaml").exists():
        config_path = str(out / "config.yaml")  # continue the run with the settings it started with
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.no_progress:
        overrides.append("log.progress=false")
    if args.profile:
        overrides.append("train.profile=true")
    try:
        cfg = load_config(config_path, overrides)
    except (ConfigError, OSError) as e:
        print(f"thinkrl: {e}", file=sys.stderr)
        return 2

    from . import distributed
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
    from .config import ConfigError, parse_overrides
    from .rewards import get_reward
    from .evaluation.score import format_summary, score_file

    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    if not 0 < args.timeout < float("inf"):
        print(f"thinkrl score: --timeout must be a positive number of seconds, got {args.timeout}", file=sys.stderr)
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
        result = score_file(names, args.data, args.out, params, timeout_s=args.timeout)
    except (ValueError, OSError) as e:
        print(f"thinkrl score: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print(f"thinkrl score: wrote {args.out}")
    return 0


def _eval(args) -> int:
    from .data import DataError
    from .evaluation.run import EvalSettings, format_results, run_eval

    names = [b.strip() for arg in args.benchmark for b in arg.split(",") if b.strip()]
    if args.samples < 1 or args.batch_size < 1 or any(v is not None and v < 1 for v in (args.limit, args.max_new_tokens)):
        print("thinkrl eval: --samples, --limit, --max-new-tokens and --batch-size must be >= 1", file=sys.stderr)
        return 2
    if not (args.temperature > 0 and 0 < args.top_p <= 1):
        print("thinkrl eval: --temperature must be > 0 (the R1 protocol samples, never greedy) and --top-p in (0, 1]",
              file=sys.stderr)
        return 2
    s = EvalSettings(samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                     max_new_tokens=args.max_new_tokens, template=args.template, seed=args.seed, limit=args.limit,
                     batch_size=args.batch_size)
    try:
        results = run_eval(args.model, names, args.out, s, data_dir=args.data_dir, device=args.device,
                           show_progress=not args.no_progress)
    except (DataError, ValueError, OSError) as e:
        print(f"thinkrl eval: {e}", file=sys.stderr)
        return 2
    print(format_results(results))
    print(f"thinkrl eval: wrote {Path(args.out) / 'results.json'} and samples.jsonl")
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


STAGE_COMMANDS = {
    "sft": "supervised fine-tuning (response tokens only, packing, chat templates)",
    "coldstart": "stage 1: a cold-start set of readable long chains of thought",
    "reject": "stage 3: rejection sampling (rules or a generative judge), filters, dedup, mix",
    "rm": "train a Bradley-Terry reward model on preference pairs",
    "distill": "distil a teacher into a student by SFT (or on-policy, reverse KL)",
    "pipeline": "the four-stage R1 pipeline and distillation, as a cached, resumable graph",
}
STAGE_MODULES = {"sft": ".train.sft", "coldstart": ".pipeline.coldstart", "reject": ".pipeline.reject",
                 "rm": ".train.reward_model", "distill": ".distill.run", "pipeline": ".pipeline.run"}


def main(argv: list[str] | None = None) -> int:
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: rank 0 logs progress, the others only problems
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="thinkrl: %(message)s" if rank == 0 else f"thinkrl[rank {rank}]: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "math_verify", "latex2sympy2_extended"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(prog="thinkrl", description="Reasoning through reinforcement learning (GRPO, DeepSeek-R1).")
    sub = parser.add_subparsers(dest="command", required=True)

    def training_args(p):
        p.add_argument("--out", help="run directory (default a new runs/<timestamp>-XXXX; with --resume, the newest run)")
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
        p.add_argument("--overwrite", action="store_true", help="replace the thinkrl run already in --out")
        p.add_argument("--steps", type=int, help="override train.steps")
        p.add_argument("--profile", action="store_true", help="time each phase of a step precisely (CUDA sync)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
        p.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=1e-5 rollout.group_size=16")

    p_zero = sub.add_parser("zero", help="R1-Zero GRPO on the embedded tiny model and task (the main job)")
    training_args(p_zero)
    p_train = sub.add_parser("train", help="GRPO on any transformers causal LM from a YAML config")
    p_train.add_argument("--config", required=False, help="YAML config (see configs/)")
    training_args(p_train)
    p_build = sub.add_parser("build-tiny", help="rebuild the embedded tiny model, tokenizer and task data")
    p_build.add_argument("rest", nargs=argparse.REMAINDER)

    p_score = sub.add_parser("score", help="score a JSONL file of completions with named rewards, with reasons")
    p_score.add_argument("--rewards", required=True, help="comma-separated reward names or import paths")
    p_score.add_argument("--data", required=True, help="JSONL with completion, and prompt/answer/tests/... columns")
    p_score.add_argument("--out", required=True, help="output JSONL: one row per input row")
    p_score.add_argument("--param", action="append", default=[], metavar="REWARD.KEY=VALUE",
                         help="a reward's setting, e.g. accuracy.source=final (repeatable)")
    p_score.add_argument("--timeout", type=float, default=60.0, help="seconds a reward may take on one batch")

    p_eval = sub.add_parser("eval", help="evaluate a model by the R1 protocol: K samples per question")
    p_eval.add_argument("--model", required=True, help="local directory, hub id, or 'embedded'")
    p_eval.add_argument("--benchmark", action="append", required=True,
                        help="gsm8k, math500, humaneval, aime, embedded, aime:PATH, jsonl:PATH[?question=COL&answer=COL]"
                             " (repeatable or comma-separated)")
    p_eval.add_argument("--samples", type=int, default=16, help="K samples per question (default 16)")
    p_eval.add_argument("--out", required=True, help="directory for results.json and samples.jsonl")
    p_eval.add_argument("--limit", type=int, help="at most this many questions per benchmark")
    p_eval.add_argument("--temperature", type=float, default=0.6)
    p_eval.add_argument("--top-p", type=float, default=0.95)
    p_eval.add_argument("--max-new-tokens", type=int, help="completion budget (default: min(512, half the context))")
    p_eval.add_argument("--template", default="r1_zero", help="r1_zero, chat, none, or a string with {prompt}")
    p_eval.add_argument("--batch-size", type=int, default=64, help="completions per generation call")
    p_eval.add_argument("--seed", type=int, default=0)
    p_eval.add_argument("--data-dir", help="where the benchmark files are (default $THINKRL_DATA or ../shared/data)")
    p_eval.add_argument("--device", default="auto")
    p_eval.add_argument("--no-progress", action="store_true")
    p_analyze = sub.add_parser("analyze", help="the paper's analyses of a run: length, reflective words, accuracy")
    p_analyze.add_argument("run_dir")

    # the R1 pipeline's commands: each module parses its own arguments (`thinkrl sft --help`)
    for name, helptext in STAGE_COMMANDS.items():
        sub.add_parser(name, help=helptext, add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in STAGE_COMMANDS:
        import importlib

        return importlib.import_module(STAGE_MODULES[argv[0]], __package__).main(argv[1:]) or 0

    if argv and argv[0] in ("zero", "train"):  # section.key=value overrides anywhere among the flags
        args = {"zero": p_zero, "train": p_train}[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
    else:
        args = parser.parse_args(argv)
    if args.command == "zero":
        return _run_training(args, None)
    if args.command == "train":
        if args.config is None and not args.resume:
            parser.error("train needs --config FILE.yaml (or --resume --out DIR)")
        return _run_training(args, args.config)
    if args.command == "score":
        return _score(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "analyze":
        return _analyze(args)
    if args.command == "build-tiny":
        from .task.build import main as build_main

        return build_main(args.rest) or 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
