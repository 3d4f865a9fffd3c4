"""Running the DVC pipeline from Prefect flows (``flows/``), one module per job.

* :mod:`~fashionops.orchestration.lock` - one pipeline run per workspace at a time;
* :mod:`~fashionops.orchestration.overrides` - a run's parameters written into ``params.yaml``;
* :mod:`~fashionops.orchestration.runner` - stages (``dvc repro``), import, DVC experiments;
* :mod:`~fashionops.orchestration.failures` - what failed, and whether a retry can help;
* :mod:`~fashionops.orchestration.reports` - the stages' reports as Prefect artifact content;
* :mod:`~fashionops.orchestration.refresh` - the index refresh with the @champion classifier;
* :mod:`~fashionops.orchestration.tasks` - the Prefect tasks both flows use (the only module
  here that imports Prefect).
"""
