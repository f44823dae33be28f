"""The batch on Dask: a local cluster of worker processes, or an existing scheduler.

Each scene is one future (``client.submit(..., pure=False, retries=...)``) running
:func:`geocam.batch.run.explain_one`; the task carries the small :class:`ModelConfig`, never
the network. A :class:`ModelPlugin` (named by the config's hash, so registering it again
changes nothing) builds the network once per worker process when the worker starts or joins;
a task finds it there. GPU tasks ask for ``resources={"GPU": 1}`` on the future itself (resource
annotations on graphs are dropped by fusion), and a batch asking for a resource fails at once
when no worker advertises it. A task whose worker dies is run again elsewhere: it writes its
scene's files under scratch names and renames them together, so a retry leaves no partial file.
Tile progress comes back as Dask events (``Worker.log_event`` on a topic of the batch's own,
``Client.subscribe_topic`` on the client), a few a second per scene at most.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

from geocam.batch.run import (
    ModelConfig,
    SceneResult,
    Task,
    TileProgress,
    error_line,
    explain_one,
    load,
)
from geocam.errors import GeocamError

if TYPE_CHECKING:
    from distributed import Client, Worker


class ModelPlugin(WorkerPlugin):
    """Builds the batch's network once in each worker process (see :func:`load`)."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = f"geocam-model-{config.key()}"

    def setup(self, worker: Worker) -> None:
        """Build the network now, before the first task needs it (cached per process)."""
        load(self.config)


REPORT_EVERY = 0.25
"""Seconds between two tile reports of one scene (its first and last tile always report)."""


class EventReporter:
    """Tile progress sent from a worker to the client as events on ``topic``, throttled."""

    def __init__(self, worker: Worker, topic: str) -> None:
        self.worker = worker
        self.topic = topic
        self.last = float("-inf")

    def __call__(self, name: str, done: int, total: int) -> None:
        """Send ``(name, done, total)`` unless one was sent less than a moment ago."""
        now = time.monotonic()
        if done in (1, total) or now - self.last >= REPORT_EVERY:
            self.last = now
            self.worker.log_event(self.topic, (name, done, total))


def explain_on_worker(task: Task, config: ModelConfig, topic: str | None = None) -> SceneResult:
    """:func:`explain_one` on a Dask worker, recording the worker's address.

    With a ``topic``, the scene's tile progress is sent to the client as events on it.
    """
    from distributed import get_worker

    worker = get_worker()
    progress = None if topic is None else EventReporter(worker, topic)
    return explain_one(task, config, where=worker.address, progress=progress)


def worker_loads() -> dict[str, int]:
    """How many times each model was built in this worker process (for tests and checks)."""
    from geocam.batch.run import LOADS

    return dict(LOADS)


def worker_tasks(dask_worker: Worker) -> list[str]:
    """The batch tasks (keys ``geocam-...``) this worker began to execute, from its own record.

    Read from the worker's transition log (``Worker.state.log``: its last transitions, as many
    as ``distributed.admin.low-level-log-length`` keeps); ``client.run(worker_tasks)`` tells
    where every recent scene ran.
    """
    return [
        str(entry[0])
        for entry in dask_worker.state.log
        if len(entry) > 5 and str(entry[0]).startswith("geocam-") and entry[2] == "executing"
    ]


class DaskExecutor:
    """Runs a batch's scenes as futures on a Dask cluster."""

    def __init__(
        self,
        client: Client,
        description: str,
        *,
        resources: Mapping[str, float] | None = None,
        retries: int = 2,
    ) -> None:
        self.client = client
        self.description = description
        self.resources = dict(resources or {})
        self.retries = retries

    def check_resources(self, timeout: float = 60) -> None:
        """Wait for a worker; fail in one line if none advertises the resources asked for."""
        try:
            self.client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise GeocamError(f"no Dask worker joined the cluster within {timeout:.0f} s") from None
        if not self.resources:
            return
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        if not any(
            all(w.get("resources", {}).get(k, 0) >= v for k, v in self.resources.items())
            for w in workers
        ):
            wanted = ",".join(f"{k}={v:g}" for k, v in self.resources.items())
            raise GeocamError(
                f"no Dask worker advertises the resources {wanted}; start workers with "
                f"`dask worker ADDRESS --resources {wanted}` (one per GPU, CUDA_VISIBLE_DEVICES)"
            )

    def run(
        self, tasks: Sequence[Task], config: ModelConfig, progress: TileProgress | None = None
    ) -> Iterator[SceneResult]:
        """Submit every task as a future and yield results as they complete."""
        from distributed import as_completed

        self.client.register_plugin(ModelPlugin(config))
        topic = None
        if progress is not None:
            topic = f"geocam-tiles-{uuid.uuid4().hex}"
            self.client.subscribe_topic(  # type: ignore[no-untyped-call]
                topic, lambda event: progress(*event[1])
            )
        futures = {
            self.client.submit(
                explain_on_worker,
                task,
                config,
                topic,
                key=f"geocam-{task.name}-{task.fingerprint[:12]}",
                pure=False,
                retries=self.retries,
                resources=self.resources or None,
            ): task
            for task in tasks
        }
        try:
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                task = futures[future]
                try:
                    result: SceneResult = future.result()
                except Exception as error:  # the task itself was lost (its workers died)
                    result = SceneResult(task.name, list(task.job.sources), "failed")
                    result.error, result.fingerprint = error_line(error), task.fingerprint
                yield result
        finally:
            for future in futures:
                future.release()  # type: ignore[no-untyped-call]
            if topic is not None:
                self.client.unsubscribe_topic(topic)  # type: ignore[no-untyped-call]


WORKER_ENVIRON = "distributed.nanny.pre-spawn-environ"
"""Dask's setting of the environment its nannies give worker processes."""


def worker_environ() -> dict[str, object]:
    """The environment of local workers: Dask's, without its ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets glibc's trim threshold to 64 KiB so that workers give memory back early; geocam
    allocates and frees tensors of megabytes per tile, and with that threshold every scene took
    2.2x as long as in-process (1.4-1.5 s against 0.64-0.77 s for the Raleigh scene, measured
    by running the same code with and without the variable). glibc's default is used instead.
    """
    import dask

    environ = dict(dask.config.get(WORKER_ENVIRON, default={}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


@contextlib.contextmanager
def own_environ() -> Iterator[None]:
    """Keep this process's environment as it was while Dask starts workers.

    Dask also writes the workers' variables (``OMP_NUM_THREADS=1``, ...) into its own process's
    environment, which every later subprocess would inherit (a ``qgis_process`` run in the same
    test session then computed with one thread).
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def scheduler_address(scheduler: str) -> str:
    """``scheduler`` if it is an address, or the address in the scheduler file it names."""
    path = Path(scheduler)
    if not path.is_file():
        return scheduler
    try:
        address = json.loads(path.read_text())["address"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        address = None
    if not isinstance(address, str):
        raise GeocamError(
            f"--scheduler {scheduler}: not a Dask scheduler file (JSON with an 'address'); "
            "give the scheduler's address or the file of `dask scheduler --scheduler-file`"
        )
    return address


@contextlib.contextmanager
def dask_executor(
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    resources: Mapping[str, float] | None = None,
    retries: int = 2,
) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on a new local cluster of ``workers`` processes, or on ``scheduler``.

    ``scheduler`` is an address, or the JSON file that ``dask scheduler --scheduler-file``
    writes (a shared file system's way to find it, as on Slurm). A local cluster listens on
    127.0.0.1 only, runs one thread per worker and, with ``resources``, advertises them on
    every worker (they share this machine's devices).
    """
    from distributed import Client, LocalCluster

    cluster: Any = None
    try:
        if scheduler is not None:
            try:
                client = Client(scheduler_address(scheduler), timeout="30s")  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError, ValueError) as error:
                raise GeocamError(f"--scheduler {scheduler}: cannot connect ({error})") from None
            description = f"dask scheduler {scheduler}"
        else:
            count = workers or 1
            import dask

            with dask.config.set({WORKER_ENVIRON: worker_environ()}), own_environ():
                cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                    resources=dict(resources) if resources else None,
                )
            client = Client(cluster)  # type: ignore[no-untyped-call]
            description = f"local dask cluster, {count} worker(s)"
        with client:
            executor = DaskExecutor(client, description, resources=resources, retries=retries)
            executor.check_resources()  # before anything is written
            yield executor
    finally:
        if cluster is not None:
            cluster.close()
