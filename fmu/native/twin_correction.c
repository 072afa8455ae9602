/*
 * The learned correction's domain guard in C: ml_onnx/runtime.py (OnnxCorrection.factors) written
 * out. The model itself is bt_correction_model(), compiled from the FMU's correction.onnx to C by
 * emx-onnx-cgen at build time (fmu/native_build.py); its training domain (bounds and fade ramp
 * widths from the ONNX metadata, ml_onnx/contract.py) is in the generated batchtwin_native.h.
 *
 * Features are gathered from the raw vector (t_s, c_A, c_B, c_C, T), clipped to the domain, and the
 * model's log-factors are scaled by the smoothstep w(e) = 1 - 3e^2 + 2e^3 of the largest relative
 * excess e beyond a bound (0 from one ramp width on: no correction).
 */
#include "twin_correction.h"

#include "batchtwin_native.h"

#include <math.h>

#if BT_HAS_CORRECTION
void bt_correction_model(const double features[1][BT_N_FEATURES], double log_rate_factors[1][2]);

static void log_factors(double t_s, const double x[BT_NX], double g[2], int *in_domain)
{
    double raw[5] = {t_s, x[0], x[1], x[2], x[3]};
    double row[1][BT_N_FEATURES];
    double out[1][2];
    double excess = 0.0;
    for (int j = 0; j < BT_N_FEATURES; j++) {
        double v = raw[bt_feature_index[j]], e;
        double lo = bt_feature_lower[j], hi = bt_feature_upper[j];
        if (v < lo) {
            e = (lo - v) * (1.0 / bt_feature_ramp[j]);
            v = lo;
        } else if (v > hi) {
            e = (v - hi) * (1.0 / bt_feature_ramp[j]);
            v = hi;
        } else if (v == v) {
            e = 0.0;
        } else { /* a non-finite state: no correction can be told; NaN makes the step fail */
            g[0] = g[1] = NAN;
            *in_domain = 0;
            return;
        }
        if (e > excess) excess = e;
        row[0][j] = v;
    }
    if (excess == 0.0) {
        bt_correction_model((const double(*)[BT_N_FEATURES])row, out);
        g[0] = out[0][0];
        g[1] = out[0][1];
        *in_domain = 1;
        return;
    }
    *in_domain = 0;
    if (excess >= 1.0 || excess != excess) {
        g[0] = g[1] = 0.0;
        return;
    }
    bt_correction_model((const double(*)[BT_N_FEATURES])row, out);
    double w = 1.0 - excess * excess * (3.0 - 2.0 * excess);
    g[0] = w * out[0][0];
    g[1] = w * out[0][1];
}

bt_log_factors_fn *const bt_correction = log_factors;
#else
bt_log_factors_fn *const bt_correction = 0;
#endif
