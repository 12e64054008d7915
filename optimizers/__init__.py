"""Ask/tell optimizers with exact, resumable state.

``create(name, dim, *, seed=None, **hyperparameters)`` builds one by its registered name
(``available()`` lists them); ``dumps_state``/``loads_state`` turn a ``state_dict()`` into bytes
and back without pickle. See docs/optimizers.md.
"""

from . import cma, fixed_design, ga, hess_cma, pycma_adapter, sphere_cma  # noqa: F401  (modules register their optimizers)
from . import presets  # noqa: F401, I001  (configured optimizers, after the ones they configure)
from .base import (
    MAX_POPULATION,
    MissingDependencyError,
    Optimizer,
    OptimizerError,
    available,
    create,
    dumps_state,
    hyperparameter_names,
    loads_state,
    register,
    state_summary,
    with_generator_defaults,
)

__all__ = [
    "MAX_POPULATION",
    "MissingDependencyError",
    "Optimizer",
    "OptimizerError",
    "available",
    "create",
    "dumps_state",
    "hyperparameter_names",
    "loads_state",
    "register",
    "state_summary",
    "with_generator_defaults",
]
