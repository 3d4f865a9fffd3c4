"""Batch scoring: the registered classifier + index pair scores a new catalogue drop
(``fashionops score``, the ``batch-scoring`` deployment).

* :mod:`fashionops.batch.drop` lists a drop's images (Kaggle layout or a plain folder);
* :mod:`fashionops.batch.score` decodes and scores them in batches (:func:`run_batch_score`);
* :mod:`fashionops.batch.output` turns the rows into the Parquet file and the summary;
* :mod:`fashionops.batch.mlflow_log` logs one MLflow run per scoring.
"""
