/*
 * The soft sensor in C (see twin_estimator.h): twin_core/estimation/ line by line. Keep the two in
 * step: tests/test_native_estimator.py runs the same recorded batch through both. Compile with
 * -ffp-contract=off (no fused multiply-add), as the build does. Matrix products are plain loops
 * (numpy's BLAS sums in another order: the estimates agree to rounding, not to the bit).
 */
#include "twin_estimator.h"

#include "batchtwin_native.h"
#include "twin_correction.h"
#include "twin_forecast.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define N BT_NS
#define IA 0
#define IB 1
#define IC 2
#define IT 3
#define IUA 4
#define IK1 5
#define IK2 6
#define IL1 7
#define IL2 8
#define SENSOR_FAULTS (BT_ALARM_STUCK | BT_ALARM_DRIFT)
#define REC(e, k) (&(e)->records[((e)->first + (k)) % BT_EST_RECORDS])

void bt_est_default_config(bt_est_config *c)
{
    static const double bounds[30] = BT_SS_NIS_BOUNDS;
    static const int white[2 * BT_EST_LAB_WINDOW - 1] = BT_SS_LAB_WHITE_BOUNDS;
#define F(name) c->name = BT_SS_##name;
    BT_SS_FIELDS(F)
#undef F
    memcpy(c->nis_bound_small, bounds, sizeof bounds);
    c->nis_z = BT_SS_NIS_Z;
    c->lab_bias_bound = BT_SS_LAB_BIAS_BOUND;
    memcpy(c->lab_white_bounds, white, sizeof white);
}

#define HEAD_BYTES offsetof(bt_est, records)
#define TAIL_BYTES (sizeof(bt_est) - offsetof(bt_est, pending))

size_t bt_est_packed_size(const bt_est *e)
{
    return HEAD_BYTES + TAIL_BYTES + (size_t)e->n_records * sizeof(bt_record);
}

void bt_est_pack(const bt_est *e, unsigned char *buf)
{
    const int first = 0; /* the records re-based at slot 0 */
    memcpy(buf, e, HEAD_BYTES);
    memcpy(buf + offsetof(bt_est, first), &first, sizeof first);
    memcpy(buf + HEAD_BYTES, (const char *)e + offsetof(bt_est, pending), TAIL_BYTES);
    unsigned char *p = buf + HEAD_BYTES + TAIL_BYTES;
    for (int k = 0; k < e->n_records; k++, p += sizeof(bt_record)) memcpy(p, REC(e, k), sizeof(bt_record));
}

int bt_est_unpack(bt_est *e, const unsigned char *buf, size_t size)
{
    int n, first;
    if (size < HEAD_BYTES + TAIL_BYTES) return 0;
    memcpy(&n, buf + offsetof(bt_est, n_records), sizeof n);
    memcpy(&first, buf + offsetof(bt_est, first), sizeof first);
    if (n < 0 || n > BT_EST_RECORDS || first != 0 || size != HEAD_BYTES + TAIL_BYTES + (size_t)n * sizeof(bt_record))
        return 0;
    memcpy(e, buf, HEAD_BYTES);
    memcpy((char *)e + offsetof(bt_est, pending), buf + HEAD_BYTES, TAIL_BYTES);
    memcpy(e->records, buf + HEAD_BYTES + TAIL_BYTES, (size_t)n * sizeof(bt_record));
    return 1;
}

size_t bt_est_size(void) { return sizeof(bt_est); }
const double *bt_est_covariance(const bt_est *e) { return e->P; }

static int fail(bt_est *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

/* ---------------------------------------------------------------------------------------------- */
/* Linear algebra on 9 x 9 row-major matrices                                                       */

static void matmul(const double *A, const double *B, double *C)
{
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < N; k++) s += A[i * N + k] * B[k * N + j];
            C[i * N + j] = s;
        }
}

static void matmul_bt(const double *A, const double *B, double *C) /* A @ B.T */
{
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < N; k++) s += A[i * N + k] * B[j * N + k];
            C[i * N + j] = s;
        }
}

static void eye(double *A)
{
    memset(A, 0, sizeof(double) * N * N);
    for (int i = 0; i < N; i++) A[i * N + i] = 1.0;
}

/* Solve A z = b (n <= 9, A row-major n x n, overwritten) by Gaussian elimination with partial
   pivoting (LAPACK's dgesv, as numpy.linalg.solve); 0 when singular. */
static int solve_n(int n, double *A, double *b, double *z)
{
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int r = k + 1; r < n; r++)
            if (fabs(A[r * n + k]) > fabs(A[p * n + k])) p = r;
        if (A[p * n + k] == 0.0) return 0;
        if (p != k) {
            for (int c = 0; c < n; c++) {
                double t = A[k * n + c];
                A[k * n + c] = A[p * n + c];
                A[p * n + c] = t;
            }
            double t = b[k];
            b[k] = b[p];
            b[p] = t;
        }
        for (int r = k + 1; r < n; r++) {
            double f = A[r * n + k] / A[k * n + k];
            for (int c = k; c < n; c++) A[r * n + c] -= f * A[k * n + c];
            b[r] -= f * b[k];
        }
    }
    for (int k = n - 1; k >= 0; k--) {
        double s = b[k];
        for (int c = k + 1; c < n; c++) s -= A[k * n + c] * z[c];
        z[k] = s / A[k * n + k];
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Model pieces: twin_core.model (scaled coefficients, derivatives, jacobian)                      */

static void scaled(const bt_coef *c, double f1, double f2, double fUA, bt_coef *out)
{
    *out = *c;
    out->k1_ref = c->k1_ref * f1;
    out->k2_ref = c->k2_ref * f2;
    out->ua = c->ua * fUA;
}

static void derivatives(const double x[4], double u, const bt_coef *c, double dx[4])
{
    double r1, r2;
    bt_rates(x, c, &r1, &r2);
    dx[0] = -r1;
    dx[1] = r1 - r2;
    dx[2] = r2;
    dx[3] = c->q1 * r1 + c->q2 * r2 + c->ua * (u - x[3]);
}

/* twin_core.model.jacobian: the 17 named entries, in Jacobian's field order. */
enum {
    J_dcA_dcA, J_dcA_dT, J_dcA_dk1, J_dcB_dcA, J_dcB_dcB, J_dcB_dT, J_dcB_dk1, J_dcB_dk2, J_dcC_dcB, J_dcC_dT,
    J_dcC_dk2, J_dT_dcA, J_dT_dcB, J_dT_dT, J_dT_dUA, J_dT_dk1, J_dT_dk2, J_N
};
static const int PATTERN[J_N + 6][2] = {
    {0, 0}, {0, 3}, {0, 5}, {1, 0}, {1, 1}, {1, 3}, {1, 5}, {1, 6}, {2, 1}, {2, 3}, {2, 6}, {3, 0},
    {3, 1}, {3, 3}, {3, 4}, {3, 5}, {3, 6},
    {0, 7}, {1, 7}, {3, 7}, {1, 8}, {2, 8}, {3, 8}}; /* + ekf.TRUST_ENTRIES */

static void jacobian(const double x[4], double u, const bt_coef *c, double f1, double f2, double fUA, double fk1,
                     double fk2, double J[J_N])
{
    double cA = x[0], cB = x[1], T = x[3];
    double d = 1.0 / T - c->inv_T_ref;
    double k1 = c->k1_ref * exp(-c->E1_over_R * d), k2 = c->k2_ref * exp(-c->E2_over_R * d);
    double d1A = fk1 * f1 * k1, d2B = fk2 * f2 * k2;
    double r1 = d1A * cA, r2 = d2B * cB;
    double d1T = r1 * c->E1_over_R / (T * T), d2T = r2 * c->E2_over_R / (T * T);
    double d1k = f1 * k1 * cA, d2k = f2 * k2 * cB;
    double q1 = c->q1, q2 = c->q2;
    J[J_dcA_dcA] = -d1A;
    J[J_dcA_dT] = -d1T;
    J[J_dcA_dk1] = -d1k;
    J[J_dcB_dcA] = d1A;
    J[J_dcB_dcB] = -d2B;
    J[J_dcB_dT] = d1T - d2T;
    J[J_dcB_dk1] = d1k;
    J[J_dcB_dk2] = -d2k;
    J[J_dcC_dcB] = d2B;
    J[J_dcC_dT] = d2T;
    J[J_dcC_dk2] = d2k;
    J[J_dT_dcA] = q1 * d1A;
    J[J_dT_dcB] = q2 * d2B;
    J[J_dT_dT] = q1 * d1T + q2 * d2T - c->ua * fUA;
    J[J_dT_dUA] = c->ua * (u - T);
    J[J_dT_dk1] = q1 * d1k;
    J[J_dT_dk2] = q2 * d2k;
}

/* ---------------------------------------------------------------------------------------------- */
/* ekf.Ekf                                                                                          */

static void rate_of_change(const bt_est *e, const double *x, double u, double dx[4])
{
    bt_coef c;
    scaled(&e->coef, e->held_f1, e->held_f2, x[IUA], &c);
    derivatives(x, u, &c, dx);
}

/* Ekf._transition_general: expm(A dt) by a third-order Taylor series with scaling and squaring. */
static void transition_general(double dt, const double vals[J_N + 6], double rho, double *Phi)
{
    double A[N * N], M[N * N], M2[N * N], M3[N * N], tmp[N * N];
    memset(A, 0, sizeof A);
    for (int k = 0; k < J_N + 6; k++) A[PATTERN[k][0] * N + PATTERN[k][1]] = vals[k];
    int s = 0; /* max(0, ceil(log2(rho / 0.25))), exactly (no log2: glibc >= 2.17) */
    while (rho / 0.25 > ldexp(1.0, s) && s < 1000) s++;
    double scale = dt * pow(0.5, s);
    for (int i = 0; i < N * N; i++) M[i] = A[i] * scale;
    matmul(M, M, M2);
    matmul(M2, M, M3);
    eye(Phi);
    for (int i = 0; i < N * N; i++) Phi[i] = Phi[i] + M[i] + M2[i] * 0.5 + M3[i] * (1.0 / 6.0);
    for (int k = 0; k < s; k++) {
        matmul(Phi, Phi, tmp);
        memcpy(Phi, tmp, sizeof tmp);
    }
}

/* Ekf.substep: (x, P, h) from ta to tb in place; *ok the correction's domain flag. */
static int substep(bt_est *e, double ta, double tb, double *x, double *P, double *h, double u, int *ok)
{
    const bt_est_config *cfg = &e->cfg;
    double cA = x[0], cB = x[1], cC = x[2], T = x[3], fUA = x[4], fk1 = x[5], fk2 = x[6], l1 = x[7], l2 = x[8];
    double lg1 = 0.0, lg2 = 0.0, f1 = 1.0, f2 = 1.0;
    *ok = 1;
    if (e->has_correction && bt_correction != NULL) {
        double hw = 0.5 * (tb - ta);
        bt_coef ch;
        double d[4], xs[4] = {cA, cB, cC, T}, mid[4], g[2];
        scaled(&e->coef, e->held_f1, e->held_f2, fUA, &ch);
        derivatives(xs, u, &ch, d);
        mid[0] = fmax(cA + hw * d[0], 0.0);
        mid[1] = fmax(cB + hw * d[1], 0.0);
        mid[2] = fmax(cC + hw * d[2], 0.0);
        mid[3] = T + hw * d[3];
        bt_correction(ta + hw, mid, g, ok);
        lg1 = g[0];
        lg2 = g[1];
        f1 = exp(l1 * lg1);
        f2 = exp(l2 * lg2);
    }
    double g1 = fk1 * f1, g2 = fk2 * f2;
    e->held_f1 = g1;
    e->held_f2 = g2;
    e->last_g[0] = lg1;
    e->last_g[1] = lg2;
    bt_rhs_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    scaled(&e->coef, g1, g2, fUA, &ctx.c);
    ctx.correction = NULL;
    ctx.T_jacket_K = u;
    bt_tolerance tol;
    tol.rtol = cfg->rtol;
    tol.atol[0] = tol.atol[1] = tol.atol[2] = 1e-5;
    tol.atol[3] = 1e-6;
    double dt = tb - ta;
    double a[4] = {cA, cB, cC, T};
    double hh = *h > 0.0 ? *h : dt;
    if (bt_integrate(&ctx, ta, a, tb, &tol, &hh, NULL, e->msg, sizeof e->msg) != BT_OK) return BT_EST_INTEGRATION;
    *h = hh;
    double mA = 0.5 * (cA + a[0]), mB = 0.5 * (cB + a[1]), mT = 0.5 * (T + a[3]);
    double m[4] = {mA, mB, 0.5 * (cC + a[2]), mT};
    double vals[J_N + 6];
    jacobian(m, u, &e->coef, f1, f2, fUA, fk1, fk2, vals);
    double ta1 = lg1 * fk1, tb2 = lg2 * fk2;
    vals[J_N + 0] = ta1 * vals[J_dcA_dk1];
    vals[J_N + 1] = ta1 * vals[J_dcB_dk1];
    vals[J_N + 2] = ta1 * vals[J_dT_dk1];
    vals[J_N + 3] = tb2 * vals[J_dcB_dk2];
    vals[J_N + 4] = tb2 * vals[J_dcC_dk2];
    vals[J_N + 5] = tb2 * vals[J_dT_dk2];
    double r1 = vals[J_dcB_dcA] * mA, r2 = vals[J_dcC_dcB] * mB;
    double row[N] = {vals[J_dT_dcA], vals[J_dT_dcB], 0.0, vals[J_dT_dT], vals[J_dT_dUA], vals[J_dT_dk1],
                     vals[J_dT_dk2], vals[J_N + 2], vals[J_N + 5]};
    memcpy(e->dT_row, row, sizeof row);
    double rho = dt * fmax(fmax(vals[J_dcB_dcA], vals[J_dcC_dcB]), fabs(vals[J_dT_dT]));
    double Phi[N * N];
    if (rho > 0.25) {
        transition_general(dt, vals, rho, Phi);
    } else {
        double M[N * N], Mh[N * N];
        memset(M, 0, sizeof M);
        for (int k = 0; k < J_N + 6; k++) M[PATTERN[k][0] * N + PATTERN[k][1]] = vals[k] * dt;
        for (int i = 0; i < N * N; i++) Mh[i] = M[i] * 0.5;
        for (int i = 0; i < N; i++) Mh[i * N + i] += 1.0;
        matmul(M, Mh, Phi);
        for (int i = 0; i < N; i++) Phi[i * N + i] += 1.0;
    }
    /* Process noise (ekf.py: rate noise along the two extents, random walks of T and the factors). */
    double rate_q = cfg->rate_rel_std * cfg->rate_rel_std * cfg->rate_noise_time_s;
    double corr_q = cfg->correction_rel_std * cfg->correction_rel_std * cfg->rate_noise_time_s;
    double ood = cfg->out_of_domain_noise_factor * cfg->out_of_domain_noise_factor;
    double kw = e->has_correction ? cfg->k_factor_walk_per_sqrt_s : cfg->k_factor_walk_physics_per_sqrt_s;
    double rq = rate_q * dt, cq = corr_q * dt;
    double w1 = l1 * lg1, w2 = l2 * lg2;
    double rq1 = rq + cq * w1 * w1, rq2 = rq + cq * w2 * w2;
    double qk = kw * kw * dt;
    if (e->mismatch) qk *= cfg->mismatch_walk_factor * cfg->mismatch_walk_factor;
    if (!*ok) {
        rq1 *= ood;
        rq2 *= ood;
        qk *= ood;
    }
    double q1 = ctx.c.q1, q2 = ctx.c.q2;
    double qa = rq1 * r1 * r1 + 1e-12 * dt, qb = rq2 * r2 * r2 + 1e-12 * dt;
    double qa1 = -qa * q1, qb2 = qb * q2, qab = qa * q1 - qb * q2;
    double qT = cfg->T_process_std_K_per_sqrt_s * cfg->T_process_std_K_per_sqrt_s;
    double qUA = cfg->UA_factor_walk_per_sqrt_s * cfg->UA_factor_walk_per_sqrt_s;
    double ql = cfg->trust_walk_per_sqrt_s * cfg->trust_walk_per_sqrt_s;
    double Q[N * N];
    memset(Q, 0, sizeof Q);
    Q[0 * N + 0] = qa;
    Q[0 * N + 1] = -qa;
    Q[0 * N + 3] = qa1;
    Q[1 * N + 0] = -qa;
    Q[1 * N + 1] = qa + qb;
    Q[1 * N + 2] = -qb;
    Q[1 * N + 3] = qab;
    Q[2 * N + 1] = -qb;
    Q[2 * N + 2] = qb;
    Q[2 * N + 3] = qb2;
    Q[3 * N + 0] = qa1;
    Q[3 * N + 1] = qab;
    Q[3 * N + 2] = qb2;
    Q[3 * N + 3] = qa * q1 * q1 + qb * q2 * q2 + qT * dt;
    Q[4 * N + 4] = qUA * dt;
    Q[5 * N + 5] = qk;
    Q[6 * N + 6] = qk;
    Q[7 * N + 7] = ql * dt;
    Q[8 * N + 8] = ql * dt;
    double PP[N * N], Pn[N * N];
    matmul(Phi, P, PP);
    matmul_bt(PP, Phi, Pn);
    for (int i = 0; i < N * N; i++) P[i] = Pn[i] + Q[i];
    x[0] = a[0] > 0.0 ? a[0] : 0.0;
    x[1] = a[1] > 0.0 ? a[1] : 0.0;
    x[2] = a[2] > 0.0 ? a[2] : 0.0;
    x[3] = a[3];
    return BT_EST_OK;
}

/* Ekf.propagate: sub-steps of at most max_step_s. */
static int propagate(bt_est *e, double ta, double tb, double *x, double *P, double *h, double u, int *ok)
{
    double span = tb - ta;
    if (span <= e->cfg.max_step_s) return substep(e, ta, tb, x, P, h, u, ok);
    int n = (int)ceil(span / e->cfg.max_step_s - 1e-9);
    int ok_all = 1;
    for (int i = 0; i < n; i++) {
        double a = ta + span * i / n;
        double b = i == n - 1 ? tb : ta + span * (i + 1) / n;
        int oki, rc = substep(e, a, b, x, P, h, u, &oki);
        if (rc != BT_EST_OK) return rc;
        ok_all = ok_all && oki;
    }
    *ok = ok_all;
    return BT_EST_OK;
}

/* ekf._box_qp: argmin (x - x0)' P^-1 (x - x0) subject to lo <= x <= hi (primal active set). */
static void box_qp(double *x0, const double *P, const double *lo, const double *hi)
{
    int idx[N], na = 0;
    double bnd[N], x[N];
    memcpy(x, x0, sizeof x);
    for (int it = 0; it < 4 * N + 4; it++) {
        if (na) {
            double A[N * N], rhs[N], mu[N];
            for (int r = 0; r < na; r++) {
                for (int c = 0; c < na; c++) A[r * na + c] = P[idx[r] * N + idx[c]];
                rhs[r] = x0[idx[r]] - bnd[r];
            }
            if (!solve_n(na, A, rhs, mu)) break;
            for (int i = 0; i < N; i++) {
                double s = 0.0;
                for (int r = 0; r < na; r++) s += P[i * N + idx[r]] * mu[r];
                x[i] = x0[i] - s;
            }
            for (int r = 0; r < na; r++) x[idx[r]] = bnd[r];
            /* max over (wrong sign, index): the largest value, ties to the larger index */
            double worst = 0.0;
            int j_worst = -1;
            for (int r = 0; r < na; r++) {
                double w = bnd[r] == lo[idx[r]] ? mu[r] : -mu[r];
                if (j_worst < 0 || w > worst || (w == worst && idx[r] > idx[j_worst])) {
                    worst = w;
                    j_worst = r;
                }
            }
            if (worst > 0.0) {
                for (int r = j_worst; r < na - 1; r++) {
                    idx[r] = idx[r + 1];
                    bnd[r] = bnd[r + 1];
                }
                na--;
                continue;
            }
        }
        int iv = -1;
        double vmax = 0.0;
        for (int i = 0; i < N; i++) {
            int act = 0;
            for (int r = 0; r < na; r++) act |= idx[r] == i;
            if (act || !(x[i] < lo[i] || x[i] > hi[i])) continue;
            double v = fmax(lo[i] - x[i], x[i] - hi[i]);
            if (iv < 0 || v >= vmax) { /* ties: the larger index (tuples compare by index next) */
                vmax = v;
                iv = i;
            }
        }
        if (iv < 0) {
            memcpy(x0, x, sizeof x);
            return;
        }
        idx[na] = iv;
        bnd[na] = x[iv] < lo[iv] ? lo[iv] : hi[iv];
        na++;
    }
    for (int i = 0; i < N; i++) x0[i] = fmin(fmax(x[i], lo[i]), hi[i]);
}

static void project(const bt_est *e, double *x, const double *P)
{
    const bt_est_config *c = &e->cfg;
    double fmin_ = c->factor_min, fmax_ = c->factor_max, lmin = c->trust_min, lmax = c->trust_max;
    if (x[0] >= 0.0 && x[1] >= 0.0 && x[2] >= 0.0 && fmin_ <= x[4] && x[4] <= fmax_ && fmin_ <= x[5] &&
        x[5] <= fmax_ && fmin_ <= x[6] && x[6] <= fmax_ && lmin <= x[7] && x[7] <= lmax && lmin <= x[8] && x[8] <= lmax)
        return;
    double lo[N] = {0.0, 0.0, 0.0, -INFINITY, fmin_, fmin_, fmin_, lmin, lmin};
    double hi[N] = {INFINITY, INFINITY, INFINITY, INFINITY, fmax_, fmax_, fmax_, lmax, lmax};
    box_qp(x, P, lo, hi);
}

static double predicted_reading(const bt_est *e, const double *x, double u)
{
    double lag = e->cfg.T_sensor_lag_s;
    if (lag == 0.0) return x[IT];
    double dx[4];
    rate_of_change(e, x, u, dx);
    return x[IT] - lag * dx[3];
}

/* Ekf.T_update: the fitted reading z [K] of variance R; innovation and its variance S out. */
static void T_update(bt_est *e, double *x, double *P, double z, double R, double u, double *innov_out, double *S_out)
{
    double lag = e->cfg.T_sensor_lag_s;
    double PH[N], HPH;
    if (lag == 0.0) {
        for (int i = 0; i < N; i++) PH[i] = P[i * N + IT];
        HPH = P[IT * N + IT];
    } else {
        const double *r = e->dT_row;
        double H[N] = {-lag * r[0], -lag * r[1], 0.0, 1.0 - lag * r[3], -lag * r[4], -lag * r[5], -lag * r[6],
                       -lag * r[7], -lag * r[8]};
        for (int i = 0; i < N; i++) {
            double s = 0.0;
            for (int k = 0; k < N; k++) s += P[i * N + k] * H[k];
            PH[i] = s;
        }
        HPH = 0.0;
        for (int k = 0; k < N; k++) HPH += H[k] * PH[k];
    }
    double innov = z - predicted_reading(e, x, u);
    double S = HPH + R;
    double zn2 = innov * innov / S;
    double gamma = e->cfg.huber_threshold;
    double S_eff = S;
    if (zn2 > gamma * gamma) S_eff = HPH + R * sqrt(zn2) / gamma;
    double k = innov / S_eff, inv = 1.0 / S_eff;
    for (int i = 0; i < N; i++) x[i] = x[i] + PH[i] * k;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) P[i * N + j] = P[i * N + j] - (PH[i] * PH[j]) * inv;
    project(e, x, P);
    *innov_out = innov;
    *S_out = S;
}

/* Ekf.lab_update: an assay of c_B and c_C at its sample time; returns the NIS. */
static double lab_update(bt_est *e, double *x, double *P, const bt_lab *lab)
{
    const bt_est_config *cfg = &e->cfg;
    double zB = lab->c_B, zC = lab->c_C;
    double sB = cfg->lab_abs_std_mol_per_m3 + cfg->lab_rel_std * zB;
    double sC = cfg->lab_abs_std_mol_per_m3 + cfg->lab_rel_std * zC;
    double rB = sB * sB, rC = sC * sC;
    double vB = zB - x[IB], vC = zC - x[IC];
    double pBB = P[IB * N + IB], pBC = P[IB * N + IC], pCC = P[IC * N + IC];
    double sBB = pBB + rB, sCC = pCC + rC;
    double det = sBB * sCC - pBC * pBC;
    double nis = (sCC * vB * vB - 2.0 * pBC * vB * vC + sBB * vC * vC) / det;
    double l11 = sqrt(sBB), l21 = pBC / l11, e1 = vB / l11;
    e->last_white[0] = e1;
    e->last_white[1] = (vC - l21 * e1) / sqrt(fmax(sCC - l21 * l21, 1e-300));
    if (nis > cfg->lab_gate_nis) {
        double infl = nis / cfg->lab_gate_nis;
        sBB = pBB + rB * infl;
        sCC = pCC + rC * infl;
        det = sBB * sCC - pBC * pBC;
    }
    double S00 = sCC / det, S01 = -pBC / det, S10 = -pBC / det, S11 = sBB / det;
    double K[N][2], PH[N][2];
    for (int i = 0; i < N; i++) {
        PH[i][0] = P[i * N + IB];
        PH[i][1] = P[i * N + IC];
        K[i][0] = PH[i][0] * S00 + PH[i][1] * S10;
        K[i][1] = PH[i][0] * S01 + PH[i][1] * S11;
    }
    for (int i = 0; i < N; i++) x[i] = x[i] + (K[i][0] * vB + K[i][1] * vC);
    double Pn[N * N];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) Pn[i * N + j] = P[i * N + j] - (K[i][0] * PH[j][0] + K[i][1] * PH[j][1]);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) P[i * N + j] = 0.5 * (Pn[i * N + j] + Pn[j * N + i]);
    project(e, x, P);
    return nis;
}

/* ---------------------------------------------------------------------------------------------- */
/* health.ModelHealth                                                                               */

static void correction_mismatch(bt_est *e)
{
    if (e->alarms & BT_ALARM_CORRECTION) return;
    e->alarms |= BT_ALARM_CORRECTION;
    e->cusum_pos = e->cusum_neg = 0.0; /* the CUSUM restarts once */
}

static double nis_bound(const bt_est *e, int n)
{
    if (n < 30) return e->cfg.nis_bound_small[n];
    double a = 2.0 / (9.0 * n);
    return n * pow(1.0 - a + e->cfg.nis_z * sqrt(a), 3.0);
}

/* Neumaier's compensated sum: math.fsum to within an ulp (the re-anchoring of the window sum). */
static double exact_sum(const bt_est *e)
{
    double s = 0.0, c = 0.0;
    for (int k = 0; k < e->nis_n; k++) {
        double v = e->nis_v[(e->nis_first + k) % BT_EST_NIS], t = s + v;
        c += fabs(s) >= fabs(v) ? (s - t) + v : (v - t) + s;
        s = t;
    }
    return s + c;
}

static int nis_add(bt_est *e, double t, double nis)
{
    if (e->nis_n >= BT_EST_NIS) return -1;
    int k = (e->nis_first + e->nis_n) % BT_EST_NIS;
    e->nis_t[k] = t;
    e->nis_v[k] = nis;
    e->nis_n++;
    e->nis_sum += nis;
    double cut = t - e->cfg.nis_window_s;
    while (e->nis_n && e->nis_t[e->nis_first] <= cut) {
        e->nis_sum -= e->nis_v[e->nis_first];
        e->nis_first = (e->nis_first + 1) % BT_EST_NIS;
        e->nis_n--;
    }
    e->nis_adds++;
    if (e->nis_adds % 256 == 0) e->nis_sum = exact_sum(e);
    e->nis_failing = e->nis_n >= 5 && e->nis_sum > nis_bound(e, e->nis_n);
    return e->nis_failing;
}

static void health_temperature(bt_est *e, double t, double innov, double S, int use_T)
{
    const bt_est_config *cfg = &e->cfg;
    double zn = innov / sqrt(S);
    e->nis = zn * zn;
    if (!use_T) return;
    int f = nis_add(e, t, fmin(e->nis, cfg->nis_clip));
    if (f) {
        if (e->warn_since != e->warn_since) e->warn_since = t;
        /* with CORRECTION_MISMATCH latched, the model's disagreement is that warning (ModelHealth.temperature) */
        if (t - e->warn_since >= cfg->mismatch_persist_s && !(e->alarms & BT_ALARM_CORRECTION)) e->alarms |= BT_ALARM_MISMATCH;
    } else {
        e->warn_since = NAN;
        if (e->lab_fail_run < 2) e->alarms &= ~BT_ALARM_MISMATCH;
    }
    double c = cfg->cusum_clip, z = zn > c ? c : (zn < -c ? -c : zn);
    e->cusum_pos = fmax(0.0, e->cusum_pos + z - cfg->cusum_slack);
    e->cusum_neg = fmax(0.0, e->cusum_neg - z - cfg->cusum_slack);
    if (e->cusum_pos > cfg->cusum_threshold || e->cusum_neg > cfg->cusum_threshold) e->alarms |= BT_ALARM_DRIFT;
}

static void health_reading(bt_est *e, double t, double y)
{
    if (e->stuck_count && fabs(y - e->stuck_value) <= e->cfg.stuck_tolerance_K) {
        e->stuck_count++;
    } else {
        e->stuck_value = y;
        e->stuck_since = t;
        e->stuck_count = 1;
    }
    if (e->stuck_count >= e->cfg.stuck_min_readings && t - e->stuck_since >= e->cfg.stuck_time_s)
        e->alarms |= BT_ALARM_STUCK;
    else
        e->alarms &= ~BT_ALARM_STUCK;
}

static void health_lab(bt_est *e, double nis, const double white[2])
{
    const bt_est_config *cfg = &e->cfg;
    if (e->has_correction) {
        /* LabBiasTest.add: the deque of the last lab_bias_window whitened innovations */
        int w = cfg->lab_bias_window;
        if (e->lb_n < w) {
            e->lb_e[(e->lb_first + e->lb_n) % w][0] = white[0];
            e->lb_e[(e->lb_first + e->lb_n) % w][1] = white[1];
            e->lb_n++;
        } else {
            e->lb_e[e->lb_first][0] = white[0];
            e->lb_e[e->lb_first][1] = white[1];
            e->lb_first = (e->lb_first + 1) % w;
        }
        e->lb_count++;
        double s1 = 0.0, s2 = 0.0;
        for (int k = 0; k < e->lb_n; k++) s1 += e->lb_e[(e->lb_first + k) % w][0];
        for (int k = 0; k < e->lb_n; k++) s2 += e->lb_e[(e->lb_first + k) % w][1];
        e->lb_q = (s1 * s1 + s2 * s2) / e->lb_n;
        e->lb_failing = e->lb_q > cfg->lab_bias_bound;
        if (e->lb_failing) correction_mismatch(e);
        /* LabWhitenessTest.add: same-sign neighbours over the last lab_white_window innovations */
        int ww = cfg->lab_white_window;
        if (e->lw_n < ww) {
            e->lw_e[(e->lw_first + e->lw_n) % ww][0] = white[0];
            e->lw_e[(e->lw_first + e->lw_n) % ww][1] = white[1];
            e->lw_n++;
        } else {
            e->lw_e[e->lw_first][0] = white[0];
            e->lw_e[e->lw_first][1] = white[1];
            e->lw_first = (e->lw_first + 1) % ww;
        }
        e->lw_same = 0;
        e->lw_pairs = 0;
        e->lw_failing = 0;
        if (e->lw_n >= ww) {
            /* per component, neighbours among the values outside the dead zone (those with a sign) */
            for (int j = 0; j < 2; j++) {
                int have = 0, prev = 0;
                for (int k = 0; k < e->lw_n; k++) {
                    double v = e->lw_e[(e->lw_first + k) % ww][j];
                    if (!(fabs(v) > cfg->lab_white_dead_zone)) continue;
                    if (have) {
                        e->lw_pairs++;
                        e->lw_same += (v > 0.0) == prev;
                    }
                    have = 1;
                    prev = v > 0.0;
                }
            }
            e->lw_failing = e->lw_same >= cfg->lab_white_bounds[e->lw_pairs];
            if (e->lw_failing) correction_mismatch(e);
        }
    }
    if (nis > cfg->lab_gate_nis) {
        e->lab_fail_run++;
        e->lab_warning = 1;
        /* with CORRECTION_MISMATCH latched, assays far off are that warning (ModelHealth.lab) */
        if (e->lab_fail_run >= 2 && !(e->alarms & BT_ALARM_CORRECTION)) e->alarms |= BT_ALARM_MISMATCH;
    } else {
        e->lab_fail_run = 0;
        e->lab_warning = 0;
    }
}

static int health_level(const bt_est *e, int in_domain)
{
    if (e->alarms & ~BT_ALARM_CORRECTION) return 2;
    if (e->nis_failing || e->lab_warning || !in_domain || e->alarms) return 1;
    return 0;
}

/* SoftSensor._check_trust (+ _check_trust_tests): after fresh lab assays. P is changed in place. */
static void check_trust(bt_est *e, const double *x, double *P)
{
    const bt_est_config *cfg = &e->cfg;
    if (!e->has_correction) return;
    int before = e->alarms & BT_ALARM_CORRECTION;
    double lam[2] = {x[IL1], x[IL2]};
    double sd[2] = {sqrt(fmax(P[IL1 * N + IL1], 0.0)), sqrt(fmax(P[IL2 * N + IL2], 0.0))};
    for (int i = 0; i < 2; i++) {
        double d = fabs(lam[i] - e->trust0[i]);
        if (d > cfg->trust_shift_min && d > cfg->trust_shift_z * sd[i]) correction_mismatch(e);
    }
    const int il[2] = {IL1, IL2}, ik[2] = {IK1, IK2};
    int hit = 0; /* ModelHealth.rate_shift: confirmed at two lab checks in a row */
    for (int i = 0; i < 2; i++) {
        double g = e->last_g[i];
        double k = fmax(x[ik[i]], 1e-9);
        double d = (x[il[i]] - e->trust0[i]) * g + log(k);
        double var = g * g * P[il[i] * N + il[i]] + P[ik[i] * N + ik[i]] / (k * k) + 2.0 * g * P[il[i] * N + ik[i]] / k;
        double s = sqrt(fmax(var, 0.0));
        if (fabs(d) > cfg->rate_shift_min && fabs(d) > cfg->trust_shift_z * s) hit = 1;
    }
    if (hit && e->rate_prev) correction_mismatch(e);
    e->rate_prev = hit;
    if (!before && (e->alarms & BT_ALARM_CORRECTION)) {
        double t2 = cfg->trust0_std * cfg->trust0_std;
        P[IL1 * N + IL1] += t2;
        P[IL2 * N + IL2] += t2;
        P[IK1 * N + IK1] += cfg->k1_factor0_std * cfg->k1_factor0_std;
        P[IK2 * N + IK2] += cfg->k2_factor0_std * cfg->k2_factor0_std;
        e->mismatch = 1;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* history: one filter step, re-processing                                                          */

enum { FRESH_NONE = 0, FRESH_ALL = 1, FRESH_ONE = 2 };

/* history.run_record: labs at their sample times, propagation to rec->t, the temperature update. */
static int run_record(bt_est *e, bt_record *rec, double *x, double *P, double *h, int fresh, double fresh_t,
                      double *innov, double *S)
{
    double t = rec->t_prev;
    int ok = 1, rc;
    for (int k = 0; k < rec->n_labs; k++) {
        const bt_lab *lab = &rec->labs[k];
        if (lab->sample_t > t) {
            if ((rc = propagate(e, t, lab->sample_t, x, P, h, rec->u, &ok)) != BT_EST_OK) return rc;
            t = lab->sample_t;
        }
        double nis = lab_update(e, x, P, lab);
        if (fresh == FRESH_ALL || (fresh == FRESH_ONE && lab->sample_t == fresh_t)) health_lab(e, nis, e->last_white);
    }
    if (rec->t > t && (rc = propagate(e, t, rec->t, x, P, h, rec->u, &ok)) != BT_EST_OK) return rc;
    if (rec->use_T) {
        T_update(e, x, P, rec->z, rec->R, rec->u, innov, S);
    } else {
        *innov = rec->z - predicted_reading(e, x, rec->u);
        *S = 0.0;
    }
    memcpy(rec->x, x, sizeof rec->x);
    memcpy(rec->P, P, sizeof rec->P);
    rec->h = *h;
    rec->in_domain = ok;
    return BT_EST_OK;
}

static void refresh_output(bt_est *e)
{
    memcpy(e->xl, e->x, sizeof e->xl);
    double u = e->u == e->u ? e->u : e->x[IT];
    rate_of_change(e, e->x, u, e->dx);
    for (int i = 0; i < N; i++) e->std[i] = sqrt(fmax(e->P[i * N + i], 0.0));
    double fi = e->cfg.filter_interval_s;
    double k = floor((e->t_filter - e->t0) / fi * (1.0 + 1e-12)) + 1.0;
    e->next_boundary = e->t0 + k * fi;
}

static void prune(bt_est *e, double t)
{
    double cut = t - e->cfg.history_window_s;
    int n = 0;
    while (n < e->n_records - 1 && REC(e, n)->t <= cut) n++;
    if (n) {
        const bt_record *r = REC(e, n - 1);
        e->base_t = r->t;
        memcpy(e->base_x, r->x, sizeof e->base_x);
        memcpy(e->base_P, r->P, sizeof e->base_P);
        e->base_h = r->h;
        e->base_in = r->in_domain;
        e->first = (e->first + n) % BT_EST_RECORDS;
        e->n_records -= n;
    }
}

static void sort_labs(bt_lab *labs, int n) /* stable insertion sort by sample time */
{
    for (int i = 1; i < n; i++) {
        bt_lab v = labs[i];
        int j = i - 1;
        while (j >= 0 && labs[j].sample_t > v.sample_t) {
            labs[j + 1] = labs[j];
            j--;
        }
        labs[j + 1] = v;
    }
}

/* ScanPool.fit: value of the fitted line at tau_k after the interval's start, and its variance. */
static void scans_fit(const bt_est *e, double tau_k, double *z, double *R)
{
    double var = e->cfg.T_noise_std_K * e->cfg.T_noise_std_K, floor_ = e->cfg.T_floor_std_K * e->cfg.T_floor_std_K;
    double sw = e->sw;
    if (e->n_acc >= 2) {
        double tbar = e->swt / sw;
        double stt = e->swtt - sw * tbar * tbar;
        if (stt > 1e-12 * fmax(1.0, tau_k * tau_k) * sw) {
            double ybar = e->swy / sw;
            double slope = (e->swty - sw * tbar * ybar) / stt;
            double d = tau_k - tbar;
            *z = e->y_ref + ybar + slope * d;
            *R = var * (1.0 / sw + d * d / stt) + floor_;
            return;
        }
    }
    *z = e->y_ref + e->swy / sw;
    *R = var / sw + floor_;
}

static void scans_clear(bt_est *e)
{
    e->sw = e->swt = e->swtt = e->swy = e->swty = 0.0;
    e->y_ref = NAN;
    e->n_acc = 0;
    e->Tj_int = 0.0;
}

static void scans_add(bt_est *e, double t, double y, double uj)
{
    if (e->Tj_last != e->Tj_last) e->Tj_int += uj * (t - e->Tj_last_t);
    else e->Tj_int += 0.5 * (uj + e->Tj_last) * (t - e->Tj_last_t);
    e->Tj_last = uj;
    e->Tj_last_t = t;
    double w = 1.0;
    if (e->y_prev == e->y_prev) {
        double jump = fabs(y - e->y_prev);
        double limit = e->cfg.scan_jump_K + e->cfg.T_rate_max_K_per_s * (t - e->y_prev_t);
        if (jump > limit) w = limit / jump;
    }
    e->y_prev = y;
    e->y_prev_t = t;
    if (e->n_acc == 0) e->y_ref = y;
    double tau = t - e->t_filter, yr = y - e->y_ref;
    e->sw += w;
    e->swt += w * tau;
    e->swtt += w * tau * tau;
    e->swy += w * yr;
    e->swty += w * tau * yr;
    e->n_acc++;
}

/* SoftSensor._filter_step (open_loop: no reading, propagate only with jacket u_open). */
static int filter_step(bt_est *e, double t, int open_loop, double u_open)
{
    if (e->n_records >= BT_EST_RECORDS)
        return fail(e, BT_EST_FULL, "the native soft sensor's history is full (%d filter steps in %.17g s)",
                    BT_EST_RECORDS, e->cfg.history_window_s);
    bt_record rec;
    memset(&rec, 0, sizeof rec);
    rec.t_prev = e->t_filter;
    rec.t = t;
    if (!open_loop) {
        scans_fit(e, e->t_scan - e->t_filter, &rec.z, &rec.R);
        rec.u = e->Tj_int / (t - e->t_filter);
        rec.use_T = !(e->alarms & SENSOR_FAULTS);
    } else {
        rec.z = rec.R = NAN;
        rec.u = u_open;
        rec.use_T = 0;
    }
    int fresh = e->n_pending > 0;
    if (fresh) {
        if (e->n_pending > BT_EST_RECORD_LABS)
            return fail(e, BT_EST_FULL, "more than %d lab assays in one filter step (%d)", BT_EST_RECORD_LABS,
                        e->n_pending);
        memcpy(rec.labs, e->pending, sizeof(bt_lab) * (size_t)e->n_pending);
        rec.n_labs = e->n_pending;
        sort_labs(rec.labs, rec.n_labs);
        e->n_pending = 0;
    }
    double x[N], P[N * N], h = e->h, innov, S;
    memcpy(x, e->x, sizeof x);
    memcpy(P, e->P, sizeof P);
    int rc = run_record(e, &rec, x, P, &h, fresh ? FRESH_ALL : FRESH_NONE, 0.0, &innov, &S);
    if (rc != BT_EST_OK) return rc;
    if (fresh) {
        check_trust(e, x, P);
        memcpy(rec.P, P, sizeof P); /* Python changes the record's P in place */
    }
    *REC(e, e->n_records) = rec;
    e->n_records++;
    memcpy(e->x, x, sizeof x);
    memcpy(e->P, P, sizeof P);
    e->h = h;
    e->t_filter = t;
    e->u = rec.u;
    e->in_domain = rec.in_domain;
    scans_clear(e);
    prune(e, t);
    e->innov = innov;
    if (S > 0.0) health_temperature(e, t, innov, S, rec.use_T);
    refresh_output(e);
    return BT_EST_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* forecast.forecast_from with the jacket held: the optimal stop and the impurity there             */

/* The samples of the forecast kept for the optimal stop: the last five, and the window around the
   first maximum of c_B (four before it, two after: what _refine_max and np.interp read), so a
   forecast of any horizon needs no trajectory buffer. */
typedef struct {
    double t, x[4];
} fc_sample;

static int forecast(bt_est *e)
{
    double t0 = e->t_filter, t_end = e->plan_end, dt = e->cfg.forecast_dt_s;
    double u = e->u == e->u ? e->u : e->Tj_last;
    double x[N], P[N * N], h = e->h;
    memcpy(x, e->x, sizeof x);
    memcpy(P, e->P, sizeof P);
    double save_f1 = e->held_f1, save_f2 = e->held_f2, save_row[N];
    memcpy(save_row, e->dT_row, sizeof save_row);
    long n = 0; /* simulation.output_times: t0 + k dt while <= t_end, then t_end if it falls between */
    int extra = 0;
    if (t_end > t0) {
        n = (long)floor((t_end - t0) / dt * (1.0 + 1e-12));
        extra = t_end - (t0 + dt * (double)n) > 1e-9 * fmax(1.0, t_end);
    }
    long m = n + 1 + extra;
    fc_sample last[5], win[7];
    int wn = 0;
    long imax = 0, wbase = 0;
    double best = 0.0, ta = t0;
    int rc = BT_EST_OK;
    for (long k = 0; k < m; k++) {
        double tk = k <= n ? t0 + dt * (double)k : t_end;
        if (k > 0) {
            int ok;
            rc = substep(e, ta, tk, x, P, &h, u, &ok);
            if (rc != BT_EST_OK) break;
        }
        ta = tk;
        fc_sample sm = {tk, {x[0], x[1], x[2], x[3]}};
        last[k % 5] = sm;
        if (k == 0 || x[1] > best) {
            best = x[1];
            imax = k;
            wbase = k >= 4 ? k - 4 : 0;
            wn = 0;
            for (long j = wbase; j <= k; j++) win[wn++] = last[j % 5];
        } else if (k <= imax + 2) {
            win[wn++] = sm;
        }
    }
    e->held_f1 = save_f1;
    e->held_f2 = save_f2;
    memcpy(e->dT_row, save_row, sizeof save_row);
    if (rc != BT_EST_OK) return rc;
    double ts[7], cB[7];
    for (int j = 0; j < wn; j++) {
        ts[j] = win[j].t;
        cB[j] = win[j].x[1];
    }
    int il = (int)(imax - wbase);
    double t_opt, cB_opt;
    if (m >= 2 && imax != 0 && imax != m - 1) {
        bt_refine_max(ts, cB, wn, il, &t_opt, &cB_opt);
    } else {
        t_opt = ts[il];
        cB_opt = cB[il];
    }
    double xo[4];
    int k = 0;
    while (k < wn - 2 && !(t_opt < ts[k + 1])) k++;
    for (int j = 0; j < 4; j++) { /* np.interp */
        if (wn == 1 || t_opt <= ts[0]) xo[j] = win[0].x[j];
        else if (t_opt >= ts[wn - 1]) xo[j] = win[wn - 1].x[j];
        else xo[j] = (win[k + 1].x[j] - win[k].x[j]) / (ts[k + 1] - ts[k]) * (t_opt - ts[k]) + win[k].x[j];
    }
    xo[1] = cB_opt;
    e->fc_t_stop = t_opt;
    e->fc_yield = (cB_opt - e->params.c_B0) / e->params.c_A0;
    e->fc_impurity = xo[2] / (xo[0] + xo[1] + xo[2]);
    e->has_forecast = 1;
    return BT_EST_OK;
}

static int refresh_forecast(bt_est *e, double t)
{
    if (e->cfg.forecast_interval_s > 0.0 && e->plan_end == e->plan_end && t - e->t_forecast >= e->cfg.forecast_interval_s) {
        int rc = forecast(e);
        if (rc != BT_EST_OK) return rc;
        e->t_forecast = t;
    }
    return BT_EST_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* SoftSensor: lifecycle, scans, labs                                                               */

int bt_est_start(bt_est *e, const bt_est_config *cfg, const bt_params *p, int has_correction, double t0,
                 double T_meas, double l1, double l2, double plan_end)
{
    return bt_est_start_prior(e, cfg, p, has_correction, t0, T_meas, l1, l2, plan_end, 1.0, NULL);
}

int bt_est_start_prior(bt_est *e, const bt_est_config *cfg, const bt_params *p, int has_correction, double t0,
                       double T_meas, double l1, double l2, double plan_end, double UA0, const double *prior_sd)
{
    /* Everything but the record slots, which are written whole when used: a fresh (calloc'd)
       estimator keeps its pages untouched until the history grows into them. */
    memset(e, 0, offsetof(bt_est, records));
    memset((char *)e + offsetof(bt_est, pending), 0, sizeof *e - offsetof(bt_est, pending));
    e->cfg = *cfg;
    e->params = *p;
    bt_coefficients(p, &e->coef);
    e->has_correction = has_correction && bt_correction != NULL;
    if (cfg->lab_bias_window > BT_EST_LAB_WINDOW || cfg->lab_bias_window < 1)
        return fail(e, BT_EST_REFUSED, "lab_bias_window %d outside [1, %d]", cfg->lab_bias_window, BT_EST_LAB_WINDOW);
    if (cfg->lab_white_window > BT_EST_LAB_WINDOW || cfg->lab_white_window < 2)
        return fail(e, BT_EST_REFUSED, "lab_white_window %d outside [2, %d]", cfg->lab_white_window, BT_EST_LAB_WINDOW);
    if (!(cfg->trust_min <= l1 && l1 <= cfg->trust_max && cfg->trust_min <= l2 && l2 <= cfg->trust_max))
        return fail(e, BT_EST_REFUSED, "trust0 (%.17g, %.17g) outside the trust range", l1, l2);
    if (!(cfg->factor_min <= UA0 && UA0 <= cfg->factor_max))
        return fail(e, BT_EST_REFUSED, "factors0[0]=%.17g: must be within [%.17g, %.17g]", UA0, cfg->factor_min,
                    cfg->factor_max);
    double psd[5] = {cfg->UA_factor0_std, cfg->k1_factor0_std, cfg->k2_factor0_std, cfg->trust0_std, cfg->trust0_std};
    if (prior_sd != NULL) {
        for (int i = 0; i < 5; i++) {
            if (!(isfinite(prior_sd[i]) && prior_sd[i] > 0.0))
                return fail(e, BT_EST_REFUSED, "prior_std[%d]=%.17g: must be > 0", i, prior_sd[i]);
            psd[i] = prior_sd[i];
        }
    }
    double x4[4] = {p->c_A0, p->c_B0, p->c_C0, p->T0};
    double T_std = cfg->T0_std_K;
    if (T_meas == T_meas) {
        if (!(cfg->T_sensor_min_K <= T_meas && T_meas <= cfg->T_sensor_max_K))
            return fail(e, BT_EST_REFUSED, "T_measured=%.17g: outside the sensor range (max %.17g K)", T_meas,
                        cfg->T_sensor_max_K);
        x4[3] = T_meas;
        T_std = sqrt(cfg->T_noise_std_K * cfg->T_noise_std_K + cfg->T_floor_std_K * cfg->T_floor_std_K); /* math.hypot */
    }
    double x[N] = {x4[0], x4[1], x4[2], x4[3], UA0, 1.0, 1.0, l1, l2};
    memcpy(e->x, x, sizeof x);
    e->trust0[0] = l1;
    e->trust0[1] = l2;
    double c_total = x4[0] + x4[1] + x4[2];
    double sd[N] = {cfg->c_A0_rel_std * fmax(c_total, 1.0), cfg->c_BC0_std_mol_per_m3, cfg->c_BC0_std_mol_per_m3, T_std,
                    psd[0], psd[1], psd[2], psd[3], psd[4]};
    for (int i = 0; i < N; i++) e->P[i * N + i] = sd[i] * sd[i];
    e->h = 0.0;
    e->held_f1 = e->held_f2 = 1.0;
    e->mismatch = 0;
    e->t0 = e->t_filter = e->t_scan = t0;
    e->n_scans = 0;
    e->u = NAN;
    e->in_domain = 1;
    e->base_t = t0;
    memcpy(e->base_x, e->x, sizeof e->base_x);
    memcpy(e->base_P, e->P, sizeof e->base_P);
    e->base_h = 0.0;
    e->base_in = 1;
    scans_clear(e);
    e->y_prev = NAN;
    e->y_prev_t = t0;
    e->Tj_last = NAN;
    e->Tj_last_t = t0;
    e->warn_since = NAN;
    e->stuck_value = e->stuck_since = NAN;
    e->innov = 0.0;
    e->plan_end = NAN;
    e->t_forecast = -INFINITY;
    if (cfg->forecast_interval_s > 0.0 && plan_end == plan_end) e->plan_end = plan_end;
    refresh_output(e);
    return BT_EST_OK;
}

static int check_scan(bt_est *e, double t, double y, double uj)
{
    const bt_est_config *c = &e->cfg;
    if (!isfinite(t)) return fail(e, BT_EST_REFUSED, "t_s=%.17g: not a finite time", t);
    if (e->n_scans && !(t > e->t_scan))
        return fail(e, BT_EST_REFUSED, "t_s=%.17g: not after the previous scan at %.17g s", t, e->t_scan);
    if (t < e->t0) return fail(e, BT_EST_REFUSED, "t_s=%.17g: before the start of the batch at %.17g s", t, e->t0);
    if (!(c->T_sensor_min_K <= y && y <= c->T_sensor_max_K))
        return fail(e, BT_EST_REFUSED, "T_measured=%.17g: not finite or outside the sensor range (max %.17g K)", y,
                    c->T_sensor_max_K);
    if (!(c->T_sensor_min_K <= uj && uj <= c->T_sensor_max_K))
        return fail(e, BT_EST_REFUSED, "T_jacket=%.17g: not finite or outside the sensor range (max %.17g K)", uj,
                    c->T_sensor_max_K);
    return BT_EST_OK;
}

int bt_est_update(bt_est *e, double t, double y, double uj)
{
    int rc = check_scan(e, t, y, uj);
    if (rc != BT_EST_OK) return rc;
    health_reading(e, t, y);
    scans_add(e, t, y, uj);
    e->n_scans++;
    e->t_scan = t;
    if (t >= e->next_boundary && t > e->t_filter) {
        if ((rc = filter_step(e, t, 0, 0.0)) != BT_EST_OK) return rc;
        if ((rc = refresh_forecast(e, t)) != BT_EST_OK) return rc;
    }
    return BT_EST_OK;
}

int bt_est_predict(bt_est *e, double t, double uj)
{
    int rc = check_scan(e, t, e->cfg.T_sensor_min_K, uj);
    if (rc != BT_EST_OK) return rc;
    if (!(t > e->t_filter))
        return fail(e, BT_EST_REFUSED, "t_s=%.17g: not after the last filter step at %.17g s", t, e->t_filter);
    if (e->n_acc && e->t_scan > e->t_filter && (rc = filter_step(e, e->t_scan, 0, 0.0)) != BT_EST_OK) return rc;
    if ((rc = filter_step(e, t, 1, uj)) != BT_EST_OK) return rc;
    e->Tj_last = uj;
    e->Tj_last_t = t;
    e->n_scans++;
    e->t_scan = t;
    return refresh_forecast(e, t);
}

int bt_est_add_lab(bt_est *e, double ts, double cB, double cC)
{
    const bt_est_config *cfg = &e->cfg;
    const char *names[2] = {"lab_c_B", "lab_c_C"};
    double v[2] = {cB, cC};
    for (int i = 0; i < 2; i++) {
        char fmt[128];
        if (!isfinite(v[i])) {
            snprintf(fmt, sizeof fmt, "%s=%%.17g: not a finite number", names[i]);
            return fail(e, BT_EST_REFUSED, fmt, v[i]);
        }
        if (v[i] < 0.0) {
            snprintf(fmt, sizeof fmt, "%s=%%.17g: negative concentration", names[i]);
            return fail(e, BT_EST_REFUSED, fmt, v[i]);
        }
        if (v[i] > cfg->lab_max_mol_per_m3) {
            snprintf(fmt, sizeof fmt, "%s=%%.17g: above the assay range (%%.17g mol/m3)", names[i]);
            return fail(e, BT_EST_REFUSED, fmt, v[i], cfg->lab_max_mol_per_m3);
        }
    }
    if (!isfinite(ts)) return fail(e, BT_EST_REFUSED, "lab_sample_time=%.17g: not a finite time", ts);
    if (ts > e->t_scan)
        return fail(e, BT_EST_REFUSED, "lab_sample_time=%.17g: in the future (the estimator is at %.17g s)", ts, e->t_scan);
    if (ts < e->t0) return fail(e, BT_EST_REFUSED, "lab_sample_time=%.17g: before the batch started at %.17g s", ts, e->t0);
    int i = 0; /* bisect_left */
    while (i < e->n_lab_times && e->lab_times[i] < ts) i++;
    for (int j = i - 1; j <= i; j++)
        if (j >= 0 && j < e->n_lab_times && fabs(e->lab_times[j] - ts) <= 1e-6)
            return fail(e, BT_EST_REFUSED, "lab_sample_time=%.17g: duplicate: a result for this sample was already used", ts);
    if (ts < e->base_t)
        return fail(e, BT_EST_REFUSED,
                    "lab_sample_time=%.17g: older than the history window (%.17g s): cannot be re-processed", ts,
                    cfg->history_window_s);
    if (e->n_lab_times >= BT_EST_LABS)
        return fail(e, BT_EST_FULL, "more than %d lab assays in the batch", BT_EST_LABS);
    bt_lab lab = {ts, v[0], v[1], e->t_scan};
    int k = 0;
    if (!(ts > e->t_filter || e->n_records == 0)) {
        while (k < e->n_records && REC(e, k)->t < ts) k++; /* History.index */
        if (REC(e, k)->n_labs >= BT_EST_RECORD_LABS)
            return fail(e, BT_EST_FULL, "more than %d lab assays in one filter step", BT_EST_RECORD_LABS);
    } else if (e->n_pending >= BT_EST_PENDING) {
        return fail(e, BT_EST_FULL, "more than %d lab assays waiting for a filter step", BT_EST_PENDING);
    }
    memmove(&e->lab_times[i + 1], &e->lab_times[i], sizeof(double) * (size_t)(e->n_lab_times - i));
    e->lab_times[i] = ts;
    e->n_lab_times++;
    if (ts > e->t_filter || e->n_records == 0) {
        e->pending[e->n_pending++] = lab;
        return BT_EST_OK;
    }
    bt_record *r = REC(e, k);
    r->labs[r->n_labs++] = lab;
    sort_labs(r->labs, r->n_labs);
    /* History.rerun from the posterior before record k */
    double x[N], P[N * N], h;
    if (k == 0) {
        memcpy(x, e->base_x, sizeof x);
        memcpy(P, e->base_P, sizeof P);
        h = e->base_h;
    } else {
        const bt_record *p = REC(e, k - 1);
        memcpy(x, p->x, sizeof x);
        memcpy(P, p->P, sizeof P);
        h = p->h;
    }
    for (int j = k; j < e->n_records; j++) {
        double innov, S;
        int rc = run_record(e, REC(e, j), x, P, &h, FRESH_ONE, ts, &innov, &S);
        if (rc != BT_EST_OK) return rc;
    }
    check_trust(e, x, P);
    memcpy(REC(e, e->n_records - 1)->P, P, sizeof P);
    memcpy(e->x, x, sizeof x);
    memcpy(e->P, P, sizeof P);
    e->h = h;
    e->in_domain = REC(e, e->n_records - 1)->in_domain;
    refresh_output(e);
    return BT_EST_OK;
}

int bt_est_forecast_outputs(const bt_est *e, double out[3])
{
    out[0] = e->fc_t_stop;
    out[1] = e->fc_yield;
    out[2] = e->fc_impurity;
    return e->has_forecast;
}

/* SoftSensor._estimate: the posterior extrapolated to the scan time t. */
void bt_est_estimate(const bt_est *e, double t, bt_estimate *out)
{
    const double *a = e->xl, *dx = e->dx;
    double dt = t - e->t_filter;
    double x0 = a[0] + dx[0] * dt, x1 = a[1] + dx[1] * dt, x2 = a[2] + dx[2] * dt;
    out->t_s = t;
    out->x[0] = x0 > 0.0 ? x0 : 0.0;
    out->x[1] = x1 > 0.0 ? x1 : 0.0;
    out->x[2] = x2 > 0.0 ? x2 : 0.0;
    out->x[3] = a[3] + dx[3] * dt;
    for (int i = 4; i < N; i++) out->x[i] = a[i];
    memcpy(out->std, e->std, sizeof out->std);
    out->T_innovation_K = e->innov;
    out->nis = e->nis;
    out->health = health_level(e, e->in_domain);
    out->alarms = e->alarms;
    out->in_domain = e->in_domain;
    out->T_used = !(e->alarms & SENSOR_FAULTS);
}
