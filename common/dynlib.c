/* common/dynlib.c: see dynlib.h. */
#include <dlfcn.h>
#include <stdio.h>

#include "common/dynlib.h"

void *dynlib_open(const char *soname, const char *what, char *err, size_t cap)
{
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);

    if (!h)
        snprintf(err, cap, "%s is not available (%s)", what, dlerror());
    return h;
}

void *dynlib_sym(void *lib, const char *name, const char *what, char *err, size_t cap)
{
    void *p = dlsym(lib, name);

    if (!p)
        snprintf(err, cap, "%s is too old (%s)", what, dlerror());
    return p;
}
