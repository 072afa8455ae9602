/*
 * The physics kernel of the native FMU in C: twin_core/model.py (rate law, right-hand side) and
 * twin_core/integrator.py (the Dormand-Prince 5(4) loop with its step-size controller), written out
 * with the same arithmetic in the same order, so that a native step equals a twin_core step to the
 * last bits (tests/test_native_kernel.py checks <= 1e-12 relative). No FMI, no I/O, no allocation.
 *
 * State x = (c_A, c_B, c_C [mol/m3], T [K]); the jacket temperature T_j [K] is held over a step.
 */
#ifndef BT_TWIN_MODEL_H
#define BT_TWIN_MODEL_H

#define BT_NX 4

/* Linux x86-64 build (fmu/native_build.py): bind exp, pow and log to their oldest symbol versions,
   so the binary loads on glibc >= 2.17 (glibc 2.29 added new versions of them; same results). */
#if defined(BT_GLIBC_COMPAT) && defined(__linux__) && defined(__x86_64__)
__asm__(".symver exp,exp@GLIBC_2.2.5");
__asm__(".symver pow,pow@GLIBC_2.2.5");
__asm__(".symver log,log@GLIBC_2.2.5");
#endif

/* twin_core.model.Coefficients: the constants of the right-hand side. */
typedef struct {
    double k1_ref, k2_ref;       /* [1/s] */
    double inv_T_ref;            /* [1/K] */
    double E1_over_R, E2_over_R; /* [K] */
    double q1, q2;               /* -dH_i / (rho c_p) [K m3/mol] */
    double ua;                   /* UA / (rho c_p V) [1/s] */
} bt_coef;

/* twin_core.params.ModelParams, flattened (SI units, the names of the signal table). */
typedef struct {
    double k1_ref, k2_ref, T_ref, E1, E2, dH1, dH2; /* kinetics */
    double V, rho, cp, UA;                          /* reactor */
    double c_A0, c_B0, c_C0, T0;                    /* charge */
} bt_params;

/* The learned correction as the right-hand side sees it: the faded log-factors g(t, x) of the two
   rates, r_i = r_i,phys exp(lambda_i g_i(t, x)) (twin_core/hybrid.py). NULL fn: physics only. */
typedef void bt_log_factors_fn(double t_s, const double x[BT_NX], double g[2], int *in_domain);

typedef struct {
    bt_coef c;
    bt_log_factors_fn *correction; /* NULL: physics only */
    double lambda1, lambda2;       /* trust weights of the correction (1, 1 by default) */
    double T_jacket_K;             /* held input */
} bt_rhs_ctx;

/* twin_core.integrator.Tolerance and Stats. */
typedef struct {
    double rtol;
    double atol[BT_NX];
} bt_tolerance;

typedef struct {
    long accepted, rejected, rhs_calls;
} bt_stats;

enum { BT_OK = 0, BT_UNDERFLOW = 1, BT_TOO_MANY_STEPS = 2, BT_BAD_INTERVAL = 3 };

void bt_coefficients(const bt_params *p, bt_coef *c);
void bt_rates(const double x[BT_NX], const bt_coef *c, double *r1, double *r2);
void bt_rhs(const bt_rhs_ctx *ctx, double t, const double x[BT_NX], double dx[BT_NX]);

/* Integrate from t0 to exactly t1 (x in place). *h is the proposed first step on entry (<= 0 or
   longer than the interval: the whole interval) and the controller's next proposal on return.
   Returns BT_OK or an error code; on error x is left as it was and msg (if not NULL) says why. */
int bt_integrate(const bt_rhs_ctx *ctx, double t0, double x[BT_NX], double t1, const bt_tolerance *tol,
                 double *h, bt_stats *stats, char *msg, unsigned msg_len);

/* bt_integrate with first-same-as-last across calls: when *f0_valid, f0 is f(t0, x) (the last
   stage of the previous call, same input and weights) and is used instead of evaluating it; on
   success f0 holds f at the end point and *f0_valid is 1. The same numbers, one evaluation less. */
int bt_integrate_fsal(const bt_rhs_ctx *ctx, double t0, double x[BT_NX], double t1, const bt_tolerance *tol,
                      double *h, bt_stats *stats, double f0[BT_NX], int *f0_valid, char *msg, unsigned msg_len);

#endif
