"""Visual search: catalogue embeddings in a recall-tuned ANN index, searched by image or item.

Modules, one job each:

* :mod:`.vectors`: vector checks, L2 normalisation, the catalogue-fitted SVD projection;
* :mod:`.exact`: exact k-NN and tie-aware recall@k (the ground truth for ANN);
* :mod:`.backends`: the ANN backend interface (:mod:`.backends.base`), the registry
  (``get_backend``) and the backends (:mod:`.backends.annoy`, :mod:`.backends.hnsw`);
* :mod:`.tuning`: the smallest ``search_k`` (and tree count) reaching a recall target, any backend;
* :mod:`.rerank`: category-aware re-ranking of the ANN candidates;
* :mod:`.store`: the index directory: file names, atomic writer, reader;
* :mod:`.searcher`: ``IndexSearcher``, the query path over a loaded index;
* :mod:`.items`: the catalogue rows an index holds, encoded with the embedder's
  ``fashionops.inference.predictor.Predictor.encode`` (queries are encoded the same way);
* :mod:`.quality`: retrieval precision/mAP, duplicate check, query latency;
* :mod:`.stage`: the ``index`` stage (``run_index``) and ``fashionops search`` (``search_images``).
"""
