"""Recording what the served models saw (``monitor.record_requests``, opt-in) for drift monitoring.

A request only puts its decoded image on a bounded queue (microseconds); one background thread
takes what is queued, runs the classifier once over the batch (``encode`` with probabilities:
the embedding and the prediction of the same pass, as the drift reference has them) and appends
the rows with :func:`fashionops.monitoring.record_observations`. When the queue is full (the
thread cannot keep up) a request's observation is dropped and counted, never waited for: the
answer is never slower because of recording. The thread stops with the app (queued work flushed).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from fashionops.config_operations import MonitorConfig
from fashionops.serving.bundle import ModelBundle

log = logging.getLogger(__name__)

QUEUE_SIZE = 1024  # observations waiting at most; beyond that they are dropped (and counted)
BATCH = 32  # images per background pass
_STOP = object()


@dataclass(frozen=True)
class _Pending:
    bundle: ModelBundle
    image: np.ndarray
    source: str


class RequestRecorder:
    """The queue and the thread that record served requests into ``cfg.store``."""

    def __init__(self, cfg: MonitorConfig) -> None:
        self.cfg = cfg
        self.dropped = 0
        self.recorded = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="fashionops-recorder", daemon=True)
        self._thread.start()

    def submit(self, bundle: ModelBundle, image: np.ndarray, source: str) -> None:
        """Queue one served image (never blocks; dropped when the queue is full)."""
        try:
            self._queue.put_nowait(_Pending(bundle, image, source))
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("request recording falls behind: %d observations dropped", self.dropped)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            items = [first]
            while len(items) < BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending = [i for i in items if isinstance(i, _Pending)]
            if pending:
                self._write(pending)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in items):
                return

    def _write(self, pending: list[_Pending]) -> None:
        from fashionops.monitoring import record_observations

        # one pass per (bundle, source): a reload may change the model between requests
        groups: dict[tuple[int, str], list[_Pending]] = {}
        for p in pending:
            groups.setdefault((id(p.bundle), p.source), []).append(p)
        for group in groups.values():
            bundle, source = group[0].bundle, group[0].source
            try:
                predictor = bundle.predictor
                batch = predictor.fit([p.image for p in group])
                with bundle.slots:
                    enc = predictor.encode(batch, with_probs=True)
                    # a TorchScript trace without embed_with_logits gives no probabilities
                    probs = enc.class_probs if enc.class_probs is not None else predictor.predict_proba(batch)
                self.recorded += record_observations(
                    self.cfg,
                    images=[p.image for p in group],
                    probabilities=probs,
                    classes=predictor.classes,
                    embeddings=enc.embeddings,
                    source=source,
                    model_version=_version(bundle),
                )
            except Exception:  # recording must never take the server down
                log.exception("could not record %d served observations in %s", len(group), self.cfg.store)


def _version(bundle: ModelBundle) -> str | None:
    version = bundle.classifier.get("version")
    return None if version is None else str(version)


def start_recorder(cfg: MonitorConfig) -> RequestRecorder | None:
    """A running recorder when ``cfg.record_requests``, else None."""
    if not cfg.record_requests:
        return None
    log.info("recording served requests into %s (monitor.record_requests)", cfg.store)
    return RequestRecorder(cfg)


async def request_recorder(request: Request) -> RequestRecorder | None:
    """The app's recorder (``app.state.recorder``), None when recording is off."""
    return getattr(request.app.state, "recorder", None)


Recorder = Annotated[RequestRecorder | None, Depends(request_recorder)]
