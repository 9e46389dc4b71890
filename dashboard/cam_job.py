"""Slow per-member work (the Case page's ScoreCAM) in a background thread, cancellable.

Free of Streamlit so it can be tested directly. A :class:`MemberJob` runs one task per
ensemble member, in order, in a daemon thread; the page keeps the job in session state, polls
:meth:`MemberJob.status` to draw progress, and calls :meth:`MemberJob.cancel` for its Cancel
button and whenever the job's inputs went stale (a new image or ROI). Each task gets the job's
``should_stop`` and a ``progress(done, total)`` callback; the library checks ``should_stop``
between batches (``model_zoo.explain``) and raises ``model_zoo.errors.Cancelled``.

The worker never touches Streamlit or session state: it only fills in its own record under
its own lock, which the page reads.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from model_zoo.errors import Cancelled, ZooError

LOG = logging.getLogger("dashboard")

T = TypeVar("T")
State = Literal["running", "done", "cancelled", "failed"]
# One member's work: task(should_stop, progress) -> its result.
Task = Callable[[Callable[[], bool], Callable[[int, int], None]], T]


@dataclass(frozen=True)
class JobStatus(Generic[T]):
    """A snapshot of a job. ``fraction`` counts finished members plus the current member's
    reported progress; ``message`` says why a cancelled or failed job stopped (plain words,
    no traceback); ``results`` holds the members finished so far."""

    state: State
    done: int
    total: int
    member: str | None  # the member being computed (None once the job stopped)
    fraction: float
    message: str = ""
    results: Mapping[str, T] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state != "running"


class MemberJob(Generic[T]):
    """One task per member, run in order in a background thread; see the module docstring.

    ``key`` names the inputs the results belong to (the page compares it with the current
    inputs to find a stale job). ``what`` names the work in messages ("ScoreCAM").
    """

    def __init__(self, key: Hashable, tasks: Sequence[tuple[str, Task[T]]], *, what: str = "ScoreCAM") -> None:
        self.key = key
        self.what = what
        self._tasks = list(tasks)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state: State = "running"
        self._results: dict[str, T] = {}
        self._member: str | None = None
        self._member_fraction = 0.0
        self._message = ""
        self._thread = threading.Thread(target=self._run, name=f"{what}-job", daemon=True)

    # -- control ------------------------------------------------------------------------------

    def start(self) -> MemberJob[T]:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop; it stops at the task's next check (between batches)."""
        self._stop.set()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the job to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- reading ------------------------------------------------------------------------------

    def status(self) -> JobStatus[T]:
        with self._lock:
            total = len(self._tasks)
            done = len(self._results)
            running = self._state == "running"
            fraction = 1.0 if total == 0 else min(1.0, (done + (self._member_fraction if running else 0.0)) / total)
            if self._state == "done":
                fraction = 1.0
            return JobStatus(
                state=self._state,
                done=done,
                total=total,
                member=self._member if running else None,
                fraction=fraction,
                message=self._message,
                results=dict(self._results),
            )

    # -- worker -------------------------------------------------------------------------------

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._member_fraction = 0.0 if total <= 0 else min(1.0, done / total)

    def _finish(self, state: State, message: str = "") -> None:
        with self._lock:
            self._state, self._message, self._member = state, message, None

    def _run(self) -> None:
        try:
            for name, task in self._tasks:
                if self._stop.is_set():
                    raise Cancelled(f"{self.what} cancelled")
                with self._lock:
                    self._member, self._member_fraction = name, 0.0
                result = task(self.should_stop, self._progress)
                with self._lock:
                    self._results[name] = result
        except Cancelled:
            self._finish("cancelled", f"{self.what} was cancelled.")
        except ZooError as err:  # a deliberate one-line message (e.g. an unusable input)
            self._finish("failed", f"{self.what} could not be computed: {err}")
        except Exception as err:  # noqa: BLE001 - the page shows a message, the log the traceback
            ref = uuid.uuid4().hex[:8]
            LOG.error("%s job failed [ref %s]", self.what, ref, exc_info=(type(err), err, err.__traceback__))
            self._finish(
                "failed",
                f"{self.what} failed ({type(err).__name__}). Reference {ref}: the details are "
                "in the server log. The rest of the page is unaffected.",
            )
        else:
            self._finish("done")
