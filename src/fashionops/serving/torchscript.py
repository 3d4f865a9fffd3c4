"""TorchScript traces the server can free again when a reload replaces them.

``Predictor.compiled`` traces and freezes with ``torch.jit``; every trace and every freeze
registers new module types, whose methods hold the graphs (frozen weights as constants, the
profiling executor's plans), in torch's process-wide Python compilation unit. Nothing ever
removes them, so each reload of a traced pair kept ~70 MB alive for good (issue 18).

:func:`compiled_for_serving` moves the frozen trace into a compilation unit of its own (a
``torch.jit.save``/``torch.jit.load`` round trip: every ``torch.jit.load`` gets a fresh unit,
freed with the last module that uses it), then empties the global unit of the trace's types
when nothing else in the process had put anything there. A traced pair then lives exactly as
long as the bundle that serves it.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

import torch

from fashionops.inference.predictor import Predictor

log = logging.getLogger(__name__)

# One trace at a time: the global unit is only emptied when it held nothing before our trace.
_TRACE_LOCK = threading.Lock()


def _global_unit_functions() -> int:
    """How many functions and methods the process-wide TorchScript compilation unit holds."""
    unit: Any = torch.jit._state._python_cu  # torch's stub says get_functions returns None; it is a list
    return len(unit.get_functions())


def compiled_for_serving(predictor: Predictor, methods: list[str]) -> Predictor:
    """``predictor.compiled(methods)`` in its own compilation unit; the trace's types released.

    Eager (``predictor`` itself) when tracing fails, as ``compiled`` decides.
    """
    with _TRACE_LOCK:
        ours_only = _global_unit_functions() == 0  # no other TorchScript user in this process
        traced = predictor.compiled(methods)
        own = _in_own_unit(traced) if traced.is_scripted else traced
        del traced  # the global unit's copy must be unreachable before it is emptied
        if ours_only:
            torch._C._jit_clear_class_registry()
        else:
            log.info("other TorchScript code in this process: the trace's types stay registered (not freed)")
        return own


def _in_own_unit(traced: Predictor) -> Predictor:
    """The same frozen module, loaded back into a fresh compilation unit (lossless round trip)."""
    buf = io.BytesIO()
    torch.jit.save(traced.module, buf)
    buf.seek(0)
    module = torch.jit.load(buf, map_location=traced.device)
    return Predictor(module, traced.spec, traced.device, channels_last=traced.channels_last)
