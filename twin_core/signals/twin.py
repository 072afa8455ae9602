"""The twin's signals: the FMU's parameters, inputs and outputs (TWIN_SIGNALS), declared once.

FMU variables (fmu.variables, fmu.model_description), the FMU documentation and, next, the twin's
OPC UA nodes and Modbus mirror are generated from this table, never hand-copied.
"""

from __future__ import annotations

from collections.abc import Iterable

from twin_core.params import ModelParams
from twin_core.signals.table import C_HI, T_HI_K, T_LO_K, Signal


def _default(param: str) -> float:
    section, name = param.split(".")
    return float(getattr(getattr(ModelParams(), section), name))


def _p(name: str, unit: str, param: str, description: str, lo: float, hi: float, nominal: float,
       display_unit: str | None = None) -> Signal:
    return Signal(name, unit, "parameter", description, lo, hi, nominal, _default(param),
                  display_unit=display_unit, param=param)


TWIN_SIGNALS: tuple[Signal, ...] = (
    # -- parameters: kinetics
    _p("k1_ref", "1/s", "kinetics.k1_ref_per_s", "Rate constant of A -> B at T_ref", 1e-9, 1.0, 1e-4),
    _p("k2_ref", "1/s", "kinetics.k2_ref_per_s", "Rate constant of B -> C at T_ref", 1e-9, 1.0, 1e-4),
    _p("T_ref", "K", "kinetics.T_ref_K", "Reference temperature of the Arrhenius laws", T_LO_K, T_HI_K, 350.0, "degC"),
    _p("E1", "J/mol", "kinetics.E1_J_per_mol", "Activation energy of A -> B", 1e3, 3e5, 1e5),
    _p("E2", "J/mol", "kinetics.E2_J_per_mol", "Activation energy of B -> C", 1e3, 3e5, 1e5),
    _p("dH1", "J/mol", "kinetics.dH1_J_per_mol", "Reaction enthalpy of A -> B (negative: exothermic)", -5e5, 5e5, 1e5),
    _p("dH2", "J/mol", "kinetics.dH2_J_per_mol", "Reaction enthalpy of B -> C (negative: exothermic)", -5e5, 5e5, 1e5),
    # -- parameters: reactor
    _p("V", "m3", "reactor.volume_m3", "Liquid volume of the charge", 1e-6, 100.0, 1.0),
    _p("rho", "kg/m3", "reactor.density_kg_per_m3", "Density of the reaction mass", 100.0, 5000.0, 1000.0),
    _p("cp", "J/(kg.K)", "reactor.heat_capacity_J_per_kg_K", "Specific heat capacity of the reaction mass", 100.0, 1e4, 2000.0),
    _p("UA", "W/K", "reactor.UA_W_per_K", "Overall heat-transfer coefficient times area, reactor to jacket", 0.0, 1e6, 1000.0),
    # -- parameters: charge
    _p("c_A0", "mol/m3", "charge.c_A0_mol_per_m3", "Initial concentration of A", 0.0, C_HI, 1000.0),
    _p("c_B0", "mol/m3", "charge.c_B0_mol_per_m3", "Initial concentration of B", 0.0, C_HI, 1000.0),
    _p("c_C0", "mol/m3", "charge.c_C0_mol_per_m3", "Initial concentration of C", 0.0, C_HI, 1000.0),
    _p("T0", "K", "charge.T0_K", "Initial temperature of the charge", T_LO_K, T_HI_K, 300.0, "degC"),
    # -- inputs
    Signal("T_jacket", "K", "input", "Jacket temperature (measured or commanded)", T_LO_K, T_HI_K, 300.0, 298.15,
           display_unit="degC"),
    # -- outputs
    Signal("c_A", "mol/m3", "output", "Concentration of reactant A", 0.0, C_HI, 1000.0),
    Signal("c_B", "mol/m3", "output", "Concentration of product B", 0.0, C_HI, 1000.0),
    Signal("c_C", "mol/m3", "output", "Concentration of impurity C", 0.0, C_HI, 1000.0),
    Signal("T", "K", "output", "Reactor temperature", T_LO_K, T_HI_K, 300.0, display_unit="degC"),
    Signal("yield_B", "1", "output", "Yield of B: (c_B - c_B0) / c_A0", 0.0, 1.0, 1.0),
    # -- FMU: hybrid correction, soft-sensor estimator and forecast (docs/fmu.md)
    Signal("correction_on", "1", "parameter", "Apply the learned ONNX rate correction (hybrid twin); false: physics only",
           start=1.0, type="Boolean"),
    Signal("lambda_1", "1", "parameter",
           "Trust weight on the learned correction of r1: r1 = r1,phys exp(lambda_1 g1) (1: as trained, 0: physics); "
           "the estimator's prior mean", -3.0, 4.0, 1.0, 1.0),
    Signal("lambda_2", "1", "parameter",
           "Trust weight on the learned correction of r2: r2 = r2,phys exp(lambda_2 g2) (1: as trained, 0: physics); "
           "the estimator's prior mean", -3.0, 4.0, 1.0, 1.0),
    Signal("estimator_on", "1", "parameter",
           "Run the soft-sensor estimator on T_measured and the lab assays; false: open-loop twin",
           start=0.0, type="Boolean"),
    # Start values = the SoftSensorConfig defaults tuned on plant data (docs/softsensor.md; a test keeps them equal).
    Signal("sigma_T_meas", "K", "parameter", "Estimator tuning: standard deviation of the reactor-temperature measurement",
           1e-4, 10.0, 0.1, 0.05),
    Signal("sigma_lab", "mol/m3", "parameter",
           "Estimator tuning: absolute part of the standard deviation of one lab assay of c_B or c_C (a 1.5 % relative part is added)",
           1e-3, 1000.0, 10.0, 0.5),
    Signal("sigma_rate_rel", "1", "parameter",
           "Estimator tuning: relative standard deviation of the reaction rates (process noise)", 0.0, 1.0, 0.05, 0.03),
    # The estimator's prior on the plant (start values = SoftSensorConfig's generic prior; a plant's
    # own from its finished batches: ml_onnx.trust.PlantPrior, docs/softsensor.md).
    Signal("UA_factor0", "1", "parameter",
           "Estimator prior: UA factor at the start of the batch (the jacket's fouling; 1: clean)", 0.1, 10.0, 1.0, 1.0),
    Signal("sigma_UA_factor0", "1", "parameter", "Estimator prior: standard deviation of the starting UA factor",
           1e-6, 10.0, 0.1, 0.2),
    Signal("sigma_k1_factor0", "1", "parameter",
           "Estimator prior: standard deviation of the starting k1 factor (raw-material activity)", 1e-6, 10.0, 0.1, 0.1),
    Signal("sigma_k2_factor0", "1", "parameter", "Estimator prior: standard deviation of the starting k2 factor",
           1e-6, 10.0, 0.1, 0.15),
    Signal("sigma_lambda_1", "1", "parameter", "Estimator prior: standard deviation of lambda_1 around its prior mean",
           1e-6, 10.0, 0.3, 0.3),
    Signal("sigma_lambda_2", "1", "parameter", "Estimator prior: standard deviation of lambda_2 around its prior mean",
           1e-6, 10.0, 0.3, 0.3),
    Signal("t_batch_end", "s", "parameter", "Planned end of the batch, time in batch: horizon of the forecast",
           1.0, 1e6, 36000.0, 36000.0),
    Signal("forecast_interval", "s", "parameter", "Time between two forecasts of the batch (0: no forecast)",
           0.0, 1e5, 300.0, 300.0),
    Signal("T_measured", "K", "input", "Measured reactor temperature (soft-sensor mode)", T_LO_K, T_HI_K, 300.0, 298.15,
           display_unit="degC"),
    Signal("T_measured_valid", "1", "input",
           "True while T_measured holds a fresh reading; false: the estimator runs open loop on T_jacket "
           "(e.g. the PLC link is down), its uncertainty growing", start=1.0, type="Boolean"),
    Signal("lab_c_B", "mol/m3", "input", "Lab assay of c_B (used when lab_valid; sampled at lab_sample_time)",
           0.0, C_HI, 1000.0, 0.0),
    Signal("lab_c_C", "mol/m3", "input", "Lab assay of c_C (used when lab_valid; sampled at lab_sample_time)",
           0.0, C_HI, 1000.0, 0.0),
    Signal("lab_sample_time", "s", "input",
           "Time in batch at which the lab sample was drawn; a new assay is recognised by a new sample time",
           0.0, 1e7, 3600.0, 0.0),
    Signal("lab_valid", "1", "input", "True while lab_c_B, lab_c_C and lab_sample_time hold a valid assay",
           start=0.0, type="Boolean"),
    Signal("c_A_std", "mol/m3", "output", "Standard deviation of the estimate of c_A (0 with the estimator off)",
           0.0, C_HI, 10.0),
    Signal("c_B_std", "mol/m3", "output", "Standard deviation of the estimate of c_B (0 with the estimator off)",
           0.0, C_HI, 10.0),
    Signal("c_C_std", "mol/m3", "output", "Standard deviation of the estimate of c_C (0 with the estimator off)",
           0.0, C_HI, 10.0),
    Signal("T_std", "K", "output", "Standard deviation of the estimate of T (0 with the estimator off)", 0.0, 100.0, 0.1),
    Signal("lambda_1_est", "1", "output",
           "Estimated trust weight on the correction of r1 (= lambda_1 with the estimator off)", -3.0, 4.0, 1.0),
    Signal("lambda_2_est", "1", "output",
           "Estimated trust weight on the correction of r2 (= lambda_2 with the estimator off)", -3.0, 4.0, 1.0),
    Signal("lambda_1_std", "1", "output", "Standard deviation of lambda_1_est (0 with the estimator off)", 0.0, 10.0, 1.0),
    Signal("lambda_2_std", "1", "output", "Standard deviation of lambda_2_est (0 with the estimator off)", 0.0, 10.0, 1.0),
    Signal("t_stop_opt", "s", "output",
           "Forecast time in batch of the maximum of c_B (optimal stop), jacket temperature held", 0.0, 1e7, 3600.0),
    Signal("yield_B_forecast", "1", "output", "Forecast yield of B at t_stop_opt", 0.0, 1.0, 1.0),
    Signal("impurity_forecast", "1", "output", "Forecast mole fraction of impurity C at t_stop_opt", 0.0, 1.0, 1.0),
    Signal("correction_in_domain", "1", "output",
           "True while the learned correction is inside its training domain (true when it is off)", type="Boolean"),
    Signal("model_health", "1", "output",
           "0 good; 1 warning (correction outside its domain, or the innovation test failing); "
           "2 alarm (persistent model mismatch or sensor fault)", 0.0, 2.0, 1.0, type="Integer"),
)


PRIOR_SIGMAS = ("sigma_UA_factor0", "sigma_k1_factor0", "sigma_k2_factor0", "sigma_lambda_1", "sigma_lambda_2")
"""The estimator's prior SDs of (UA, k1, k2 factors, lambda_1, lambda_2), in SoftSensor.start's
prior_std order; the prior means are ``lambda_1``, ``lambda_2`` (trust0) and ``UA_factor0``."""


def by_name(table: Iterable[Signal] = TWIN_SIGNALS) -> dict[str, Signal]:
    """Signals of ``table`` keyed by name."""
    return {s.name: s for s in table}


def params_from_signals(values: dict[str, float], base: ModelParams | None = None) -> ModelParams:
    """ModelParams with the parameter signals in ``values`` (by signal name) applied to ``base``."""
    sigs = by_name()
    changes = {}
    for name, v in values.items():
        s = sigs.get(name)
        if s is None or s.param is None:
            raise KeyError(f"{name} is not a parameter signal")
        changes[s.param.replace(".", "__")] = v
    return (base or ModelParams()).replace(**changes)
