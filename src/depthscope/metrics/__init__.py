"""Pure metric functions: tensors in, numbers out. Each docstring names the equation it computes."""
from .collapse import (
    covariance_spectrum,
    dormant_fraction,
    dormant_scores,
    effective_rank,
    rankme,
    spectral_collapse,
    stable_rank,
    token_collapse,
    token_collapse_per_sequence,
)
from .gradients import VariancePropagation, shared_variance, sigma_w2, sigma_w2_mu1_per_layer, variance_propagation
from .jacobian import JacobianResult, input_output_jacobian, jacobian_vni, jjt_moments, layer_jacobian
from .layers import effective_nodes_per_layer, vni_per_layer
from .vni import (
    CovarianceAccumulator,
    debias_vni,
    effective_nodes,
    participation_ratio,
    rho_squared,
    vni,
    vni_from_covariance,
)

__all__ = [
    "covariance_spectrum",
    "dormant_fraction",
    "dormant_scores",
    "effective_rank",
    "rankme",
    "spectral_collapse",
    "stable_rank",
    "token_collapse",
    "token_collapse_per_sequence",
    "CovarianceAccumulator",
    "JacobianResult",
    "VariancePropagation",
    "debias_vni",
    "effective_nodes",
    "effective_nodes_per_layer",
    "input_output_jacobian",
    "jacobian_vni",
    "jjt_moments",
    "layer_jacobian",
    "participation_ratio",
    "rho_squared",
    "shared_variance",
    "sigma_w2",
    "sigma_w2_mu1_per_layer",
    "variance_propagation",
    "vni",
    "vni_from_covariance",
    "vni_per_layer",
]
