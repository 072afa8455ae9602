/* The learned rate correction of the native FMU (twin_correction.c); NULL in a physics-only build. */
#ifndef BT_TWIN_CORRECTION_H
#define BT_TWIN_CORRECTION_H

#include "twin_model.h"

extern bt_log_factors_fn *const bt_correction;

#endif
