/* libvirt.c: the libvirt backend of vm/ (the only file that includes
 * libvirt's headers).
 *
 * A backup job is one virDomainBackupBegin call: a pull-mode backup over
 * all the job's disks, exported by QEMU's NBD server on a Unix socket in a
 * private job directory (owned by the domain's QEMU user, so that QEMU can
 * create the socket and the scratch files there), with a new checkpoint
 * created in the same call.  libvirt keeps every checkpoint's bitmap
 * recording, so "changes since C" stays complete while newer checkpoints
 * exist; deleting one loses nothing of the others.  Ending the job
 * (virDomainAbortJob, the normal end of a pull backup) removes the export
 * and the scratch files.
 */
#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "common/dynlib.h"
#include "common/error.h"
#include "common/xmllib.h"
#include "vm/internal.h"

/* libvirt is loaded when a VM is first opened, not linked
 * (common/dynlib.h): with its dependencies it was most of the libraries a
 * start of nbdvault mapped (9 of the 33 ms that every command's start took
 * on a 2-vCPU VM, for the few that drive libvirt). */
#define LIBVIRT_SYMS(X) \
    X(virConnectClose) X(virConnectOpen) X(virDomainAbortJob) \
    X(virDomainBackupBegin) X(virDomainBackupGetXMLDesc) X(virDomainCheckpointDelete) \
    X(virDomainCheckpointFree) X(virDomainCheckpointGetName) X(virDomainCheckpointGetXMLDesc) \
    X(virDomainCheckpointLookupByName) X(virDomainFree) X(virDomainGetBlockInfo) \
    X(virDomainGetJobStats) X(virDomainGetName) X(virDomainGetUUIDString) \
    X(virDomainGetXMLDesc) X(virDomainIsActive) X(virDomainListAllCheckpoints) \
    X(virDomainLookupByName) X(virDomainLookupByUUIDString) X(virGetLastError) \
    X(virGetLastErrorMessage) X(virInitialize) X(virSetErrorFunc) \
    X(virTypedParamsFree)
#define DECLARE_SYM(f) static __typeof__(f) *sym_##f;
LIBVIRT_SYMS(DECLARE_SYM)

#define BITMAP_PREFIX "nbdvault-"     /* the exported bitmap of disk T: nbdvault-T */

struct lv_vm {
    virConnectPtr conn;
    virDomainPtr dom;
    uid_t uid;
    gid_t gid;
    char targets[VM_MAX_DISKS][64];   /* every disk of the domain, for the XML */
    size_t ntargets;
};

struct lv_job {
    char dir[1024];
    char checkpoint[128];
};

static void silent(void *opaque, virErrorPtr err)
{
    (void)opaque;
    (void)err;
}

/* libvirt and libxml2 want their initialisation done once, before threads
 * use them (run --jobs backs up several domains at once). */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_rc;

static char init_err[512];

/* libxml2's functions (common/xmllib.h), once the libraries are loaded. */
static const struct xmllib *X;

#define LOAD_SYM(f) \
    if (!DYNLIB_SYM(sym_##f, h, f, "libvirt", init_err)) \
        return -1;

static int load_libs(void)
{
    void *h = dynlib_open("libvirt.so.0", "libvirt", init_err, sizeof init_err);

    if (!h)
        return -1;
    LIBVIRT_SYMS(LOAD_SYM)
    if (!(X = xmllib())) {
        snprintf(init_err, sizeof init_err, "%s", error_msg());
        return -1;
    }
    return 0;
}

static void init_libs(void)
{
    if (load_libs() < 0) {
        init_rc = -1;
        return;
    }
    init_rc = sym_virInitialize();
    if (init_rc < 0)
        snprintf(init_err, sizeof init_err, "libvirt: initialisation failed");
    sym_virSetErrorFunc(NULL, silent);
}

/* The error of the last libvirt call, after what. */
static void lv_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void lv_error(const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const char *m = sym_virGetLastErrorMessage();
    error_set(EIO, "%s: %s", what, m && *m ? m : "unknown libvirt error");
}

static struct lv_vm *LV(struct vm *v) { return v->priv; }

/* ---- XML ------------------------------------------------------------------ */

/* The string values of an XPath expression over a document. */
static int xpath_strings(xmlDocPtr doc, const char *expr, char (*out)[1024], size_t max)
{
    xmlXPathContextPtr ctx = X->xmlXPathNewContext(doc);
    xmlXPathObjectPtr r = ctx ? X->xmlXPathEvalExpression((const xmlChar *)expr, ctx) : NULL;
    int n = 0;
    if (r && r->nodesetval)
        for (int i = 0; i < r->nodesetval->nodeNr && (size_t)n < max; i++) {
            xmlChar *s = X->xmlNodeGetContent(r->nodesetval->nodeTab[i]);
            snprintf(out[n++], 1024, "%s", s ? (const char *)s : "");
            X->free(s);
        }
    X->xmlXPathFreeObject(r);
    X->xmlXPathFreeContext(ctx);
    return n;
}

static int xpath_string(xmlDocPtr doc, const char *expr, char *out, size_t cap)
{
    char one[1][1024];
    if (xpath_strings(doc, expr, one, 1) != 1)
        return 0;
    snprintf(out, cap, "%s", one[0]);
    return 1;
}

/* XML-escaped copy of s (names and paths go into attribute values). */
static void xml_escape(const char *s, char *out, size_t cap)
{
    size_t k = 0;
    for (; *s && k + 7 < cap; s++) {
        const char *e = *s == '&' ? "&amp;" : *s == '<' ? "&lt;" : *s == '>' ? "&gt;"
                      : *s == '\'' ? "&apos;" : *s == '"' ? "&quot;" : NULL;
        if (e) {
            memcpy(out + k, e, strlen(e));
            k += strlen(e);
        } else {
            out[k++] = *s;
        }
    }
    out[k] = 0;
}

/* ---- Opening ------------------------------------------------------------------ */

static int read_disks_into(struct vm *v, xmlDocPtr doc, const struct vm_open_opts *o,
                           char (*tg)[1024], char (*src)[1024])
{
    struct lv_vm *p = LV(v);
    int n = xpath_strings(doc, "/domain/devices/disk[@device='disk']/target/@dev", tg, VM_MAX_DISKS);
    for (int i = 0; i < n; i++) {
        char expr[1200];
        snprintf(p->targets[p->ntargets++], sizeof p->targets[0], "%s", tg[i]);
        snprintf(expr, sizeof expr, "/domain/devices/disk[target/@dev='%s']/source/@file", tg[i]);
        if (!xpath_string(doc, expr, src[i], sizeof src[i]))
            src[i][0] = 0;
    }
    for (size_t k = 0; k < (o->ndisks ? o->ndisks : (size_t)n); k++) {
        const char *want = o->ndisks ? o->disks[k] : tg[k];
        int i;
        for (i = 0; i < n && strcmp(tg[i], want); i++)
            ;
        if (i == n) {
            char known[512] = "";
            size_t len = 0;
            for (int j = 0; j < n && len < sizeof known - 2; j++)
                len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", j ? ", " : "", tg[j]);
            error_set(ENOENT, "domain %s has no disk \"%s\" (its disks: %s)", v->name, want,
                      n ? known : "none");
            return -1;
        }
        struct vm_disk *d = &v->disks[v->ndisks++];
        memset(d, 0, sizeof *d);
        snprintf(d->name, sizeof d->name, "%s", tg[i]);
        snprintf(d->source, sizeof d->source, "%s", src[i]);
        virDomainBlockInfo info;
        if (sym_virDomainGetBlockInfo(p->dom, tg[i], &info, 0) < 0) {
            lv_error("domain %s: size of disk %s", v->name, tg[i]);
            return -1;
        }
        d->size = info.capacity;
    }
    return 0;
}

static int read_disks(struct vm *v, xmlDocPtr doc, const struct vm_open_opts *o)
{
    char (*tg)[1024] = calloc(VM_MAX_DISKS, sizeof *tg), (*src)[1024] = calloc(VM_MAX_DISKS, sizeof *src);
    int r = -1;
    if (!tg || !src)
        error_set(ENOMEM, "out of memory");
    else
        r = read_disks_into(v, doc, o, tg, src);
    free(tg);
    free(src);
    return r;
}

/* The uid:gid QEMU runs as (its DAC label), so that the job directory can
 * be handed to it. */
static void qemu_owner(struct vm *v, xmlDocPtr doc)
{
    struct lv_vm *p = LV(v);
    char label[1024];
    unsigned u, g;
    p->uid = (uid_t)-1;
    p->gid = (gid_t)-1;
    if (xpath_string(doc, "/domain/seclabel[@model='dac']/label", label, sizeof label) &&
        sscanf(label, "+%u:+%u", &u, &g) == 2) {
        p->uid = u;
        p->gid = g;
        return;
    }
    struct passwd *pw = getpwnam("libvirt-qemu");
    if (pw) {
        p->uid = pw->pw_uid;
        p->gid = pw->pw_gid;
    }
}

static int lv_open(struct vm *v, const struct vm_open_opts *o)
{
    const char *uri = o->connect ? o->connect : "qemu:///system";
    struct lv_vm *p = calloc(1, sizeof *p);
    if (!p) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    v->priv = p;
    pthread_once(&init_once, init_libs);
    if (init_rc < 0) {
        error_set(EIO, "%s", init_err);
        goto fail;
    }
    if (!o->domain) {
        error_set(EINVAL, "no domain given");
        goto fail;
    }
    if (!(p->conn = sym_virConnectOpen(uri))) {
        lv_error("cannot connect to libvirt at %s", uri);
        goto fail;
    }
    /* By name, or by UUID when it reads as one (the name's error stays). */
    if (!(p->dom = sym_virDomainLookupByName(p->conn, o->domain))) {
        lv_error("no domain %s at %s", o->domain, uri);
        unsigned char raw[VIR_UUID_BUFLEN];
        if (strlen(o->domain) != VIR_UUID_STRING_BUFLEN - 1 ||
            sscanf(o->domain, "%2hhx", raw) != 1 ||
            !(p->dom = sym_virDomainLookupByUUIDString(p->conn, o->domain)))
            goto fail;
    }
    snprintf(v->name, sizeof v->name, "%s", sym_virDomainGetName(p->dom));
    if (sym_virDomainIsActive(p->dom) != 1) {
        error_set(EINVAL, "domain %s is not running (a pull-mode backup needs a running QEMU)", v->name);
        goto fail;
    }
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (sym_virDomainGetUUIDString(p->dom, uuid) < 0) {
        lv_error("domain %s: UUID", v->name);
        goto fail;
    }
    snprintf(v->uuid, sizeof v->uuid, "%s", uuid);
    char *xml = sym_virDomainGetXMLDesc(p->dom, 0);
    if (!xml) {
        lv_error("domain %s: XML", v->name);
        goto fail;
    }
    xmlDocPtr doc = X->xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL, XML_PARSE_NONET);
    free(xml);
    if (!doc) {
        error_set(EPROTO, "domain %s: libvirt's XML does not parse", v->name);
        goto fail;
    }
    int r = read_disks(v, doc, o);
    qemu_owner(v, doc);
    X->xmlFreeDoc(doc);
    if (r < 0)
        goto fail;
    return 0;
fail:
    if (p->dom)
        sym_virDomainFree(p->dom);
    if (p->conn)
        sym_virConnectClose(p->conn);
    free(p);
    v->priv = NULL;
    return -1;
}

static void lv_close(struct vm *v)
{
    struct lv_vm *p = LV(v);
    if (!p)
        return;
    sym_virDomainFree(p->dom);
    sym_virConnectClose(p->conn);
    free(p);
}

/* ---- Checkpoints ---------------------------------------------------------------- */

static int lv_checkpoint_check(struct vm *v, const char *name, size_t disk, char *why, size_t cap)
{
    const char *target = v->disks[disk].name;
    virDomainCheckpointPtr ck = sym_virDomainCheckpointLookupByName(LV(v)->dom, name, 0);
    if (!ck) {
        snprintf(why, cap, "checkpoint %s does not exist in domain %s", name, v->name);
        return 0;
    }
    char *xml = sym_virDomainCheckpointGetXMLDesc(ck, 0);
    sym_virDomainCheckpointFree(ck);
    if (!xml) {
        lv_error("domain %s: checkpoint %s", v->name, name);
        return -1;
    }
    xmlDocPtr doc = X->xmlReadMemory(xml, (int)strlen(xml), "checkpoint.xml", NULL, XML_PARSE_NONET);
    free(xml);
    char expr[256], mode[1024] = "";
    snprintf(expr, sizeof expr, "/domaincheckpoint/disks/disk[@name='%s']/@checkpoint", target);
    int found = doc ? xpath_string(doc, expr, mode, sizeof mode) : 0;
    X->xmlFreeDoc(doc);
    if (!found || strcmp(mode, "bitmap") != 0) {
        snprintf(why, cap, "checkpoint %s of domain %s does not cover disk %s", name, v->name, target);
        return 0;
    }
    return 1;
}

static bool is_ours(const char *name)
{
    return !strncmp(name, VM_CHECKPOINT_PREFIX, strlen(VM_CHECKPOINT_PREFIX));
}

static int delete_checkpoint(struct vm *v, const char *name)
{
    virDomainCheckpointPtr ck = sym_virDomainCheckpointLookupByName(LV(v)->dom, name, 0);
    if (!ck) {
        lv_error("domain %s: checkpoint %s", v->name, name);
        return -1;
    }
    int r = sym_virDomainCheckpointDelete(ck, 0);
    if (r < 0)
        lv_error("domain %s: delete checkpoint %s", v->name, name);
    sym_virDomainCheckpointFree(ck);
    return r;
}

/* ---- The backup job --------------------------------------------------------------- */

static bool in_job(const struct vm_backup_req *reqs, size_t n, struct vm *v, const char *target,
                   const struct vm_backup_req **req)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v->disks[reqs[i].disk].name, target)) {
            *req = &reqs[i];
            return true;
        }
    return false;
}

/* The <domainbackup> and <domaincheckpoint> documents of a job. */
static int job_xml(struct vm *v, const struct vm_backup_req *reqs, size_t n, const char *dir,
                   const char *checkpoint, char **bxml, char **cxml)
{
    struct lv_vm *p = LV(v);
    size_t cap = 4096 + p->ntargets * 2048;
    char *b = malloc(cap), *c = malloc(cap), esc[1200], esc2[1200];
    if (!b || !c) {
        free(b);
        free(c);
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    xml_escape(dir, esc, sizeof esc);
    size_t bl = (size_t)snprintf(b, cap, "<domainbackup mode='pull'><server transport='unix' "
                                         "socket='%s/backup.sock'/><disks>", esc);
    xml_escape(checkpoint, esc2, sizeof esc2);
    size_t cl = (size_t)snprintf(c, cap, "<domaincheckpoint><name>%s</name><disks>", esc2);
    for (size_t t = 0; t < p->ntargets; t++) {
        const struct vm_backup_req *r;
        char tgt[200];
        xml_escape(p->targets[t], tgt, sizeof tgt);
        if (!in_job(reqs, n, v, p->targets[t], &r)) {
            bl += (size_t)snprintf(b + bl, cap - bl, "<disk name='%s' backup='no'/>", tgt);
            cl += (size_t)snprintf(c + cl, cap - cl, "<disk name='%s' checkpoint='no'/>", tgt);
            continue;
        }
        bl += (size_t)snprintf(b + bl, cap - bl, "<disk name='%s' backup='yes' type='file' exportname='%s'",
                               tgt, tgt);
        if (r->incremental) {
            xml_escape(r->incremental, esc2, sizeof esc2);
            bl += (size_t)snprintf(b + bl, cap - bl, " backupmode='incremental' incremental='%s' "
                                   "exportbitmap='" BITMAP_PREFIX "%s'", esc2, tgt);
        } else {
            bl += (size_t)snprintf(b + bl, cap - bl, " backupmode='full'");
        }
        bl += (size_t)snprintf(b + bl, cap - bl, "><scratch file='%s/scratch-%s.qcow2'/></disk>", esc, tgt);
        cl += (size_t)snprintf(c + cl, cap - cl, "<disk name='%s' checkpoint='bitmap'/>", tgt);
    }
    snprintf(b + bl, cap - bl, "</disks></domainbackup>");
    snprintf(c + cl, cap - cl, "</disks></domaincheckpoint>");
    *bxml = b;
    *cxml = c;
    return 0;
}

static int lv_backup_begin(struct vm_job *vj, const struct vm_backup_req *reqs, size_t n,
                           const char *new_checkpoint, struct vm_export *exports)
{
    struct vm *v = vj->vm;
    struct lv_vm *p = LV(v);
    struct lv_job *j = calloc(1, sizeof *j);
    char *bxml = NULL, *cxml = NULL;
    if (!j) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    snprintf(j->checkpoint, sizeof j->checkpoint, "%s", new_checkpoint);
    if (vm_job_dir(v, p->uid, p->gid, j->dir, sizeof j->dir) < 0) {
        free(j);
        return -1;
    }
    if (job_xml(v, reqs, n, j->dir, new_checkpoint, &bxml, &cxml) < 0)
        goto fail;
    vm_log(v, VM_LOG_DEBUG, "backup XML: %s", bxml);
    if (sym_virDomainBackupBegin(p->dom, bxml, cxml, 0) < 0) {
        lv_error("domain %s: virDomainBackupBegin", v->name);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const char *t = v->disks[reqs[i].disk].name;
        snprintf(exports[i].uri, sizeof exports[i].uri, "nbd+unix:///%.60s?socket=%.1000s/backup.sock",
                 t, j->dir);
        if (reqs[i].incremental)
            snprintf(exports[i].bitmap, sizeof exports[i].bitmap, BITMAP_PREFIX "%.100s", t);
    }
    free(bxml);
    free(cxml);
    vj->priv = j;
    return 0;
fail:
    free(bxml);
    free(cxml);
    vm_job_dir_remove(v, j->dir);
    free(j);
    return -1;
}

/* Ends the domain's backup job and waits (up to the timeout) until libvirt
 * no longer shows it.  A job already gone is no error. */
static int abort_job(struct vm *v)
{
    struct lv_vm *p = LV(v);
    if (sym_virDomainAbortJob(p->dom) < 0) {
        virErrorPtr e = sym_virGetLastError();
        if (!e || e->code != VIR_ERR_OPERATION_INVALID)
            return -1;
    }
    for (unsigned i = 0; i < v->timeout_s * 20; i++) {
        char *xml = sym_virDomainBackupGetXMLDesc(p->dom, 0);
        /* gone from both views: the backup document and the domain's
         * job (which can outlive the document for a moment), asked as
         * `virsh domjobinfo` asks (the job's statistics: the older
         * virDomainGetJobInfo said "none" a moment before they did) */
        int type = VIR_DOMAIN_JOB_NONE, nparams = 0;
        virTypedParameterPtr params = NULL;
        int st = xml ? 0 : sym_virDomainGetJobStats(p->dom, &type, &params, &nparams, 0);
        sym_virTypedParamsFree(params, nparams);
        if (!xml && (st < 0 || type == VIR_DOMAIN_JOB_NONE))
            return 0;
        free(xml);
        usleep(50000);
    }
    error_set(ETIMEDOUT, "the backup job of domain %s did not end within %u s", v->name, v->timeout_s);
    return -1;
}

static int lv_end_reads(struct vm_job *vj)
{
    struct vm *v = vj->vm;
    struct lv_job *j = vj->priv;
    int r = abort_job(v);
    if (r < 0)
        lv_error("domain %s: end the backup job", v->name);
    vm_job_dir_remove(v, j->dir);
    return r < 0 ? -1 : 0;
}

static int lv_finish(struct vm_job *vj, bool success)
{
    struct lv_job *j = vj->priv;
    int r = success ? 0 : delete_checkpoint(vj->vm, j->checkpoint);
    free(j);
    return r;
}

/* ---- Leftovers of killed runs ------------------------------------------------------ */

/* A backup job still running: ours (its socket in a job directory of ours
 * under the work directory) is aborted; another's is an error. */
static int cleanup_job(struct vm *v, int *count)
{
    struct lv_vm *p = LV(v);
    char *xml = sym_virDomainBackupGetXMLDesc(p->dom, 0);
    if (!xml)
        return 0;   /* no backup job */
    xmlDocPtr doc = X->xmlReadMemory(xml, (int)strlen(xml), "backup.xml", NULL, XML_PARSE_NONET);
    free(xml);
    char sock[1024] = "", prefix[600];
    if (doc)
        xpath_string(doc, "/domainbackup/server/@socket", sock, sizeof sock);
    X->xmlFreeDoc(doc);
    snprintf(prefix, sizeof prefix, "%s/nbdvault-job-", v->workdir);
    if (strncmp(sock, prefix, strlen(prefix)) != 0) {
        error_set(EBUSY, "domain %s runs a backup job that is not this nbdvault's (%s%s); "
                  "end it first (virsh domjobabort %s)", v->name, sock[0] ? "socket " : "push mode",
                  sock, v->name);
        return -1;
    }
    if (abort_job(v) < 0) {
        lv_error("domain %s: abort the backup job left by an earlier run", v->name);
        return -1;
    }
    vm_log(v, VM_LOG_INFO, "%s: aborted the backup job left by an earlier run (%s)", v->name, sock);
    (*count)++;
    return 0;
}

static int lv_cleanup(struct vm *v, const char *const *keep, size_t nkeep)
{
    int count = 0;
    virDomainCheckpointPtr *cks = NULL;

    if (cleanup_job(v, &count) < 0)
        return -1;
    count += vm_job_dirs_cleanup(v);
    int n = sym_virDomainListAllCheckpoints(LV(v)->dom, &cks, 0);
    if (n < 0) {
        lv_error("domain %s: list checkpoints", v->name);
        return -1;
    }
    int ret = 0;
    for (int i = 0; i < n; i++) {
        const char *name = sym_virDomainCheckpointGetName(cks[i]);
        bool keepit = !is_ours(name);
        for (size_t k = 0; k < nkeep && !keepit; k++)
            keepit = !strcmp(name, keep[k]);
        if (!keepit) {
            if (sym_virDomainCheckpointDelete(cks[i], 0) < 0) {
                lv_error("domain %s: delete checkpoint %s", v->name, name);
                ret = -1;
            } else {
                vm_log(v, VM_LOG_INFO, "%s: deleted checkpoint %s (no point names it)", v->name, name);
                count++;
            }
        }
        sym_virDomainCheckpointFree(cks[i]);
    }
    free(cks);
    return ret < 0 ? -1 : count;
}

const struct vm_ops vm_libvirt_ops = {
    .open = lv_open,
    .close = lv_close,
    .checkpoint_check = lv_checkpoint_check,
    .cleanup = lv_cleanup,
    .backup_begin = lv_backup_begin,
    .end_reads = lv_end_reads,
    .finish = lv_finish,
};
