"""``fashionops sweep``: Optuna hyperparameter sweeps over ``params.yaml``'s ``sweep.space``.

* :mod:`~fashionops.tuning.space` - the search space: checked against the real params before any
  trial, sampled per trial, applied like ``--set section.key=value``;
* :mod:`~fashionops.tuning.pruning` - the Lightning callbacks of a trial: median pruning on the
  validation macro-F1 of each epoch, the trial's MLflow run nested under the sweep's;
* :mod:`~fashionops.tuning.trials` - the MLflow parent run, failed trials' runs, the history;
* :mod:`~fashionops.tuning.experiment` - the best trial's params as an appliable DVC experiment;
* :mod:`~fashionops.tuning.stopping` - Ctrl-C / SIGTERM stop the sweep even when Python swallows them;
* :mod:`~fashionops.tuning.sweep` - :func:`~fashionops.tuning.sweep.run_sweep`, the command;
* :mod:`~fashionops.tuning.flow_steps` - what the ``hpo-sweep`` flow runs and publishes.
"""
