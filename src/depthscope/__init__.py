"""depthscope: why is a deep network hard to train?

Vanishing nodes (the VNI), vanishing gradients and volume conservation, measured
on any network and set beside their mean-field theory.
"""
__version__ = "0.1.0"

from .activations import activation_names, get_activation, register_activation
from .inits import INITS, init_weight
from .nets import NetSpec, build_net, stream_layers
from .metrics import effective_nodes, participation_ratio, rho_squared, vni
from . import theory
from .measure import measure_vni
from .watch import watch  # noqa: F401  (depthscope.watch(model, ...))

__all__ = [
    "__version__",
    "INITS",
    "NetSpec",
    "activation_names",
    "build_net",
    "effective_nodes",
    "get_activation",
    "init_weight",
    "measure_vni",
    "participation_ratio",
    "register_activation",
    "rho_squared",
    "stream_layers",
    "theory",
    "vni",
]
