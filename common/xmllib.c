/* common/xmllib.c: see xmllib.h. */
#include <errno.h>
#include <pthread.h>

#include "common/dynlib.h"
#include "common/error.h"
#include "common/xmllib.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct xmllib lib;
static int load_rc = -1;
static char load_err[512];

static void load(void)
{
    void *h = dynlib_open("libxml2.so.2", "libxml2", load_err, sizeof load_err);
    xmlFreeFunc *fr;

    if (!h)
        return;
#define XMLLIB_LOAD(f) \
    if (!DYNLIB_SYM(lib.f, h, f, "libxml2", load_err)) \
        return;
    XMLLIB_SYMS(XMLLIB_LOAD)
#undef XMLLIB_LOAD
    /* xmlFree is a variable holding the deallocator. */
    if (!(fr = dynlib_sym(h, "xmlFree", "libxml2", load_err, sizeof load_err)))
        return;
    lib.free = *fr;
    lib.xmlInitParser();
    load_rc = 0;
}

const struct xmllib *xmllib(void)
{
    pthread_once(&once, load);
    if (load_rc < 0) {
        error_set(EIO, "%s", load_err);
        return NULL;
    }
    return &lib;
}
