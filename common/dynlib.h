/* common/dynlib.h: libraries loaded when first needed, not at every start.
 *
 * A library that only some commands use (libvirt for VMs, libcurl and
 * libxml2 for buckets) is opened with dlopen by its soname the first time
 * one of them needs it: mapping them and theirs at every start cost each
 * command ~5 ms of a 10 ms start on a 2-vCPU VM.  The caller keeps its
 * own table of function pointers (an X-macro of the names) and fills it
 * with dynlib_sym.  Errors go into a caller's buffer, since the loading
 * runs once (pthread_once) and its failure is reported to every thread.
 */
#ifndef COMMON_DYNLIB_H
#define COMMON_DYNLIB_H

#include <stddef.h>

/* The library by its soname ("libcurl-gnutls.so.4"), or NULL with
 * "WHAT is not available (dlerror)" in err. */
void *dynlib_open(const char *soname, const char *what, char *err, size_t cap);

/* The symbol's address, or NULL with "WHAT is too old (dlerror)" in err. */
void *dynlib_sym(void *lib, const char *name, const char *what, char *err, size_t cap);

/* Loads the symbol f into the pointer dst, typed as a pointer to f's
 * declaration; false, with the error in err (a char array), when missing. */
#define DYNLIB_SYM(dst, lib, f, what, err) \
    ((dst) = (__typeof__(f) *)dynlib_sym((lib), #f, (what), (err), sizeof(err)))

#endif
