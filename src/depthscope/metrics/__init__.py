"""Pure metric functions: tensors in, numbers out. Each docstring names the equation it computes."""
from .vni import (
    CovarianceAccumulator,
    effective_nodes,
    participation_ratio,
    rho_squared,
    vni,
    vni_from_covariance,
)

__all__ = [
    "CovarianceAccumulator",
    "effective_nodes",
    "participation_ratio",
    "rho_squared",
    "vni",
    "vni_from_covariance",
]
