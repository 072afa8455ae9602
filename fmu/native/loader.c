/*
 * Native loader of the BatchReactorTwin FMU: this is binaries/linux64/<modelIdentifier>.so.
 *
 * It has no link-time dependency on libpython (pythonfmu's binary leaves libpython unresolved and
 * users must LD_PRELOAD it: pythonfmu issue #202). On the first fmi2Instantiate it
 *   1. reads the build's configuration, resources/batchtwin.cfg: the Python environment the FMU was
 *      built with (home, libpython, site-packages), the build's package and slave class;
 *   2. applies the documented overrides BATCHTWIN_PYTHON_HOME (a Python prefix or a virtual
 *      environment), BATCHTWIN_LIBPYTHON and BATCHTWIN_PYTHON_SITE;
 *   3. if the process already runs a Python interpreter (the host is Python: FMPy, libcosimpy...),
 *      uses it; otherwise dlopens libpython with RTLD_GLOBAL so that extension modules (numpy,
 *      onnxruntime) and the bridge resolve against one copy;
 *   4. checks the interpreter's version against the one the bridge was compiled for;
 *   5. dlopens the bridge (binaries/linux64/batchtwin_bridge_<build>.so) and forwards every FMI
 *      call to it. The bridge starts the interpreter once and never finalises it.
 * Nothing is unloaded: libpython and the bridge stay for the life of the process, so a host that
 * unloads and reloads the FMU (Simulink between runs) finds the same interpreter again.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fmi2Functions.h"
#include "batchtwin.h"

#ifndef BT_PYTHON_VERSION
#error "compile with -DBT_PYTHON_VERSION=\"3.x\" (the minor version the bridge was built for)"
#endif

#define PATH_LEN 4096

typedef struct {
    char resources_dir[PATH_LEN];
    char build_id[128];
    char guid[128];
    char package[256];
    char module[512];
    char class_name[256];
    char bridge[PATH_LEN];
    char python_home[PATH_LEN];
    char libpython[PATH_LEN];
    char site_dirs[4 * PATH_LEN];
    char executable[PATH_LEN];
} Config;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_ready = 0;
static Config g_cfg;
static bt_instantiateTYPE *g_instantiate = NULL;
static void (*g_free_instance)(fmi2Component) = NULL;

#define DECLARE_POINTER(name, params, args) static fmi2Status(*p_##name) params = NULL;
BT_FORWARDED_CALLS(DECLARE_POINTER)

/* ---------------------------------------------------------------------------------------------- */

static void report(const fmi2CallbackFunctions *f, fmi2String instance, const char *fmt, ...)
{
    char msg[2 * PATH_LEN], esc[4 * PATH_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t o = 0;
    for (size_t i = 0; msg[i] && o + 2 < sizeof esc; i++) {
        esc[o++] = msg[i];
        if (msg[i] == '%') esc[o++] = '%'; /* the logger takes a printf format */
    }
    esc[o] = '\0';
    if (f != NULL && f->logger != NULL)
        f->logger(f->componentEnvironment, instance ? instance : "", fmi2Error, "logStatusError", esc);
    else
        fprintf(stderr, "BatchReactorTwin FMU: %s\n", msg);
}

static int is_file(const char *p)
{
    struct stat st;
    return p[0] && stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *p)
{
    struct stat st;
    return p[0] && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* fmuResourceLocation (a file URI: file:///p, file:/p, file://localhost/p, or a plain path) ->
   decoded path without trailing '/'. */
static int resources_path(const char *uri, char *out, size_t len)
{
    if (uri == NULL) return -1;
    const char *p = uri;
    if (strncmp(p, "file://localhost/", 17) == 0)
        p += 16;
    else if (strncmp(p, "file:///", 8) == 0)
        p += 7;
    else if (strncmp(p, "file:/", 6) == 0)
        p += 5;
    size_t o = 0;
    for (; *p && o + 1 < len; p++) {
        if (*p == '%' && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            out[o++] = (char)(hexval(p[1]) * 16 + hexval(p[2]));
            p += 2;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
    while (o > 1 && out[o - 1] == '/') out[--o] = '\0';
    return o > 0 ? 0 : -1;
}

static void set(char *dst, size_t len, const char *src) { snprintf(dst, len, "%s", src ? src : ""); }

/* resources/batchtwin.cfg: key=value lines, '#' comments. */
static int read_config(Config *cfg, char *err, size_t err_len)
{
    char path[PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/batchtwin.cfg", cfg->resources_dir);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, err_len, "cannot read %s (is the resource location right?)", path);
        return -1;
    }
    char line[4 * PATH_LEN + 64];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0') continue;
        char *eq = strchr(line, '=');
        if (eq == NULL) continue;
        *eq = '\0';
        const char *k = line, *v = eq + 1;
#define KEY(name, field) else if (strcmp(k, name) == 0) set(cfg->field, sizeof cfg->field, v)
        if (0) {
        }
        KEY("build_id", build_id);
        KEY("guid", guid);
        KEY("package", package);
        KEY("module", module);
        KEY("class", class_name);
        KEY("bridge", bridge);
        KEY("python_home", python_home);
        KEY("libpython", libpython);
        KEY("site_packages", site_dirs);
        KEY("python_executable", executable);
#undef KEY
    }
    fclose(f);
    if (!cfg->package[0] || !cfg->module[0] || !cfg->class_name[0] || !cfg->bridge[0]) {
        snprintf(err, err_len, "%s lacks package, module, class or bridge", path);
        return -1;
    }
    return 0;
}

/* BATCHTWIN_PYTHON_HOME: a Python prefix or a virtual environment (a folder with pyvenv.cfg). */
static int apply_home_override(Config *cfg, const char *home, char *err, size_t err_len)
{
    if (!is_dir(home)) {
        snprintf(err, err_len, "BATCHTWIN_PYTHON_HOME=%s is not a folder", home);
        return -1;
    }
    char venv_cfg[PATH_LEN + 16], base[PATH_LEN] = "";
    snprintf(venv_cfg, sizeof venv_cfg, "%s/pyvenv.cfg", home);
    FILE *f = fopen(venv_cfg, "r");
    if (f != NULL) {
        /* A virtual environment: "home = <base>/bin" names the installation it was made from. */
        char line[PATH_LEN + 64];
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = '\0';
            char *eq = strchr(line, '=');
            if (eq == NULL) continue;
            char *k = line, *v = eq + 1;
            *eq = '\0';
            while (*k == ' ') k++;
            for (char *e = k + strlen(k); e > k && e[-1] == ' ';) *--e = '\0';
            while (*v == ' ') v++;
            if (strcmp(k, "home") == 0) {
                set(base, sizeof base, v);
                char *slash = strrchr(base, '/');
                if (slash && strcmp(slash, "/bin") == 0) *slash = '\0';
            }
        }
        fclose(f);
        if (!base[0]) {
            snprintf(err, err_len, "%s has no 'home' line", venv_cfg);
            return -1;
        }
        snprintf(cfg->site_dirs, sizeof cfg->site_dirs, "%s/lib/python" BT_PYTHON_VERSION "/site-packages", home);
        snprintf(cfg->executable, sizeof cfg->executable, "%s/bin/python" BT_PYTHON_VERSION, home);
    } else {
        set(base, sizeof base, home);
        snprintf(cfg->site_dirs, sizeof cfg->site_dirs, "%s/lib/python" BT_PYTHON_VERSION "/site-packages", home);
        snprintf(cfg->executable, sizeof cfg->executable, "%s/bin/python" BT_PYTHON_VERSION, home);
    }
    set(cfg->python_home, sizeof cfg->python_home, base);
    static const char *candidates[] = {
        "%s/lib/libpython" BT_PYTHON_VERSION ".so.1.0", "%s/lib/libpython" BT_PYTHON_VERSION ".so",
        "%s/lib/x86_64-linux-gnu/libpython" BT_PYTHON_VERSION ".so.1.0", "%s/lib64/libpython" BT_PYTHON_VERSION ".so.1.0",
    };
    cfg->libpython[0] = '\0';
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++) {
        char p[PATH_LEN + 64];
        snprintf(p, sizeof p, candidates[i], base);
        if (is_file(p)) {
            set(cfg->libpython, sizeof cfg->libpython, p);
            break;
        }
    }
    if (!cfg->libpython[0]) {
        /* Never fall back to whatever libpython the dynamic linker finds: another installation's
           library with this prefix's standard library fails later with a misleading message. */
        snprintf(err, err_len,
                 "BATCHTWIN_PYTHON_HOME=%s: no libpython" BT_PYTHON_VERSION ".so under %s (looked in lib/, "
                 "lib/x86_64-linux-gnu/, lib64/); point BATCHTWIN_PYTHON_HOME at a Python " BT_PYTHON_VERSION
                 " built with --enable-shared, or name the library with BATCHTWIN_LIBPYTHON (docs/fmu.md)",
                 home, base);
        return -1;
    }
    char stdlib[PATH_LEN + 64];
    snprintf(stdlib, sizeof stdlib, "%s/lib/python" BT_PYTHON_VERSION "/encodings", base);
    if (!is_dir(stdlib)) {
        snprintf(err, err_len,
                 "BATCHTWIN_PYTHON_HOME=%s: no Python " BT_PYTHON_VERSION " standard library under %s (%s is "
                 "missing); point BATCHTWIN_PYTHON_HOME at a Python " BT_PYTHON_VERSION
                 " installation or virtual environment (docs/fmu.md)",
                 home, base, stdlib);
        return -1;
    }
    return 0;
}

static void own_dir(char *out, size_t len)
{
    Dl_info info;
    out[0] = '\0';
    if (dladdr((void *)&fmi2Instantiate, &info) && info.dli_fname) {
        set(out, len, info.dli_fname);
        char *slash = strrchr(out, '/');
        if (slash) *slash = '\0';
        else set(out, len, ".");
    }
}

/* Steps 2-5 of the file comment. Called once, under g_lock. */
static int load(Config *cfg, char *err, size_t err_len)
{
    const char *env;
    if ((env = getenv("BATCHTWIN_PYTHON_HOME")) && env[0] && apply_home_override(cfg, env, err, err_len)) return -1;
    if ((env = getenv("BATCHTWIN_LIBPYTHON")) && env[0]) set(cfg->libpython, sizeof cfg->libpython, env);
    if ((env = getenv("BATCHTWIN_PYTHON_SITE")) && env[0]) set(cfg->site_dirs, sizeof cfg->site_dirs, env);

    const char *(*get_version)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "Py_GetVersion");
    if (get_version == NULL) {
        /* No interpreter in the process yet. RTLD_GLOBAL: extension modules and the bridge are not
           linked to libpython and must find its symbols in the global scope. */
        void *lib = dlopen(cfg->libpython, RTLD_NOW | RTLD_GLOBAL);
        if (lib == NULL) {
            snprintf(err, err_len,
                     "cannot load the Python library %s: %s. Point BATCHTWIN_PYTHON_HOME at a Python " BT_PYTHON_VERSION
                     " installation or virtual environment (or BATCHTWIN_LIBPYTHON at its library; docs/fmu.md), "
                     "or use the native FMU (BatchReactorTwinNative.fmu), which needs no Python",
                     cfg->libpython, dlerror());
            return -1;
        }
        get_version = (const char *(*)(void))dlsym(lib, "Py_GetVersion");
        if (get_version == NULL) {
            snprintf(err, err_len, "%s is not a Python library (no Py_GetVersion); set BATCHTWIN_PYTHON_HOME "
                     "or BATCHTWIN_LIBPYTHON (docs/fmu.md)", cfg->libpython);
            return -1;
        }
        /* The library that answers must be the one requested, not another one already in the process. */
        Dl_info info;
        char want[PATH_MAX], got[PATH_MAX];
        if (strchr(cfg->libpython, '/') && dladdr((void *)get_version, &info) && info.dli_fname &&
            realpath(cfg->libpython, want) && realpath(info.dli_fname, got) && strcmp(want, got) != 0) {
            snprintf(err, err_len, "asked for the Python library %s but the process resolved %s; set "
                     "BATCHTWIN_PYTHON_HOME or BATCHTWIN_LIBPYTHON to the one to use (docs/fmu.md)", want, got);
            return -1;
        }
        const char *version = get_version();
        size_t vl = strlen(BT_PYTHON_VERSION);
        if (strncmp(version, BT_PYTHON_VERSION, vl) != 0 || (version[vl] != '.' && version[vl] != ' ' && version[vl])) {
            snprintf(err, err_len,
                     "this FMU was built for Python " BT_PYTHON_VERSION ", but %s is Python %.20s; point "
                     "BATCHTWIN_PYTHON_HOME (or BATCHTWIN_LIBPYTHON and BATCHTWIN_PYTHON_SITE) at a Python "
                     BT_PYTHON_VERSION " with numpy and onnxruntime (docs/fmu.md), or use the native FMU "
                     "(BatchReactorTwinNative.fmu), which needs no Python",
                     cfg->libpython, version);
            return -1;
        }
    }
    const char *version = get_version();
    size_t vl = strlen(BT_PYTHON_VERSION);
    if (strncmp(version, BT_PYTHON_VERSION, vl) != 0 || (version[vl] != '.' && version[vl] != ' ' && version[vl])) {
        snprintf(err, err_len,
                 "this FMU was built for Python " BT_PYTHON_VERSION ", the process already runs Python %.20s (the host "
                 "embeds it, so BATCHTWIN_PYTHON_HOME cannot change it); run the host with Python " BT_PYTHON_VERSION
                 ", rebuild the FMU with that Python, or use the native FMU (BatchReactorTwinNative.fmu)",
                 version);
        return -1;
    }

    char dir[PATH_LEN], bridge_path[2 * PATH_LEN];
    own_dir(dir, sizeof dir);
    snprintf(bridge_path, sizeof bridge_path, "%s/%s", dir, cfg->bridge);
    void *bridge = dlopen(bridge_path, RTLD_NOW | RTLD_LOCAL);
    if (bridge == NULL) {
        snprintf(err, err_len, "cannot load the FMU's Python bridge %s: %s", bridge_path, dlerror());
        return -1;
    }
#define RESOLVE(name, params, args)                                                    \
    if ((p_##name = (fmi2Status(*) params)dlsym(bridge, "bt_" #name)) == NULL) {       \
        snprintf(err, err_len, "%s lacks bt_" #name, bridge_path);                      \
        return -1;                                                                      \
    }
    BT_FORWARDED_CALLS(RESOLVE)
#undef RESOLVE
    bt_initTYPE *init = (bt_initTYPE *)dlsym(bridge, "bt_init");
    g_instantiate = (bt_instantiateTYPE *)dlsym(bridge, "bt_fmi2Instantiate");
    g_free_instance = (void (*)(fmi2Component))dlsym(bridge, "bt_fmi2FreeInstance");
    if (init == NULL || g_instantiate == NULL || g_free_instance == NULL) {
        snprintf(err, err_len, "%s lacks bt_init, bt_fmi2Instantiate or bt_fmi2FreeInstance", bridge_path);
        return -1;
    }
    bt_config bc = {cfg->resources_dir, cfg->package, cfg->module, cfg->class_name,
                    cfg->python_home, cfg->site_dirs, cfg->executable};
    return init(&bc, err, err_len);
}

/* ---------------------------------------------------------------------------------------------- */
/* FMI 2.0 API                                                                                     */

const char *fmi2GetTypesPlatform(void) { return fmi2TypesPlatform; }

const char *fmi2GetVersion(void) { return fmi2Version; }

fmi2Component fmi2Instantiate(fmi2String instanceName, fmi2Type fmuType, fmi2String fmuGUID,
                              fmi2String fmuResourceLocation, const fmi2CallbackFunctions *functions,
                              fmi2Boolean visible, fmi2Boolean loggingOn)
{
    char err[2 * PATH_LEN] = "";
    char res[PATH_LEN];
    if (resources_path(fmuResourceLocation, res, sizeof res) != 0) {
        report(functions, instanceName, "fmi2Instantiate: invalid fmuResourceLocation '%s'",
               fmuResourceLocation ? fmuResourceLocation : "(null)");
        return NULL;
    }
    pthread_mutex_lock(&g_lock);
    if (!g_ready) {
        Config cfg;
        memset(&cfg, 0, sizeof cfg);
        set(cfg.resources_dir, sizeof cfg.resources_dir, res);
        if (read_config(&cfg, err, sizeof err) == 0 && load(&cfg, err, sizeof err) == 0) {
            g_cfg = cfg;
            g_ready = 1;
        }
    }
    int ready = g_ready;
    pthread_mutex_unlock(&g_lock);
    if (!ready) {
        report(functions, instanceName, "fmi2Instantiate: %s", err);
        return NULL;
    }
    if (fmuGUID == NULL || strcmp(fmuGUID, g_cfg.guid) != 0) {
        report(functions, instanceName, "fmi2Instantiate: GUID %s does not match this FMU's %s",
               fmuGUID ? fmuGUID : "(null)", g_cfg.guid);
        return NULL;
    }
    /* Each instance gets its own resources folder (a master may extract the FMU more than once). */
    Config local = g_cfg;
    set(local.resources_dir, sizeof local.resources_dir, res);
    bt_config bc = {local.resources_dir, local.package, local.module, local.class_name,
                    local.python_home, local.site_dirs, local.executable};
    return g_instantiate(instanceName, fmuType, fmuGUID, fmuResourceLocation, functions, visible, loggingOn, &bc);
}

void fmi2FreeInstance(fmi2Component c)
{
    if (c != NULL && g_free_instance != NULL) g_free_instance(c);
}

#define FORWARD(name, params, args)                   \
    fmi2Status name params                            \
    {                                                 \
        if (c == NULL || p_##name == NULL) return fmi2Error; \
        return p_##name args;                         \
    }
BT_FORWARDED_CALLS(FORWARD)
#undef FORWARD
