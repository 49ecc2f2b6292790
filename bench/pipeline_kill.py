"""`thinkrl pipeline` killed with SIGKILL at seeded random moments and resumed each time: does it
end with the same table as a run straight through? Prints JSON.

    .venv/bin/python bench/pipeline_kill.py --out runs/kill-check                  # the default graph, 5 kills
    .venv/bin/python bench/pipeline_kill.py --reference runs/r1 --out runs/kill-check
    .venv/bin/python bench/pipeline_kill.py --small --out /tmp/kill-small          # the same graph, a few steps per stage

The run straight through is `--reference ROOT` (a finished pipeline root of the same config),
or the script runs one first into OUT/reference. The killed run goes into OUT/killed. Each kill
targets a stage and a moment inside it: one reward-model (`rm`) stage and the `distill` stage
always, the others drawn in proportion to each stage's time in the reference run, each at a
random fraction of that time after the stage started working (in the run being killed), or
the moment it finishes if it is faster; a kill never goes past the end of its target stage, so
the later targets are still ahead. Which stages were running at each kill is read from the `NAME-KEY.partial/` directories the
pipeline works in. Result: `kills` (when, target, running), `rm_killed`, `distill_killed`,
`equal` (the tables' cells, timings aside), `differing_cells`, and `models_differ` (stages whose
model weights differ from the reference's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from thinkrl.pipeline.run import load_stages
from thinkrl.pipeline.table import table_differences

# --small: the default graph at a few steps per stage (a few minutes instead of 20+)
GRPO_SMALL = ["train.steps=6", "train.save_every=2", "train.prompts_per_step=4", "data.eval_size=16"]
SFT_SMALL = ["train.epochs=1", "train.batch_size=8", "train.micro_batch_size=8", "train.save_every=2"]
SMALL = {
    "zero": GRPO_SMALL, "reasoning_rl": GRPO_SMALL, "all_rl": GRPO_SMALL, "student_rl": GRPO_SMALL,
    "sft_coldstart": SFT_SMALL, "sft_stage3": SFT_SMALL,
    "coldstart": ["prompts.limit=48"], "reject": ["prompts.limit=48"],
    "rm_helpful": ["train.steps=80"], "rm_harmless": ["train.steps=40"],
    "distill": ["data.max_prompts=48", "eval.size=16"] + ["sft." + o for o in SFT_SMALL],
}
EVAL_SMALL = ["limit=16", "general_limit=8"]


def small_overrides(names: list[str]) -> list[str]:
    return [f"{n}.{o}" for n in names for o in SMALL.get(n, EVAL_SMALL if n.startswith("eval_") else [])]


def command(args, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "thinkrl.cli", "pipeline", "--out", str(out)]
    return cmd + (["--config", args.config] if args.config else []) + args.overrides


def records(root: Path) -> dict[str, dict]:
    index = json.loads((root / "stages.json").read_text())
    return {n: json.loads((Path(d) / "stage.json").read_text()) for n, d in index.items()}


def finished(root: Path, name: str) -> bool:
    return any((p / "stage.json").exists() for p in (root / "stages").glob(f"{name}-*") if not p.suffix)


def working_since(root: Path, name: str, t0: float) -> bool:
    """Has the stage's .partial directory changed (a file made, renamed or removed in it or
    below it) since t0: is the stage working in this run, not only left by a killed one?"""
    for p in (root / "stages").glob(f"{name}-*.partial"):
        for d, _, _ in os.walk(p):
            try:
                if os.stat(d).st_mtime >= t0:
                    return True
            except OSError:  # removed meanwhile (a stage starting over)
                continue
    return False


def running(root: Path) -> list[str]:
    """The stages working now (or killed and not resumed yet): their .partial directories."""
    return sorted(p.name.rsplit("-", 1)[0] for p in (root / "stages").glob("*.partial")) if (root / "stages").is_dir() else []


def plan_kills(stages: list[tuple[str, str]], seconds: dict[str, float], n: int, rng: random.Random) -> list[dict]:
    """n (stage, fraction) targets: an rm stage and the distill stage first, the rest drawn by time."""
    targets = []
    for kind in ("rm", "distill"):
        of_kind = [s for s, k in stages if k == kind]
        if of_kind and len(targets) < n:  # early in the stage, so that it is still running
            targets.append({"target": rng.choice(of_kind), "fraction": round(rng.uniform(0.05, 0.4), 3)})
    timed = [s for s, _ in stages if seconds.get(s, 0) > 0]
    while len(targets) < n:
        stage = rng.choices(timed, [seconds[s] for s in timed])[0]
        targets.append({"target": stage, "fraction": round(rng.uniform(0.05, 0.95), 3)})
    order = {s: i for i, (s, _) in enumerate(stages)}
    return sorted(targets, key=lambda t: (order[t["target"]], t["fraction"]))


def kill_once(args, root: Path, target: dict, names: list[str], seconds: dict[str, float], log,
              t_first: float) -> dict | None:
    """Start (or resume) the pipeline and kill it at the target's moment: `fraction` of the
    stage's reference time after it starts working, or as soon as it finishes if it is faster.
    A target an earlier kill already went past moves to the first unfinished stage after it.
    None if the pipeline ended first."""
    proc = subprocess.Popen(command(args, root), stdout=log, stderr=subprocess.STDOUT)
    t0, started = time.time(), None
    stage = next((n for n in names[names.index(target["target"]):] if not finished(root, n)), names[-1])
    delay = target["fraction"] * seconds.get(stage, 0.0)
    while proc.poll() is None:
        if started is None and working_since(root, stage, t0):
            started = time.time()
        done = finished(root, stage)
        if done or (started is not None and time.time() - started >= delay):
            now = running(root)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return {**target, "stage": stage, "after_s": round(time.time() - t0, 1),
                    "pipeline_s": round(time.time() - t_first, 1), "stage_finished_first": done,
                    "in_stage_s": round(time.time() - started, 1) if started else None, "running": now}
        time.sleep(0.05)
    return None


def killed_in(kind: str, stages: list[tuple[str, str]], kills: list[dict]) -> bool:
    """Did a kill land while a stage of this kind was running?"""
    names = {s for s, k in stages if k == kind}
    return any(names & set(k["running"]) for k in kills)


def weights(root: Path) -> dict[str, str]:
    out = {}
    for n, r in records(root).items():
        f = Path(r["outputs"].get("model", "-")) / "model.safetensors"
        if f.is_file():
            out[n] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def table(root: Path) -> str:
    return Path(records(root)["report"]["outputs"]["table"]).read_text()


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--out", required=True, help="directory for the killed run (OUT/killed) and, unless --reference, "
                                                 "the run straight through (OUT/reference)")
    ap.add_argument("--reference", help="a finished pipeline root of the same config to compare with")
    ap.add_argument("--config", help="pipeline YAML (default: the default R1 graph)")
    ap.add_argument("--small", action="store_true", help="a few steps per stage of the graph (a quick check)")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="STAGE.key=value, passed to every pipeline run")
    args = ap.parse_intermixed_args()
    out = Path(args.out)
    killed = out / "killed"
    if killed.exists() and any(killed.iterdir()):
        print(f"pipeline_kill: {killed} is not empty; give another --out", file=sys.stderr)
        return 2
    stages = [(s.name, s.kind) for s in load_stages(args.config, [])]
    if args.small:
        args.overrides = small_overrides([s for s, _ in stages]) + args.overrides
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    with open(out / "pipeline.log", "a") as log:
        reference = Path(args.reference) if args.reference else out / "reference"
        if not args.reference:
            print(f"pipeline_kill: the run straight through, into {reference}", file=sys.stderr)
            if subprocess.run(command(args, reference), stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                print(f"pipeline_kill: the reference run failed; see {out / 'pipeline.log'}", file=sys.stderr)
                return 1
        seconds = {n: r.get("seconds", 0.0) for n, r in records(reference).items()}
        kills, t_first = [], time.time()
        for i, target in enumerate(plan_kills(stages, seconds, args.kills, random.Random(args.seed))):
            print(f"pipeline_kill: kill {i + 1}: {target['target']} at {target['fraction']:.0%} of its "
                  f"{seconds.get(target['target'], 0):.0f} s", file=sys.stderr)
            k = kill_once(args, killed, target, [n for n, _ in stages], seconds, log, t_first)
            if k is None:
                print("pipeline_kill: the pipeline finished before the kill", file=sys.stderr)
                break
            kills.append(k)
            print(f"pipeline_kill:   killed after {k['after_s']} s; running: {k['running']}", file=sys.stderr)
        done = subprocess.run(command(args, killed), stdout=log, stderr=subprocess.STDOUT).returncode
    result = {"bench": "pipeline_kill", "config": args.config or "default", "small": args.small,
              "overrides": args.overrides, "seed": args.seed, "reference": str(reference), "killed_root": str(killed),
              "kills": kills, "rm_killed": killed_in("rm", stages, kills),
              "distill_killed": killed_in("distill", stages, kills),
              "resumed_exit_code": done, "wall_s": round(time.time() - t_all, 1)}
    if done == 0:
        diff = table_differences(table(reference), table(killed))
        ref_w, got_w = weights(reference), weights(killed)
        result.update(equal=not diff, differing_cells=diff,
                      models_differ=sorted(n for n in ref_w.keys() | got_w.keys() if ref_w.get(n) != got_w.get(n)))
    else:
        result.update(equal=False, error=f"the last resume exited with {done}; see {out / 'pipeline.log'}")
    print(json.dumps(result, indent=1))
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
