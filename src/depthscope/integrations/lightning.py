"""``DepthscopeCallback``: depthscope.watch inside a Lightning ``Trainer``.

::

    from depthscope.integrations.lightning import DepthscopeCallback
    cb = DepthscopeCallback(every=50, run_dir="runs/a")      # any depthscope.watch keyword
    pl.Trainer(callbacks=[cb], ...).fit(module, data)
    cb.records                                                # the watch's records

* attaches when training starts (``on_train_start``: after the sanity check and, in a resumed
  fit, after the checkpoint restored ``trainer.global_step``, where the step counter starts);
  an FSDP strategy is refused at fit start;
* advances once per optimizer step (a post-step hook on the first optimizer, the one
  ``trainer.optimizers[0]`` holds), so with ``accumulate_grad_batches=k`` a step is k
  batches and a skipped step (AMP inf/NaN) is not counted;
* captures training passes only: validation loops are paused out;
* drops the step in progress at the end of fit (it has no optimizer step: the
  gradient-less "extra step" a bare watch would write), detaches at the end of fit and
  on an exception (``on_exception``), and can be attached again by a later ``fit``;
* writes to the watch's writers (``run_dir=``, ``csv=``, ``tensorboard=``, ``writers=``)
  and, with ``log_to_logger`` (default: when the trainer has loggers), to the trainer's
  loggers as ``depthscope/<quantity>/<module>`` at ``step`` = the watch's step;
* under DDP (``trainer.world_size > 1``) gathers rows across ranks (``ranks="gather"``,
  default) or records each rank's own (``ranks="per_rank"``); only rank 0 writes; FSDP
  strategies are refused (see :mod:`depthscope.integrations.distributed`).

Works with ``pytorch_lightning`` and with ``lightning.pytorch`` (the callback subclasses
whichever is installed, ``pytorch_lightning`` first); ``callback_class(base)`` builds it on
another ``Callback`` base.
"""
from __future__ import annotations

from typing import Any, Sequence

from . import WatchResults, LOGGED_QUANTITIES, attach_watch, check_callback_args, flatten


def _lightning():
    try:
        import pytorch_lightning as pl
    except ImportError:
        try:
            import lightning.pytorch as pl
        except ImportError:
            raise ImportError("depthscope.integrations.lightning needs the 'pytorch_lightning' (or 'lightning') "
                              "package: pip install 'depthscope[lightning]'") from None
    return pl


class LightningLoggerWriter:
    """A watch writer that sends each recorded step to a trainer's loggers (``log_metrics``)."""

    def __init__(self, loggers: Sequence[Any], quantities: Sequence[str] = LOGGED_QUANTITIES,
                 prefix: str = "depthscope"):
        self.loggers, self.quantities, self.prefix = list(loggers), tuple(quantities), prefix

    def start(self, watched: Sequence[Any]) -> None:
        pass

    def write(self, step: int, records: Sequence[dict]) -> None:
        metrics = flatten(list(records), self.quantities, self.prefix)
        if metrics:
            for lg in self.loggers:
                lg.log_metrics(metrics, step=step)

    def alert(self, alerts: Sequence[Any]) -> None:
        pass

    def close(self) -> None:
        pass


class _WatchCallbackLogic(WatchResults):
    """The hooks of the callback, independent of which Lightning namespace provides ``Callback``."""

    def __init__(self, every: int = 50, *, log_to_logger: bool | None = None, ranks: str = "gather",
                 quantities: Sequence[str] = LOGGED_QUANTITIES, **watch_kwargs: Any):
        check_callback_args(ranks, watch_kwargs)  # fail now, not at fit start, on a bad keyword
        self.every, self.log_to_logger, self.ranks = every, log_to_logger, ranks
        self.quantities = tuple(quantities)
        self.watch_kwargs = watch_kwargs
        self.watch: Any = None
        self._we_paused = False

    # -- lifecycle ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        from .distributed import check_supported

        # refused here, before the sanity check and any training
        if "fsdp" in type(trainer.strategy).__name__.lower():
            raise ValueError(f"depthscope.watch does not support the {type(trainer.strategy).__name__} strategy: "
                             "FSDP shards the parameters, so grad_norm and sigma_w2 would describe one shard; "
                             "use DDP")
        check_supported(pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Attached here, not at fit start: a resumed fit has restored trainer.global_step by now.
        kwargs = dict(self.watch_kwargs)
        log = self.log_to_logger if self.log_to_logger is not None else bool(trainer.loggers)
        if log and trainer.loggers:
            kwargs["writers"] = list(kwargs.get("writers", ())) + [LightningLoggerWriter(trainer.loggers, self.quantities)]
        if not trainer.optimizers:
            raise ValueError("DepthscopeCallback needs an optimizer to count steps (configure_optimizers returned none)")
        self.watch = attach_watch(self.watch, pl_module, ranks=self.ranks, every=self.every, step=trainer.global_step,
                                  optimizer=trainer.optimizers[0], **kwargs)

    def _pause(self, *_: Any) -> None:
        if self.watch is not None and self.watch.attached and not self.watch.is_paused:
            self._we_paused = True
            self.watch.pause()

    def _resume(self, *_: Any) -> None:
        if self.watch is not None and self.watch.attached and self._we_paused:
            self._we_paused = False
            self.watch.resume()

    # validation inside fit (the sanity check runs before the watch attaches)
    on_validation_start = _pause
    on_validation_end = _resume

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._detach()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._detach()

    def _detach(self) -> None:
        # The step in progress has no optimizer step (training ended after the last one, or
        # broke off inside one): it is dropped, not written as a gradient-less record.
        if self.watch is not None and self.watch.attached:
            self._we_paused = False
            self.watch.detach(flush=False)


def callback_class(base: type) -> type:
    """The depthscope callback built on ``base`` (a Lightning ``Callback`` class)."""
    return type("DepthscopeCallback", (_WatchCallbackLogic, base), {"__doc__": _WatchCallbackLogic.__doc__,
                                                                   "__module__": __name__})


def __getattr__(name: str) -> Any:
    # built on first use, so importing this module does not import Lightning
    if name == "DepthscopeCallback":
        cls = callback_class(_lightning().Callback)
        cls.__doc__ = __doc__
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
