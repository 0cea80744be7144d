"""The Ray executor: warm model workers (actors) on a local or existing Ray cluster.

``RayExecutor(workers=2)`` starts a local cluster on the fly (when none is
running in this process) or joins one with ``address="ray://..."`` / ``"auto"``.
Each worker is an actor that loads the model once (from a
:class:`~mlff_calc.executors.worker.ModelRecipe`) and keeps it for every chunk;
GPU workers declare ``num_gpus`` (fractions put several actors on one GPU);
Ray hides the GPUs from workers that reserve none, so a recipe with
``device="auto"`` runs on a GPU exactly when ``gpus_per_worker > 0``.
Each actor holds at most ``depth`` chunks at once, so it never waits for the
driver, and chunks go to whichever actor frees up first.

Fault tolerance: when a worker dies, the chunks it held are queued again and a
replacement actor is started, which takes work once it has loaded the same
model (the other workers go on meanwhile; ``max_worker_restarts`` bounds the
replacements). A chunk is tried at most ``1 + max_retries`` times,
then reported as failed with the error. An exception raised by the task function
itself is not retried (it would fail again). The driver receives every result
and writes it; nothing is written by the workers.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable

from ..errors import ConfigurationError
from .base import Executor, error_text
from .chunks import Job, Outcome
from .worker import ModelRecipe, Worker

log = logging.getLogger(__name__)

#: environment passed to the workers when set in the driver
_ENV = ("HF_HUB_OFFLINE", "MLFF_CALC_MODEL_DIR", "MLFF_CALC_SHARED", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


def _ray():
    from .._runtime import backend

    with backend("ray", "the ray executor"):
        import ray
    return ray


class RayExecutor(Executor):
    """Jobs on ``workers`` Ray actors.

    ``address``: an existing cluster (``"auto"``, ``"ray://host:10001"``); ``None``
    starts a local one with ``workers * cpus_per_worker`` CPUs (or joins the one
    already initialised in this process). ``gpus_per_worker``: GPUs each actor
    reserves (``0.5`` puts two actors on one GPU). ``threads``: torch/BLAS threads
    per worker. ``max_retries``: extra tries of a chunk whose worker died.
    """

    name = "ray"

    def __init__(
        self,
        workers: int = 2,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1,
        gpus_per_worker: float = 0,
        threads: int = 1,
        max_retries: int = 2,
        depth: int = 2,
        max_worker_restarts: int | None = None,
    ):
        if workers < 1 or max_retries < 0 or depth < 1 or threads < 1:
            raise ConfigurationError(f"need workers >= 1, max_retries >= 0, depth >= 1 and threads >= 1; got {workers}, {max_retries}, {depth}, {threads}")
        self.workers, self.address = int(workers), address
        self.cpus_per_worker, self.gpus_per_worker, self.threads = cpus_per_worker, gpus_per_worker, int(threads)
        self.max_retries, self.depth = int(max_retries), int(depth)
        self.max_worker_restarts = workers * (max_retries + 1) if max_worker_restarts is None else int(max_worker_restarts)
        self.actors: list = []  # live actor handles, one per slot
        self.pids: list[int] = []
        self._model = None
        self._expected: dict | None = None
        self._pending: dict = {}
        self._started_cluster = False

    def describe(self) -> dict:
        return {
            "executor": self.name,
            "workers": self.workers,
            "address": self.address,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            "threads": self.threads,
            "max_retries": self.max_retries,
            "depth": self.depth,
        }

    # cluster and actors --------------------------------------------------------------

    def _init(self) -> None:
        ray = _ray()
        if ray.is_initialized():
            return
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if self.address is None:
            kwargs["num_cpus"] = max(1, round(self.workers * self.cpus_per_worker))
            if self.gpus_per_worker:
                import torch

                kwargs["num_gpus"] = torch.cuda.device_count()
        try:
            ray.init(address=self.address, **kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, ...
            raise ConfigurationError(f"cannot start or join a Ray cluster (address={self.address!r}): {exc}") from exc
        self._started_cluster = True

    def _new_actor(self, recipe: ModelRecipe):
        env = {k: os.environ[k] for k in _ENV if k in os.environ}
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads), OPENBLAS_NUM_THREADS=str(self.threads))
        cls = self._remote.options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0, max_concurrency=1, runtime_env={"env_vars": env})
        return cls.remote(recipe, threads=self.threads)

    def _check(self, actors, expected: dict | None) -> tuple[list[int], dict]:
        """Wait for the actors to load the model; refuse any whose model differs. Returns their pids and the identity."""
        ray = _ray()
        try:
            hellos = ray.get([a.hello.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise ConfigurationError(f"a Ray worker could not load the model {self._model.model!r}: {exc}") from exc
        expected = hellos[0]["identity"] if expected is None else expected
        for hello in hellos:
            if hello["identity"] != expected:
                raise ConfigurationError(f"a Ray worker loaded {hello['identity']} but the job's model is {expected}; give every worker the same model files and versions")
        return [h["pid"] for h in hellos], expected

    def start(self, model) -> dict:
        """Start the warm actors (kept when the model is the same) and return the identity of the model they loaded."""
        recipe = model if isinstance(model, ModelRecipe) else ModelRecipe.of(model)
        if self.actors and recipe == self._model:
            self._settle()
            missing = [slot for slot, actor in enumerate(self.actors) if actor is None]
            if missing:  # refill slots whose workers died in an earlier run
                fresh = [self._new_actor(recipe) for _ in missing]
                pids, _ = self._check(fresh, self._expected)
                for slot, actor, pid in zip(missing, fresh, pids):
                    self.actors[slot], self.pids[slot] = actor, pid
            return self._expected
        expected = None
        if not isinstance(model, ModelRecipe):
            from .worker import identity

            expected = identity(model)
        self._kill_all()
        self._init()
        self._model = recipe
        self._remote = _ray().remote(Worker)
        self.actors = [self._new_actor(recipe) for _ in range(self.workers)]
        self.pids, self._expected = self._check(self.actors, expected)
        return self._expected

    def _settle(self) -> None:
        """Wait for replacement workers an earlier run left loading; drop those that failed or differ."""
        ray = _ray()
        for ref, (slot, _) in getattr(self, "_pending", {}).items():
            try:
                hello = ray.get(ref)
                ok = hello["identity"] == self._expected
            except ray.exceptions.RayError:
                ok = False
            if ok:
                self.pids[slot] = hello["pid"]
            elif self.actors[slot] is not None:
                ray.kill(self.actors[slot])
                self.actors[slot] = None
        self._pending = {}

    def _kill_all(self) -> None:
        if self.actors:
            ray = _ray()
            for actor in self.actors:
                if actor is not None:
                    ray.kill(actor)
        self.actors, self.pids = [], []

    def close(self) -> None:
        self._kill_all()
        if self._started_cluster:
            _ray().shutdown()
            self._started_cluster = False

    # running ---------------------------------------------------------------------------

    def run(self, fn: Callable, jobs: Iterable[Job], model, on_outcome: Callable[[Outcome], None], *, progress: bool | None = None, desc: str = "jobs") -> dict:
        from .._runtime import progress_bar

        ray = _ray()
        jobs = list(jobs)
        self.start(model)
        started = time.perf_counter()
        queue = deque(jobs)
        attempts = {job.key: 0 for job in jobs}
        errors: dict[str, str] = {}
        in_flight: dict = {}  # ObjectRef -> (job, slot, generation)
        starting: dict = {}  # ObjectRef of a replacement's hello() -> (slot, generation)
        n = len(self.actors)
        load, generation, ready = [0] * n, [0] * n, [a is not None for a in self.actors]
        report = {"executor": self.name, "jobs": len(jobs), "failed": 0, "retried": 0, "workers": n, "restarted_workers": 0}
        fn_ref = ray.put(fn)

        def submit():
            while queue:
                free = [s for s in range(n) if ready[s] and load[s] < self.depth]
                if not free:
                    return
                slot = min(free, key=lambda s: load[s])
                job = queue.popleft()
                attempts[job.key] += 1
                in_flight[self.actors[slot].run.remote(fn_ref, job.payload)] = (job, slot, generation[slot])
                load[slot] += 1

        def replace(slot):
            """Drop the dead actor of ``slot``; start another (used once it has loaded the same model)."""
            generation[slot] += 1
            load[slot], ready[slot] = 0, False
            if self.actors[slot] is not None:
                ray.kill(self.actors[slot])
                self.actors[slot] = None
            if report["restarted_workers"] >= self.max_worker_restarts:
                log.warning("Ray worker %d died; restart budget (%d) spent, going on with fewer workers", slot, self.max_worker_restarts)
                return
            report["restarted_workers"] += 1
            log.warning("Ray worker %d died; starting a replacement", slot)
            self.actors[slot] = self._new_actor(self._model)
            starting[self.actors[slot].hello.remote()] = (slot, generation[slot])

        def alive() -> bool:
            return any(ready) or bool(starting)

        with progress_bar(total=sum(j.n_items for j in jobs), desc=desc, enabled=progress) as bar:
            submit()
            while in_flight or (queue and starting):
                [ref], _ = ray.wait([*in_flight, *starting], num_returns=1)
                if ref in starting:  # a replacement worker has loaded its model (or failed to)
                    slot, gen = starting.pop(ref)
                    try:
                        hello = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        log.warning("replacement Ray worker %d failed to start: %s", slot, exc)
                        if gen == generation[slot]:
                            replace(slot)
                        continue
                    if hello["identity"] != self._expected:
                        raise ConfigurationError(f"a replacement Ray worker loaded {hello['identity']} but the job's model is {self._expected}; give every worker the same model files and versions")
                    if gen == generation[slot]:
                        self.pids[slot], ready[slot] = hello["pid"], True
                        submit()
                    continue
                job, slot, gen = in_flight.pop(ref)
                if gen == generation[slot]:
                    load[slot] -= 1
                try:
                    result, wall, name = ray.get(ref)
                    outcome = Outcome(job.key, result=result, attempts=attempts[job.key], worker=name, wall_s=wall)
                except ray.exceptions.RayTaskError as exc:  # the task function raised: deterministic, not retried
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    outcome = Outcome(job.key, error=error_text(cause), attempts=attempts[job.key])
                except ray.exceptions.RayError as exc:  # the worker died or was lost
                    errors[job.key] = f"{type(exc).__name__}: {exc}"
                    if gen == generation[slot]:
                        replace(slot)
                    retry = attempts[job.key] <= self.max_retries and alive()
                    log.warning("worker died while running %s (try %d); %s", job.key, attempts[job.key], "retrying it" if retry else "giving up")
                    if retry:
                        report["retried"] += 1
                        queue.appendleft(job)
                        submit()
                        continue
                    outcome = Outcome(job.key, error=f"worker failed {attempts[job.key]} time(s); last error: {errors[job.key]}", attempts=attempts[job.key])
                if not outcome.ok:
                    report["failed"] += 1
                on_outcome(outcome)
                bar.update(job.n_items)
                submit()
            while queue:  # every worker is gone and none could be restarted
                job = queue.popleft()
                report["failed"] += 1
                on_outcome(Outcome(job.key, error=f"no Ray worker left to run it; last error: {errors.get(job.key, 'none')}", attempts=attempts[job.key]))
                bar.update(job.n_items)
        self._pending = starting  # replacements still loading: checked by the next start()
        report["wall_s"] = time.perf_counter() - started
        return report
