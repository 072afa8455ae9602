/*
 * Open-loop forecast of the batch in C: fmu/forecast.py (forecast_stop) and the optimal stop of
 * twin_core/analysis.py (optimal_stop, _refine_max, _local_poly) written out. The jacket is held at
 * its current value and the twin is stepped in coarse steps to the planned end of the batch; the
 * maximum of c_B is refined by Newton on a local quartic started from the parabola through three
 * samples. numpy's LAPACK solve of the 5x5 Vandermonde system is Gaussian elimination with partial
 * pivoting here: the forecast equals the Python one to rounding (tests: <= 1e-9 relative).
 */
#include "twin_forecast.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define FORECAST_STEP_S 600.0
#define MAX_FORECAST_STEPS 2000

static double impurity(const double x[BT_NX]) { return x[2] / (x[0] + x[1] + x[2]); }

/* np.polyval: Horner, highest power first. */
static double polyval(const double *p, int n, double s)
{
    double y = 0.0;
    for (int k = 0; k < n; k++) y = y * s + p[k];
    return y;
}

/* Solve A z = b (n <= 5) by Gaussian elimination with partial pivoting; returns 0 if singular. */
static int solve(int n, double A[5][5], double b[5], double z[5])
{
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int r = k + 1; r < n; r++)
            if (fabs(A[r][k]) > fabs(A[p][k])) p = r;
        if (A[p][k] == 0.0) return 0;
        if (p != k) {
            for (int c = 0; c < n; c++) {
                double tmp = A[k][c];
                A[k][c] = A[p][c];
                A[p][c] = tmp;
            }
            double tmp = b[k];
            b[k] = b[p];
            b[p] = tmp;
        }
        for (int r = k + 1; r < n; r++) {
            double f = A[r][k] / A[k][k];
            for (int c = k; c < n; c++) A[r][c] -= f * A[k][c];
            b[r] -= f * b[k];
        }
    }
    for (int k = n - 1; k >= 0; k--) {
        double s = b[k];
        for (int c = k + 1; c < n; c++) s -= A[k][c] * z[c];
        z[k] = s / A[k][k];
    }
    return 1;
}

/* twin_core.analysis._refine_max for an interior index i of samples (t, y), n of them. */
void bt_refine_max(const double *t, const double *y, int n, int i, double *t_out, double *y_out)
{
    double t0 = t[i - 1], t1 = t[i], t2 = t[i + 1];
    double y0 = y[i - 1], y1 = y[i], y2 = y[i + 1];
    double denom = (t0 - t1) * (t0 - t2) * (t1 - t2);
    double a = (t2 * (y1 - y0) + t1 * (y0 - y2) + t0 * (y2 - y1)) / denom;
    double b = (t2 * t2 * (y0 - y1) + t1 * t1 * (y2 - y0) + t0 * t0 * (y1 - y2)) / denom;
    if (a >= 0.0) {
        *t_out = t1;
        *y_out = y1;
        return;
    }
    double t_par = -b / (2.0 * a);
    if (n < 5) {
        *t_out = t_par;
        *y_out = y1 + a * (t_par * t_par - t1 * t1) + b * (t_par - t1);
        return;
    }
    /* _local_poly(t, y, i, 5): the quartic through five samples in s = (t - t_i) / dt. */
    int npts = 5;
    int lo = i - npts / 2 > 0 ? i - npts / 2 : 0;
    if (lo > n - npts) lo = n - npts;
    double dt = (t[i + 1 < n - 1 ? i + 1 : n - 1] - t[i - 1 > 0 ? i - 1 : 0]) / ((0 < i && i < n - 1) ? 2 : 1);
    double V[5][5], rhs[5], coef[5];
    for (int r = 0; r < npts; r++) {
        double s = (t[lo + r] - t[i]) / dt;
        double pw = 1.0;
        for (int c = npts - 1; c >= 0; c--) { /* np.vander: highest power first */
            V[r][c] = pw;
            pw *= s;
        }
        rhs[r] = y[lo + r] - y[i];
    }
    if (!solve(npts, V, rhs, coef)) {
        *t_out = t_par;
        *y_out = y1 + a * (t_par * t_par - t1 * t1) + b * (t_par - t1);
        return;
    }
    double d1[4], d2[3]; /* np.polyder once and twice (twice = once applied to once) */
    for (int k = 0; k < 4; k++) d1[k] = coef[k] * (double)(4 - k);
    for (int k = 0; k < 3; k++) d2[k] = d1[k] * (double)(3 - k);
    double tc = t[i];
    double s = (t_par - tc) / dt;
    double s_lo = (t[i - 1] - tc) / dt, s_hi = (t[i + 1] - tc) / dt;
    for (int it = 0; it < 20; it++) {
        double curv = polyval(d2, 3, s);
        if (!(curv < 0.0)) break;
        double step = polyval(d1, 4, s) / curv;
        s = s - step;
        s = s < s_lo ? s_lo : (s > s_hi ? s_hi : s);
        if (fabs(step) < 1e-13) break;
    }
    *t_out = tc + s * dt;
    *y_out = y[i] + polyval(coef, 5, s);
}

int bt_forecast_stop(const bt_rhs_ctx *ctx, const bt_tolerance *tol, const double x0[BT_NX], double h0,
                     double t_s, double t_end_s, double out[3], char *msg, unsigned msg_len)
{
    static const int NMAX = MAX_FORECAST_STEPS + 1;
    double times[MAX_FORECAST_STEPS + 1], cB[MAX_FORECAST_STEPS + 1];
    double xs[MAX_FORECAST_STEPS + 1][BT_NX];
    (void)NMAX;
    if (!(t_end_s > t_s)) {
        out[0] = t_s;
        out[1] = x0[1];
        out[2] = impurity(x0);
        return BT_OK;
    }
    double nn = ceil((t_end_s - t_s) / FORECAST_STEP_S);
    int n = nn < 2 ? 2 : (nn > MAX_FORECAST_STEPS ? MAX_FORECAST_STEPS : (int)nn);
    double dt = (t_end_s - t_s) / n;
    double x[BT_NX], h = h0;
    memcpy(x, x0, sizeof x);
    times[0] = t_s;
    memcpy(xs[0], x, sizeof x);
    int m = n + 1;
    for (int i = 0; i < n; i++) {
        double t = t_s + i * dt;
        int rc = bt_integrate(ctx, t, x, t + dt, tol, &h, NULL, msg, msg_len);
        if (rc != BT_OK) return rc;
        times[i + 1] = t_s + (i + 1) * dt;
        memcpy(xs[i + 1], x, sizeof x);
        /* c_B has passed its maximum once it falls for two samples in a row: stop early. */
        if (i >= 2 && xs[i + 1][1] < xs[i][1] && xs[i][1] < xs[i - 1][1]) {
            m = i + 2;
            break;
        }
    }
    for (int k = 0; k < m; k++) {
        for (int j = 0; j < BT_NX; j++) {
            if (!isfinite(xs[k][j])) {
                if (msg) snprintf(msg, msg_len, "forecast from t=%.17g s produced a non-finite state", t_s);
                return BT_UNDERFLOW;
            }
        }
        cB[k] = xs[k][1];
    }
    /* twin_core.analysis.optimal_stop: the first largest sample, refined when interior. */
    int imax = 0;
    for (int k = 1; k < m; k++)
        if (cB[k] > cB[imax]) imax = k;
    double t_stop, c_B;
    if (imax == 0 || imax == m - 1) {
        t_stop = times[imax];
        c_B = cB[imax];
    } else {
        bt_refine_max(times, cB, m, imax, &t_stop, &c_B);
    }
    /* np.interp of every state component at t_stop. */
    double xst[BT_NX];
    int k = 0;
    while (k < m - 2 && !(t_stop < times[k + 1])) k++;
    for (int j = 0; j < BT_NX; j++) {
        if (t_stop <= times[0]) xst[j] = xs[0][j];
        else if (t_stop >= times[m - 1]) xst[j] = xs[m - 1][j];
        else {
            double slope = (xs[k + 1][j] - xs[k][j]) / (times[k + 1] - times[k]);
            xst[j] = slope * (t_stop - times[k]) + xs[k][j];
        }
    }
    out[0] = t_stop;
    out[1] = c_B;
    out[2] = impurity(xst);
    return BT_OK;
}
