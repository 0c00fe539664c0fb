"""`veloxseg batch --workers N`: N local worker processes (standard library, concurrent.futures).

Each worker is a fresh 'spawn' process (no fork: onnxruntime's and SimpleITK's thread pools do not survive
a fork, and Slicer is not fork-safe), loads the model on its first study and keeps it, and runs one study
at a time, so its memory stays within the single-study bound. At most N studies are handed out at once,
so the coordinator always knows which studies are running.

Stages come back through a multiprocessing queue. Cancelling (Ctrl-C, SIGTERM, the cancelled callback)
sets a shared flag that the running studies poll between patches: they stop and write nothing. Workers
ignore SIGINT themselves, since a terminal's Ctrl-C reaches the whole process group and the coordinator
decides. A worker that dies (killed, out of memory) breaks the pool: a new pool is started and the
studies that were running are tried again, up to MAX_ATTEMPTS times each. A pool whose workers all died
before their initializer ran could not start (e.g. a script without its `__main__` guard, which each
spawned worker re-runs): that stops the batch at once with an error naming the cause, as retrying cannot
help and "out of memory" would mislead.

A worker can die at any instant, also while it holds a lock shared with the others, and such a lock is
never released. So the cancel flag is lock-free shared memory (not a multiprocessing.Event, whose
is_set() takes a lock: measured, SIGKILLed pollers left it locked in 11 of 30 tries), each pool gets a
fresh stage queue, and workers never wait for their queue's feeder thread when they exit.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue as queue_module
import signal
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..errors import Cancelled, InputError, VeloxSegError
from .batch_study import run_task, worker_name

MAX_ATTEMPTS = 3
STAGE_EVERY_S = 0.5  # a worker reports its stage when it changes, else at most this often
CANCEL_GRACE_S = 60.0  # how long running studies get to notice a cancel before their workers are killed

_WORKER = {}  # this worker process's queue and cancel event (set by init_worker)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def init_worker(events, cancel, started=None) -> None:
    if started is not None:  # this worker got through its start-up (importing the caller's main module)
        started.value += 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # terminate(): discard this study's temporary files
    events.cancel_join_thread()  # exit even if a dead sibling left the queue's write lock taken
    _WORKER.update(events=events, cancel=cancel)


def cancel_flag(context):
    """The flag the coordinator sets to cancel: lock-free shared memory (see the module docstring)."""
    return context.RawValue(ctypes.c_bool, False)


def cancel_requested() -> bool:
    """In a worker: has the coordinator asked to cancel? Never blocks."""
    return bool(_WORKER["cancel"].value)


def _local_task(task, spec) -> dict:
    """Runs in a worker process."""
    events = _WORKER["events"]
    me = worker_name()
    last = {"stage": None, "time": 0.0}

    def progress(fraction, stage):
        now = time.perf_counter()
        if stage != last["stage"] or now - last["time"] >= STAGE_EVERY_S:
            last.update(stage=stage, time=now)
            events.put((me, task.name, fraction, stage))

    try:
        return run_task(task, spec, progress, cancel_requested)
    except (Cancelled, KeyboardInterrupt):
        return {"study": task.name, "status": "cancelled", "worker": me}


def _worker_python():
    """Inside 3D Slicer sys.executable is the application, not a Python interpreter: spawn its
    PythonSlicer launcher instead (same interpreter, same packages). None: the default."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None)
    try:
        folder = Path(app.applicationDirPath())
    except Exception:  # not Slicer, or slicer-core without an application
        return None
    launcher = folder / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    return str(launcher) if launcher.is_file() else None


def _startup_error(processes, started):
    """The error to stop the batch with when a broken pool's workers never started, else None.
    `processes`: the pool's processes, joined (their exit codes are final)."""
    if started.value:
        return None  # a worker ran studies and died later: killed or out of memory, retried by the caller
    from .batch import EXIT_WORKER_REENTERED, MAIN_GUARD_HINT

    codes = sorted({p.exitcode for p in processes if p.exitcode is not None})
    if EXIT_WORKER_REENTERED in codes:
        return InputError(f"The worker processes could not start: each re-ran the script that called run_batch "
                          f"and stopped there. {MAIN_GUARD_HINT}")
    # the pool terminates (SIGTERM) the workers left once one died: name the others' exit codes
    codes = ", ".join(map(str, [c for c in codes if c != -signal.SIGTERM] or codes)) or "?"
    return VeloxSegError(
        f"The worker processes stopped while starting, before any study (exit code {codes}; "
        "their error is printed above). A script must call run_batch under `if __name__ == \"__main__\":`, and "
        "the workers' Python must import everything the calling script imports; workers=1 runs the studies in "
        "this process.")


def _drain(events, batch) -> None:
    while True:
        try:
            worker, study, fraction, stage = events.get_nowait()
        except queue_module.Empty:
            return
        batch.stage(worker, study, fraction, stage)


def run_local(tasks, spec, workers: int, batch) -> None:
    """Run `tasks` on `workers` local processes, reporting to `batch` (batch._Batch)."""
    context = multiprocessing.get_context("spawn")
    python = _worker_python()
    if python:
        context.set_executable(python)
    cancel = cancel_flag(context)
    started = context.RawValue(ctypes.c_int, 0)  # workers past their start-up; lock-free, as `cancel`
    events = None
    pending = deque(tasks)
    attempts = {}
    running = {}  # future -> task
    executor = None
    try:
        while pending or running:
            if executor is None:
                # Fresh each time: a worker killed mid-write leaves the old queue's lock taken (its
                # last stages are dropped; the next stage report replaces them).
                events = context.Queue()
                executor = ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                                               initargs=(events, cancel, started))
            if batch.stop_requested():
                raise Cancelled("Batch cancelled.")
            while pending and len(running) < workers:
                task = pending.popleft()
                running[executor.submit(_local_task, task, spec)] = task
            done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(events, batch)
            broken = False
            for future in done:
                task = running.pop(future)
                try:
                    row = future.result()
                except BrokenProcessPool:
                    broken = True
                    attempts[task.name] = attempts.get(task.name, 0) + 1
                    if attempts[task.name] < MAX_ATTEMPTS:
                        pending.appendleft(task)
                        continue
                    row = {"study": task.name, "status": "failed", "code": 4, "message": (
                        f"a worker process died while segmenting it, {MAX_ATTEMPTS} times (killed, or out of "
                        "memory: use fewer --workers)")}
                if row["status"] == "cancelled":
                    continue  # counted by the coordinator as not finished
                batch.result(row)
            if broken:  # the pool is unusable once a worker died; start a new one for what is left
                processes = list((getattr(executor, "_processes", None) or {}).values())
                executor.shutdown(wait=True)
                executor = None
                error = _startup_error(processes, started)
                if error is not None:
                    raise error
    except (KeyboardInterrupt, Cancelled):
        cancel.value = True  # running studies stop at their next patch and write nothing
        deadline = time.monotonic() + CANCEL_GRACE_S
        while running and time.monotonic() < deadline:
            try:
                done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:  # a second Ctrl-C: do not wait any longer
                break
            for future in done:
                task = running.pop(future)
                try:
                    row = future.result()
                except BrokenProcessPool:
                    continue
                if row["status"] != "cancelled":  # it finished before it saw the cancel
                    batch.result(row)
        if executor is not None and running:
            for process in list(getattr(executor, "_processes", {}).values()):
                process.terminate()  # SIGTERM: the worker discards its temporary files
        raise
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if events is not None:
            _drain(events, batch)
