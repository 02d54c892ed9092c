"""``WandbWriter``: depthscope.watch records logged to a Weights & Biases run.

::

    from depthscope.integrations.wandb import WandbWriter
    with depthscope.watch(model, optimizer=opt, writers=[WandbWriter(project="my-project")]):
        ...

Keys are ``depthscope/<quantity>/<module name>``, plotted against their own step
metric ``depthscope/step`` (the watch's step: optimizer steps), so they never fight
over W&B's ``_step`` with what the user logs. Alerts go to the run summary as
``depthscope/alerts`` (a list of messages). A writer passed in ``writers=`` is the
caller's: the watch does not close it; ``close()`` it (it finishes only a run it started).
"""
from __future__ import annotations

from typing import Any, Sequence

from . import LOGGED_QUANTITIES, flatten, require


class WandbWriter:
    """Writes each recorded step to a W&B run (an open ``run``, the active one, or one it starts).

    ``run``: a ``wandb`` Run to log into (left open on close). Without it the active run
    (``wandb.run``) is used, else ``wandb.init(**init_kwargs)`` starts one, which this
    writer finishes on close. ``quantities``: which quantities to log.
    """

    def __init__(self, run: Any = None, *, quantities: Sequence[str] = LOGGED_QUANTITIES,
                 prefix: str = "depthscope", **init_kwargs: Any):
        self._wandb = require("wandb", "wandb")
        self.quantities, self.prefix = tuple(quantities), prefix
        self._init_kwargs = init_kwargs
        self.run, self._own = run, False

    def start(self, watched: Sequence[Any]) -> None:
        if self.run is None:
            if self._wandb.run is not None and not self._init_kwargs:
                self.run = self._wandb.run
            else:
                self.run, self._own = self._wandb.init(**self._init_kwargs), True
        self.run.define_metric(f"{self.prefix}/step")
        self.run.define_metric(f"{self.prefix}/*", step_metric=f"{self.prefix}/step")
        self.run.config.update({f"{self.prefix}/modules": [w.name for w in watched]}, allow_val_change=True)

    def write(self, step: int, records: Sequence[dict]) -> None:
        if records:
            self.run.log({f"{self.prefix}/step": step, **flatten(list(records), self.quantities, self.prefix)})

    def alert(self, alerts: Sequence[Any]) -> None:
        self.run.summary[f"{self.prefix}/alerts"] = [a.message for a in alerts]

    def close(self) -> None:
        if self._own and self.run is not None:
            self.run.finish()
            self.run, self._own = None, False
