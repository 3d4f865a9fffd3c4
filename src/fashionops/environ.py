"""The process environment: changes that never outlive their scope, and the cores it may use.

Some libraries are configured only through environment variables (Great Expectations' store
paths) or export them as a side effect (MLflow's ``set_tracking_uri``); left set, they would
redirect later stages and tests running in the same process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def scoped_environ(values: Mapping[str, str] | None = None, keep: Iterable[str] = ()) -> Iterator[None]:
    """Set ``values`` for the duration of the block; afterwards, those variables and the ``keep``
    ones are exactly as they were before it (restored, or removed if they were unset)."""
    values = dict(values or {})
    saved = {key: os.environ.get(key) for key in {*values, *keep}}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1
