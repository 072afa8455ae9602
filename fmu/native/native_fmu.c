/*
 * FMI 2.0 co-simulation interface of the native FMU (BatchReactorTwinNative): no Python at run time.
 *
 * The variables (value references, kinds, causalities, ranges, start values) come from the signal
 * table through the generated batchtwin_native.h (fmu/native_build.py), the physics from
 * twin_model.c, the learned correction from twin_correction.c (+ the C that emx-onnx-cgen made of
 * correction.onnx) and the forecast from twin_forecast.c. The rules are those of the Python FMU
 * (fmu/slave.py, fmu/native/bridge.c): all-or-nothing fmi2Set* with range checks, parameters until
 * initialization ends, inputs until terminate; an input of a mode that is off (the soft-sensor
 * inputs with estimator_on false) is accepted and ignored whatever its finite value (an
 * unconnected port sends 0); an integration failure is fmi2Discard with the state kept.
 *
 * The soft-sensor mode (estimator_on) runs twin_estimator.c, the C port of twin_core's SoftSensor,
 * driven as fmu/slave.py drives the Python one: the inputs set for a step are the readings of a scan
 * at t + dt (or, with T_measured_valid false, an open-loop prediction on T_jacket), a new lab assay
 * (lab_valid and a sample time not seen before) arrives at t + dt; a refused reading or assay is
 * fmi2Warning with the estimate kept.
 */
#include "batchtwin_native.h"
#include "fmi2Functions.h"
#include "twin_correction.h"
#include "twin_estimator.h"
#include "twin_forecast.h"
#include "twin_model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MODE_INSTANTIATED = 0, MODE_INITIALIZATION = 1, MODE_STEP = 2, MODE_TERMINATED = 3 };
static const char *const MODE_NAMES[] = {"instantiated", "initialization", "step", "terminated"};

#define STATE_MAGIC 0x54424e5456495442ULL /* "BTNATIVE"-ish tag of a serialized state */
#define STATE_VERSION 2

/* Everything the next steps depend on: an FMU state is a copy of this struct. */
typedef struct {
    double real[BT_N_VARS];
    int ints[BT_N_VARS];
    int mode;
    double t, t_start, rtol;
    int stepping;      /* 1 after exitInitializationMode: x and h are valid */
    double x[BT_NX];   /* the twin state */
    double h;          /* the integrator's proposed next internal step [s] */
    double next_forecast;
    double lab_last_sample;
} run_state;

typedef struct {
    run_state s;
    bt_est *est;       /* the soft sensor (estimator_on, after exitInitializationMode), else NULL */
    bt_rhs_ctx ctx;    /* rebuilt from s at exitInitializationMode and fmi2SetFMUstate */
    bt_tolerance tol;
    bt_params p;
    double f0[BT_NX];  /* f(t, x) at the current state for input f0_u: the next step's first stage */
    double f0_u;
    int f0_valid;
    fmi2CallbackFunctions cb;
    char *name;
    int logging;
    char msg[512];
} instance;

/* ---------------------------------------------------------------------------------------------- */
static void logf_(instance *inst, fmi2Status status, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (inst == NULL || inst->cb.logger == NULL) return;
    if (status == fmi2OK && !inst->logging) return;
    const char *cat = status == fmi2Error || status == fmi2Fatal ? "logStatusError"
                      : status == fmi2Warning                   ? "logStatusWarning"
                      : status == fmi2Discard                   ? "logStatusDiscard"
                                                                : "logAll";
    /* The message is the format (hosts such as FMPy do not expand varargs); '%' doubled for the others. */
    char msg[2 * sizeof buf];
    size_t j = 0;
    for (size_t i = 0; buf[i] && j + 2 < sizeof msg; i++) {
        if (buf[i] == '%') msg[j++] = '%';
        msg[j++] = buf[i];
    }
    msg[j] = '\0';
    inst->cb.logger(inst->cb.componentEnvironment, inst->name, status, cat, msg);
}

static void apply_starts(instance *inst)
{
    for (int vr = 0; vr < BT_N_VARS; vr++) {
        if (bt_kind[vr] == 'R') inst->s.real[vr] = bt_start[vr];
        else inst->s.ints[vr] = (int)bt_start[vr];
    }
    inst->s.ints[VR_correction_on] = BT_HAS_CORRECTION;
    inst->s.mode = MODE_INSTANTIATED;
}

static void reset_run(instance *inst)
{
    inst->s.t = inst->s.t_start = 0.0;
    inst->s.rtol = BT_DEFAULT_RTOL;
    inst->s.stepping = 0;
    inst->s.h = 0.0;
    inst->s.next_forecast = 0.0;
    inst->s.lab_last_sample = -INFINITY;
}

static void read_params(const run_state *s, bt_params *p)
{
    const double *r = s->real;
    p->k1_ref = r[VR_k1_ref];
    p->k2_ref = r[VR_k2_ref];
    p->T_ref = r[VR_T_ref];
    p->E1 = r[VR_E1];
    p->E2 = r[VR_E2];
    p->dH1 = r[VR_dH1];
    p->dH2 = r[VR_dH2];
    p->V = r[VR_V];
    p->rho = r[VR_rho];
    p->cp = r[VR_cp];
    p->UA = r[VR_UA];
    p->c_A0 = r[VR_c_A0];
    p->c_B0 = r[VR_c_B0];
    p->c_C0 = r[VR_c_C0];
    p->T0 = r[VR_T0];
}

/* The model for the current parameter values (twin_core's ModelParams checks beyond the ranges). */
static fmi2Status make_model(instance *inst, const char *fn)
{
    run_state *s = &inst->s;
    if (s->ints[VR_correction_on] && !BT_HAS_CORRECTION) {
        logf_(inst, fmi2Error, "%s: correction_on=True: this FMU was built without a correction model", fn);
        return fmi2Error;
    }
    read_params(s, &inst->p);
    if (!(inst->p.c_A0 > 0.0)) {
        logf_(inst, fmi2Error, "%s: c_A0: charge.c_A0_mol_per_m3 = %.17g: must be > 0", fn, inst->p.c_A0);
        return fmi2Error;
    }
    bt_coefficients(&inst->p, &inst->ctx.c);
    inst->ctx.lambda1 = s->real[VR_lambda_1];
    inst->ctx.lambda2 = s->real[VR_lambda_2];
    /* lambda = (0, 0) is the physics exactly, as in twin_core/hybrid.py (the correction not called). */
    int trusted = inst->ctx.lambda1 != 0.0 || inst->ctx.lambda2 != 0.0;
    inst->ctx.correction = s->ints[VR_correction_on] && trusted ? bt_correction : NULL;
    inst->tol.rtol = s->rtol;
    for (int i = 0; i < BT_NX; i++) inst->tol.atol[i] = BT_DEFAULT_ATOL;
    return fmi2OK;
}

static void write_outputs(instance *inst)
{
    run_state *s = &inst->s;
    const double *x = s->x;
    s->real[VR_c_A] = x[0];
    s->real[VR_c_B] = x[1];
    s->real[VR_c_C] = x[2];
    s->real[VR_T] = x[3];
    s->real[VR_yield_B] = (x[1] - inst->p.c_B0) / inst->p.c_A0;
    s->real[VR_lambda_1_est] = s->real[VR_lambda_1]; /* no estimator: the weights as set, certain */
    s->real[VR_lambda_2_est] = s->real[VR_lambda_2];
    int ok = 1;
    if (inst->ctx.correction != NULL) {
        double g[2];
        inst->ctx.correction(s->t, x, g, &ok);
    }
    s->ints[VR_correction_in_domain] = ok;
    s->ints[VR_model_health] = 1 - ok;
}

/* The soft sensor's configuration: SoftSensorConfig's defaults with the FMU's four tuning parameters
   (fmu/slave.py _make_models). */
static void est_config(const run_state *s, bt_est_config *cfg)
{
    bt_est_default_config(cfg);
    cfg->T_noise_std_K = s->real[VR_sigma_T_meas];
    cfg->lab_abs_std_mol_per_m3 = s->real[VR_sigma_lab];
    cfg->rate_rel_std = s->real[VR_sigma_rate_rel];
    cfg->forecast_interval_s = s->real[VR_forecast_interval];
}

/* fmu/slave.py _write_estimate: the estimate at the last scan. */
static void write_estimate(instance *inst)
{
    run_state *s = &inst->s;
    const bt_est *e = inst->est;
    bt_estimate o;
    bt_est_estimate(e, e->t_scan, &o);
    s->real[VR_c_A] = o.x[0];
    s->real[VR_c_B] = o.x[1];
    s->real[VR_c_C] = o.x[2];
    s->real[VR_T] = o.x[3];
    s->real[VR_c_A_std] = o.std[0];
    s->real[VR_c_B_std] = o.std[1];
    s->real[VR_c_C_std] = o.std[2];
    s->real[VR_T_std] = o.std[3];
    s->real[VR_yield_B] = (o.x[1] - inst->p.c_B0) / inst->p.c_A0;
    s->real[VR_lambda_1_est] = o.x[7];
    s->real[VR_lambda_2_est] = o.x[8];
    s->real[VR_lambda_1_std] = o.std[7];
    s->real[VR_lambda_2_std] = o.std[8];
    s->ints[VR_correction_in_domain] = o.in_domain;
    s->ints[VR_model_health] = o.health;
    double fc[3];
    if (bt_est_forecast_outputs(e, fc)) {
        s->real[VR_t_stop_opt] = fc[0];
        s->real[VR_yield_B_forecast] = fc[1];
        s->real[VR_impurity_forecast] = fc[2];
    }
}

/* fmu/slave.py _step_estimator. */
static fmi2Status step_estimator(instance *inst, double t, double dt)
{
    run_state *s = &inst->s;
    bt_est *e = inst->est;
    double t1 = t + dt;
    fmi2Status status = fmi2OK;
    int rc = s->ints[VR_T_measured_valid] ? bt_est_update(e, t1, s->real[VR_T_measured], s->real[VR_T_jacket])
                                          : bt_est_predict(e, t1, s->real[VR_T_jacket]);
    if (rc == BT_EST_REFUSED) {
        logf_(inst, fmi2Warning, "doStep t=%.17g: temperature scan refused, estimate kept: %s", t, e->msg);
        status = fmi2Warning;
    } else if (rc == BT_EST_INTEGRATION) {
        logf_(inst, fmi2Discard, "doStep t=%.17g dt=%.17g: estimator step not accepted: %s", t, dt, e->msg);
        return fmi2Discard;
    } else if (rc != BT_EST_OK) {
        logf_(inst, fmi2Error, "doStep t=%.17g: %s", t, e->msg);
        return fmi2Error;
    }
    double sample_t = s->real[VR_lab_sample_time];
    if (s->ints[VR_lab_valid] && sample_t != s->lab_last_sample) {
        s->lab_last_sample = sample_t; /* one attempt per assay, accepted or not */
        rc = bt_est_add_lab(e, sample_t, s->real[VR_lab_c_B], s->real[VR_lab_c_C]);
        if (rc == BT_EST_REFUSED) {
            logf_(inst, fmi2Warning, "doStep t=%.17g: lab assay refused: %s", t, e->msg);
            status = fmi2Warning;
        } else if (rc == BT_EST_INTEGRATION) {
            logf_(inst, fmi2Discard, "doStep t=%.17g: lab assay not processed: %s", t, e->msg);
            return fmi2Discard;
        } else if (rc != BT_EST_OK) {
            logf_(inst, fmi2Error, "doStep t=%.17g: %s", t, e->msg);
            return fmi2Error;
        }
    }
    s->t = t1;
    write_estimate(inst);
    return status;
}

static void maybe_forecast(instance *inst)
{
    run_state *s = &inst->s;
    double interval = s->real[VR_forecast_interval];
    if (!(interval > 0.0) || !s->stepping) return;
    s->next_forecast = s->t + interval;
    double out[3];
    inst->ctx.T_jacket_K = s->real[VR_T_jacket];
    if (bt_forecast_stop(&inst->ctx, &inst->tol, s->x, s->h, s->t, s->real[VR_t_batch_end], out, inst->msg,
                         sizeof inst->msg) != BT_OK) {
        logf_(inst, fmi2Warning, "forecast at t=%.17g failed, previous forecast kept: %s", s->t, inst->msg);
        return;
    }
    s->real[VR_t_stop_opt] = out[0];
    s->real[VR_yield_B_forecast] = (out[1] - inst->p.c_B0) / inst->p.c_A0;
    s->real[VR_impurity_forecast] = out[2];
}

/* Outputs during initialization mode: the charge as currently parameterised. */
static void refresh_outputs(instance *inst)
{
    run_state *s = &inst->s;
    if (s->mode != MODE_INITIALIZATION) return;
    s->real[VR_c_A] = s->real[VR_c_A0];
    s->real[VR_c_B] = s->real[VR_c_B0];
    s->real[VR_c_C] = s->real[VR_c_C0];
    s->real[VR_T] = s->real[VR_T0];
    s->real[VR_yield_B] = 0.0;
    s->real[VR_lambda_1_est] = s->real[VR_lambda_1];
    s->real[VR_lambda_2_est] = s->real[VR_lambda_2];
    s->ints[VR_correction_in_domain] = 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Creation and destruction                                                                         */

FMI2_Export const char *fmi2GetTypesPlatform(void) { return fmi2TypesPlatform; }
FMI2_Export const char *fmi2GetVersion(void) { return fmi2Version; }

FMI2_Export fmi2Component fmi2Instantiate(fmi2String instanceName, fmi2Type fmuType, fmi2String fmuGUID,
                                          fmi2String fmuResourceLocation, const fmi2CallbackFunctions *functions,
                                          fmi2Boolean visible, fmi2Boolean loggingOn)
{
    (void)fmuResourceLocation;
    (void)visible;
    const char *name = instanceName ? instanceName : "";
    if (functions == NULL) return NULL;
    instance tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cb = *functions;
    tmp.name = (char *)name;
    tmp.logging = 1;
    if (fmuType != fmi2CoSimulation) {
        logf_(&tmp, fmi2Error, "fmi2Instantiate: this FMU supports co-simulation only");
        return NULL;
    }
    if (fmuGUID == NULL || strcmp(fmuGUID, BT_GUID) != 0) {
        logf_(&tmp, fmi2Error, "fmi2Instantiate: GUID %s does not match this FMU's %s", fmuGUID ? fmuGUID : "(null)",
              BT_GUID);
        return NULL;
    }
    instance *inst = calloc(1, sizeof *inst);
    if (inst == NULL) return NULL;
    inst->cb = *functions;
    inst->name = malloc(strlen(name) + 1);
    if (inst->name == NULL) {
        free(inst);
        return NULL;
    }
    strcpy(inst->name, name);
    inst->logging = loggingOn ? 1 : 0;
    apply_starts(inst);
    reset_run(inst);
    read_params(&inst->s, &inst->p);
    return inst;
}

FMI2_Export void fmi2FreeInstance(fmi2Component c)
{
    instance *inst = c;
    if (inst == NULL) return;
    free(inst->est);
    free(inst->name);
    free(inst);
}

FMI2_Export fmi2Status fmi2SetDebugLogging(fmi2Component c, fmi2Boolean on, size_t n, const fmi2String cat[])
{
    (void)n;
    (void)cat;
    ((instance *)c)->logging = on ? 1 : 0;
    return fmi2OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Life cycle                                                                                       */

FMI2_Export fmi2Status fmi2SetupExperiment(fmi2Component c, fmi2Boolean toleranceDefined, fmi2Real tolerance,
                                           fmi2Real startTime, fmi2Boolean stopTimeDefined, fmi2Real stopTime)
{
    instance *inst = c;
    (void)stopTimeDefined;
    (void)stopTime;
    if (inst->s.mode != MODE_INSTANTIATED) {
        logf_(inst, fmi2Error, "fmi2SetupExperiment: only allowed after instantiation");
        return fmi2Error;
    }
    if (!isfinite(startTime)) {
        logf_(inst, fmi2Error, "setupExperiment: start time %g must be finite", startTime);
        return fmi2Error;
    }
    if (toleranceDefined && !(isfinite(tolerance) && tolerance >= 1e-15 && tolerance < 1.0)) {
        logf_(inst, fmi2Error, "setupExperiment: tolerance %g must be within [1e-15, 1)", tolerance);
        return fmi2Error;
    }
    inst->s.t_start = inst->s.t = startTime;
    if (toleranceDefined) inst->s.rtol = tolerance;
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2EnterInitializationMode(fmi2Component c)
{
    instance *inst = c;
    if (inst->s.mode != MODE_INSTANTIATED) {
        logf_(inst, fmi2Error, "enterInitializationMode: only allowed once, after instantiation");
        return fmi2Error;
    }
    inst->s.mode = MODE_INITIALIZATION;
    refresh_outputs(inst);
    return fmi2OK;
}

/* The gated inputs (a mode's inputs) must be in range once their mode is on. */
static fmi2Status check_gated(instance *inst, const char *fn)
{
    for (int vr = 0; vr < BT_N_VARS; vr++) {
        int g = bt_gate[vr];
        if (g < 0 || !inst->s.ints[g] || bt_kind[vr] != 'R') continue;
        double v = inst->s.real[vr];
        if (v < bt_lo[vr] || v > bt_hi[vr]) {
            logf_(inst, fmi2Error, "%s: %s=%.17g refused: outside [%.17g, %.17g] with %s on", fn, bt_name[vr], v,
                  bt_lo[vr], bt_hi[vr], bt_name[g]);
            return fmi2Error;
        }
    }
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2ExitInitializationMode(fmi2Component c)
{
    instance *inst = c;
    run_state *s = &inst->s;
    if (s->mode != MODE_INITIALIZATION) {
        logf_(inst, fmi2Error, "exitInitializationMode: not in initialization mode");
        return fmi2Error;
    }
    if (check_gated(inst, "exitInitializationMode") != fmi2OK) return fmi2Error;
    if (make_model(inst, "exitInitializationMode") != fmi2OK) return fmi2Error;
    s->x[0] = inst->p.c_A0;
    s->x[1] = inst->p.c_B0;
    s->x[2] = inst->p.c_C0;
    s->x[3] = inst->p.T0;
    s->h = 0.0;
    inst->f0_valid = 0;
    free(inst->est);
    inst->est = NULL;
    if (s->ints[VR_estimator_on]) {
        bt_est_config cfg;
        est_config(s, &cfg);
        inst->est = calloc(1, sizeof *inst->est); /* pages untouched until the history fills them */
        if (inst->est == NULL) {
            logf_(inst, fmi2Error, "exitInitializationMode: out of memory for the soft sensor");
            return fmi2Error;
        }
        double plan_end = s->real[VR_forecast_interval] > 0.0 ? s->real[VR_t_batch_end] : NAN;
        const double prior_sd[5] = {s->real[VR_sigma_UA_factor0], s->real[VR_sigma_k1_factor0],
                                    s->real[VR_sigma_k2_factor0], s->real[VR_sigma_lambda_1], s->real[VR_sigma_lambda_2]};
        if (bt_est_start_prior(inst->est, &cfg, &inst->p, s->ints[VR_correction_on] && BT_HAS_CORRECTION, s->t_start,
                               s->real[VR_T_measured], s->real[VR_lambda_1], s->real[VR_lambda_2], plan_end,
                               s->real[VR_UA_factor0], prior_sd) != BT_EST_OK) {
            logf_(inst, fmi2Error, "exitInitializationMode: %s", inst->est->msg);
            free(inst->est);
            inst->est = NULL;
            return fmi2Error;
        }
    }
    s->stepping = 1;
    s->t = s->t_start;
    s->next_forecast = s->t_start;
    s->mode = MODE_STEP;
    if (inst->est != NULL) {
        write_estimate(inst);
    } else {
        write_outputs(inst);
        maybe_forecast(inst);
    }
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2Terminate(fmi2Component c)
{
    ((instance *)c)->s.mode = MODE_TERMINATED;
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2Reset(fmi2Component c)
{
    instance *inst = c;
    apply_starts(inst);
    reset_run(inst);
    free(inst->est);
    inst->est = NULL;
    inst->f0_valid = 0;
    read_params(&inst->s, &inst->p);
    return fmi2OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Stepping                                                                                         */

FMI2_Export fmi2Status fmi2DoStep(fmi2Component c, fmi2Real t, fmi2Real dt, fmi2Boolean noSetFMUStatePriorToCurrentPoint)
{
    instance *inst = c;
    run_state *s = &inst->s;
    (void)noSetFMUStatePriorToCurrentPoint;
    if (!s->stepping || s->mode != MODE_STEP) {
        logf_(inst, fmi2Error, "doStep: only allowed after exitInitializationMode and before terminate");
        return fmi2Error;
    }
    if (!(dt > 0.0 && dt < INFINITY)) {
        logf_(inst, fmi2Error, "doStep: communicationStepSize=%g must be finite and > 0", dt);
        return fmi2Error;
    }
    double tol_t = 1e-9 * fmax(fmax(1.0, fabs(t)), dt);
    if (t != s->t && !(fabs(t - s->t) <= tol_t)) {
        logf_(inst, fmi2Error, "doStep: currentCommunicationPoint=%.17g but the FMU is at t=%.17g", t, s->t);
        return fmi2Error;
    }
#ifdef BT_EMPTY_STEP
    s->t = t + dt; /* benchmarks/bench_fmu.py's baseline: an FMU whose step only checks and advances time */
    return fmi2OK;
#endif
    if (inst->est != NULL) return step_estimator(inst, t, dt);
    double x[BT_NX], h = s->h;
    memcpy(x, s->x, sizeof x);
    double u = s->real[VR_T_jacket];
    inst->ctx.T_jacket_K = u;
    /* The last stage of the previous step is this step's first one when nothing it depends on
       changed (the input; the time only when the correction reads it). */
    if (inst->f0_u != u || (BT_CORRECTION_USES_TIME && inst->ctx.correction != NULL)) inst->f0_valid = 0;
    if (bt_integrate_fsal(&inst->ctx, t, x, t + dt, &inst->tol, &h, NULL, inst->f0, &inst->f0_valid, inst->msg,
                          sizeof inst->msg) != BT_OK) {
        inst->f0_valid = 0;
        logf_(inst, fmi2Discard, "doStep t=%.17g dt=%.17g: step not accepted, state kept: %s", t, dt, inst->msg);
        return fmi2Discard;
    }
    inst->f0_u = u;
    memcpy(s->x, x, sizeof x);
    s->h = h;
    s->t = t + dt;
    write_outputs(inst);
    if (s->next_forecast <= s->t) maybe_forecast(inst);
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2CancelStep(fmi2Component c)
{
    logf_(c, fmi2Error, "fmi2CancelStep: doStep always completes synchronously; nothing to cancel");
    return fmi2Error;
}

FMI2_Export fmi2Status fmi2SetRealInputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                                                   const fmi2Integer order[], const fmi2Real v[])
{
    (void)vr, (void)n, (void)order, (void)v;
    logf_(c, fmi2Error, "fmi2SetRealInputDerivatives: inputs are held over a step (canInterpolateInputs=false)");
    return fmi2Error;
}

FMI2_Export fmi2Status fmi2GetRealOutputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                                                    const fmi2Integer order[], fmi2Real v[])
{
    (void)vr, (void)n, (void)order, (void)v;
    logf_(c, fmi2Error, "fmi2GetRealOutputDerivatives: not provided (maxOutputDerivativeOrder=0)");
    return fmi2Error;
}

FMI2_Export fmi2Status fmi2GetDirectionalDerivative(fmi2Component c, const fmi2ValueReference u[], size_t nu,
                                                    const fmi2ValueReference z[], size_t nz, const fmi2Real du[],
                                                    fmi2Real dz[])
{
    (void)u, (void)nu, (void)z, (void)nz, (void)du, (void)dz;
    logf_(c, fmi2Error, "fmi2GetDirectionalDerivative: not provided (providesDirectionalDerivative=false)");
    return fmi2Error;
}

static fmi2Status no_status(fmi2Component c, int k)
{
    logf_(c, fmi2Error, "fmi2Get*Status(%d): doStep is synchronous, there is no pending status", k);
    return fmi2Error;
}

FMI2_Export fmi2Status fmi2GetStatus(fmi2Component c, const fmi2StatusKind k, fmi2Status *v)
{
    (void)v;
    return no_status(c, (int)k);
}

FMI2_Export fmi2Status fmi2GetRealStatus(fmi2Component c, const fmi2StatusKind k, fmi2Real *v)
{
    instance *inst = c;
    if (k == fmi2LastSuccessfulTime) {
        *v = inst->s.t;
        return fmi2OK;
    }
    return no_status(c, (int)k);
}

FMI2_Export fmi2Status fmi2GetIntegerStatus(fmi2Component c, const fmi2StatusKind k, fmi2Integer *v)
{
    (void)v;
    return no_status(c, (int)k);
}

FMI2_Export fmi2Status fmi2GetBooleanStatus(fmi2Component c, const fmi2StatusKind k, fmi2Boolean *v)
{
    (void)v;
    return no_status(c, (int)k);
}

FMI2_Export fmi2Status fmi2GetStringStatus(fmi2Component c, const fmi2StatusKind k, fmi2String *v)
{
    (void)v;
    return no_status(c, (int)k);
}

/* ---------------------------------------------------------------------------------------------- */
/* Variables                                                                                        */

static fmi2Status check_vr(instance *inst, const char *fn, fmi2ValueReference vr, char kind)
{
    if (vr >= BT_N_VARS) {
        logf_(inst, fmi2Error, "%s: unknown value reference %u", fn, vr);
        return fmi2Error;
    }
    if (bt_kind[vr] != kind) {
        logf_(inst, fmi2Error, "%s: variable %s (value reference %u) is not of this type", fn, bt_name[vr], vr);
        return fmi2Error;
    }
    return fmi2OK;
}

/* FMI 2.0: parameters until initialization ends, inputs until terminate. */
static fmi2Status check_settable(instance *inst, const char *fn, fmi2ValueReference vr)
{
    int mode = inst->s.mode;
    char c = bt_causality[vr];
    int ok = (c == 'p' && (mode == MODE_INSTANTIATED || mode == MODE_INITIALIZATION)) ||
             (c == 'i' && mode != MODE_TERMINATED);
    if (ok) return fmi2OK;
    logf_(inst, fmi2Error, "%s: %s cannot be set in %s mode (it is %s)", fn, bt_name[vr], MODE_NAMES[mode],
          c == 'p' ? "a fixed parameter" : (c == 'o' ? "an output" : "not settable"));
    return fmi2Error;
}

/* Finite always; inside [min, max] unless it is an input of a mode that is off (accepted, ignored). */
static fmi2Status check_range(instance *inst, const char *fn, fmi2ValueReference vr, double x)
{
    if (isnan(x) || isinf(x)) {
        logf_(inst, fmi2Error, "%s: %s=%g refused: must be finite", fn, bt_name[vr], x);
        return fmi2Error;
    }
    int g = bt_gate[vr];
    if (g >= 0 && !inst->s.ints[g]) return fmi2OK;
    if (x < bt_lo[vr] || x > bt_hi[vr]) {
        logf_(inst, fmi2Error, "%s: %s=%.17g refused: outside [%.17g, %.17g]", fn, bt_name[vr], x, bt_lo[vr], bt_hi[vr]);
        return fmi2Error;
    }
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2GetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Real v[])
{
    instance *inst = c;
    refresh_outputs(inst);
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2GetReal", vr[i], 'R') != fmi2OK) return fmi2Error;
        v[i] = inst->s.real[vr[i]];
    }
    return fmi2OK;
}

static fmi2Status get_int(instance *inst, const char *fn, char kind, const fmi2ValueReference vr[], size_t n, int v[])
{
    refresh_outputs(inst);
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, fn, vr[i], kind) != fmi2OK) return fmi2Error;
        v[i] = inst->s.ints[vr[i]];
    }
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2GetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Integer v[])
{
    return get_int(c, "fmi2GetInteger", 'I', vr, n, v);
}

FMI2_Export fmi2Status fmi2GetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Boolean v[])
{
    return get_int(c, "fmi2GetBoolean", 'B', vr, n, v);
}

FMI2_Export fmi2Status fmi2GetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2String v[])
{
    (void)v;
    if (n == 0) return fmi2OK;
    logf_(c, fmi2Error, "fmi2GetString: unknown value reference %u (this FMU has no String variables)", vr[0]);
    return fmi2Error;
}

FMI2_Export fmi2Status fmi2SetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Real v[])
{
    instance *inst = c;
    /* All or nothing: nothing is written unless every value is acceptable. */
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2SetReal", vr[i], 'R') != fmi2OK || check_settable(inst, "fmi2SetReal", vr[i]) != fmi2OK ||
            check_range(inst, "fmi2SetReal", vr[i], v[i]) != fmi2OK)
            return fmi2Error;
    }
    for (size_t i = 0; i < n; i++) inst->s.real[vr[i]] = v[i];
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2SetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer v[])
{
    instance *inst = c;
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2SetInteger", vr[i], 'I') != fmi2OK ||
            check_settable(inst, "fmi2SetInteger", vr[i]) != fmi2OK ||
            check_range(inst, "fmi2SetInteger", vr[i], (double)v[i]) != fmi2OK)
            return fmi2Error;
    }
    for (size_t i = 0; i < n; i++) inst->s.ints[vr[i]] = v[i];
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2SetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Boolean v[])
{
    instance *inst = c;
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2SetBoolean", vr[i], 'B') != fmi2OK ||
            check_settable(inst, "fmi2SetBoolean", vr[i]) != fmi2OK)
            return fmi2Error;
    }
    for (size_t i = 0; i < n; i++) inst->s.ints[vr[i]] = v[i] ? 1 : 0;
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2SetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2String v[])
{
    (void)v;
    if (n == 0) return fmi2OK;
    logf_(c, fmi2Error, "fmi2SetString: unknown value reference %u (this FMU has no String variables)", vr[0]);
    return fmi2Error;
}

/* ---------------------------------------------------------------------------------------------- */
/* FMU state: a heap copy of run_state (and of the soft sensor, in estimator mode); serialized as   */
/* a header plus their bytes                                                                        */

typedef struct {
    run_state s;
    unsigned char *est; /* the soft sensor packed (bt_est_pack), or NULL */
    size_t est_size, est_cap;
} fmu_state;

typedef struct {
    unsigned long long magic;
    unsigned int version, size;
    unsigned long long est_size;
    char guid[40];
} state_header;

/* Room for n packed bytes in st (kept when large enough). */
static int reserve(fmu_state *st, size_t n)
{
    if (st->est_cap >= n) return 1;
    unsigned char *p = realloc(st->est, n);
    if (p == NULL) return 0;
    st->est = p;
    st->est_cap = n;
    return 1;
}

FMI2_Export fmi2Status fmi2GetFMUstate(fmi2Component c, fmi2FMUstate *fs)
{
    instance *inst = c;
    fmu_state *copy = *fs != NULL ? (fmu_state *)*fs : calloc(1, sizeof *copy); /* a non-NULL *fs is overwritten */
    if (copy == NULL) {
        logf_(inst, fmi2Error, "fmi2GetFMUstate: out of memory");
        return fmi2Error;
    }
    if (inst->est != NULL) {
        size_t n = bt_est_packed_size(inst->est);
        if (!reserve(copy, n)) {
            if (*fs == NULL) free(copy);
            logf_(inst, fmi2Error, "fmi2GetFMUstate: out of memory for the soft sensor's state");
            return fmi2Error;
        }
        bt_est_pack(inst->est, copy->est);
        copy->est_size = n;
    } else {
        copy->est_size = 0;
    }
    copy->s = inst->s;
    *fs = copy;
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2SetFMUstate(fmi2Component c, fmi2FMUstate fs)
{
    instance *inst = c;
    const fmu_state *st = fs;
    if (st == NULL) {
        logf_(inst, fmi2Error, "setFMUstate: no state given");
        return fmi2Error;
    }
    int wants_est = st->s.stepping && st->s.ints[VR_estimator_on];
    if (wants_est != (st->est_size != 0)) {
        logf_(inst, fmi2Error, "setFMUstate: the state's soft sensor does not match its estimator_on");
        return fmi2Error;
    }
    bt_est *est = inst->est;
    if (wants_est && est == NULL) {
        est = calloc(1, sizeof *est);
        if (est == NULL) {
            logf_(inst, fmi2Error, "setFMUstate: out of memory for the soft sensor");
            return fmi2Error;
        }
    }
    run_state old = inst->s;
    inst->s = st->s;
    inst->f0_valid = 0;
    if ((inst->s.stepping && make_model(inst, "setFMUstate") != fmi2OK) ||
        (wants_est && !bt_est_unpack(est, st->est, st->est_size))) {
        if (wants_est && inst->s.stepping) logf_(inst, fmi2Error, "setFMUstate: corrupt soft-sensor state");
        inst->s = old;
        if (est != inst->est) free(est);
        return fmi2Error;
    }
    if (wants_est) {
        inst->est = est;
    } else {
        free(inst->est);
        inst->est = NULL;
    }
    read_params(&inst->s, &inst->p);
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2FreeFMUstate(fmi2Component c, fmi2FMUstate *fs)
{
    (void)c;
    if (fs != NULL && *fs != NULL) {
        free(((fmu_state *)*fs)->est);
        free(*fs);
        *fs = NULL;
    }
    return fmi2OK;
}

static size_t serialized_size(const fmu_state *st) { return sizeof(state_header) + sizeof(run_state) + st->est_size; }

FMI2_Export fmi2Status fmi2SerializedFMUstateSize(fmi2Component c, fmi2FMUstate fs, size_t *size)
{
    if (fs == NULL) {
        logf_(c, fmi2Error, "serializedFMUstateSize: no state given");
        return fmi2Error;
    }
    *size = serialized_size(fs);
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2SerializeFMUstate(fmi2Component c, fmi2FMUstate fs, fmi2Byte b[], size_t size)
{
    instance *inst = c;
    const fmu_state *st = fs;
    if (st == NULL || size < serialized_size(st)) {
        logf_(inst, fmi2Error, "serializeFMUstate: no state or a buffer of %lu bytes (needs %lu)", (unsigned long)size,
              st == NULL ? 0UL : (unsigned long)serialized_size(st));
        return fmi2Error;
    }
    state_header h;
    memset(&h, 0, sizeof h);
    h.magic = STATE_MAGIC;
    h.version = STATE_VERSION;
    h.size = (unsigned int)sizeof(run_state);
    h.est_size = st->est_size;
    strncpy(h.guid, BT_GUID, sizeof h.guid - 1);
    memcpy(b, &h, sizeof h);
    memcpy(b + sizeof h, &st->s, sizeof(run_state));
    if (st->est_size) memcpy(b + sizeof h + sizeof(run_state), st->est, st->est_size);
    return fmi2OK;
}

FMI2_Export fmi2Status fmi2DeSerializeFMUstate(fmi2Component c, const fmi2Byte b[], size_t size, fmi2FMUstate *fs)
{
    instance *inst = c;
    state_header h;
    if (size < sizeof h + sizeof(run_state)) {
        logf_(inst, fmi2Error, "deSerializeFMUstate: %lu bytes are not a serialized state of this FMU", (unsigned long)size);
        return fmi2Error;
    }
    memcpy(&h, b, sizeof h);
    if (h.magic != STATE_MAGIC || h.version != STATE_VERSION || h.size != sizeof(run_state) ||
        size != sizeof h + sizeof(run_state) + h.est_size) {
        logf_(inst, fmi2Error, "deSerializeFMUstate: not a serialized state of this FMU (format version %u, %lu bytes)",
              h.version, (unsigned long)size);
        return fmi2Error;
    }
    if (strncmp(h.guid, BT_GUID, sizeof h.guid) != 0) {
        logf_(inst, fmi2Error, "deSerializeFMUstate: serialized by another build (%.39s); this FMU is %s", h.guid, BT_GUID);
        return fmi2Error;
    }
    run_state rs;
    memcpy(&rs, b + sizeof h, sizeof rs);
    if (rs.mode < MODE_INSTANTIATED || rs.mode > MODE_TERMINATED ||
        (h.est_size != 0) != (rs.stepping && rs.ints[VR_estimator_on])) {
        logf_(inst, fmi2Error, "deSerializeFMUstate: corrupt state (mode %d)", rs.mode);
        return fmi2Error;
    }
    fmu_state *copy = *fs != NULL ? (fmu_state *)*fs : calloc(1, sizeof *copy);
    if (copy == NULL || !reserve(copy, (size_t)h.est_size)) {
        if (*fs == NULL) free(copy);
        logf_(inst, fmi2Error, "deSerializeFMUstate: out of memory");
        return fmi2Error;
    }
    if (h.est_size) memcpy(copy->est, b + sizeof h + sizeof(run_state), (size_t)h.est_size);
    copy->est_size = (size_t)h.est_size;
    copy->s = rs;
    *fs = copy;
    return fmi2OK;
}
