/*
 * The physics kernel in C (see twin_model.h): twin_core/model.py and twin_core/integrator.py line
 * by line. Keep the two in step: tests/test_native_kernel.py compares them on the same steps.
 * Compile with -ffp-contract=off (no fused multiply-add), as the build does, to keep the Python
 * kernel's rounding.
 */
#include "twin_model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define R_J_PER_MOL_K 8.314462618 /* twin_core.params */

/* Butcher tableau of Dormand & Prince (1980), the RK5(4)7M pair (twin_core/integrator.py). */
#define C2 (1.0 / 5)
#define C3 (3.0 / 10)
#define C4 (4.0 / 5)
#define C5 (8.0 / 9)
#define A21 (1.0 / 5)
#define A31 (3.0 / 40)
#define A32 (9.0 / 40)
#define A41 (44.0 / 45)
#define A42 (-56.0 / 15)
#define A43 (32.0 / 9)
#define A51 (19372.0 / 6561)
#define A52 (-25360.0 / 2187)
#define A53 (64448.0 / 6561)
#define A54 (-212.0 / 729)
#define A61 (9017.0 / 3168)
#define A62 (-355.0 / 33)
#define A63 (46732.0 / 5247)
#define A64 (49.0 / 176)
#define A65 (-5103.0 / 18656)
#define B1 (35.0 / 384)
#define B3 (500.0 / 1113)
#define B4 (125.0 / 192)
#define B5 (-2187.0 / 6784)
#define B6 (11.0 / 84)
#define ERR1 (71.0 / 57600)
#define ERR3 (-71.0 / 16695)
#define ERR4 (71.0 / 1920)
#define ERR5 (-17253.0 / 339200)
#define ERR6 (22.0 / 525)
#define ERR7 (-1.0 / 40)

#define SAFETY 0.9
#define MIN_FACTOR 0.2
#define MAX_FACTOR 5.0
#define MAX_STEPS_PER_INTERVAL 100000

void bt_coefficients(const bt_params *p, bt_coef *c)
{
    double rho_cp = p->rho * p->cp;
    c->k1_ref = p->k1_ref;
    c->k2_ref = p->k2_ref;
    c->inv_T_ref = 1.0 / p->T_ref;
    c->E1_over_R = p->E1 / R_J_PER_MOL_K;
    c->E2_over_R = p->E2 / R_J_PER_MOL_K;
    c->q1 = -p->dH1 / rho_cp;
    c->q2 = -p->dH2 / rho_cp;
    c->ua = p->UA / (rho_cp * p->V);
}

/* Mechanistic rates (r1, r2) = (k1(T) c_A, k2(T) c_B) [mol/(m3 s)]: the one rate law. */
void bt_rates(const double x[BT_NX], const bt_coef *c, double *r1, double *r2)
{
    double d = 1.0 / x[3] - c->inv_T_ref;
    *r1 = c->k1_ref * exp(-c->E1_over_R * d) * x[0];
    *r2 = c->k2_ref * exp(-c->E2_over_R * d) * x[1];
}

/* dx/dt at state x, jacket temperature ctx->T_jacket_K held; with a correction, the rates are
   scaled by exp(lambda_i g_i(x)) at this very state (every Runge-Kutta stage). */
void bt_rhs(const bt_rhs_ctx *ctx, double t, const double x[BT_NX], double dx[BT_NX])
{
    const bt_coef *c = &ctx->c;
    double r1, r2;
    if (ctx->correction == NULL) {
        bt_rates(x, c, &r1, &r2);
    } else {
        /* k_i,ref exp(-E_i/R (1/T - 1/T_ref)) exp(lambda_i g_i) c_i with one exp per rate: the
           Python kernel's two factors, rounded once instead of twice (parity <= 1e-12, not bits). */
        double g[2];
        int in_domain;
        ctx->correction(t, x, g, &in_domain);
        double d = 1.0 / x[3] - c->inv_T_ref;
        r1 = c->k1_ref * exp(-c->E1_over_R * d + ctx->lambda1 * g[0]) * x[0];
        r2 = c->k2_ref * exp(-c->E2_over_R * d + ctx->lambda2 * g[1]) * x[1];
    }
    dx[0] = -r1;
    dx[1] = r1 - r2;
    dx[2] = r2;
    dx[3] = c->q1 * r1 + c->q2 * r2 + c->ua * (ctx->T_jacket_K - x[3]);
}

static void count(bt_stats *s, long accepted, long rejected)
{
    if (s == NULL) return;
    s->accepted += accepted;
    s->rejected += rejected;
    s->rhs_calls += 1 + 6 * (accepted + rejected);
}

int bt_integrate(const bt_rhs_ctx *ctx, double t0, double x0[BT_NX], double t1, const bt_tolerance *tol,
                 double *h_io, bt_stats *stats, char *msg, unsigned msg_len)
{
    return bt_integrate_fsal(ctx, t0, x0, t1, tol, h_io, stats, NULL, NULL, msg, msg_len);
}

int bt_integrate_fsal(const bt_rhs_ctx *ctx, double t0, double x0[BT_NX], double t1, const bt_tolerance *tol,
                      double *h_io, bt_stats *stats, double f0[BT_NX], int *f0_valid, char *msg, unsigned msg_len)
{
    double span = t1 - t0;
    if (span == 0.0) {
        if (!(*h_io == *h_io)) *h_io = 0.0;
        return BT_OK;
    }
    if (!(span > 0.0)) {
        if (msg) snprintf(msg, msg_len, "integration interval must go forward: t0=%.17g, t1=%.17g", t0, t1);
        return BT_BAD_INTERVAL;
    }
    /* No usable proposal (<= 0, NaN, or longer than the interval): try the whole interval. */
    double h = (*h_io > 0.0 && *h_io <= span) ? *h_io : span;
    double h_min = 1e-12 * (fabs(t1) > 1.0 ? fabs(t1) : 1.0);
    double rtol = tol->rtol;
    double x[BT_NX], xs[BT_NX], xn[BT_NX];
    double k1[BT_NX], k2[BT_NX], k3[BT_NX], k4[BT_NX], k5[BT_NX], k6[BT_NX], k7[BT_NX];
    long accepted = 0, rejected = 0;
    double t = t0;
    int i;
    memcpy(x, x0, sizeof x);
    if (f0_valid != NULL && *f0_valid) memcpy(k1, f0, sizeof k1); /* the caller's f(t0, x0) */
    else bt_rhs(ctx, t, x, k1);
    for (;;) {
        double remaining = t1 - t;
        int last = h >= remaining * (1.0 - 1e-12);
        double hh = last ? remaining : h;
        double ha = hh * A21;
        for (i = 0; i < BT_NX; i++) xs[i] = x[i] + ha * k1[i];
        bt_rhs(ctx, t + C2 * hh, xs, k2);
        for (i = 0; i < BT_NX; i++) xs[i] = x[i] + hh * (A31 * k1[i] + A32 * k2[i]);
        bt_rhs(ctx, t + C3 * hh, xs, k3);
        for (i = 0; i < BT_NX; i++) xs[i] = x[i] + hh * (A41 * k1[i] + A42 * k2[i] + A43 * k3[i]);
        bt_rhs(ctx, t + C4 * hh, xs, k4);
        for (i = 0; i < BT_NX; i++) xs[i] = x[i] + hh * (A51 * k1[i] + A52 * k2[i] + A53 * k3[i] + A54 * k4[i]);
        bt_rhs(ctx, t + C5 * hh, xs, k5);
        for (i = 0; i < BT_NX; i++)
            xs[i] = x[i] + hh * (A61 * k1[i] + A62 * k2[i] + A63 * k3[i] + A64 * k4[i] + A65 * k5[i]);
        bt_rhs(ctx, t + hh, xs, k6);
        for (i = 0; i < BT_NX; i++)
            xn[i] = x[i] + hh * (B1 * k1[i] + B3 * k3[i] + B4 * k4[i] + B5 * k5[i] + B6 * k6[i]);
        bt_rhs(ctx, t + hh, xn, k7);
        /* RMS of the scaled error err_i / (atol_i + rtol * max(|x_i|, |x_new_i|)). */
        double s = 0.0;
        for (i = 0; i < BT_NX; i++) {
            double u = fabs(x[i]), v = fabs(xn[i]);
            double q = hh * (ERR1 * k1[i] + ERR3 * k3[i] + ERR4 * k4[i] + ERR5 * k5[i] + ERR6 * k6[i] + ERR7 * k7[i]) /
                       (tol->atol[i] + rtol * (u >= v ? u : v));
            s += q * q;
        }
        double en = sqrt(s / BT_NX);
        if (en <= 1.0) { /* false for NaN: a non-finite error rejects the step */
            accepted++;
            double factor = en == 0.0 ? MAX_FACTOR : fmin(MAX_FACTOR, SAFETY * pow(en, -0.2));
            memcpy(x, xn, sizeof x);
            memcpy(k1, k7, sizeof k1);
            if (last) {
                /* After a step shortened to land on t1, propose from the controller's own step size. */
                count(stats, accepted, rejected);
                memcpy(x0, x, sizeof x);
                *h_io = (h >= hh ? h : hh) * factor;
                if (f0_valid != NULL) { /* f at the end point (evaluated at t + hh), for the next call */
                    memcpy(f0, k1, sizeof k1);
                    *f0_valid = 1;
                }
                return BT_OK;
            }
            t = t + hh;
            h = hh * factor;
        } else {
            rejected++;
            h = isfinite(en) ? hh * fmax(MIN_FACTOR, SAFETY * pow(en, -0.2)) : hh * MIN_FACTOR;
            if (h < h_min) {
                count(stats, accepted, rejected);
                if (msg)
                    snprintf(msg, msg_len, "step size underflow at t=%.17g (h=%.17g); state (%.17g, %.17g, %.17g, %.17g)",
                             t, h, x[0], x[1], x[2], x[3]);
                return BT_UNDERFLOW;
            }
        }
        if (accepted + rejected > MAX_STEPS_PER_INTERVAL) {
            count(stats, accepted, rejected);
            if (msg)
                snprintf(msg, msg_len, "more than %d steps between t=%.17g and t=%.17g", MAX_STEPS_PER_INTERVAL, t0, t1);
            return BT_TOO_MANY_STEPS;
        }
    }
}
