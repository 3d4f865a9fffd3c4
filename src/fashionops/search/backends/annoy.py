"""The Annoy backend: a forest of random-projection trees, saved as one memory-mappable file.

Loading maps ``index.ann`` read-only, so it is cheap and shared between processes (the server's
workers, the pyfunc model). Builds are deterministic for a seed with one build thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, cast

import numpy as np

from fashionops.atomic import atomic_path
from fashionops.errors import FashionOpsError
from fashionops.search.backends.base import AnnBackend, AnnIndex, Neighbours
from fashionops.search.vectors import check_vectors

if TYPE_CHECKING:
    from annoy import AnnoyIndex

AnnoyMetric = Literal["angular", "euclidean", "manhattan", "hamming", "dot"]


class AnnoyTreeIndex(AnnIndex):
    """An ``annoy.AnnoyIndex`` behind the :class:`AnnIndex` interface (``.annoy`` is the raw index)."""

    backend_name: ClassVar[str] = "annoy"

    def __init__(self, annoy: AnnoyIndex) -> None:
        self.annoy = annoy

    @property
    def n_items(self) -> int:
        return int(self.annoy.get_n_items())

    @property
    def n_trees(self) -> int:
        """Trees in the forest."""
        return int(self.annoy.get_n_trees())

    def save(self, path: str | Path) -> Path:
        """Temp file + rename: no partial ``index.ann`` on failure.

        Annoy's ``save`` re-maps the index onto the written file; the mapping survives the rename.
        """
        path = Path(path)
        with atomic_path(path) as tmp:
            if not self.annoy.save(str(tmp)):
                raise FashionOpsError(f"could not write the Annoy index to {tmp}")
        return path

    def query(self, vector: np.ndarray, n: int, search_k: int = -1) -> Neighbours:
        ids, dists = self.annoy.get_nns_by_vector(vector, n, search_k=int(search_k), include_distances=True)
        return ids, dists

    def query_item(self, row: int, n: int, search_k: int = -1) -> Neighbours:
        ids, dists = self.annoy.get_nns_by_item(int(row), n, search_k=int(search_k), include_distances=True)
        return ids, dists

    def unload(self) -> None:
        self.annoy.unload()


class AnnoyBackend(AnnBackend):
    """Annoy (``n_trees`` = trees, ``search_k`` = candidate nodes inspected per query)."""

    name: ClassVar[str] = "annoy"
    index_file: ClassVar[str] = "index.ann"
    metrics: ClassVar[tuple[str, ...]] = ("angular", "euclidean", "manhattan", "dot")

    def build(
        self,
        vectors: np.ndarray,
        metric: str = "angular",
        n_trees: int = 50,
        seed: int = 42,
        n_jobs: int = 1,
        rows: np.ndarray | None = None,
    ) -> AnnoyTreeIndex:
        from annoy import AnnoyIndex

        if rows is not None:
            raise FashionOpsError("an Annoy index holds rows 0..n-1; it cannot be built over other ids")

        if metric == "hamming":
            raise FashionOpsError(
                "index.metric=hamming needs binary codes; float embeddings use angular/euclidean/dot/manhattan"
            )
        vectors = check_vectors(vectors)
        if n_trees < 1:
            raise FashionOpsError(f"index.n_trees must be >= 1, got {n_trees}")
        index = AnnoyIndex(vectors.shape[1], cast(AnnoyMetric, metric))
        index.set_seed(int(seed))
        for i, vec in enumerate(vectors):
            index.add_item(i, vec)
        index.build(int(n_trees), n_jobs=n_jobs)
        return AnnoyTreeIndex(index)

    def load(self, path: str | Path, dim: int, metric: str) -> AnnoyTreeIndex:
        from annoy import AnnoyIndex

        index = AnnoyIndex(int(dim), cast(AnnoyMetric, metric))
        index.load(str(path))  # memory-mapped: cheap to load, shared between processes
        return AnnoyTreeIndex(index)
