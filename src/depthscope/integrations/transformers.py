"""``DepthscopeTrainerCallback``: depthscope.watch inside a Hugging Face ``Trainer``.

::

    from depthscope.integrations.transformers import DepthscopeTrainerCallback
    with DepthscopeTrainerCallback(every=50, run_dir="runs/a") as cb:   # any depthscope.watch keyword
        Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    cb.records

* attaches on ``on_train_begin``, with the step counter starting at ``state.global_step``;
* advances on ``on_optimizer_step`` (after ``optimizer.step()``, before ``zero_grad``), so
  with ``gradient_accumulation_steps=k`` a step is k micro-batches and the gradients it
  reads are the accumulated (and clipped, when ``max_grad_norm`` > 0) ones the optimizer used;
* captures training passes only: it captures from ``on_step_begin`` to ``on_step_end`` (the
  forward/backward passes of one optimizer step) and is paused in between, where the Trainer
  evaluates, logs and saves (``eval_on_start`` included);
* drops the step in progress and detaches on ``on_train_end``.

The Hugging Face Trainer has no exception event for callbacks: when ``train()`` raises,
the callback is not told. Use the callback as a context manager (as above) or call
``cb.close()`` after a failed ``train()``: either detaches. A later ``train()`` with the
same callback detaches a watch left attached before attaching a new one.

Records go to the watch's writers (``run_dir=``, ``csv=``, ``tensorboard=``,
``writers=[WandbWriter(...)]``); the Trainer's own ``report_to`` integrations do not see
them. Under DDP: see :mod:`depthscope.integrations.distributed` (``ranks=``).
"""
from __future__ import annotations

from typing import Any

from . import WatchResults, attach_watch, check_callback_args


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("depthscope.integrations.transformers needs the 'transformers' package: "
                          "pip install 'depthscope[transformers]'") from None
    return transformers


class _TrainerCallbackLogic(WatchResults):
    """The hooks of the callback; the class users get also subclasses ``transformers.TrainerCallback``."""

    def __init__(self, every: int = 50, *, ranks: str = "gather", **watch_kwargs: Any):
        check_callback_args(ranks, watch_kwargs)
        self.every, self.ranks, self.watch_kwargs = every, ranks, watch_kwargs
        self.watch: Any = None

    # -- Trainer events ----------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("DepthscopeTrainerCallback: the Trainer passed no model to on_train_begin")
        self.watch = attach_watch(self.watch, model, ranks=self.ranks, every=self.every, step=state.global_step,
                                  **self.watch_kwargs)
        self.watch.pause()  # until the first training pass (eval_on_start runs before it)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None and self.watch.attached:
            self.watch.resume()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None and self.watch.attached:
            self.watch.step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is not None and self.watch.attached:
            self.watch.pause()  # evaluation, logging and saving follow

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    # -- cleanup -----------------------------------------------------------------------------
    def close(self) -> None:
        """Detach the watch if it is attached, dropping the step in progress (it has no optimizer step)."""
        if self.watch is not None and self.watch.attached:
            self.watch.detach(flush=False)

    def __enter__(self) -> "_TrainerCallbackLogic":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def callback_class(base: type) -> type:
    """The depthscope callback built on ``base`` (``transformers.TrainerCallback``)."""
    return type("DepthscopeTrainerCallback", (_TrainerCallbackLogic, base), {"__module__": __name__})


def __getattr__(name: str) -> Any:
    # built on first use, so importing this module does not import transformers
    if name == "DepthscopeTrainerCallback":
        cls = callback_class(_transformers().TrainerCallback)
        cls.__doc__ = __doc__
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
