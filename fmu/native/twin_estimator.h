/*
 * The soft sensor of the native FMU in C: twin_core/estimation/ (ekf.py, scans.py, history.py,
 * health.py, forecast.py and the per-scan path of sensor.py) written out with the same arithmetic
 * in the same order. tests/test_native_estimator.py runs a recorded batch through this code and
 * through twin_core's SoftSensor and checks estimates, standard deviations and health to <= 1e-9.
 *
 * Augmented state (n = 9, SI units): x = (c_A, c_B, c_C [mol/m3], T [K], UA_factor, k1_factor,
 * k2_factor, lambda_1, lambda_2 [1]). Everything lives in one fixed-size struct (no allocation),
 * so an FMU state is a copy of it (bt_est_pack: the used history slots only). Capacities are fixed (BT_EST_*); going past one is an error
 * with a message, never a silent change of the result.
 */
#ifndef BT_TWIN_ESTIMATOR_H
#define BT_TWIN_ESTIMATOR_H

#include "twin_model.h"

#include <stddef.h>

#define BT_NS 9
#define BT_EST_RECORDS 8192  /* filter steps in the history window: 540 at the default 10 s / 5400 s; open-loop
                                 steps (T_measured_valid false) are one each, so an outage at 1-s steps fills
                                 5400 (the slots are untouched memory until used; FMU states pack the used ones) */
#define BT_EST_RECORD_LABS 6 /* lab assays sampled within one filter step */
#define BT_EST_PENDING 16    /* assays waiting for the next filter step */
#define BT_EST_LABS 512      /* assays per batch (duplicate check) */
#define BT_EST_NIS 1024      /* temperature innovations in the health window */
#define BT_EST_LAB_WINDOW 16 /* lab_bias_window and lab_white_window at most (config.LAB_WINDOW_MAX) */
#define BT_EST_MSG 256

enum { BT_EST_OK = 0, BT_EST_REFUSED = 1, BT_EST_INTEGRATION = 2, BT_EST_FULL = 3 };
enum { BT_ALARM_MISMATCH = 1, BT_ALARM_STUCK = 2, BT_ALARM_DRIFT = 4, BT_ALARM_CORRECTION = 8 };

/* twin_core.estimation.config.SoftSensorConfig: the fields the estimator reads (defaults are
   generated from Python's into batchtwin_native.h, bt_est_default_config). */
typedef struct {
    double filter_interval_s, max_step_s, history_window_s, rtol;
    double T_noise_std_K, T_floor_std_K, T_sensor_lag_s, T_sensor_min_K, T_sensor_max_K;
    double lab_abs_std_mol_per_m3, lab_rel_std, lab_max_mol_per_m3;
    double rate_rel_std, rate_noise_time_s, correction_rel_std, T_process_std_K_per_sqrt_s;
    double UA_factor_walk_per_sqrt_s, k_factor_walk_per_sqrt_s, k_factor_walk_physics_per_sqrt_s;
    double trust_walk_per_sqrt_s, out_of_domain_noise_factor, mismatch_walk_factor;
    double c_A0_rel_std, c_BC0_std_mol_per_m3, T0_std_K, UA_factor0_std, k1_factor0_std, k2_factor0_std;
    double trust0_std, trust_min, trust_max, factor_min, factor_max;
    double huber_threshold, scan_jump_K, T_rate_max_K_per_s, lab_gate_nis;
    double nis_window_s, nis_clip, mismatch_persist_s, cusum_slack, cusum_threshold, cusum_clip;
    int lab_bias_window, lab_white_window;
    double lab_white_dead_zone;
    double trust_shift_min, trust_shift_z, rate_shift_min;
    double stuck_time_s;
    int stuck_min_readings;
    double stuck_tolerance_K;
    double forecast_interval_s, forecast_dt_s;
    /* chi-square bounds (twin_core.estimation.health, computed by the build for the default alphas) */
    double nis_bound_small[30]; /* _window_bound(nis_alpha, n) for n < 30 */
    double nis_z;               /* normal_quantile(1 - nis_alpha): Wilson-Hilferty from n = 30 */
    double lab_bias_bound;      /* chi2_quantile(1 - lab_bias_alpha, 2) */
    int lab_white_bounds[2 * BT_EST_LAB_WINDOW - 1]; /* health.runs_bound(m, lab_white_alpha) for m pairs */
} bt_est_config;

typedef struct {
    double sample_t, c_B, c_C, arrival_t;
} bt_lab;

/* history.Record: one filter step, what went in and the posterior that came out. */
typedef struct {
    double t_prev, t, u, z, R;
    int use_T, n_labs, in_domain;
    bt_lab labs[BT_EST_RECORD_LABS];
    double x[BT_NS], P[BT_NS * BT_NS], h;
} bt_record;

typedef struct {
    bt_est_config cfg;
    bt_coef coef;
    bt_params params;
    int has_correction;
    /* ekf.Ekf scratch */
    double held_f1, held_f2, dT_row[BT_NS], last_g[2], last_white[2];
    int mismatch;
    /* sensor.SoftSensor */
    double x[BT_NS], P[BT_NS * BT_NS], h;
    double t0, t_filter, t_scan, u, innov, trust0[2];
    long n_scans;
    int in_domain;
    double xl[BT_NS], dx[4], std[BT_NS], next_boundary;
    /* scans.ScanPool */
    double sw, swt, swtt, swy, swty, y_ref, Tj_int, Tj_last, Tj_last_t, y_prev, y_prev_t;
    long n_acc;
    /* history.History (records[first .. first + n_records - 1]) */
    double base_t, base_x[BT_NS], base_P[BT_NS * BT_NS], base_h;
    int base_in;
    int first, n_records, n_pending, n_lab_times;
    bt_record records[BT_EST_RECORDS];
    bt_lab pending[BT_EST_PENDING];
    double lab_times[BT_EST_LABS];
    /* health.ModelHealth */
    int alarms, lab_fail_run, lab_warning;
    double nis, warn_since;
    int nis_first, nis_n;
    long nis_adds;
    double nis_t[BT_EST_NIS], nis_v[BT_EST_NIS], nis_sum;
    int nis_failing;
    double cusum_pos, cusum_neg;
    double stuck_value, stuck_since;
    long stuck_count;
    double lb_e[BT_EST_LAB_WINDOW][2], lb_q;
    int lb_n, lb_first, lb_failing;
    long lb_count;
    double lw_e[BT_EST_LAB_WINDOW][2]; /* LabWhitenessTest */
    int lw_n, lw_first, lw_same, lw_pairs, lw_failing;
    int rate_prev; /* the rate-shift test held at the previous lab check */
    /* forecast (jacket held at its value, to plan_end) */
    double plan_end, t_forecast;
    int has_forecast;
    double fc_t_stop, fc_yield, fc_impurity;
    char msg[BT_EST_MSG];
} bt_est;

/* The soft sensor's output at one scan (state.Estimate, the fields the FMU publishes). */
typedef struct {
    double t_s, x[BT_NS], std[BT_NS], T_innovation_K, nis;
    int health, alarms, in_domain, T_used;
} bt_estimate;

void bt_est_default_config(bt_est_config *cfg);
/* SoftSensor(params, correction if has_correction, cfg).start(t0, T_measured_K=T_meas (NaN: the
   charge's T0), trust0=(l1, l2)); plan_end NaN: no automatic forecast, else set_plan(None, plan_end). */
int bt_est_start(bt_est *e, const bt_est_config *cfg, const bt_params *p, int has_correction, double t0,
                 double T_meas, double l1, double l2, double plan_end);
/* The same with factors0 = (UA0, 1, 1) and prior_std = prior_sd[5] (UA, k1, k2 factors, lambda_1,
   lambda_2; NULL: the configuration's), as SoftSensor.start(..., factors0=, prior_std=). */
int bt_est_start_prior(bt_est *e, const bt_est_config *cfg, const bt_params *p, int has_correction, double t0,
                       double T_meas, double l1, double l2, double plan_end, double UA0, const double *prior_sd);
int bt_est_update(bt_est *e, double t, double T_meas, double T_jacket);
int bt_est_predict(bt_est *e, double t, double T_jacket);
int bt_est_add_lab(bt_est *e, double sample_t, double c_B, double c_C);
void bt_est_estimate(const bt_est *e, double t, bt_estimate *out);
/* The last automatic forecast: (t_stop_opt [s], yield at it [1], impurity fraction there [1]);
   returns 0 while there is none yet. */
int bt_est_forecast_outputs(const bt_est *e, double out[3]);
/* An FMU state of the estimator: everything but the unused history slots, the records in order.
   bt_est_unpack returns 0 (and leaves e alone) when the bytes are not a packed estimator. */
size_t bt_est_packed_size(const bt_est *e);
void bt_est_pack(const bt_est *e, unsigned char *buf);
int bt_est_unpack(bt_est *e, const unsigned char *buf, size_t size);
/* For the tests: the covariance at the last filter step. */
const double *bt_est_covariance(const bt_est *e);
size_t bt_est_size(void);

#endif
