"""Dynamic micro-batching of the classification step: the face crops of requests that arrive together go through
the model in one batch.

Decoding and face detection stay in the pool's workers, one request each. When a worker has its crops it hands them
to the one batcher thread and waits; the batcher gathers what the workers hand it, up to `max_faces` crops or until
the oldest has waited `window` seconds, classifies each group (a group: one classification function, e.g. with or
without TTA) in one call and gives every request its own rows back. It does not wait for nothing: once every worker
that is handling a request (a "producer") is waiting on the batcher, no more crops can come, and the batch runs at
once. So a lone request pays no window, and under load the batch fills from the workers that finish detection
within the window of each other.

Bounds: at most `capacity` requests wait (a worker waits for room beyond that; in the service a worker hands in one
request at a time, so the queue never holds more than the workers), and a batch holds at most `max_faces` crops
(one request with more faces than that is classified alone). A batch that fails is retried request by request, so
one request's error is that request's alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from ferkit.images import crop_batch
from ferkit.inference.classifier import RUN_BATCH, Classifier

log = logging.getLogger("ferkit.service")

# crops -> N x C probabilities, one row per crop in order (Classifier.predict_proba).
Classify = Callable[[Sequence[np.ndarray]], np.ndarray]


class _Item:
    __slots__ = ("arrived", "crops", "future", "key")

    def __init__(self, key: Hashable, crops: Sequence[np.ndarray]):
        self.key = key
        self.crops = crops
        self.future: Future[np.ndarray] = Future()
        self.arrived = time.perf_counter()


class MicroBatcher:
    """One thread that classifies the crops of concurrent requests in batches (see the module docstring).

    classify: each distinct key names one classification function (`functions[key]`); requests with different keys
    are never mixed in one call (a TTA request and a plain one are classified separately, in the same round).
    observe(images, faces, waits): called after each call with the requests and crops it held and how long each
    request waited (for metrics).
    """

    def __init__(self, functions: dict[Hashable, Classify], window: float, max_faces: int, capacity: int,
                 observe: Callable[[int, int, list[float]], None] | None = None):
        if max_faces < 1 or capacity < 1 or window < 0:
            raise ValueError(f"batcher: max_faces {max_faces}, capacity {capacity} must be >= 1, window {window} >= 0")
        self.functions = dict(functions)
        self.window = window
        self.max_faces = max_faces
        self.capacity = capacity
        self._observe = observe
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._producers = 0
        self._thread: threading.Thread | None = None
        self.closed = False

    # -- the workers' side --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def producing(self) -> Iterator[None]:
        """Around a request's whole work in a worker: while it runs, the batcher may wait (up to the window) for
        its crops; when it ends, with or without crops, the batcher stops counting on it."""
        with self._cond:
            self._producers += 1
        try:
            yield
        finally:
            with self._cond:
                self._producers -= 1
                self._cond.notify_all()

    def classify(self, key: Hashable, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities of `crops` by `functions[key]`, computed in a batch with other requests' crops."""
        if key not in self.functions:
            raise KeyError(f"batcher: no classification function {key!r}")
        if len(crops) == 0:
            return self.functions[key](crops)
        item = _Item(key, crops)
        with self._cond:
            while len(self._queue) >= self.capacity and not self.closed:
                self._cond.wait()
            if self.closed:  # shutting down: the pool is drained first, so this is a late caller; serve it here
                item = None
            else:
                self._start()
                self._queue.append(item)
                self._cond.notify_all()
        if item is None:
            return self.functions[key](crops)
        return item.future.result()

    def close(self) -> None:
        """Classify what is queued, then stop the thread. Later calls classify in the caller's thread."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    # -- the batcher thread -------------------------------------------------------------------------------------
    def _start(self) -> None:
        """Started with the first request (under the lock), so an app that never serves starts no thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ferkit-batcher", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # noqa: BLE001 - never leave a worker waiting forever
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                if not isinstance(e, Exception):
                    raise

    def _gather(self) -> list[_Item] | None:
        """The next batch: waits for a first request, then until the batch is full, every producer is waiting, the
        oldest request has waited the window, or the batcher is closing. None: closed and nothing left."""
        with self._cond:
            while not self._queue:
                if self.closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + self.window
            while not self.closed:
                faces = sum(len(item.crops) for item in self._queue)
                if faces >= self.max_faces or len(self._queue) >= max(1, self._producers):
                    break
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft()]
            faces = len(batch[0].crops)
            while self._queue and faces + len(self._queue[0].crops) <= self.max_faces:
                faces += len(self._queue[0].crops)
                batch.append(self._queue.popleft())
            self._cond.notify_all()  # room in the queue
            return batch

    def _run(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        groups: dict[Hashable, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.key, []).append(item)
        for key, items in groups.items():
            fn = self.functions[key]
            crops = [c for item in items for c in item.crops]
            try:
                probs = fn(crops)
            except Exception as e:  # noqa: BLE001 - find whose crops fail; the others get their answers
                if len(items) == 1:
                    items[0].future.set_exception(e)
                else:
                    log.debug("a batch of %d requests failed; classifying them one by one", len(items))
                    for item in items:
                        _settle(item, fn)
            else:
                at = 0
                for item in items:
                    n = len(item.crops)
                    item.future.set_result(probs[at : at + n])
                    at += n
            if self._observe is not None:
                self._observe(len(items), len(crops), [start - item.arrived for item in items])


def _settle(item: _Item, fn: Classify) -> None:
    """One request classified alone: its answer or its own error."""
    try:
        item.future.set_result(fn(item.crops))
    except Exception as e:  # noqa: BLE001 - handed to the request's worker, which raises it there
        item.future.set_exception(e)


class BatchedClassifier(Classifier):
    """A classifier whose `predict_proba` hands the crops to a MicroBatcher (keyed by TTA mode) and waits for its
    rows: what the service gives `EmotionRecognizer.with_classifier`, so an upload's detection, crops and result
    stay the library's code and only the network call is shared with other requests. `waiting` is entered while a
    request waits for its batch (the engine lets go of its Haar lock there)."""

    def __init__(self, inner: Classifier, batcher: MicroBatcher,
                 waiting: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.inner, self.batcher, self.waiting = inner, batcher, waiting
        for key in ("name", "source", "kind", "classes", "input_size", "crop", "tta", "temperature", "temperatures",
                    "run_dir"):
            setattr(self, key, getattr(inner, key))

    def temperature_for(self, tta: bool | str | None = None) -> float:
        return self.inner.temperature_for(tta)

    def probabilities(self, faces: Any, tta: bool | str | None = None,
                      batch: int = RUN_BATCH) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.probabilities(faces, tta, batch)

    def predict_proba(self, crops: Any, batch: int = RUN_BATCH, tta: bool | str | None = None) -> np.ndarray:
        with self.waiting():
            return self.batcher.classify(self.inner.mode(tta), crop_batch(crops))
