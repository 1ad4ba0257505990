"""A bounded inference pool: N worker threads and a queue of at most Q waiting jobs; beyond that, 503."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ferkit.service.errors import ApiError

T = TypeVar("T")


class InferencePool:
    """Runs blocking inference off the event loop, admitting at most workers + queue jobs at a time.

    A job counts until its thread finishes, even if the client has gone away, so memory stays bounded
    by the number of slots whatever the clients do.
    """

    def __init__(self, workers: int, queue: int):
        self.workers = workers
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ferkit-infer")
        self._lock = threading.Lock()
        self._pending = 0
        self._avg_seconds = 0.05  # running mean of job time, for Retry-After
        self.closed = False

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def full(self) -> bool:
        """No slot for one more job: a request can be refused before its body is read."""
        return self.closed or self._pending >= self.capacity

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead divided among the workers."""
        return max(1, math.ceil(self._avg_seconds * self._pending / self.workers))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self.closed:
                raise ApiError(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"})
            if self._pending >= self.capacity:
                raise ApiError(
                    503,
                    "busy",
                    f"all {self.workers} workers busy and {self.capacity - self.workers} requests queued; retry later",
                    {"Retry-After": str(self.retry_after())},
                )
            self._pending += 1
        try:
            future = self._executor.submit(self._timed, fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._avg_seconds = 0.9 * self._avg_seconds + 0.1 * (time.perf_counter() - t)

    def _release(self, _future: Any) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Refuse new jobs and wait for the running and queued ones to finish."""
        with self._lock:
            self.closed = True
        self._executor.shutdown(wait=True)


class PixelBudget:
    """Pixels being decoded at once, all workers together: a worker waits for room before it decodes, so two
    large images never decode side by side past the budget. An image larger than the whole budget decodes alone."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        n = min(max(pixels, 0), self.total)
        with self._cond:
            while self.used + n > self.total:
                self._cond.wait()
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()
