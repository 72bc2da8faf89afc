"""MLflow writes in order on a background thread, buffered and retried while the tracking server is unreachable.

The sweep's Tune callback (study/sweep/tracking.py) queues every write here, so the Tune event loop never waits for
MLflow and a server outage only delays the writes."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from study.store import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Fail fast on an unreachable server; this module retries and buffers by itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _unreachable(err: Exception) -> bool:
    text = f"{err} {err.__cause__} {err.__context__}".lower()
    return any(
        s in text
        for s in (
            "connection refused",
            "max retries exceeded",
            "failed to establish",
            "timed out",
            "connectionerror",
            "remote end closed",
            "name or service not known",
        )
    )


class ResilientWriter:
    """Applies MLflow writes in order on a background thread; while the server is unreachable they wait.

    `write(op)` queues `op(client)` and returns at once (the Tune event loop never waits for
    MLflow); the writer thread applies the queue in order. An unreachable server triggers one
    warning and retries with backoff; nothing is dropped. An op failing for another reason
    is logged, set aside, and raised by the next `flush` (the queue goes on meanwhile).
    `flush(patience_s)` waits up to `patience_s` seconds for the queue to drain.
    With ``background=False`` each `write` applies the queue in the caller's thread.
    """

    def __init__(self, tracking_uri: str, background: bool = True):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.background = background
        self.pending: deque[Callable[[MlflowClient], Any]] = deque()
        self.errors: list[Exception] = []
        self.outage_since: float | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._delay = 1.0

    def write(self, op: Callable[[MlflowClient], Any]) -> None:
        with self._cond:
            self.pending.append(op)
            self._cond.notify_all()
        if not self.background:
            self._apply_pending(wait=False)
        elif self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._apply_pending, kwargs={"wait": True}, daemon=True, name="mlflow-writer"
            )
            self._thread.start()

    def _apply_one(self) -> bool:
        """Apply the head of the queue; False while the server is unreachable."""
        op = self.pending[0]
        try:
            op(self.client)
        except Exception as err:  # noqa: BLE001 - outage: keep the op; anything else: set aside, raise at flush
            if _unreachable(err):
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning(
                        "MLflow tracking server %s unreachable; buffering %d write(s) and retrying "
                        "(training continues)",
                        redact(self.tracking_uri),
                        len(self.pending),
                    )
                return False
            log.error("MLflow write failed (%s); continuing with the next writes", str(err).splitlines()[0])
            self.errors.append(err)
        with self._cond:
            self.pending.popleft()
            self._cond.notify_all()
        self._delay = 1.0
        if self.outage_since is not None:
            log.warning(
                "MLflow tracking server back after %.0f s; buffered writes delivered",
                time.monotonic() - self.outage_since,
            )
            self.outage_since = None
        return True

    def _apply_pending(self, wait: bool) -> None:
        while True:
            with self._cond:
                while wait and not self.pending:
                    self._cond.wait()
                if not self.pending:
                    return
            if not self._apply_one():
                if not wait:
                    return
                with self._cond:  # back off; a flush() wakes us to retry at once
                    self._cond.wait(self._delay)
                self._delay = min(self._delay * 2, 30.0)

    def flush(self, patience_s: float = 0.0) -> bool:
        """Wait up to `patience_s` s for every queued op to be applied. True when none is left.
        Raises the first op error set aside since the last flush."""
        deadline = time.monotonic() + patience_s
        if not self.background:
            while self.pending:
                self._apply_pending(wait=False)
                if not self.pending or time.monotonic() >= deadline:
                    break
                time.sleep(min(self._delay, max(0.0, deadline - time.monotonic())))
                self._delay = min(self._delay * 2, 30.0)
        else:
            with self._cond:
                self._cond.notify_all()  # retry now rather than after the backoff
                while self.pending and time.monotonic() < deadline:
                    self._cond.wait(min(1.0, deadline - time.monotonic()))
        if self.errors:
            first, self.errors = self.errors[0], []
            raise first
        return not self.pending
