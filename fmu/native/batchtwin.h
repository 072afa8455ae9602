/*
 * Interface between the FMU's native loader (loader.c, the FMU binary BatchReactorTwin.so) and its
 * Python bridge (bridge.c, batchtwin_bridge_<build>.so).
 *
 * The loader has no dependency on libpython: it finds the Python environment, makes libpython
 * globally visible and only then dlopens the bridge, which uses the CPython API directly. The bridge
 * exports one function per FMI call, named "bt_" + the FMI name, with the FMI signature, except
 * bt_fmi2Instantiate which also receives the build's configuration.
 */
#ifndef BATCHTWIN_H
#define BATCHTWIN_H

#include "fmi2FunctionTypes.h"

#define BT_API_VERSION 1

/* Build configuration, read by the loader from resources/batchtwin.cfg (see fmu/build.py). */
typedef struct {
    const char *resources_dir; /* file-system path of the FMU's resources folder, no trailing '/' */
    const char *package;       /* top-level Python package unique to this build: batchtwin_<build id> */
    const char *module;        /* module holding the slave class, e.g. batchtwin_<id>.fmu.slave */
    const char *class_name;    /* the Fmi2Slave subclass */
    const char *python_home;   /* prefix of the Python installation ("" = leave to Python) */
    const char *site_dirs;     /* ':'-separated site-packages folders added with site.addsitedir */
    const char *executable;    /* value for sys.executable ("" = leave) */
} bt_config;

/* Start (or join) the interpreter. Returns 0 on success, else writes a message into err. */
typedef int bt_initTYPE(const bt_config *cfg, char *err, size_t err_len);

typedef fmi2Component bt_instantiateTYPE(fmi2String instanceName, fmi2Type fmuType, fmi2String fmuGUID,
                                         fmi2String fmuResourceLocation,
                                         const fmi2CallbackFunctions *functions, fmi2Boolean visible,
                                         fmi2Boolean loggingOn, const bt_config *cfg);

/* Every FMI 2.0 co-simulation call that takes an instance, forwarded by the loader as is. */
#define BT_FORWARDED_CALLS(X)                                                                              \
    X(fmi2SetDebugLogging, (fmi2Component c, fmi2Boolean on, size_t n, const fmi2String cat[]), (c, on, n, cat)) \
    X(fmi2SetupExperiment, (fmi2Component c, fmi2Boolean td, fmi2Real tol, fmi2Real t0, fmi2Boolean sd, fmi2Real t1), \
      (c, td, tol, t0, sd, t1))                                                                            \
    X(fmi2EnterInitializationMode, (fmi2Component c), (c))                                                 \
    X(fmi2ExitInitializationMode, (fmi2Component c), (c))                                                  \
    X(fmi2Terminate, (fmi2Component c), (c))                                                               \
    X(fmi2Reset, (fmi2Component c), (c))                                                                   \
    X(fmi2GetReal, (fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Real v[]), (c, vr, n, v)) \
    X(fmi2GetInteger, (fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Integer v[]), (c, vr, n, v)) \
    X(fmi2GetBoolean, (fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Boolean v[]), (c, vr, n, v)) \
    X(fmi2GetString, (fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2String v[]), (c, vr, n, v)) \
    X(fmi2SetReal, (fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Real v[]), (c, vr, n, v)) \
    X(fmi2SetInteger, (fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer v[]), (c, vr, n, v)) \
    X(fmi2SetBoolean, (fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Boolean v[]), (c, vr, n, v)) \
    X(fmi2SetString, (fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2String v[]), (c, vr, n, v)) \
    X(fmi2GetFMUstate, (fmi2Component c, fmi2FMUstate *s), (c, s))                                       \
    X(fmi2SetFMUstate, (fmi2Component c, fmi2FMUstate s), (c, s))                                         \
    X(fmi2FreeFMUstate, (fmi2Component c, fmi2FMUstate *s), (c, s))                                       \
    X(fmi2SerializedFMUstateSize, (fmi2Component c, fmi2FMUstate s, size_t *size), (c, s, size))          \
    X(fmi2SerializeFMUstate, (fmi2Component c, fmi2FMUstate s, fmi2Byte b[], size_t size), (c, s, b, size)) \
    X(fmi2DeSerializeFMUstate, (fmi2Component c, const fmi2Byte b[], size_t size, fmi2FMUstate *s), (c, b, size, s)) \
    X(fmi2GetDirectionalDerivative, (fmi2Component c, const fmi2ValueReference u[], size_t nu,             \
      const fmi2ValueReference z[], size_t nz, const fmi2Real du[], fmi2Real dz[]), (c, u, nu, z, nz, du, dz)) \
    X(fmi2SetRealInputDerivatives, (fmi2Component c, const fmi2ValueReference vr[], size_t n,             \
      const fmi2Integer order[], const fmi2Real v[]), (c, vr, n, order, v))                               \
    X(fmi2GetRealOutputDerivatives, (fmi2Component c, const fmi2ValueReference vr[], size_t n,            \
      const fmi2Integer order[], fmi2Real v[]), (c, vr, n, order, v))                                     \
    X(fmi2DoStep, (fmi2Component c, fmi2Real t, fmi2Real h, fmi2Boolean noSet), (c, t, h, noSet))          \
    X(fmi2CancelStep, (fmi2Component c), (c))                                                              \
    X(fmi2GetStatus, (fmi2Component c, const fmi2StatusKind k, fmi2Status *v), (c, k, v))                 \
    X(fmi2GetRealStatus, (fmi2Component c, const fmi2StatusKind k, fmi2Real *v), (c, k, v))               \
    X(fmi2GetIntegerStatus, (fmi2Component c, const fmi2StatusKind k, fmi2Integer *v), (c, k, v))         \
    X(fmi2GetBooleanStatus, (fmi2Component c, const fmi2StatusKind k, fmi2Boolean *v), (c, k, v))         \
    X(fmi2GetStringStatus, (fmi2Component c, const fmi2StatusKind k, fmi2String *v), (c, k, v))

#endif
