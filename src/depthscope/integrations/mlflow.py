"""``MLflowWriter``: depthscope.watch records logged to an MLflow run.

::

    from depthscope.integrations.mlflow import MLflowWriter
    with depthscope.watch(model, optimizer=opt, writers=[MLflowWriter(experiment="my-exp")]):
        ...

Metrics ``depthscope/<quantity>/<module name>`` with MLflow's ``step`` = the watch's
step (optimizer steps), one ``log_batch`` per recorded step; the watched module names
are a run parameter-free artifact ``depthscope/modules.json`` and alerts
``depthscope/alerts.json`` (rewritten when an alert fires).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from . import LOGGED_QUANTITIES, flatten, require

_BATCH = 1000  # MLflow's log_batch takes at most 1000 metrics per call


class MLflowWriter:
    """Writes each recorded step to an MLflow run through ``MlflowClient``.

    ``run_id``: log into that run (left open on close). Without it, the active run
    (``mlflow.active_run()``) is used, else a run is created in ``experiment`` (created
    when missing) and terminated on close. ``tracking_uri``: the tracking server or
    store (default: MLflow's own default / ``MLFLOW_TRACKING_URI``).
    """

    def __init__(self, run_id: str | None = None, *, tracking_uri: str | None = None,
                 experiment: str = "depthscope", run_name: str | None = None,
                 quantities: Sequence[str] = LOGGED_QUANTITIES, prefix: str = "depthscope"):
        self._mlflow = require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id, self._own = run_id, False
        self.experiment, self.run_name = experiment, run_name
        self.quantities, self.prefix = tuple(quantities), prefix

    def start(self, watched: Sequence[Any]) -> None:
        if self.run_id is None:
            active = self._mlflow.active_run()
            if active is not None:
                self.run_id = active.info.run_id
            else:
                exp = self.client.get_experiment_by_name(self.experiment)
                exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
                tags = {"mlflow.runName": self.run_name} if self.run_name else None
                self.run_id, self._own = self.client.create_run(exp_id, tags=tags).info.run_id, True
        self.client.log_dict(self.run_id, [w.name for w in watched], f"{self.prefix}/modules.json")

    def write(self, step: int, records: Sequence[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in flatten(list(records), self.quantities, self.prefix).items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _BATCH])

    def alert(self, alerts: Sequence[Any]) -> None:
        self.client.log_dict(self.run_id, [a.__dict__ for a in alerts], f"{self.prefix}/alerts.json")

    def close(self) -> None:
        if self._own and self.run_id is not None:
            self.client.set_terminated(self.run_id)
            self.run_id, self._own = None, False
