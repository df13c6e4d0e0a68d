"""The reader and writer threads of `predict_clip`, each behind a bounded queue.

Every wait polls the other side, so a failure on any thread stops the others instead of
leaving one waiting for ever; a writer closes its file on every path, which keeps what it
wrote playable.
"""

import dataclasses
import queue
import threading
import time
from typing import Callable, Iterator, Optional

from jaxsegdepth.video import batches

PREFETCH_BATCHES = 2  # batches decoded ahead of the model, and queued per writer
QUEUE_POLL_S = 0.1

_END = object()


@dataclasses.dataclass
class _Failure:
    error: BaseException


def _get(items: queue.Queue, thread: threading.Thread, what: str):
    """The next item of `items`, waiting while `thread`, which fills it, is alive."""
    while True:
        try:
            return items.get(timeout=QUEUE_POLL_S)
        except queue.Empty:
            if not thread.is_alive() and items.empty():
                raise RuntimeError(f"{what} stopped without finishing") from None


class Reader:
    """Runs the batch iterator `source` on a daemon thread, up to `PREFETCH_BATCHES` ahead;
    iterating it yields the batches and re-raises the iterator's error in the caller's thread."""

    def __init__(self, source: Iterator[batches.Batch], name: str):
        self.frames_read = 0
        self.wait_s = 0.0  # the consumer's time waiting for a batch
        self._source = source
        self._queue: queue.Queue = queue.Queue(PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"read {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self._source:
                self.frames_read += batch.count
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as error:
            self._put(_Failure(error))
        finally:
            self._source.close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=QUEUE_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[batches.Batch]:
        while True:
            start = time.perf_counter()
            item = _get(self._queue, self._thread, self._thread.name)
            self.wait_s += time.perf_counter() - start
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * QUEUE_POLL_S)


class Writer:
    """One output on its own thread: renders and writes each queued frame in order; closes its
    file when told to finish or when it fails (the error is raised by `raise_if_failed`)."""

    def __init__(self, name: str, render: Callable, target):
        self.written = 0
        self.wait_s = 0.0  # the producer's time waiting for room in the queue
        self._render = render
        self._target = target
        self._error: Optional[BaseException] = None
        self._queue: queue.Queue = queue.Queue(PREFETCH_BATCHES)
        self._thread = threading.Thread(target=self._run, name=f"write {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _END:
                for index in range(item.count):
                    frame = item.clip_bgr[index] if item.clip_bgr else None
                    probabilities = {
                        head: value[index] for head, value in item.probabilities.items()
                    }
                    self._target.write(self._render(probabilities, frame))
                    self.written += 1
        except BaseException as error:
            self._error = error
        finally:
            self._target.close()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: batches.Predicted) -> None:
        start = time.perf_counter()
        while True:
            self.raise_if_failed()
            try:
                self._queue.put(item, timeout=QUEUE_POLL_S)
                break
            except queue.Full:
                continue
        self.wait_s += time.perf_counter() - start

    def finish(self) -> None:
        """Writes what is queued, closes the file and waits for the thread."""
        while self._thread.is_alive():
            try:
                self._queue.put(_END, timeout=QUEUE_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
