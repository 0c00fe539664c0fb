"""Run a SegmentationJob on a worker thread, with progress and cancellation readable from the GUI thread.

The worker only does the job's numpy/onnxruntime work on images copied out of the scene; the GUI polls
``progress()``/``isRunning()`` with a timer and calls ``logic.finish(job)`` itself, on the main thread,
because MRML must only be touched there. No Qt here, so it is testable without the application.
"""

import threading

from .engine import Cancelled


class BackgroundRun:
    def __init__(self, job):
        self.job = job
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress = (0.0, "Starting")
        self._thread = threading.Thread(target=self._work, name="VeloxSeg segmentation", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def cancel(self):
        """Ask the job to stop at its next check (between patches and stages)."""
        self._cancel.set()

    @property
    def cancelRequested(self):
        return self._cancel.is_set()

    def progress(self):
        """(fraction 0-1, stage text) last reported by the job."""
        with self._lock:
            return self._progress

    def isRunning(self):
        return self._thread.is_alive()

    def wait(self, timeout=None):
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def cancelled(self):
        """True when the run ended because of a cancel request (its results must not be used)."""
        return self.cancelRequested or isinstance(self.job.error, Cancelled)

    def _report(self, fraction, stage):
        with self._lock:
            self._progress = (float(fraction), str(stage))

    def _work(self):
        try:
            self.job.run(self._report, self._cancel.is_set)
        except BaseException:  # noqa: B036 - kept in job.error and shown by the GUI thread
            pass
