/* libvirt.c: placeholder until the libvirt backend lands. */
#include <errno.h>
#include "common/error.h"
#include "vm/internal.h"

static int backend_open(struct vm *v, const struct vm_open_opts *o)
{
    error_set(ENOSYS, "the libvirt backend is not built yet");
    return -1;
}
static void backend_close(struct vm *v) {}
const struct vm_ops vm_libvirt_ops = { .open = backend_open, .close = backend_close };
