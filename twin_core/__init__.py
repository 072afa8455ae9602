"""twin_core: physics and numerics of the batch-reactor twin (no I/O, no sockets, no scipy at run time)."""

from twin_core.errors import IntegrationError, MeasurementError, ParameterError, ParameterTypeError, TwinError
from twin_core.integrator import Tolerance
from twin_core.model import RateMultipliers, rhs
from twin_core.params import Charge, Kinetics, ModelParams, Reactor, load_params
from twin_core.recipe import DEFAULT_RECIPE, Recipe, load_recipe
from twin_core.simulation import StepState, Trajectory, Twin, simulate

__all__ = [
    "Charge", "DEFAULT_RECIPE", "IntegrationError", "Kinetics", "MeasurementError", "ModelParams",
    "ParameterError", "ParameterTypeError", "RateMultipliers", "Reactor", "Recipe", "StepState",
    "Tolerance", "Trajectory", "Twin", "TwinError", "load_params", "load_recipe", "rhs", "simulate",
]
