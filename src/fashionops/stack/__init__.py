"""The production stack on one machine: ``fashionops stack up|down|status`` (``make stack``,
``make stack-down``), every service on 127.0.0.1 only, its state under ``stack.dir`` (``.stack/``).

Usage, from the repository root (``source .venv/bin/activate`` first)::

    fashionops stack up        # or `make stack`: start (or find running) every service below,
                               # apply both Prefect deployments, write .stack/env
    source .stack/env          # point mlflow, prefect, dvc and fashionops at the stack
    prefect deployment run training-pipeline/training-pipeline -p epochs=1
    dvc push -r stack          # / dvc pull -r stack
    fashionops stack status    # each service: running (pid) or stopped, its URL and log file
    fashionops stack down      # or `make stack-down`: stop exactly the processes `up` started

Ports and names come from the ``stack:`` section of ``params.yaml`` (``--set stack.mlflow_port=...``).

Services (defaults; each process's pid, start time and log under ``.stack/``):

* PostgreSQL 15 on 127.0.0.1:15432 (``initdb`` once into ``.stack/postgres/data``, trust auth, TCP
  on 127.0.0.1 only, no Unix socket; ``postgres -D`` run directly so its pid is the stack's; as the
  ``postgres`` account when run as root), databases ``mlflow`` and ``prefect``;
* S3: moto's standalone server (``moto_server``) on 127.0.0.1:19000, buckets ``fashionops-mlflow``
  (MLflow artifacts) and ``fashionops-dvc`` (the DVC remote ``stack``). moto keeps objects in
  memory; its request recording (``.stack/s3/requests.jsonl``) is replayed when it starts again,
  so objects survive ``down``/``up``. A local stand-in: the code speaks plain S3, so AWS S3 or
  MinIO work unchanged with the same env names;
* MLflow tracking server on http://127.0.0.1:15000: backend ``postgresql://.../mlflow``, artifacts
  proxied (``--serve-artifacts``) to ``s3://fashionops-mlflow/``;
* Prefect server on http://127.0.0.1:14200 (database ``postgresql+asyncpg://.../prefect``,
  ``PREFECT_HOME`` ``.stack/prefect``), the process work pool of ``prefect.yaml``
  (``fashionops-local``), one worker with the stack's environment, ``prefect deploy --all``.

``.stack/env`` (``export NAME=value`` lines, mode 0600) holds exactly these names, which
``docker-compose.yml`` uses too:

* ``MLFLOW_TRACKING_URI``      http://127.0.0.1:15000
* ``PREFECT_API_URL``          http://127.0.0.1:14200/api
* ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (generated once, kept in ``.stack/``),
  ``AWS_DEFAULT_REGION`` (us-east-1)
* ``AWS_ENDPOINT_URL``         http://127.0.0.1:19000 (boto3, s3fs and DVC's S3 remote)
* ``MLFLOW_S3_ENDPOINT_URL``   the same endpoint (MLflow's S3 client)
* ``FASHIONOPS_DVC_REMOTE``    stack
* ``FASHIONOPS_MLFLOW_UI``     the MLflow server's URL (links in the flows' artifacts)

Modules, one job each: :mod:`~fashionops.stack.settings` (paths, ports, URLs and the
environment of a stack), :mod:`~fashionops.stack.processes` (start a process detached, record its
pid and start time, find it again, stop exactly it), :mod:`~fashionops.stack.services` (one class
per service: start, ready check, stop), :mod:`~fashionops.stack.setup` (databases, buckets, the DVC
remote, the work pool and deployments), :mod:`~fashionops.stack.up` (``up``, ``down``, ``status``).
"""
