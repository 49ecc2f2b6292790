"""Rollouts sampled by Ray actors (rollout.engine=ray): `workers` actors, each with its own
copy of the policy, on a local Ray cluster or one joined by address (ray.address).

The questions of a call are spread over the actors by whole groups, in contiguous chunks as
even as possible, and each chunk is sampled with a seed drawn from the caller's generator (one
per chunk, in chunk order), so what comes back depends only on that generator: not on timing,
nor on which actor ran which chunk, nor on an actor dying and its chunk being run again.

Weights: `sync_weights` puts the policy's state dict in the object store once and every actor
loads it; an actor runs its calls in the order they were submitted, so a sync submitted after a
generation applies after it. An actor that dies is replaced by a new one with the weights its
chunk was submitted under, the chunk is run again with its seed (the same samples), and the
actor is then given the current weights.

Ray is an optional dependency (thinkrl[ray]): it is imported only when an engine or a reward
pool is built.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from dataclasses import dataclass

import torch

from ..policy import load_model
from ..ray_cluster import acquire_ray, dead_actor_errors, kill_actor, release_ray, split_evenly
from .engine import Pending, Rollouts, SamplingParams
from .hf import HFEngine

log = logging.getLogger("thinkrl.rollout")

MAX_RETRIES = 3  # times one chunk is run again on a new actor before the call fails
START_TIMEOUT_S = 600.0  # for the actors to start (a joined cluster may have to scale up first)


class RolloutWorker:
    """A Ray actor's state: the model loaded as the trainer loads it, sampled by an HFEngine with
    the caller's own tokenizer (sent whole: model.tokenizer may name another than the model's)."""

    def __init__(self, model_path: str, tokenizer, device: str, threads: int):
        if device == "cpu" and threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        # as the trainer loads its policy, parameters that require grad included: on the CPU that
        # picks other kernels than frozen ones (log-probs 1e-7 apart), and samples must match it
        self.engine = HFEngine(load_model(model_path, self.device), tokenizer, self.device)

    def ready(self) -> bool:
        return True

    def load(self, state: dict) -> bool:
        self.engine.model.load_state_dict(state)
        return True

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seed: int) -> Rollouts:
        return self.engine.generate(prompt_ids, params, generator=torch.Generator().manual_seed(seed))


@dataclass
class _Job:
    """What `RayEngine.submit` started: enough to run any chunk again."""
    prompt_ids: list[list[int]]
    params: SamplingParams
    chunks: list[tuple[int, int]]
    seeds: list[int]
    refs: list  # one object ref per chunk; chunk k ran on actor slot k
    actors: list  # the actor handle each chunk was sent to
    weights: object  # the weights ref current when it was submitted


def _close_at_exit(ref) -> None:
    engine = ref()
    if engine is not None:
        engine.close()


class RayEngine:
    """A `RolloutEngine` over `workers` Ray actors. `model_path` is what each actor loads (the
    trainer's model.path: the same loader), then it is given `model`'s weights at once, so a
    resumed or already-updated policy samples as itself. Actors sample on the CPU with one torch
    thread each and one CPU of the cluster reserved, or on a GPU each with `gpus_per_worker`.
    Sampling is in float32 as HFEngine's (`dtype` is accepted for the trainer's call and unused)."""

    def __init__(self, model, tokenizer, device, workers: int = 2, ray_address: str = "", ray_num_cpus: int = 0,
                 model_path: str | None = None, dtype: str = "auto", gpus_per_worker: float = 0,
                 threads_per_worker: int = 1):
        import ray

        if not model_path:
            raise ValueError("rollout.engine=ray needs the model's path (model.path): each worker loads it")
        if workers < 1:
            raise ValueError(f"rollout.workers={workers}: at least 1 Ray worker")
        local = HFEngine(model, tokenizer, device)  # the trainer's view of padding and EOS
        self.pad_id, self.eos_ids = local.pad_id, local.eos_ids
        self.model_path, self.dtype = model_path, dtype
        self.worker_device = "cuda" if gpus_per_worker else "cpu"
        self.threads = threads_per_worker
        self._closed = False
        self._shared = acquire_ray(ray_address, ray_num_cpus)
        try:
            cpus = ray.cluster_resources().get("CPU", 0)
            if self._shared and not ray_address and cpus < workers:
                raise ValueError(f"rollout.workers={workers} Ray workers take one CPU each but the local Ray "
                                 f"cluster has {cpus:g}: set ray.num_cpus >= {workers} or fewer rollout.workers")
            self._cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=0)(RolloutWorker)
            self._weights, self._tokenizer = None, ray.put(tokenizer)
            self.actors = [self._start() for _ in range(workers)]
            self._wait_ready(self.actors)
            self.sync_weights(model)
        except BaseException:
            self.close()
            raise
        atexit.register(_close_at_exit, weakref.ref(self))

    # actors

    def _start(self):
        actor = self._cls.remote(self.model_path, self._tokenizer, self.worker_device, self.threads)
        if self._weights is not None:
            actor.load.remote(self._weights)
        return actor

    def _wait_ready(self, actors) -> None:
        import ray

        refs = [a.ready.remote() for a in actors]
        try:
            ray.get(refs, timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"the Ray rollout workers did not start within {START_TIMEOUT_S:g} s: the cluster "
                               f"({ray.cluster_resources()}) may lack a free CPU (or GPU) per worker") from None
        except dead_actor_errors() as e:
            raise RuntimeError(f"a Ray rollout worker could not start (loading {self.model_path!r}): {e}") from None

    def _replace(self, slot: int, dead, why: BaseException):
        """The actor in `slot` (if it is still `dead`) killed and a new one started with the current weights."""
        if self.actors[slot] is dead:
            log.warning("Ray rollout worker %d died (%s); starting a new one and running its questions again",
                        slot, type(why).__name__)
            kill_actor(dead)
            self.actors[slot] = self._start()
        return self.actors[slot]

    # the RolloutEngine interface

    def sync_weights(self, model) -> None:
        """The policy's weights, on the CPU, put in the object store once and loaded by every actor
        after the calls already submitted to it. Returns at once; a load that failed is raised by
        the next `wait`."""
        import ray

        state = {k: v.detach().to("cpu", copy=False) for k, v in model.state_dict().items()}
        self._weights = ray.put(state)
        self._loads = [(slot, a, a.load.remote(self._weights)) for slot, a in enumerate(self.actors)]

    def submit(self, prompt_ids, params: SamplingParams, generator: torch.Generator | None = None) -> Pending:
        chunks = split_evenly(len(prompt_ids), len(self.actors))
        seeds = [int(torch.randint(2**62, (1,), generator=generator)) for _ in chunks]
        actors = self.actors[: len(chunks)]
        refs = [a.generate.remote([list(p) for p in prompt_ids[s:e]], params, seed)
                for a, (s, e), seed in zip(actors, chunks, seeds)]
        return Pending(handle=_Job(list(prompt_ids), params, chunks, seeds, refs, list(actors), self._weights))

    def wait(self, pending: Pending) -> Rollouts:
        if pending.result is not None:
            return pending.result
        job: _Job = pending.handle
        self._check_loads()
        parts = [self._chunk(job, k) for k in range(len(job.chunks))]
        pending.result, pending.handle = Rollouts.concat(parts), None
        return pending.result

    def generate(self, prompt_ids, params: SamplingParams, generator: torch.Generator | None = None) -> Rollouts:
        return self.wait(self.submit(prompt_ids, params, generator))

    def _check_loads(self) -> None:
        """Raise a weight load that failed other than by its actor dying (that is retried)."""
        import ray

        for slot, actor, ref in getattr(self, "_loads", []):
            try:
                ray.get(ref)
            except dead_actor_errors() as e:
                self._replace(slot, actor, e)
        self._loads = []

    def _chunk(self, job: _Job, k: int) -> Rollouts:
        import ray

        (s, e), ref, actor = job.chunks[k], job.refs[k], job.actors[k]
        for attempt in range(MAX_RETRIES + 1):
            try:
                return ray.get(ref)
            except dead_actor_errors() as err:
                if attempt == MAX_RETRIES:
                    raise RuntimeError(f"Ray rollout worker {k} died {MAX_RETRIES + 1} times on questions {s}..{e - 1} "
                                       f"of the call ({type(err).__name__}: {err}); giving up") from None
                actor = self._replace(k, actor, err)
                if job.weights is not self._weights:  # the weights it was submitted under, then back
                    actor.load.remote(job.weights)
                ref = actor.generate.remote([list(p) for p in job.prompt_ids[s:e]], job.params, job.seeds[k])
                if job.weights is not self._weights:
                    actor.load.remote(self._weights)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Kill the actors (and end the Ray session if this engine started it). Idempotent."""
        import ray

        if self._closed:
            return
        self._closed = True
        if ray.is_initialized():
            for actor in getattr(self, "actors", []):
                kill_actor(actor)
        release_ray(self._shared)

