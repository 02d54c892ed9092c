"""Adapters between :func:`depthscope.watch` and the stacks people train with.

Each is an optional extra and is imported only when used:

* :mod:`depthscope.integrations.lightning`: ``DepthscopeCallback``, a Lightning ``Callback``
  (``pip install 'depthscope[lightning]'``).
* :mod:`depthscope.integrations.transformers`: ``DepthscopeTrainerCallback``, a Hugging Face
  ``TrainerCallback`` (``pip install 'depthscope[transformers]'``).
* :mod:`depthscope.integrations.wandb`: ``WandbWriter`` (``pip install 'depthscope[wandb]'``).
* :mod:`depthscope.integrations.mlflow`: ``MLflowWriter`` (``pip install 'depthscope[mlflow]'``).
* :mod:`depthscope.integrations.distributed`: statistics gathered across DDP ranks, rank 0 writes.

The callbacks share one contract: the watch attaches when training starts, its step
counter advances once per optimizer step (so gradient accumulation counts optimizer
steps, not batches), only training passes are captured (sanity-check and validation
passes are paused out), the step in progress when training ends is dropped (it has no
optimizer step), and the watch detaches at the end of training or on an exception.
See docs/integrations.md.
"""
from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any

#: The keys the writers and loggers get: ``depthscope/<quantity>/<module name>``.
LOGGED_QUANTITIES = ("vni", "vni_debiased", "effective_nodes", "participation_ratio", "act_mean",
                     "act_var", "grad_norm", "grad_rms", "out_grad_rms", "sigma_w2", "sigma_w2_mu1")


def require(module: str, extra: str) -> ModuleType:
    """``import module``, or a one-line ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"depthscope.integrations.{extra} needs the '{module.split('.')[0]}' package: "
                          f"pip install 'depthscope[{extra}]'") from None


def metric_key(quantity: str, name: str, prefix: str = "depthscope") -> str:
    """``prefix/quantity/name``; the root module (name '') is called 'root'."""
    return f"{prefix}/{quantity}/{name or 'root'}"


def flatten(records: list[dict], quantities: tuple[str, ...] = LOGGED_QUANTITIES,
            prefix: str = "depthscope") -> dict[str, float]:
    """{``prefix/quantity/module``: value} of one step's records, NaN values left out."""
    out: dict[str, float] = {}
    for r in records:
        for q in quantities:
            v = r[q]
            if v == v:  # not NaN
                out[metric_key(q, r["name"], prefix)] = float(v)
    return out


def check_callback_args(ranks: str, watch_kwargs: dict[str, Any]) -> None:
    """The callbacks' constructor checks: ``ranks`` is one of distributed.RANKS and every keyword is a
    depthscope.watch keyword other than ``model`` and ``optimizer`` (the trainer's), one-line errors."""
    from depthscope.watch import Watch

    from .distributed import RANKS

    if ranks not in RANKS:
        raise ValueError(f"ranks must be one of {', '.join(RANKS)}, got {ranks!r}")
    if "optimizer" in watch_kwargs:
        raise ValueError("optimizer= is set by the callback (the trainer's optimizer); leave it out")
    bad = set(watch_kwargs) - (set(inspect.signature(Watch).parameters) - {"model", "optimizer"})
    if bad:
        raise TypeError(f"unknown depthscope.watch keyword(s): {', '.join(sorted(bad))}")


class WatchResults:
    """What both callbacks expose of their watch (``self.watch``, None before the trainer starts)."""

    watch: Any = None

    @property
    def records(self) -> list[dict]:
        """The records of the last (or current) fit / ``train()``: [] before it."""
        return self.watch.records if self.watch is not None else []

    @property
    def alerts(self) -> list:
        return self.watch.alerts if self.watch is not None else []


def attach_watch(old: Any, model: Any, *, ranks: str, every: int, step: int, **watch_kwargs: Any) -> Any:
    """The callbacks' attach: detach ``old`` if it is still attached (dropping its step in progress, which
    has no optimizer step), build :func:`distributed.distributed_watch` of ``model`` (refusing FSDP), start
    its step counter at the trainer's global ``step`` (a resumed run continues its numbering), attach it."""
    from .distributed import distributed_watch

    if old is not None and old.attached:
        old.detach(flush=False)
    w = distributed_watch(model, ranks=ranks, every=every, **watch_kwargs)
    w.step_count = int(step)
    return w.attach()
