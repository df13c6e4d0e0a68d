"""Dynamic batching: concurrent requests of one model size go through the model in one call.

Request threads `submit` a prepared pair (plate and scene already at the model's size) and get
a `concurrent.futures.Future`. One worker thread takes the size whose oldest pair has waited
longest, waits until `max_batch` pairs of that size are there or that pair has waited
`max_wait_s`, and calls the model on them at once. Batches are not padded: on a CPU a padded
row costs as much as a real one, so the model compiles once per batch size it meets instead
(`serve` compiles 1 to `max_batch` before it answers when the model size is pinned).

`max_queue` bounds the pairs admitted and not finished (waiting or in the model): one more is
refused at once with `QueueFull`, so a burst never becomes an unbounded backlog. A pair whose
future was cancelled (its request timed out) before the worker took it is dropped, not computed.
"""

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Callable

import numpy as np


class QueueFull(RuntimeError):
    """`max_queue` pairs are waiting or in the model."""


@dataclasses.dataclass
class _Pair:
    plate: np.ndarray
    scene: np.ndarray
    future: concurrent.futures.Future
    arrived: float


class Batcher:
    """`forward(plates, scenes) -> {head: (N, h, w, 1)}` on uint8 NHWC batches, batched (module
    doc); each future's result is ({head: (h, w) float32}, the size of the batch it was in)."""

    def __init__(
        self, forward: Callable, max_batch: int, max_wait_s: float, max_queue: int
    ) -> None:
        self.forward = forward
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.formed: collections.Counter = collections.Counter()  # batch size -> batches
        self._waiting: dict[tuple, collections.deque] = {}
        self._admitted = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    @property
    def admitted(self) -> int:
        return self._admitted

    def submit(self, plate: np.ndarray, scene: np.ndarray) -> concurrent.futures.Future:
        """Queues one pair of uint8 (h, w, 3) arrays of one shape; `QueueFull` when full."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._condition:
            if self._admitted >= self.max_queue:
                raise QueueFull(f"{self._admitted} requests queued (--max-queue)")
            self._admitted += 1
            pair = _Pair(plate, scene, future, time.monotonic())
            self._waiting.setdefault(scene.shape, collections.deque()).append(pair)
            self._condition.notify()
        return future

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()

    def _next_batch(self) -> list[_Pair]:
        """The pairs of the next call (module doc); [] when closed."""
        with self._condition:
            while True:
                if self._closed:
                    return []
                queues = [queue for queue in self._waiting.values() if queue]
                if not queues:
                    self._condition.wait()
                    continue
                full = [queue for queue in queues if len(queue) >= self.max_batch]
                oldest = min(full or queues, key=lambda queue: queue[0].arrived)
                left = oldest[0].arrived + self.max_wait_s - time.monotonic()
                if full or left <= 0:
                    count = min(self.max_batch, len(oldest))
                    return [oldest.popleft() for _ in range(count)]
                self._condition.wait(left)

    def _run(self) -> None:
        while True:
            taken = self._next_batch()
            if not taken:
                return
            pairs = [pair for pair in taken if pair.future.set_running_or_notify_cancel()]
            try:
                if pairs:
                    self._call(pairs)
            finally:
                with self._condition:
                    self._admitted -= len(taken)

    def _call(self, pairs: list[_Pair]) -> None:
        """One model call on `pairs`; each future gets its row."""
        try:
            outputs = self.forward(
                np.stack([pair.plate for pair in pairs]), np.stack([pair.scene for pair in pairs])
            )
            outputs = {head: np.asarray(value) for head, value in outputs.items()}
        except Exception as error:  # the model failed: every request of the batch is told
            for pair in pairs:
                pair.future.set_exception(error)
            return
        self.formed[len(pairs)] += 1
        for row, pair in enumerate(pairs):
            result = {
                head: value[row, ..., 0].astype(np.float32) for head, value in outputs.items()
            }
            pair.future.set_result((result, len(pairs)))
