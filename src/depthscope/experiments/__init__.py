"""One module per study. Each defines Experiment subclasses; :func:`registry` finds them."""
from .base import (
    Experiment,
    FigureResult,
    RunContext,
    UnitFailed,
    WorkUnit,
    get_experiment,
    registry,
    run_experiment,
)

__all__ = ["Experiment", "FigureResult", "RunContext", "UnitFailed", "WorkUnit", "get_experiment",
           "registry", "run_experiment"]
