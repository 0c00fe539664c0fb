"""`veloxseg batch --scheduler tcp://HOST:PORT`: each study is a task on a running Dask distributed cluster.

The users start the cluster themselves (`dask scheduler`, `dask worker`, or dask-jobqueue on SLURM/PBS;
docs/cli.md). Workers read the inputs and write the outputs by the paths the coordinator sends (a shared
filesystem), with the same temporary-name-then-rename writes as everywhere else. A task runs
`batch_study.run_task`, which loads the model once per worker process and keeps it. A worker lost while
running a study (killed, machine gone) is noticed by the scheduler, which runs the study again on another
worker; only a study that loses its worker `distributed.scheduler.allowed-failures` times (default 3)
fails, with a message saying so. Stages come back as Dask worker events; a cancel is a Dask Event that
running studies poll between patches.

dask.distributed is optional (`pip install "veloxseg[cluster]"`): it is imported only here.
"""

from __future__ import annotations

import time
import uuid

from ..errors import Cancelled, InputError
from .batch_study import run_task, worker_name

# a worker reports its stage when it changes, else at most this often (less often than a local worker: each
# report is a message to the scheduler)
DASK_STAGE_EVERY_S = 1.0
CANCEL_POLL_S = 1.0  # a running study asks the scheduler whether the batch was cancelled at most this often
CANCEL_GRACE_S = 60.0
CONNECT_TIMEOUT_S = 30


def import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise InputError(
            "--scheduler needs Dask's distributed scheduler, which is not installed. Install it with "
            "`pip install \"veloxseg[cluster]\"` (or `pip install \"dask[distributed]\"`), on this machine and "
            "on every worker machine; inside 3D Slicer: slicer.util.pip_install('dask[distributed]')."
        ) from exc
    return distributed


def dask_study_task(task, spec, topic: str, cancel_name: str) -> dict:
    """Runs on a Dask worker (a module-level function, so workers import it rather than unpickle code)."""
    from distributed import Event, get_worker

    worker = get_worker()
    me = worker_name()
    last = {"stage": None, "time": 0.0, "asked": 0.0, "cancelled": False}
    event = Event(cancel_name)

    def progress(fraction, stage):
        now = time.perf_counter()
        if stage != last["stage"] or now - last["time"] >= DASK_STAGE_EVERY_S:
            last.update(stage=stage, time=now)
            worker.log_event(topic, {"worker": me, "study": task.name, "fraction": fraction, "stage": stage})

    def cancelled():
        now = time.perf_counter()
        if not last["cancelled"] and now - last["asked"] >= CANCEL_POLL_S:
            last["asked"] = now
            try:
                last["cancelled"] = bool(event.is_set())
            except Exception:  # the scheduler is unreachable: go on; it reschedules the study if it must
                pass
        return last["cancelled"]

    try:
        return run_task(task, spec, progress, cancelled)
    except (Cancelled, KeyboardInterrupt):
        return {"study": task.name, "status": "cancelled", "worker": me}


def _failed(task, message: str) -> dict:
    return {"study": task.name, "status": "failed", "code": 4, "message": message}


def _collect(future, task, distributed) -> dict:
    try:
        return future.result()
    except distributed.KilledWorker:
        return _failed(task, "its worker died each time it ran it (killed, or out of memory: give the Dask "
                             "workers more memory or fewer threads each)")
    except Exception as exc:  # e.g. the task could not be unpickled on a worker with another version
        return _failed(task, f"the Dask task failed: {type(exc).__name__}: {exc}")


def run_dask(tasks, spec, address: str, batch) -> None:
    """Run `tasks` on the Dask cluster at `address`, reporting to `batch` (batch._Batch)."""
    distributed = import_distributed()
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise InputError(f"Cannot reach the Dask scheduler at {address}: {exc}. Start it with `dask scheduler` "
                         "and give its address (tcp://HOST:8786).") from exc
    token = uuid.uuid4().hex[:12]
    topic, cancel_name = f"veloxseg-progress-{token}", f"veloxseg-cancel-{token}"
    futures = {}
    try:
        client.subscribe_topic(topic, lambda event: batch.stage(
            event[1]["worker"], event[1]["study"], event[1]["fraction"], event[1]["stage"]))
        if not client.scheduler_info().get("workers") and batch.display is not None:
            batch.display.message(f"The scheduler at {address} has no workers yet; the studies wait until "
                                  "`dask worker` processes join.", error=True)
        for task in tasks:
            # pure=False: a rerun must run again; a unique key per batch keeps two batches apart
            future = client.submit(dask_study_task, task, spec, topic, cancel_name, pure=False,
                                   key=f"veloxseg-{token}-{task.name}")
            futures[future] = task
        completed = distributed.as_completed(list(futures), loop=client.loop)
        while not completed.is_empty():
            if batch.stop_requested():
                raise Cancelled("Batch cancelled.")
            if not completed.has_ready():
                time.sleep(0.2)
                continue
            for future in completed.next_batch(block=False):
                row = _collect(future, futures.pop(future), distributed)
                if row["status"] != "cancelled":
                    batch.result(row)
    except (KeyboardInterrupt, Cancelled):
        _cancel(client, futures, cancel_name, batch, distributed)
        raise
    finally:
        client.close()


def _cancel(client, futures: dict, cancel_name: str, batch, distributed) -> None:
    """Stop the batch: queued studies are dropped, running ones see the event and write nothing."""
    try:
        distributed.Event(cancel_name, client=client).set()
        waiting = [f for f in futures if f.status == "pending"]
        deadline = time.monotonic() + CANCEL_GRACE_S
        while waiting and time.monotonic() < deadline:
            # ask which tasks a worker is running: the others are only queued and can be dropped at once
            running = {key for keys in client.processing().values() for key in keys}
            queued = [f for f in waiting if f.key not in running]
            if queued:
                client.cancel(queued)
            time.sleep(0.2)
            for future in [f for f in waiting if f.status != "pending"]:
                waiting.remove(future)
                if future.status == "finished":
                    row = _collect(future, futures[future], distributed)
                    if row["status"] != "cancelled":  # it finished before it saw the cancel
                        batch.result(row)
    except KeyboardInterrupt:  # a second Ctrl-C: leave at once (running studies still stop on the event)
        pass
    finally:
        client.cancel([f for f in futures if f.status == "pending"], force=True)
