"""The samples a GRPO step learns from: questions drawn, G completions each, scored, and their
advantages, outcome- or process-supervised; with DAPO's dynamic sampling, more rounds until
enough groups carry a signal.

Outcome supervision (`objective.advantage: outcome`): one reward per completion, one
advantage per completion (`objective.group_advantages`).

Process supervision (`objective.advantage: process`, DeepSeekMath §4.1.3): the step rewards
(`rewards.step_weights`, contract in `rewards.steps`) score each step of each completion,
ending at a character offset; the end is mapped to the completion's token holding that
character (`token_ends`), the outcome rewards (`rewards.weights`, may be empty) join the
last step, and `objective.process_advantages` gives each token its advantage.

Dynamic sampling (`rollout.dynamic_sampling`, DAPO arXiv 2503.14476 §3.2): a group whose
rewards (for process supervision: step rewards) are all equal has advantage 0 everywhere and
carries no gradient. A step then keeps drawing questions, as many as are still missing, until
`train.prompts_per_step` informative groups are in or `rollout.max_sample_rounds` rounds have
run (then it trains on what it has, and says so in the metrics); extra groups of the last round
are dropped (with several processes: the last processes' last groups), so the update always
holds at most `prompts_per_step` groups. The questions are drawn from the same seeded order as
always, so a run is deterministic under its seed and `--resume` continues it. The metrics of the
step (reward, length, accuracy...) are those of every sample drawn; the update uses the kept ones.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .. import distributed
from ..objective import group_advantages, process_advantages
from ..rewards.combine import TypedRewards, WeightedRewards
from ..rewards.steps import WeightedStepRewards
from ..rollout import Pending, Rollouts, SamplingParams, make_engine
from ..sharding import gathered


@dataclass
class StepSamples:
    """Everything drawn in one step (`drawn`, with its rows and rewards, all rounds), and what the
    update learns from (`prompt_ids`, `completion_ids`, `group_ids`, `advantages`)."""

    drawn: Rollouts
    rows: list[dict]  # one per drawn completion
    total: list[float]
    per_reward: dict[str, list]
    zero_std: list[bool]  # per drawn group
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    group_ids: list[int]
    advantages: torch.Tensor  # [N] (outcome) or [N, max length] (process)
    nonfinite: dict[str, int] = field(default_factory=dict)  # NaN/inf reward values, this process
    sampling: dict[str, float] = field(default_factory=dict)  # dynamic sampling's numbers (whole batch)
    timing: dict[str, float] = field(default_factory=dict)  # generate, reward: seconds over all rounds
    staleness: int = 0  # asynchronous rollouts: policy versions between the sampler and the learner
    behaviour_logprobs: list[list[float]] | None = None  # asynchronous rollouts: the sampler's, per token


class Round(NamedTuple):
    """One round of sampling: this process's questions' G samples each, scored."""

    rollouts: Rollouts
    rows: list[dict]  # one per completion
    total: list[float]
    per_reward: dict[str, list]
    advantages: torch.Tensor  # [N] or [N, max length]
    zero_std: list[bool]  # per group
    nonfinite: dict[str, int]


def token_ends(decode, ids: list[int], char_ends: list[int]) -> list[int]:
    """For each character offset, the index of the completion token that holds the character
    before it: the first k with len(decode(ids[:k + 1])) >= end (binary search over prefixes,
    so a step costs O(log T) decodes; `decode` is the one that made the text)."""
    lengths: dict[int, int] = {}

    class Prefixes:
        def __len__(self):
            return len(ids)

        def __getitem__(self, k):
            if k not in lengths:
                lengths[k] = len(decode(ids[: k + 1]))
            return lengths[k]

    return [min(bisect.bisect_left(Prefixes(), e), max(len(ids) - 1, 0)) for e in char_ends]


class StepSampling:
    """The sampling part of `GRPOTrainer` (its attributes: cfg, sampler, policy, generator,
    train_rows, train_prompts, tokenizer, device, step; `_sync`)."""

    def build_sampling(self) -> None:
        """The rollout engine (in this process, or Ray workers), the outcome rewards (none at all
        is allowed with process supervision), the step rewards, the generations in flight."""
        cfg, r, rw = self.cfg, self.cfg.rollout, self.cfg.rewards
        self.engine = make_engine(r.engine, self.policy, self.tokenizer, self.device, workers=r.workers,
                                  ray_address=cfg.ray.address, ray_num_cpus=cfg.ray.num_cpus,
                                  model_path=cfg.model.path, dtype=cfg.model.dtype)
        self.pad_id = self.engine.pad_id
        where = dict(workers=rw.workers, ray_actors=rw.ray_actors, ray_address=cfg.ray.address,
                     ray_num_cpus=cfg.ray.num_cpus)
        if rw.by_type:  # R1 stage 4: each row's type picks its rewards
            self.rewards = TypedRewards(rw.weights, rw.by_type, cfg.data.type_field, rw.params, rw.timeout_s,
                                        rw.on_error, rw.isolate, **where)
        else:
            self.rewards = WeightedRewards(rw.weights, rw.params, rw.timeout_s, rw.on_error, rw.isolate, **where) \
                if rw.weights else None
        self.step_rewards = WeightedStepRewards(rw.step_weights, rw.params, rw.step_split, rw.timeout_s, rw.on_error,
                                                rw.isolate) if cfg.objective.advantage == "process" else None
        if self.rewards is not None:
            self.rewards.warm_up()  # reward workers start while the run gets ready, not at its first odd answer
        self.in_flight = []  # asynchronous rollouts: generations submitted for the coming steps

    def close_sampling(self) -> None:
        """Ray workers stop with the run (an engine in this process has nothing to stop)."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def submit_round(self, n_questions: int):
        """Start sampling n questions (this process's share), G samples each: (indices, Pending)."""
        r = self.cfg.rollout
        idx = distributed.shard(self.sampler.next(n_questions))
        params = SamplingParams(n=r.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens, stop=list(r.stop))
        with gathered(self.policy):  # sharded: the whole model on every process while it samples
            return idx, self.engine.submit([self.train_prompts[i] for i in idx], params, generator=self.generator)

    def draw_round(self, n_questions: int, timing: dict):
        """One round: n questions drawn, sampled, scored, their advantages."""
        t0 = time.perf_counter()
        return self.finish_round(*self.submit_round(n_questions), timing, t0)

    def finish_round(self, idx: list[int], pending, timing: dict, t0: float | None = None):
        """A submitted round's samples (waited for), rewards and advantages."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        t0 = time.perf_counter() if t0 is None else t0
        rollouts = self._result(pending)
        self._sync()
        t1 = time.perf_counter()
        timing["generate"] = timing.get("generate", 0.0) + t1 - t0
        rows = [self.train_rows[i] for i in idx for _ in range(G)]
        lengths = [len(c) for c in rollouts.completion_ids]
        total, per_reward = self.rewards(rollouts.texts, rows, prompts=[row["question"] for row in rows],
                                         completion_lengths=lengths) if self.rewards else ([0.0] * len(rows), {})
        nonfinite = dict(self.rewards.nonfinite) if self.rewards else {}
        if self.step_rewards is None:
            advantages, zero_std = group_advantages(torch.tensor(total, dtype=torch.float32), G, cfg.scale_std)
        else:
            steps, step_means = self.step_rewards(rollouts.texts, rows, prompts=[row["question"] for row in rows])
            per_reward.update(step_means)
            nonfinite.update(self.step_rewards.nonfinite)
            decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731  (as the engine)
            token_steps = [list(zip(token_ends(decode, ids, [e for e, _ in s]), [v for _, v in s]))
                           for ids, s in zip(rollouts.completion_ids, steps)]
            advantages, zero_std = process_advantages(token_steps, G, lengths,
                                                      outcome=total if self.rewards else None,
                                                      scale_std=cfg.scale_std)
        timing["reward"] = timing.get("reward", 0.0) + time.perf_counter() - t1
        return Round(rollouts, rows, total, per_reward, advantages, zero_std.tolist(), nonfinite)

    def collect(self) -> StepSamples:
        if self.cfg.rollout.async_steps:
            return self.collect_async()
        cfg, r = self.cfg, self.cfg.rollout
        target, world = cfg.train.prompts_per_step, distributed.world_size()
        parts, kept, informative, rounds, drawn_questions, timing = [], [], 0, 0, 0, {}
        while True:
            need = target - informative  # questions still missing (all processes), whole groups per process
            n = -(-need // world) * world
            part = self.draw_round(n, timing)
            rounds, drawn_questions = rounds + 1, drawn_questions + n
            parts.append(part)
            use = [g for g, flat in enumerate(part.zero_std) if not (r.dynamic_sampling and flat)]
            kept.append(use)
            if not r.dynamic_sampling:
                break
            informative += int(distributed.sum_values([len(use)], dtype=torch.int64)[0])
            if informative >= target or rounds >= r.max_sample_rounds:
                break
        if informative > target:  # the last round's extra groups go, the last processes' first
            counts = distributed.gather_objects(len(kept[-1]))
            excess = informative - target
            for rank in reversed(range(world)):
                drop = min(excess, counts[rank])
                if rank == distributed.rank():
                    kept[-1] = kept[-1][: len(kept[-1]) - drop]
                excess -= drop
        samples = self._assemble(parts, kept, rounds, drawn_questions, target, min(informative, target))
        samples.timing = timing
        return samples

    def _assemble(self, parts: list[Round], kept, rounds, drawn_questions, target, informative) -> StepSamples:
        G = self.cfg.rollout.group_size
        drawn = Rollouts.concat([p.rollouts for p in parts])
        rows = [row for p in parts for row in p.rows]
        total = [x for p in parts for x in p.total]
        per_reward = {n: [x for p in parts for x in p.per_reward[n]] for n in parts[0].per_reward}
        zero_std = [z for p in parts for z in p.zero_std]
        nonfinite = {n: sum(p.nonfinite.get(n, 0) for p in parts) for n in parts[0].nonfinite}
        prompt_ids, completion_ids, group_ids, adv = [], [], [], []
        offset = 0  # the first group of this round in `drawn`
        for p, use in zip(parts, kept):
            for g in use:
                for i in range(g * G, (g + 1) * G):
                    prompt_ids.append(p.rollouts.prompt_ids[i])
                    completion_ids.append(p.rollouts.completion_ids[i])
                    group_ids.append(offset + g)
                    adv.append(p.advantages[i])
            offset += len(p.zero_std)
        if not adv:
            advantages = torch.zeros(0)
        elif adv[0].dim() == 0:
            advantages = torch.stack(adv)
        else:  # per token: padded to the longest kept completion
            width = max(a.numel() for a in adv)
            advantages = torch.stack([torch.nn.functional.pad(a, (0, width - a.numel())) for a in adv])
        sampling = {}
        if self.cfg.rollout.dynamic_sampling:
            groups_drawn = int(distributed.sum_values([len(zero_std)], dtype=torch.int64)[0])
            flat = int(distributed.sum_values([sum(zero_std)], dtype=torch.int64)[0])
            sampling = {"sampling/rounds": rounds, "sampling/prompts_drawn": drawn_questions,
                        "sampling/informative_groups": informative,
                        "sampling/filtered_frac": flat / max(groups_drawn, 1),  # groups without a signal
                        "sampling/short": int(informative < target)}
        return StepSamples(drawn, rows, total, per_reward, zero_std, prompt_ids, completion_ids, group_ids,
                           advantages, nonfinite, sampling)

    def collect_async(self) -> StepSamples:
        """Asynchronous rollouts (rollout.async_steps = k): the generations of the next k steps
        are submitted before this step's update, so an engine with workers of its own samples
        while the trainer learns; step t learns from samples drawn by policy version t - k (at
        the start: 0), each token with its behaviour log-prob for the truncated importance weight
        (objective.tis_cap, `objective.grpo_loss`)."""
        k, n, timing = self.cfg.rollout.async_steps, self.cfg.train.prompts_per_step, {}
        t0 = time.perf_counter()
        while len(self.in_flight) < k + 1:  # version: the policy's updates so far when it was submitted
            self.in_flight.append((self.step, *self.submit_round(n)))
        version, idx, pending = self.in_flight.pop(0)
        part = self.finish_round(idx, pending, timing, t0)
        samples = self._assemble([part], [list(range(len(part.zero_std)))], 1, n, n, n)
        samples.timing, samples.staleness = timing, self.step - version
        samples.behaviour_logprobs = part.rollouts.logprobs
        return samples

    def in_flight_state(self) -> list:
        """The submitted generations as plain values, for a checkpoint (waited for first)."""
        return [(v, idx, dataclasses.asdict(self._result(p))) for v, idx, p in self.in_flight]

    def _result(self, pending: Pending) -> Rollouts:
        if pending.result is None:  # an engine's own handle: wait on it, once
            pending.result = self.engine.wait(pending)
        return pending.result

    def load_in_flight_state(self, state: list) -> None:
        self.in_flight = [(v, idx, Pending(Rollouts(**r))) for v, idx, r in state]
