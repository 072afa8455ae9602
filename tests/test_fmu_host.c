/*
 * A minimal FMI 2.0 co-simulation master in plain C, compiled by tests/test_fmu_c_host.py against the
 * FMI headers that ship with FMPy and run with an empty environment (no LD_PRELOAD, no PYTHONPATH).
 *
 *   host FMU_DIR MODEL_IDENTIFIER GUID OUT.csv [options]
 *     --stop T          stop time [s] (default 3600)
 *     --dt DT           communication step [s] (default 60)
 *     --in VR           value reference of T_jacket
 *     --out VR,VR,...   value references recorded in the CSV
 *     --step T:U0:U1    T_jacket = U0 before T, U1 from T on (like FMPy's input table with a step)
 *     --set VR=VALUE    set a Real parameter before initialisation (repeatable)
 *     --setb VR=0|1     set a Boolean parameter before initialisation (repeatable)
 *     --instances N     N instances stepped in lockstep; instance k gets U1 + 5 k (rows tagged)
 *     --threads         step each instance in its own thread
 *     --reload          after the run free everything, dlclose, dlopen again and run once more
 *     --state-check T   at time T get+serialize the state, finish, deserialize+set, redo the rest
 *                       and exit 3 unless both continuations are bit-identical
 *     --bad VR=VALUE    at the first step try to set VALUE (expect fmi2Error), then carry on
 *     --inputs FILE     more inputs per step: lines "T R|B VR VALUE", applied (sorted by T) before the
 *                       step that starts at time T (the soft-sensor readings of a recorded batch)
 *     --bench N         time N fmi2DoStep, fmi2GetReal and fmi2SetReal calls (printed as "bench ...")
 *     --cpu-time        time --bench and the run (run_ns=) with the thread's CPU clock, not the wall clock
 *     --second D|MI|G   also load a second FMU (unpacked in D) into this process and step one instance
 *                       of it in lockstep with the first, same inputs (rows tagged 1)
 *
 * Time is handled as FMPy does: next = start + (n+1)*dt, h = next - time.
 *
 * Portable to Windows: compiled with mingw-w64 (x86_64-w64-mingw32-gcc ... -static) it loads
 * binaries/win64/<id>.dll and runs under Wine (tests/test_native_fmu.py).
 */
#define _GNU_SOURCE
#ifdef _WIN32
#include <stdio.h>
#include <windows.h>
#define RTLD_NOW 0
#define RTLD_LOCAL 0
#define dlopen(path, flags) ((void *)LoadLibraryA(path))
#define dlsym(lib, name) ((void *)GetProcAddress((HMODULE)(lib), name))
#define dlclose(lib) (FreeLibrary((HMODULE)(lib)) ? 0 : 1)
static const char *dlerror(void)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "Windows error %lu", (unsigned long)GetLastError());
    return buf;
}
#define BT_PLATFORM "win64"
#define BT_LIB_EXT ".dll"
#else
#include <dlfcn.h>
#define BT_PLATFORM "linux64"
#define BT_LIB_EXT ".so"
#endif
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fmi2Functions.h"

#define MAXV 64
#define MAXI 64

typedef struct {
    void *lib;
    fmi2InstantiateTYPE *instantiate;
    fmi2FreeInstanceTYPE *freeInstance;
    fmi2SetupExperimentTYPE *setupExperiment;
    fmi2EnterInitializationModeTYPE *enterInit;
    fmi2ExitInitializationModeTYPE *exitInit;
    fmi2TerminateTYPE *terminate;
    fmi2DoStepTYPE *doStep;
    fmi2GetRealTYPE *getReal;
    fmi2SetRealTYPE *setReal;
    fmi2SetBooleanTYPE *setBoolean;
    fmi2GetFMUstateTYPE *getState;
    fmi2SetFMUstateTYPE *setState;
    fmi2FreeFMUstateTYPE *freeState;
    fmi2SerializedFMUstateSizeTYPE *stateSize;
    fmi2SerializeFMUstateTYPE *serialize;
    fmi2DeSerializeFMUstateTYPE *deserialize;
} Api;

static Api apis[2];
static const char *g_dirs[2], *g_mis[2], *g_guids[2];
static int g_second = 0;
static double g_stop = 3600, g_dt = 60, g_ts = 1e300, g_u0 = 298.15, g_u1 = 298.15, g_state_t = -1;
static fmi2ValueReference g_in = 0, g_out[MAXV];
static size_t g_nout = 0;
static int g_instances = 1, g_threads = 0, g_reload = 0, g_bench = 0;
static fmi2ValueReference g_set_vr[MAXV], g_bad_vr = 0;
static double g_set_val[MAXV], g_bad_val = 0;
static int g_nset = 0, g_has_bad = 0, g_nsetb = 0;
static fmi2ValueReference g_setb_vr[MAXV];
static fmi2Boolean g_setb_val[MAXV];
static int g_errors_logged = 0;

typedef struct {
    double t, value;
    char kind; /* 'R' or 'B' */
    fmi2ValueReference vr;
} TimedInput;
static TimedInput *g_inputs = NULL;
static size_t g_ninputs = 0;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void logger(fmi2ComponentEnvironment env, fmi2String name, fmi2Status status, fmi2String category,
                   fmi2String message, ...)
{
    (void)env;
    char buf[8192];
    va_list ap;
    va_start(ap, message);
    vsnprintf(buf, sizeof buf, message, ap);
    va_end(ap);
    if (status >= fmi2Error) __atomic_add_fetch(&g_errors_logged, 1, __ATOMIC_SEQ_CST);
    fprintf(stderr, "[%s] status=%d category=%s: %s\n", name, (int)status, category ? category : "", buf);
}

static const fmi2CallbackFunctions callbacks = {logger, calloc, free, NULL, NULL};

static void *sym(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (p == NULL) die("missing symbol %s", name);
    return p;
}

static void load(int i)
{
    char path[4096];
    Api *a = &apis[i];
    snprintf(path, sizeof path, "%s/binaries/" BT_PLATFORM "/%s" BT_LIB_EXT, g_dirs[i], g_mis[i]);
    a->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (a->lib == NULL) die("dlopen %s: %s", path, dlerror());
#define api (*a)
#define sym(name) sym(a->lib, name)
    api.instantiate = sym("fmi2Instantiate");
    api.freeInstance = sym("fmi2FreeInstance");
    api.setupExperiment = sym("fmi2SetupExperiment");
    api.enterInit = sym("fmi2EnterInitializationMode");
    api.exitInit = sym("fmi2ExitInitializationMode");
    api.terminate = sym("fmi2Terminate");
    api.doStep = sym("fmi2DoStep");
    api.getReal = sym("fmi2GetReal");
    api.setReal = sym("fmi2SetReal");
    api.setBoolean = sym("fmi2SetBoolean");
    api.getState = sym("fmi2GetFMUstate");
    api.setState = sym("fmi2SetFMUstate");
    api.freeState = sym("fmi2FreeFMUstate");
    api.stateSize = sym("fmi2SerializedFMUstateSize");
    api.serialize = sym("fmi2SerializeFMUstate");
    api.deserialize = sym("fmi2DeSerializeFMUstate");
#undef sym
#undef api
}

static void check(fmi2Status s, const char *what)
{
    if (s != fmi2OK) die("%s returned status %d", what, (int)s);
}

static double u_of(int k, double t) { return t >= g_ts ? g_u1 + 5.0 * k : g_u0; }

static long rss_kb(void)
{
#ifdef _WIN32
    return 0; /* not measured on Windows */
#endif
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
#ifdef _SC_PAGESIZE
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
#else
    return resident * 4;
#endif
}

static int g_cpu_clock = 0; /* --cpu-time: time with this thread's CPU clock (robust to a loaded machine) */

static double now_ns(void)
{
    struct timespec ts;
#ifdef CLOCK_THREAD_CPUTIME_ID
    clock_gettime(g_cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

typedef struct {
    int k;       /* row tag */
    int input_k; /* instance k gets T_jacket U1 + 5 input_k after the step */
    Api *api;
    fmi2Component c;
    double *rows; /* (nsteps + 1) x (1 + nout) */
    int nrows;
} Run;

static int n_steps_total(void)
{
    int n = 0;
    double time = 0.0;
    while (!(time > g_stop || time == g_stop || (g_stop - time) < 1e-9 * g_stop)) {
        time = 0.0 + (n + 1) * g_dt;
        n++;
    }
    return n;
}

static int cmp_input(const void *a, const void *b)
{
    double x = ((const TimedInput *)a)->t, y = ((const TimedInput *)b)->t;
    return x < y ? -1 : (x > y ? 1 : 0);
}

static void load_inputs(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) die("cannot read %s", path);
    size_t cap = 1024;
    g_inputs = malloc(cap * sizeof *g_inputs);
    TimedInput in;
    unsigned vr;
    char kind;
    int got;
    while ((got = fscanf(f, "%lf %c %u %lf", &in.t, &kind, &vr, &in.value)) == 4) {
        if (kind != 'R' && kind != 'B') die("--inputs: kind must be R or B, got %c", kind);
        in.kind = kind;
        in.vr = (fmi2ValueReference)vr;
        if (g_ninputs == cap) g_inputs = realloc(g_inputs, (cap *= 2) * sizeof *g_inputs);
        g_inputs[g_ninputs++] = in;
    }
    if (got != EOF) die("--inputs %s: line %zu is not \"T R|B VR VALUE\"", path, g_ninputs + 1);
    fclose(f);
    qsort(g_inputs, g_ninputs, sizeof *g_inputs, cmp_input); /* stable enough: one value per (t, vr) */
}

/* The --inputs rows of the step starting at time (exact times: the file is written with %.17g). */
static void apply_inputs(Api *a, fmi2Component c, double time)
{
    size_t lo = 0, hi = g_ninputs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g_inputs[mid].t < time) lo = mid + 1;
        else hi = mid;
    }
    for (size_t i = lo; i < g_ninputs && g_inputs[i].t == time; i++) {
        if (g_inputs[i].kind == 'R') {
            check(a->setReal(c, &g_inputs[i].vr, 1, &g_inputs[i].value), "fmi2SetReal(--inputs)");
        } else {
            fmi2Boolean b = g_inputs[i].value != 0.0;
            check(a->setBoolean(c, &g_inputs[i].vr, 1, &b), "fmi2SetBoolean(--inputs)");
        }
    }
}

static void record(Run *r, double t)
{
    double *row = r->rows + (size_t)r->nrows * (1 + g_nout);
    row[0] = t;
    check(r->api->getReal(r->c, g_out, g_nout, row + 1), "fmi2GetReal");
    r->nrows++;
}

static fmi2Component make_instance(Api *a, int which, int k)
{
#define api (*a)
    char name[64], uri[4200];
    snprintf(name, sizeof name, "twin%d", k);
    snprintf(uri, sizeof uri, "file://%s/resources", g_dirs[which]);
    fmi2Component c = api.instantiate(name, fmi2CoSimulation, g_guids[which], uri, &callbacks, fmi2False, fmi2False);
    if (c == NULL) die("fmi2Instantiate failed");
    check(api.setupExperiment(c, fmi2False, 0.0, 0.0, fmi2False, 0.0), "fmi2SetupExperiment");
    for (int i = 0; i < g_nset; i++) check(api.setReal(c, &g_set_vr[i], 1, &g_set_val[i]), "fmi2SetReal(parameter)");
    for (int i = 0; i < g_nsetb; i++)
        check(api.setBoolean(c, &g_setb_vr[i], 1, &g_setb_val[i]), "fmi2SetBoolean(parameter)");
    check(api.enterInit(c), "fmi2EnterInitializationMode");
    double u = u_of(k, 0.0);
    check(api.setReal(c, &g_in, 1, &u), "fmi2SetReal(T_jacket)");
    if (g_ninputs && g_inputs[0].t < 0.0) apply_inputs(a, c, g_inputs[0].t); /* T < 0: before initialisation ends */
    check(api.exitInit(c), "fmi2ExitInitializationMode");
    return c;
#undef api
}

/* Steps n_from .. n_to-1 of run r (time handled like FMPy). */
static void steps(Run *r, int n_from, int n_to)
{
#define api (*r->api)
    double time = n_from == 0 ? 0.0 : 0.0 + n_from * g_dt;
    for (int n = n_from; n < n_to; n++) {
        double next = 0.0 + (n + 1) * g_dt;
        if (next > g_stop) next = g_stop;
        double u = u_of(r->input_k, time);
        if (g_has_bad && n == 0) {
            double bad = g_bad_val;
            fmi2Status s = api.setReal(r->c, &g_bad_vr, 1, &bad);
            printf("bad status=%d\n", (int)s);
            if (s != fmi2Error) die("a bad value was accepted (status %d)", (int)s);
        }
        check(api.setReal(r->c, &g_in, 1, &u), "fmi2SetReal(T_jacket)");
        if (g_ninputs) apply_inputs(&api, r->c, time);
        fmi2Status st = api.doStep(r->c, time, next - time, fmi2True);
        if (st != fmi2OK && !(st == fmi2Warning && g_ninputs)) die("fmi2DoStep returned status %d", (int)st);
        time = next;
        record(r, time);
    }
#undef api
}

static void *thread_main(void *arg)
{
    Run *r = arg;
    steps(r, 0, n_steps_total());
    return NULL;
}

static void write_csv(const char *path, Run *runs, int n, const char *mode)
{
    FILE *f = fopen(path, mode);
    if (f == NULL) die("cannot write %s", path);
    for (int k = 0; k < n; k++)
        for (int i = 0; i < runs[k].nrows; i++) {
            double *row = runs[k].rows + (size_t)i * (1 + g_nout);
            fprintf(f, "%d", k);
            for (size_t j = 0; j <= g_nout; j++) fprintf(f, ",%.17g", row[j]);
            fputc('\n', f);
        }
    fclose(f);
}

static void bench(Api *a, fmi2Component c)
{
#define api (*a)
    int n = g_bench;
    double u = g_u0, out[MAXV];
    double t0 = now_ns();
    double time = 0.0;
    for (int i = 0; i < n; i++) {
        double next = 0.0 + (i + 1) * 1.0;
        if (g_ninputs) apply_inputs(a, c, time); /* --inputs: the readings of each step (soft-sensor mode) */
        api.doStep(c, time, next - time, fmi2True);
        time = next;
    }
    double t1 = now_ns();
    for (int i = 0; i < n; i++) api.getReal(c, g_out, g_nout, out);
    double t2 = now_ns();
    for (int i = 0; i < n; i++) api.setReal(c, &g_in, 1, &u);
    double t3 = now_ns();
    for (int i = 0; i < n; i++) api.getReal(c, g_out, 1, out);
    double t4 = now_ns();
    /* A round trip into Python with almost nothing to do there: fmi2GetReal of an output during
       initialization mode asks the slave to refresh its outputs from the parameters. */
    char uri[4200];
    snprintf(uri, sizeof uri, "file://%s/resources", g_dirs[0]);
    fmi2Component c2 = api.instantiate("roundtrip", fmi2CoSimulation, g_guids[0], uri, &callbacks, fmi2False, fmi2False);
    if (c2 == NULL) die("fmi2Instantiate failed");
    check(api.setupExperiment(c2, fmi2False, 0.0, 0.0, fmi2False, 0.0), "fmi2SetupExperiment");
    check(api.enterInit(c2), "fmi2EnterInitializationMode");
    double t5 = now_ns();
    for (int i = 0; i < n; i++) api.getReal(c2, g_out, 1, out);
    double t6 = now_ns();
    api.freeInstance(c2);
    printf("bench do_step_ns=%.1f get_real_%zu_ns=%.1f set_real_ns=%.1f get_real_1_ns=%.1f python_roundtrip_ns=%.1f\n",
           (t1 - t0) / n, g_nout, (t2 - t1) / n, (t3 - t2) / n, (t4 - t3) / n, (t6 - t5) / n);
#undef api
}

static int state_check(Run *r, int nsteps)
{
#define api (*r->api)
    int n_mid = (int)(g_state_t / g_dt);
    steps(r, 0, n_mid);
    fmi2FMUstate s = NULL;
    check(api.getState(r->c, &s), "fmi2GetFMUstate");
    size_t size = 0;
    check(api.stateSize(r->c, s, &size), "fmi2SerializedFMUstateSize");
    fmi2Byte *bytes = malloc(size);
    check(api.serialize(r->c, s, bytes, size), "fmi2SerializeFMUstate");
    check(api.freeState(r->c, &s), "fmi2FreeFMUstate");
    int rows_mid = r->nrows;
    steps(r, n_mid, nsteps);
    size_t width = 1 + g_nout, tail = (size_t)(r->nrows - rows_mid) * width;
    double *first = malloc(tail * sizeof(double));
    memcpy(first, r->rows + (size_t)rows_mid * width, tail * sizeof(double));
    fmi2FMUstate s2 = NULL;
    check(api.deserialize(r->c, bytes, size, &s2), "fmi2DeSerializeFMUstate");
    check(api.setState(r->c, s2), "fmi2SetFMUstate");
    check(api.freeState(r->c, &s2), "fmi2FreeFMUstate");
    r->nrows = rows_mid;
    steps(r, n_mid, nsteps);
    int same = memcmp(first, r->rows + (size_t)rows_mid * width, tail * sizeof(double)) == 0;
    printf("state bytes=%zu identical=%d\n", size, same);
    free(first);
    free(bytes);
    return same ? 0 : 3;
#undef api
}

static int run_once(const char *csv, const char *mode)
{
    int nsteps = n_steps_total();
    Run runs[MAXI];
    long rss0 = rss_kb(), rss1 = 0;
    int n_inst = g_instances + g_second;
    for (int k = 0; k < n_inst; k++) {
        int which = (g_second && k == n_inst - 1) ? 1 : 0;
        runs[k].k = k;
        runs[k].input_k = which ? 0 : k;
        runs[k].api = &apis[which];
        runs[k].c = make_instance(runs[k].api, which, k);
        runs[k].rows = malloc((size_t)(nsteps + 1) * (1 + g_nout) * sizeof(double));
        runs[k].nrows = 0;
        record(&runs[k], 0.0);
        if (k == 0) rss1 = rss_kb();
    }
    long rssN = rss_kb();
    printf("rss_kb before=%ld one=%ld all=%ld instances=%d\n", rss0, rss1, rssN, g_instances);
    int rc = 0;
    if (g_bench) {
        bench(runs[0].api, runs[0].c);
    } else if (g_state_t >= 0) {
        rc = state_check(&runs[0], nsteps);
    } else if (g_threads && n_inst > 1) {
        pthread_t th[MAXI];
        for (int k = 0; k < n_inst; k++) pthread_create(&th[k], NULL, thread_main, &runs[k]);
        for (int k = 0; k < n_inst; k++) pthread_join(th[k], NULL);
    } else {
        double t0 = now_ns();
        for (int n = 0; n < nsteps; n++)
            for (int k = 0; k < n_inst; k++) steps(&runs[k], n, n + 1);
        printf("run_ns=%.0f steps=%d instances=%d\n", now_ns() - t0, nsteps, n_inst); /* CSV written after */
    }
    printf("rss_kb after_run=%ld instances=%d\n", rss_kb(), n_inst);
    if (!g_bench) write_csv(csv, runs, n_inst, mode);
    for (int k = 0; k < n_inst; k++) {
        check(runs[k].api->terminate(runs[k].c), "fmi2Terminate");
        runs[k].api->freeInstance(runs[k].c);
        free(runs[k].rows);
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 5) die("usage: host FMU_DIR MODEL_IDENTIFIER GUID OUT.csv [options]");
    g_dirs[0] = argv[1];
    g_mis[0] = argv[2];
    g_guids[0] = argv[3];
    const char *csv = argv[4];
    for (int i = 5; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--stop")) g_stop = atof(v), i++;
        else if (!strcmp(a, "--dt")) g_dt = atof(v), i++;
        else if (!strcmp(a, "--in")) g_in = (fmi2ValueReference)atoi(v), i++;
        else if (!strcmp(a, "--out")) {
            char *copy = strdup(v), *tok, *save = NULL;
            for (tok = strtok_r(copy, ",", &save); tok && g_nout < MAXV; tok = strtok_r(NULL, ",", &save))
                g_out[g_nout++] = (fmi2ValueReference)atoi(tok);
            free(copy);
            i++;
        } else if (!strcmp(a, "--step")) {
            if (sscanf(v, "%lf:%lf:%lf", &g_ts, &g_u0, &g_u1) != 3) die("bad --step %s", v);
            i++;
        } else if (!strcmp(a, "--set")) {
            unsigned vr;
            double val;
            if (sscanf(v, "%u=%lf", &vr, &val) != 2 || g_nset >= MAXV) die("bad --set %s", v);
            g_set_vr[g_nset] = vr;
            g_set_val[g_nset++] = val;
            i++;
        } else if (!strcmp(a, "--setb")) {
            unsigned vr;
            int val;
            if (sscanf(v, "%u=%d", &vr, &val) != 2 || g_nsetb >= MAXV) die("bad --setb %s", v);
            g_setb_vr[g_nsetb] = vr;
            g_setb_val[g_nsetb++] = val ? fmi2True : fmi2False;
            i++;
        } else if (!strcmp(a, "--bad")) {
            unsigned vr;
            char val[64];
            if (sscanf(v, "%u=%63s", &vr, val) != 2) die("bad --bad %s", v);
            g_bad_vr = vr;
            g_bad_val = strtod(val, NULL); /* accepts nan, inf */
            g_has_bad = 1;
            i++;
        } else if (!strcmp(a, "--instances")) g_instances = atoi(v), i++;
        else if (!strcmp(a, "--threads")) g_threads = 1;
        else if (!strcmp(a, "--reload")) g_reload = 1;
        else if (!strcmp(a, "--state-check")) g_state_t = atof(v), i++;
        else if (!strcmp(a, "--bench")) g_bench = atoi(v), i++;
        else if (!strcmp(a, "--cpu-time")) g_cpu_clock = 1;
        else if (!strcmp(a, "--inputs")) load_inputs(v), i++;
        else if (!strcmp(a, "--second")) {
            char *copy = strdup(v), *save = NULL;
            g_dirs[1] = strtok_r(copy, "|", &save);
            g_mis[1] = strtok_r(NULL, "|", &save);
            g_guids[1] = strtok_r(NULL, "|", &save);
            if (!g_dirs[1] || !g_mis[1] || !g_guids[1]) die("bad --second %s", v);
            g_second = 1;
            i++;
        }
        else die("unknown option %s", a);
    }
    if (g_instances < 1 || g_instances + 1 > MAXI) die("--instances must be 1..%d", MAXI - 1);
    load(0);
    if (g_second) load(1);
    int rc = run_once(csv, "w");
    if (g_reload && rc == 0) {
        /* What Simulink does between two runs: unload the FMU's library, load it again. */
        for (int i = 0; i <= g_second; i++)
            if (dlclose(apis[i].lib) != 0) die("dlclose: %s", dlerror());
        load(0);
        if (g_second) load(1);
        rc = run_once(csv, "a");
    }
    if (g_has_bad && g_errors_logged == 0) die("the refused value logged no error message");
    printf("done errors_logged=%d\n", g_errors_logged);
    return rc;
}
