"""Read torch files (weights, checkpoints) without running pickled code.

``torch.load`` unpickles, and a crafted ``.pt``/``.ckpt`` runs whatever code it names while it is
being read. Every weights or checkpoint file fashionops reads goes through :func:`load_weights_only`:
torch's restricted unpickler (``weights_only=True``) that builds tensors, containers and primitive
values only, plus the globals a caller allow-lists for that one load. Anything else is refused
with a one-line :class:`~fashionops.errors.FashionOpsError` before any of it runs.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fashionops.errors import FashionOpsError

PLAIN_ONLY = "not a plain weights file (state_dict / tensors only)"
# torch names the refused global in its (long, multi-line) message: "... unsupported GLOBAL posix.system ..."
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_PICKLE_PROTO = 0x80  # first byte of a pickle of protocol >= 2 (torch's legacy, non-zip format)


def _is_pickle_file(path: Path, exc: BaseException) -> bool:
    """Whether a refused file is a torch/pickle file (then it holds objects) rather than junk."""
    if _GLOBAL.search(str(exc)) or zipfile.is_zipfile(path):
        return True
    with path.open("rb") as fh:
        return fh.read(1) == bytes([_PICKLE_PROTO])


def load_weights_only(path: str | Path, what: str, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU.

    ``what`` starts the error message (``train.pretrained``, ``--resume``). ``allowed``:
    classes/functions the file may reference besides torch's defaults, allow-listed for this
    load only (``torch.serialization.safe_globals``). Raises FashionOpsError (one line) for a
    file that references anything else and for a file torch cannot read.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False: exactly what must not happen here
        if _is_pickle_file(path, exc):
            found = _GLOBAL.search(str(exc))
            named = f"; it references {found.group(1)}" if found else ""
            raise FashionOpsError(f"{what}: {path} is {PLAIN_ONLY}{named}; refusing to unpickle it") from None
        raise FashionOpsError(f"{what}: {path} is not a readable torch file (not a pickle or zip archive)") from None
    except Exception as exc:  # corrupt zip (RuntimeError), truncated (EOFError), not a torch file (KeyError)
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FashionOpsError(f"{what}: {path} is not a readable torch file ({detail})") from exc
