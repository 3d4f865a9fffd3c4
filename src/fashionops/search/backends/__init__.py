"""ANN backends behind one interface (:mod:`.base`) and the registry that names them.

Adding a backend: one module here implementing :class:`~.base.AnnBackend` / :class:`~.base.AnnIndex`
(importing its library inside the methods, so it is only needed when chosen) and one entry in
:data:`BACKENDS`.
"""

from __future__ import annotations

from fashionops.errors import FashionOpsError
from fashionops.search.backends.annoy import AnnoyBackend
from fashionops.search.backends.base import AnnBackend, AnnIndex, Neighbours
from fashionops.search.backends.hnsw import HnswBackend

DEFAULT_BACKEND = "annoy"  # what an index_meta.json without a "backend" key was built with
BACKENDS: dict[str, type[AnnBackend]] = {
    AnnoyBackend.name: AnnoyBackend,
    HnswBackend.name: HnswBackend,
}

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "AnnBackend", "AnnIndex", "Neighbours", "get_backend"]


def get_backend(name: str = DEFAULT_BACKEND) -> AnnBackend:
    """The backend registered as ``name``; an unknown name is a ``FashionOpsError`` listing the known ones."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise FashionOpsError(f"unknown ANN backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    return backend()
