"""One re-entrant lock per shared model object, taken around every forward pass on it.

Its own module so that every user of a model (prediction in ``ensemble``, the localiser,
OOD features, CAMs, heatmap evaluation) takes the same lock without importing another
user: ``ensemble`` and ``localize`` once imported each other only for this.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["model_lock"]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The one lock that every user of a shared model takes around a forward pass.

    CAM code registers forward/backward hooks on the model; a hook registered by one
    request would fire on another request's forward on the same module. Serialising all
    uses of one model behind one re-entrant lock (prediction and CAMs alike) prevents that
    without copying models per session.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock
