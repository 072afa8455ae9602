/*
 * Python bridge of the BatchReactorTwin FMU: implements the FMI 2.0 co-simulation calls on top of
 * the Python slave (fmu/slave.py), which runs twin_core.
 *
 * Loaded by loader.c after libpython is globally visible; compiled against the Python headers of
 * the build interpreter and deliberately NOT linked to libpython (its symbols resolve to whatever
 * copy the process has: the host's own interpreter, or the one the loader dlopened).
 *
 * Design (docs/fmu.md):
 *  - One interpreter per process, started here if the process has none, and never finalised:
 *    numpy/onnxruntime extension modules cannot survive Py_Finalize + Py_Initialize (the cause of
 *    pythonfmu's second-run crash in Simulink, issue #222), and finalising at library unload
 *    crashes hosts that unload FMUs late.
 *  - One Python thread state per host thread, created the first time the thread calls in and kept,
 *    so later calls only take and release the GIL.
 *  - Values live in two buffers owned by the slave (array('d') for Real, array('i') for Integer and
 *    Boolean plus the life-cycle mode); fmi2Get* read and fmi2Set* validate and write them here,
 *    without the GIL. Python runs only for life-cycle calls, doStep and FMU states.
 *  - Errors are translated once: the slave returns an FMI status and queues its message; an
 *    unexpected Python exception becomes fmi2Error with the formatted traceback as message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchtwin.h"

#define BT_EXPORT __attribute__((visibility("default")))

enum { MODE_INSTANTIATED = 0, MODE_INITIALIZATION = 1, MODE_STEP = 2, MODE_TERMINATED = 3 };

typedef struct {
    PyObject *slave;
    PyObject *log_queue;
    PyObject *m_setup, *m_enter, *m_exit, *m_step, *m_terminate, *m_reset, *m_refresh;
    PyObject *m_get_state, *m_set_state, *m_serialize, *m_deserialize;
    PyObject *real_obj, *int_obj;
    Py_buffer real_view, int_view;
    double *real;
    int *ints;
    size_t nvr;
    size_t mode_slot;
    char *kinds;      /* 'R', 'I', 'B' per value reference */
    char *causality;  /* 'p', 'i', 'o', 'l' per value reference */
    double *lo, *hi;  /* accepted range per value reference */
    int *gate;        /* per value reference: the Boolean parameter whose mode uses it, or -1 */
    char **names;
    fmi2CallbackFunctions cb;
    char *instance_name;
    int logging_on;
    double last_successful_time;
    PyObject *ser_state, *ser_bytes; /* last serialised state, kept for fmi2SerializeFMUstate */
} Instance;

static PyObject *g_load = NULL; /* Python function loading the slave class of this build */

/* ---------------------------------------------------------------------------------------------- */
/* GIL: one thread state per host thread, kept for the life of the process                          */

static PyGILState_STATE gil_acquire(void)
{
    if (PyGILState_GetThisThreadState() == NULL) {
        /* A thread Python has never seen: give it a thread state that outlives this call (a
           PyGILState_Ensure nobody releases), then drop the GIL; later calls only swap the GIL. */
        (void)PyGILState_Ensure();
        (void)PyEval_SaveThread();
    }
    return PyGILState_Ensure();
}

static void gil_release(PyGILState_STATE s) { PyGILState_Release(s); }

/* ---------------------------------------------------------------------------------------------- */
/* Logging through the host's callback                                                              */

static void emit(Instance *inst, fmi2Status status, const char *category, const char *msg)
{
    if (inst->cb.logger == NULL) return;
    if (status == fmi2OK && !inst->logging_on) return;
    /* The FMI logger takes a printf format: escape '%' so messages print verbatim. */
    size_t n = strlen(msg), extra = 0;
    for (size_t i = 0; i < n; i++) extra += msg[i] == '%';
    char *buf = malloc(n + extra + 1);
    if (buf == NULL) return;
    char *o = buf;
    for (size_t i = 0; i < n; i++) {
        *o++ = msg[i];
        if (msg[i] == '%') *o++ = '%';
    }
    *o = '\0';
    inst->cb.logger(inst->cb.componentEnvironment, inst->instance_name, status, category, buf);
    free(buf);
}

static void logf_(Instance *inst, fmi2Status status, const char *fmt, ...)
{
    char msg[12288];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emit(inst, status, status == fmi2Error ? "logStatusError" : (status == fmi2Discard ? "logStatusDiscard" : "logAll"), msg);
}

/* Forward the messages the slave queued (pythonfmu LogMsg objects). GIL held. */
static void drain_log(Instance *inst)
{
    Py_ssize_t n = PyList_GET_SIZE(inst->log_queue);
    if (n == 0) return;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *m = PyList_GET_ITEM(inst->log_queue, i);
        PyObject *st = PyObject_GetAttrString(m, "status");
        PyObject *cat = PyObject_GetAttrString(m, "category");
        PyObject *txt = PyObject_GetAttrString(m, "msg");
        long status = st ? PyLong_AsLong(st) : (long)fmi2Error;
        const char *c = (cat && PyUnicode_Check(cat)) ? PyUnicode_AsUTF8(cat) : "logAll";
        const char *t = (txt && PyUnicode_Check(txt)) ? PyUnicode_AsUTF8(txt) : "(unreadable message)";
        if (PyErr_Occurred()) PyErr_Clear();
        emit(inst, (fmi2Status)status, c ? c : "logAll", t ? t : "(unreadable message)");
        Py_XDECREF(st);
        Py_XDECREF(cat);
        Py_XDECREF(txt);
    }
    PyList_SetSlice(inst->log_queue, 0, n, NULL);
}

/* The pending Python exception as text (traceback included). GIL held; clears the exception. */
static void exception_text(char *out, size_t len)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    snprintf(out, len, "unknown Python error");
    PyObject *mod = PyImport_ImportModule("traceback");
    PyObject *lines = mod ? PyObject_CallMethod(mod, "format_exception", "OOO", type ? type : Py_None,
                                                value ? value : Py_None, tb ? tb : Py_None) : NULL;
    PyObject *sep = PyUnicode_FromString("");
    PyObject *joined = (lines && sep) ? PyUnicode_Join(sep, lines) : NULL;
    const char *s = joined ? PyUnicode_AsUTF8(joined) : NULL;
    if (s != NULL) {
        snprintf(out, len, "%s", s);
    } else if (value != NULL) {
        PyErr_Clear();
        PyObject *str = PyObject_Str(value);
        const char *v = str ? PyUnicode_AsUTF8(str) : NULL;
        if (v) snprintf(out, len, "%s", v);
        Py_XDECREF(str);
    }
    PyErr_Clear();
    Py_XDECREF(joined);
    Py_XDECREF(sep);
    Py_XDECREF(lines);
    Py_XDECREF(mod);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* Status of a slave call that returned an int status (or raised). GIL held; steals result. */
static fmi2Status status_of(Instance *inst, PyObject *result, const char *what)
{
    fmi2Status status;
    if (result == NULL) {
        char msg[8192];
        exception_text(msg, sizeof msg);
        drain_log(inst);
        logf_(inst, fmi2Error, "%s: internal error in the Python slave: %s", what, msg);
        return fmi2Error;
    }
    long s = PyLong_AsLong(result);
    Py_DECREF(result);
    if (s == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        logf_(inst, fmi2Error, "%s: the Python slave returned no status", what);
        status = fmi2Error;
    } else {
        status = (fmi2Status)s;
    }
    drain_log(inst);
    return status;
}

static fmi2Status call0(Instance *inst, PyObject *method, const char *what)
{
    PyGILState_STATE g = gil_acquire();
    fmi2Status s = status_of(inst, PyObject_CallNoArgs(method), what);
    gil_release(g);
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* Interpreter start                                                                                */

static const char BOOTSTRAP[] =
    "import importlib, importlib.util, os, sys\n"
    "def load(package, package_dir, module, class_name):\n"
    "    # The build's own top-level package (unique name per build: two builds never share modules)\n"
    "    mod = sys.modules.get(package)\n"
    "    old = list(getattr(mod, '__path__', None) or [package_dir])[0]\n"
    "    if mod is not None and old != package_dir and not os.path.isdir(old):\n"
    "        # Same build, unpacked again elsewhere and the first folder is gone: import from here.\n"
    "        for name, m in list(sys.modules.items()):\n"
    "            if (name == package or name.startswith(package + '.')) and getattr(m, '__path__', None):\n"
    "                m.__path__ = [q.replace(old, package_dir, 1) for q in m.__path__]\n"
    "    if package not in sys.modules:\n"
    "        spec = importlib.util.spec_from_file_location(package, package_dir + '/__init__.py',\n"
    "                                                      submodule_search_locations=[package_dir])\n"
    "        mod = importlib.util.module_from_spec(spec)\n"
    "        sys.modules[package] = mod\n"
    "        try:\n"
    "            spec.loader.exec_module(mod)\n"
    "        except BaseException:\n"
    "            del sys.modules[package]\n"
    "            raise\n"
    "    return getattr(importlib.import_module(module), class_name)\n"
    "def add_site_dirs(dirs, executable):\n"
    "    import site\n"
    "    for d in dirs.split(':'):\n"
    "        if d:\n"
    "            site.addsitedir(d)\n"
    "    if executable:\n"
    "        sys.executable = executable\n";

BT_EXPORT int bt_init(const bt_config *cfg, char *err, size_t err_len)
{
    int started_here = 0;
    if (!Py_IsInitialized()) {
        PyConfig config;
        /* Isolated: PYTHONPATH, PYTHONHOME and user site-packages of the host's environment must not
           change what the FMU runs. No signal handlers: Ctrl-C belongs to the host. */
        PyConfig_InitIsolatedConfig(&config);
        config.install_signal_handlers = 0;
        config.site_import = 0;
        config.write_bytecode = 0;
        config.parse_argv = 0;
        PyStatus st = PyConfig_SetBytesString(&config, &config.program_name, "BatchReactorTwin-fmu");
        if (!PyStatus_Exception(st) && cfg->python_home && cfg->python_home[0])
            st = PyConfig_SetBytesString(&config, &config.home, cfg->python_home);
        if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(st)) {
            snprintf(err, err_len, "cannot start Python (home '%s'): %s%s%s", cfg->python_home,
                     st.func ? st.func : "", st.func ? ": " : "", st.err_msg ? st.err_msg : "unknown error");
            return -1;
        }
        started_here = 1;
    }
    PyGILState_STATE g = started_here ? PyGILState_UNLOCKED : gil_acquire();
    int rc = 0;
    if (g_load == NULL) {
        PyObject *globals = PyDict_New();
        PyObject *r = globals ? (PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()),
                                 PyRun_String(BOOTSTRAP, Py_file_input, globals, globals))
                              : NULL;
        PyObject *sites = r ? PyDict_GetItemString(globals, "add_site_dirs") : NULL;
        PyObject *done = NULL;
        if (sites != NULL && started_here)
            done = PyObject_CallFunction(sites, "ss", cfg->site_dirs ? cfg->site_dirs : "",
                                         cfg->executable ? cfg->executable : "");
        if (r == NULL || sites == NULL || (started_here && done == NULL)) {
            char msg[4096];
            exception_text(msg, sizeof msg);
            snprintf(err, err_len, "cannot prepare the Python environment: %s", msg);
            rc = -1;
        } else {
            g_load = PyDict_GetItemString(globals, "load");
            Py_XINCREF(g_load);
        }
        Py_XDECREF(done);
        Py_XDECREF(r);
        Py_XDECREF(globals);
    }
    if (started_here) {
        /* Keep the main thread state forever and let other threads in: the interpreter is never
           finalised (see the file comment). */
        (void)PyEval_SaveThread();
    } else {
        gil_release(g);
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Instances                                                                                        */

static void free_instance(Instance *inst)
{
    if (inst == NULL) return;
    if (inst->real_view.obj) PyBuffer_Release(&inst->real_view);
    if (inst->int_view.obj) PyBuffer_Release(&inst->int_view);
    Py_XDECREF(inst->ser_state);
    Py_XDECREF(inst->ser_bytes);
    Py_XDECREF(inst->m_setup);
    Py_XDECREF(inst->m_enter);
    Py_XDECREF(inst->m_exit);
    Py_XDECREF(inst->m_step);
    Py_XDECREF(inst->m_terminate);
    Py_XDECREF(inst->m_reset);
    Py_XDECREF(inst->m_refresh);
    Py_XDECREF(inst->m_get_state);
    Py_XDECREF(inst->m_set_state);
    Py_XDECREF(inst->m_serialize);
    Py_XDECREF(inst->m_deserialize);
    Py_XDECREF(inst->real_obj);
    Py_XDECREF(inst->int_obj);
    Py_XDECREF(inst->log_queue);
    Py_XDECREF(inst->slave);
    if (inst->names) {
        for (size_t i = 0; i < inst->nvr; i++) free(inst->names[i]);
        free(inst->names);
    }
    free(inst->kinds);
    free(inst->causality);
    free(inst->lo);
    free(inst->hi);
    free(inst->gate);
    free(inst->instance_name);
    free(inst);
}

/* Copy the slave's variable layout (see BatchReactorTwin._fmi_layout). GIL held. */
static int read_layout(Instance *inst, char *err, size_t err_len)
{
    PyObject *layout = PyObject_CallMethod(inst->slave, "_fmi_layout", NULL);
    if (layout == NULL) return -1;
    int rc = -1;
    PyObject *real, *ints, *kinds, *caus, *lo, *hi, *names, *gates;
    Py_ssize_t mode_slot;
    if (!PyArg_ParseTuple(layout, "OOSSOOO!nO", &real, &ints, &kinds, &caus, &lo, &hi, &PyList_Type, &names,
                          &mode_slot, &gates))
        goto done;
    size_t n = (size_t)PyBytes_GET_SIZE(kinds);
    inst->nvr = n;
    inst->mode_slot = (size_t)mode_slot;
    if ((size_t)PyBytes_GET_SIZE(caus) != n || (size_t)PyList_GET_SIZE(names) != n || mode_slot < (Py_ssize_t)n) {
        snprintf(err, err_len, "inconsistent variable layout");
        goto done;
    }
    if (PyObject_GetBuffer(real, &inst->real_view, PyBUF_WRITABLE) < 0) goto done;
    if (PyObject_GetBuffer(ints, &inst->int_view, PyBUF_WRITABLE) < 0) goto done;
    if ((size_t)inst->real_view.len < n * sizeof(double) ||
        (size_t)inst->int_view.len < (size_t)(mode_slot + 1) * sizeof(int)) {
        snprintf(err, err_len, "value buffers too small for %zu variables", n);
        goto done;
    }
    inst->real = inst->real_view.buf;
    inst->ints = inst->int_view.buf;
    Py_INCREF(real);
    inst->real_obj = real;
    Py_INCREF(ints);
    inst->int_obj = ints;
    inst->kinds = malloc(n);
    inst->causality = malloc(n);
    inst->lo = malloc(n * sizeof(double));
    inst->hi = malloc(n * sizeof(double));
    inst->gate = malloc(n * sizeof(int));
    inst->names = calloc(n, sizeof(char *));
    if (!inst->kinds || !inst->causality || !inst->lo || !inst->hi || !inst->gate || !inst->names) {
        snprintf(err, err_len, "out of memory");
        goto done;
    }
    memcpy(inst->kinds, PyBytes_AS_STRING(kinds), n);
    memcpy(inst->causality, PyBytes_AS_STRING(caus), n);
    Py_buffer v;
    if (PyObject_GetBuffer(lo, &v, PyBUF_SIMPLE) < 0) goto done;
    if ((size_t)v.len != n * sizeof(double)) {
        PyBuffer_Release(&v);
        snprintf(err, err_len, "min array has the wrong size");
        goto done;
    }
    memcpy(inst->lo, v.buf, v.len);
    PyBuffer_Release(&v);
    if (PyObject_GetBuffer(hi, &v, PyBUF_SIMPLE) < 0) goto done;
    if ((size_t)v.len != n * sizeof(double)) {
        PyBuffer_Release(&v);
        snprintf(err, err_len, "max array has the wrong size");
        goto done;
    }
    memcpy(inst->hi, v.buf, v.len);
    PyBuffer_Release(&v);
    if (PyObject_GetBuffer(gates, &v, PyBUF_SIMPLE) < 0) goto done;
    if ((size_t)v.len != n * sizeof(int)) {
        PyBuffer_Release(&v);
        snprintf(err, err_len, "gate array has the wrong size");
        goto done;
    }
    memcpy(inst->gate, v.buf, v.len);
    PyBuffer_Release(&v);
    for (size_t i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8(PyList_GET_ITEM(names, i));
        if (s == NULL) goto done;
        inst->names[i] = strdup(s);
    }
    rc = 0;
done:
    Py_DECREF(layout);
    return rc;
}

static PyObject *method(Instance *inst, const char *name)
{
    return PyObject_GetAttrString(inst->slave, name);
}

BT_EXPORT fmi2Component bt_fmi2Instantiate(fmi2String instanceName, fmi2Type fmuType, fmi2String fmuGUID,
                                           fmi2String fmuResourceLocation,
                                           const fmi2CallbackFunctions *functions, fmi2Boolean visible,
                                           fmi2Boolean loggingOn, const bt_config *cfg)
{
    (void)fmuGUID;
    (void)fmuResourceLocation;
    Instance *inst = calloc(1, sizeof(Instance));
    if (inst == NULL) return NULL;
    if (functions) inst->cb = *functions;
    inst->instance_name = strdup(instanceName ? instanceName : "");
    inst->logging_on = loggingOn;
    if (fmuType != fmi2CoSimulation) {
        logf_(inst, fmi2Error, "fmi2Instantiate: this FMU supports co-simulation only");
        free_instance(inst);
        return NULL;
    }
    PyGILState_STATE g = gil_acquire();
    char err[8192] = "";
    char package_dir[4096];
    snprintf(package_dir, sizeof package_dir, "%s/%s", cfg->resources_dir, cfg->package);
    PyObject *cls = g_load ? PyObject_CallFunction(g_load, "ssss", cfg->package, package_dir, cfg->module,
                                                   cfg->class_name)
                           : NULL;
    if (cls != NULL) {
        PyObject *args = PyTuple_New(0);
        PyObject *kwargs = Py_BuildValue("{s:s,s:s,s:O}", "instance_name", inst->instance_name, "resources",
                                         cfg->resources_dir, "visible", visible ? Py_True : Py_False);
        inst->slave = (args && kwargs) ? PyObject_Call(cls, args, kwargs) : NULL;
        Py_XDECREF(args);
        Py_XDECREF(kwargs);
        Py_DECREF(cls);
    }
    if (inst->slave != NULL) inst->log_queue = PyObject_GetAttrString(inst->slave, "log_queue");
    if (inst->log_queue != NULL && !PyList_Check(inst->log_queue)) {
        Py_CLEAR(inst->log_queue);
        snprintf(err, sizeof err, "the slave's log_queue is not a list");
    }
    if (inst->log_queue != NULL && read_layout(inst, err, sizeof err) == 0) {
        inst->m_setup = method(inst, "_fmi_setup_experiment");
        inst->m_enter = method(inst, "_fmi_enter_init");
        inst->m_exit = method(inst, "_fmi_exit_init");
        inst->m_step = method(inst, "_fmi_do_step");
        inst->m_terminate = method(inst, "_fmi_terminate");
        inst->m_reset = method(inst, "_fmi_reset");
        inst->m_refresh = method(inst, "_fmi_refresh_outputs");
        inst->m_get_state = method(inst, "_fmi_get_state");
        inst->m_set_state = method(inst, "_fmi_set_state");
        inst->m_serialize = method(inst, "_fmi_serialize");
        inst->m_deserialize = method(inst, "_fmi_deserialize");
    }
    int ok = inst->m_deserialize != NULL && !PyErr_Occurred();
    if (!ok) {
        if (PyErr_Occurred()) exception_text(err, sizeof err);
        logf_(inst, fmi2Error, "fmi2Instantiate: cannot create the Python slave %s.%s: %s", cfg->module,
              cfg->class_name, err[0] ? err : "unknown error");
        free_instance(inst);
        gil_release(g);
        return NULL;
    }
    drain_log(inst);
    inst->last_successful_time = 0.0;
    gil_release(g);
    return inst;
}

BT_EXPORT void bt_fmi2FreeInstance(fmi2Component c)
{
    if (c == NULL) return;
    PyGILState_STATE g = gil_acquire();
    free_instance((Instance *)c);
    gil_release(g);
}

/* ---------------------------------------------------------------------------------------------- */
/* Life cycle                                                                                       */

BT_EXPORT fmi2Status bt_fmi2SetDebugLogging(fmi2Component c, fmi2Boolean on, size_t n, const fmi2String cat[])
{
    (void)n;
    (void)cat;
    ((Instance *)c)->logging_on = on;
    return fmi2OK;
}

BT_EXPORT fmi2Status bt_fmi2SetupExperiment(fmi2Component c, fmi2Boolean td, fmi2Real tol, fmi2Real t0,
                                            fmi2Boolean sd, fmi2Real t1)
{
    (void)sd;
    (void)t1;
    Instance *inst = c;
    PyGILState_STATE g = gil_acquire();
    fmi2Status s = status_of(inst, PyObject_CallFunction(inst->m_setup, "dOd", t0, td ? Py_True : Py_False, tol),
                             "fmi2SetupExperiment");
    if (s == fmi2OK) inst->last_successful_time = t0;
    gil_release(g);
    return s;
}

BT_EXPORT fmi2Status bt_fmi2EnterInitializationMode(fmi2Component c)
{
    return call0(c, ((Instance *)c)->m_enter, "fmi2EnterInitializationMode");
}

BT_EXPORT fmi2Status bt_fmi2ExitInitializationMode(fmi2Component c)
{
    return call0(c, ((Instance *)c)->m_exit, "fmi2ExitInitializationMode");
}

BT_EXPORT fmi2Status bt_fmi2Terminate(fmi2Component c)
{
    return call0(c, ((Instance *)c)->m_terminate, "fmi2Terminate");
}

BT_EXPORT fmi2Status bt_fmi2Reset(fmi2Component c)
{
    return call0(c, ((Instance *)c)->m_reset, "fmi2Reset");
}

BT_EXPORT fmi2Status bt_fmi2DoStep(fmi2Component c, fmi2Real t, fmi2Real h, fmi2Boolean noSet)
{
    (void)noSet;
    Instance *inst = c;
    PyGILState_STATE g = gil_acquire();
    PyObject *args[2] = {PyFloat_FromDouble(t), PyFloat_FromDouble(h)};
    PyObject *r = (args[0] && args[1]) ? PyObject_Vectorcall(inst->m_step, args, 2, NULL) : NULL;
    Py_XDECREF(args[0]);
    Py_XDECREF(args[1]);
    fmi2Status s = status_of(inst, r, "fmi2DoStep");
    gil_release(g);
    if (s == fmi2OK) inst->last_successful_time = t + h;
    return s;
}

BT_EXPORT fmi2Status bt_fmi2CancelStep(fmi2Component c)
{
    logf_(c, fmi2Error, "fmi2CancelStep: doStep always completes synchronously; nothing to cancel");
    return fmi2Error;
}

/* ---------------------------------------------------------------------------------------------- */
/* Values: served from the slave's buffers without entering Python                                  */

static int mode_of(const Instance *inst) { return inst->ints[inst->mode_slot]; }

static fmi2Status check_vr(Instance *inst, const char *fn, fmi2ValueReference vr, char kind)
{
    if (vr >= inst->nvr) {
        logf_(inst, fmi2Error, "%s: unknown value reference %u", fn, vr);
        return fmi2Error;
    }
    if (inst->kinds[vr] != kind) {
        logf_(inst, fmi2Error, "%s: variable %s (value reference %u) is not of this type", fn, inst->names[vr], vr);
        return fmi2Error;
    }
    return fmi2OK;
}

/* Outputs during initialization mode follow the parameters set so far: ask the slave. */
static fmi2Status refresh_if_initializing(Instance *inst)
{
    if (mode_of(inst) != MODE_INITIALIZATION) return fmi2OK;
    return call0(inst, inst->m_refresh, "refresh outputs");
}

BT_EXPORT fmi2Status bt_fmi2GetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Real v[])
{
    Instance *inst = c;
    if (refresh_if_initializing(inst) > fmi2Warning) return fmi2Error;
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2GetReal", vr[i], 'R') != fmi2OK) return fmi2Error;
        v[i] = inst->real[vr[i]];
    }
    return fmi2OK;
}

static fmi2Status get_int(Instance *inst, const char *fn, char kind, const fmi2ValueReference vr[], size_t n,
                          int v[])
{
    if (refresh_if_initializing(inst) > fmi2Warning) return fmi2Error;
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, fn, vr[i], kind) != fmi2OK) return fmi2Error;
        v[i] = inst->ints[vr[i]];
    }
    return fmi2OK;
}

BT_EXPORT fmi2Status bt_fmi2GetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Integer v[])
{
    return get_int(c, "fmi2GetInteger", 'I', vr, n, v);
}

BT_EXPORT fmi2Status bt_fmi2GetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Boolean v[])
{
    return get_int(c, "fmi2GetBoolean", 'B', vr, n, v);
}

BT_EXPORT fmi2Status bt_fmi2GetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2String v[])
{
    (void)v;
    if (n == 0) return fmi2OK;
    logf_(c, fmi2Error, "fmi2GetString: unknown value reference %u (this FMU has no String variables)", vr[0]);
    return fmi2Error;
}

/* May variable vr be set in the current mode? (FMI 2.0: parameters until initialization ends,
   inputs until terminate.) */
static fmi2Status check_settable(Instance *inst, const char *fn, fmi2ValueReference vr)
{
    int mode = mode_of(inst);
    char c = inst->causality[vr];
    int ok = (c == 'p' && (mode == MODE_INSTANTIATED || mode == MODE_INITIALIZATION)) ||
             (c == 'i' && mode != MODE_TERMINATED);
    if (ok) return fmi2OK;
    static const char *modes[] = {"instantiated", "initialization", "step", "terminated"};
    logf_(inst, fmi2Error, "%s: %s cannot be set in %s mode (it is %s)", fn, inst->names[vr],
          (mode >= 0 && mode <= 3) ? modes[mode] : "unknown",
          c == 'p' ? "a fixed parameter" : (c == 'o' ? "an output" : "not settable"));
    return fmi2Error;
}

static fmi2Status check_range(Instance *inst, const char *fn, fmi2ValueReference vr, double x)
{
    if (isnan(x) || isinf(x)) {
        logf_(inst, fmi2Error, "%s: %s=%g refused: must be finite", fn, inst->names[vr], x);
        return fmi2Error;
    }
    /* An input of a mode that is off (fmu.variables.MODE_GATES) is accepted and ignored; its range is
       checked when exitInitializationMode turns the mode on. */
    int g = inst->gate[vr];
    if (g >= 0 && !inst->ints[g]) return fmi2OK;
    if (x < inst->lo[vr] || x > inst->hi[vr]) {
        logf_(inst, fmi2Error, "%s: %s=%.17g refused: outside [%.17g, %.17g]", fn, inst->names[vr], x, inst->lo[vr],
              inst->hi[vr]);
        return fmi2Error;
    }
    return fmi2OK;
}

BT_EXPORT fmi2Status bt_fmi2SetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Real v[])
{
    Instance *inst = c;
    /* All or nothing: nothing is written unless every value is acceptable. */
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2SetReal", vr[i], 'R') != fmi2OK || check_settable(inst, "fmi2SetReal", vr[i]) != fmi2OK ||
            check_range(inst, "fmi2SetReal", vr[i], v[i]) != fmi2OK)
            return fmi2Error;
    }
    for (size_t i = 0; i < n; i++) inst->real[vr[i]] = v[i];
    return fmi2OK;
}

BT_EXPORT fmi2Status bt_fmi2SetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer v[])
{
    Instance *inst = c;
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2SetInteger", vr[i], 'I') != fmi2OK ||
            check_settable(inst, "fmi2SetInteger", vr[i]) != fmi2OK ||
            check_range(inst, "fmi2SetInteger", vr[i], (double)v[i]) != fmi2OK)
            return fmi2Error;
    }
    for (size_t i = 0; i < n; i++) inst->ints[vr[i]] = v[i];
    return fmi2OK;
}

BT_EXPORT fmi2Status bt_fmi2SetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Boolean v[])
{
    Instance *inst = c;
    for (size_t i = 0; i < n; i++) {
        if (check_vr(inst, "fmi2SetBoolean", vr[i], 'B') != fmi2OK ||
            check_settable(inst, "fmi2SetBoolean", vr[i]) != fmi2OK)
            return fmi2Error;
    }
    for (size_t i = 0; i < n; i++) inst->ints[vr[i]] = v[i] ? 1 : 0;
    return fmi2OK;
}

BT_EXPORT fmi2Status bt_fmi2SetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2String v[])
{
    (void)v;
    if (n == 0) return fmi2OK;
    logf_(c, fmi2Error, "fmi2SetString: unknown value reference %u (this FMU has no String variables)", vr[0]);
    return fmi2Error;
}

/* ---------------------------------------------------------------------------------------------- */
/* FMU state: an fmi2FMUstate is a reference to the slave's Snapshot object                         */

BT_EXPORT fmi2Status bt_fmi2GetFMUstate(fmi2Component c, fmi2FMUstate *s)
{
    Instance *inst = c;
    PyGILState_STATE g = gil_acquire();
    PyObject *snap = PyObject_CallNoArgs(inst->m_get_state);
    fmi2Status st = fmi2OK;
    if (snap == NULL) {
        st = status_of(inst, NULL, "fmi2GetFMUstate");
    } else {
        Py_XDECREF((PyObject *)*s); /* FMI: a non-NULL *s is overwritten */
        *s = snap;
        drain_log(inst);
    }
    gil_release(g);
    return st;
}

BT_EXPORT fmi2Status bt_fmi2SetFMUstate(fmi2Component c, fmi2FMUstate s)
{
    Instance *inst = c;
    if (s == NULL) {
        logf_(inst, fmi2Error, "fmi2SetFMUstate: NULL state");
        return fmi2Error;
    }
    PyGILState_STATE g = gil_acquire();
    fmi2Status st = status_of(inst, PyObject_CallOneArg(inst->m_set_state, (PyObject *)s), "fmi2SetFMUstate");
    gil_release(g);
    return st;
}

BT_EXPORT fmi2Status bt_fmi2FreeFMUstate(fmi2Component c, fmi2FMUstate *s)
{
    Instance *inst = c;
    if (s == NULL || *s == NULL) return fmi2OK;
    PyGILState_STATE g = gil_acquire();
    if (inst->ser_state == *s) {
        Py_CLEAR(inst->ser_state);
        Py_CLEAR(inst->ser_bytes);
    }
    Py_DECREF((PyObject *)*s);
    *s = NULL;
    gil_release(g);
    return fmi2OK;
}

/* Serialise into the cache (GIL held). */
static fmi2Status serialize(Instance *inst, fmi2FMUstate s, const char *fn)
{
    if (inst->ser_state == s && inst->ser_bytes != NULL) return fmi2OK;
    PyObject *b = PyObject_CallOneArg(inst->m_serialize, (PyObject *)s);
    if (b == Py_None) { /* refused, the slave logged why */
        Py_DECREF(b);
        drain_log(inst);
        return fmi2Error;
    }
    if (b == NULL || !PyBytes_Check(b)) {
        Py_XDECREF(b);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "serializer did not return bytes");
        return status_of(inst, NULL, fn);
    }
    Py_XDECREF(inst->ser_state);
    Py_XDECREF(inst->ser_bytes);
    Py_INCREF((PyObject *)s);
    inst->ser_state = s;
    inst->ser_bytes = b;
    return fmi2OK;
}

BT_EXPORT fmi2Status bt_fmi2SerializedFMUstateSize(fmi2Component c, fmi2FMUstate s, size_t *size)
{
    Instance *inst = c;
    if (s == NULL) {
        logf_(inst, fmi2Error, "fmi2SerializedFMUstateSize: NULL state");
        return fmi2Error;
    }
    PyGILState_STATE g = gil_acquire();
    fmi2Status st = serialize(inst, s, "fmi2SerializedFMUstateSize");
    if (st == fmi2OK) *size = (size_t)PyBytes_GET_SIZE(inst->ser_bytes);
    gil_release(g);
    return st;
}

BT_EXPORT fmi2Status bt_fmi2SerializeFMUstate(fmi2Component c, fmi2FMUstate s, fmi2Byte b[], size_t size)
{
    Instance *inst = c;
    if (s == NULL) {
        logf_(inst, fmi2Error, "fmi2SerializeFMUstate: NULL state");
        return fmi2Error;
    }
    PyGILState_STATE g = gil_acquire();
    fmi2Status st = serialize(inst, s, "fmi2SerializeFMUstate");
    if (st == fmi2OK) {
        size_t need = (size_t)PyBytes_GET_SIZE(inst->ser_bytes);
        if (size < need) {
            logf_(inst, fmi2Error, "fmi2SerializeFMUstate: buffer of %zu bytes, the state needs %zu", size, need);
            st = fmi2Error;
        } else {
            memcpy(b, PyBytes_AS_STRING(inst->ser_bytes), need);
        }
    }
    gil_release(g);
    return st;
}

BT_EXPORT fmi2Status bt_fmi2DeSerializeFMUstate(fmi2Component c, const fmi2Byte b[], size_t size, fmi2FMUstate *s)
{
    Instance *inst = c;
    PyGILState_STATE g = gil_acquire();
    fmi2Status st = fmi2OK;
    PyObject *bytes = PyBytes_FromStringAndSize(b, (Py_ssize_t)size);
    PyObject *snap = bytes ? PyObject_CallOneArg(inst->m_deserialize, bytes) : NULL;
    Py_XDECREF(bytes);
    if (snap == NULL) {
        st = status_of(inst, NULL, "fmi2DeSerializeFMUstate");
    } else if (snap == Py_None) { /* not a state of this FMU: the slave logged why */
        Py_DECREF(snap);
        drain_log(inst);
        st = fmi2Error;
    } else {
        Py_XDECREF((PyObject *)*s);
        *s = snap;
        drain_log(inst);
    }
    gil_release(g);
    return st;
}

/* ---------------------------------------------------------------------------------------------- */
/* Not supported (declared so in modelDescription.xml) and status inquiries                         */

BT_EXPORT fmi2Status bt_fmi2GetDirectionalDerivative(fmi2Component c, const fmi2ValueReference u[], size_t nu,
                                                     const fmi2ValueReference z[], size_t nz, const fmi2Real du[],
                                                     fmi2Real dz[])
{
    (void)u, (void)nu, (void)z, (void)nz, (void)du, (void)dz;
    logf_(c, fmi2Error, "fmi2GetDirectionalDerivative: not provided (providesDirectionalDerivative=false)");
    return fmi2Error;
}

BT_EXPORT fmi2Status bt_fmi2SetRealInputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                                                    const fmi2Integer order[], const fmi2Real v[])
{
    (void)vr, (void)n, (void)order, (void)v;
    logf_(c, fmi2Error, "fmi2SetRealInputDerivatives: inputs are held over a step (canInterpolateInputs=false)");
    return fmi2Error;
}

BT_EXPORT fmi2Status bt_fmi2GetRealOutputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n,
                                                     const fmi2Integer order[], fmi2Real v[])
{
    (void)vr, (void)n, (void)order, (void)v;
    logf_(c, fmi2Error, "fmi2GetRealOutputDerivatives: not provided (maxOutputDerivativeOrder=0)");
    return fmi2Error;
}

BT_EXPORT fmi2Status bt_fmi2GetStatus(fmi2Component c, const fmi2StatusKind k, fmi2Status *v)
{
    (void)v;
    logf_(c, fmi2Error, "fmi2GetStatus(%d): doStep is synchronous, there is no pending status", (int)k);
    return fmi2Error;
}

BT_EXPORT fmi2Status bt_fmi2GetRealStatus(fmi2Component c, const fmi2StatusKind k, fmi2Real *v)
{
    Instance *inst = c;
    if (k == fmi2LastSuccessfulTime) {
        *v = inst->last_successful_time;
        return fmi2OK;
    }
    logf_(inst, fmi2Error, "fmi2GetRealStatus(%d): only fmi2LastSuccessfulTime is available", (int)k);
    return fmi2Error;
}

BT_EXPORT fmi2Status bt_fmi2GetIntegerStatus(fmi2Component c, const fmi2StatusKind k, fmi2Integer *v)
{
    (void)v;
    logf_(c, fmi2Error, "fmi2GetIntegerStatus(%d): no integer status", (int)k);
    return fmi2Error;
}

BT_EXPORT fmi2Status bt_fmi2GetBooleanStatus(fmi2Component c, const fmi2StatusKind k, fmi2Boolean *v)
{
    if (k == fmi2Terminated) {
        /* The FMU never asks the master to stop: a discarded step leaves it able to continue. */
        *v = fmi2False;
        return fmi2OK;
    }
    logf_(c, fmi2Error, "fmi2GetBooleanStatus(%d): only fmi2Terminated is available", (int)k);
    return fmi2Error;
}

BT_EXPORT fmi2Status bt_fmi2GetStringStatus(fmi2Component c, const fmi2StatusKind k, fmi2String *v)
{
    (void)v;
    logf_(c, fmi2Error, "fmi2GetStringStatus(%d): no string status", (int)k);
    return fmi2Error;
}
