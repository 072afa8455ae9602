/* Open-loop forecast of the optimal stop (twin_forecast.c; fmu/forecast.py in Python). */
#ifndef BT_TWIN_FORECAST_H
#define BT_TWIN_FORECAST_H

#include "twin_model.h"

/* From state x0 at t_s [s] (integrator proposal h0), jacket held at ctx->T_jacket_K, to t_end_s:
   out = (t_stop_opt [s], c_B there [mol/m3], impurity fraction of C there [1]). BT_OK or an error
   code of bt_integrate (msg says why). */
int bt_forecast_stop(const bt_rhs_ctx *ctx, const bt_tolerance *tol, const double x0[BT_NX], double h0,
                     double t_s, double t_end_s, double out[3], char *msg, unsigned msg_len);

/* twin_core.analysis._refine_max: the maximum of samples (t, y) (n of them) refined around the
   interior index i (parabola, then Newton on the local quartic). */
void bt_refine_max(const double *t, const double *y, int n, int i, double *t_out, double *y_out);

#endif
