/* store/s3.c: the S3 backend.
 *
 * An object is BUCKET/PREFIX/KEY.  A put collects its body in memory (a pack
 * fits: up to MEM_MAX bytes, in a buffer reused from a small pool, since
 * fresh pages cost the kernel a clearing each) or, past that, in an
 * unlinked spool file in the state directory, while its SHA-256 and MD5
 * are computed; it is uploaded by one PUT at commit (the pack writer's own
 * thread, so that the backup goes on meanwhile); the ETag must equal the
 * body's MD5.  A PUT is
 * atomic in S3: a key is absent or whole, so there are no partial objects.
 * Reads of packs are ranged GETs of windows that every reader of the store
 * shares (store/s3cache.c: a pack is read chunk after chunk by several
 * threads); other objects are read with a GET of their own;
 * what they return is checked by the caller (pack CRCs, chunk ids).  Listing is ListObjectsV2.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>

#include "common/error.h"
#include "common/xmllib.h"
#include "store/internal.h"
#include "store/s3int.h"

#define MEM_MAX (48u << 20)        /* a body held in memory; beyond: spooled
                                    * (NBDVAULT_S3_SPOOL_ABOVE: fewer bytes,
                                    * for tests; 0: every body spooled) */
#define MEM_BODIES 3               /* bodies in memory at once (a backup has
                                    * 4 or 5 packs open or uploading); more
                                    * are spooled; as many idle buffers kept */

struct s3store {
    struct store base;
    struct s3 s3;
    char state[PATH_MAX];          /* "" until set */
    pthread_mutex_t pool_mu;
    uint8_t *pool[MEM_BODIES];     /* idle MEM_MAX buffers */
    unsigned inmem;                /* bodies in memory now */
    size_t mem_max;                /* a body spills to a file beyond this */
    struct s3_cache *cache;        /* the windows read lately */
    unsigned npool;
};

struct s3_put {
    struct store_put base;
    char key[STORE_KEY_MAX];
    int fd;                        /* the spool file, or -1 */
    uint8_t *mem;                  /* the body while it fits (fd < 0) */
    uint64_t size;
    gnutls_hash_hd_t sha, md5;
    bool hashing, committed;
};

struct s3_obj {
    struct store_obj base;
    char key[STORE_KEY_MAX];
    uint64_t size;
};

static struct s3store *S(const struct store *s)
{
    return (struct s3store *)s;
}

static int display(const struct s3 *s, const char *key, char *out, size_t cap)
{
    int n = snprintf(out, cap, "s3://%s/%s%s", s->bucket, s->prefix, key);

    if (n < 0 || (size_t)n >= cap) {
        error_set(ENAMETOOLONG, "object name s3://%s/%s%s is too long", s->bucket, s->prefix, key);
        return -1;
    }
    return 0;
}

/* ---- Writing ------------------------------------------------------------ */

/* A buffer for a body in memory, or NULL: spool it (MEM_BODIES are in
 * memory already, or no memory). */
static uint8_t *pool_take(struct s3store *ss)
{
    uint8_t *m = NULL;

    pthread_mutex_lock(&ss->pool_mu);
    if (ss->inmem >= MEM_BODIES || !ss->mem_max) {
        pthread_mutex_unlock(&ss->pool_mu);
        return NULL;
    }
    ss->inmem++;
    if (ss->npool)
        m = ss->pool[--ss->npool];
    pthread_mutex_unlock(&ss->pool_mu);
    /* Untouched pages of a fresh buffer stay out of the RSS. */
    if (!m && !(m = malloc(MEM_MAX))) {
        pthread_mutex_lock(&ss->pool_mu);
        ss->inmem--;
        pthread_mutex_unlock(&ss->pool_mu);
    }
    return m;
}

static void pool_give(struct s3store *ss, uint8_t *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&ss->pool_mu);
    ss->inmem--;
    if (ss->npool < MEM_BODIES) {
        ss->pool[ss->npool++] = m;
        m = NULL;
    }
    pthread_mutex_unlock(&ss->pool_mu);
    free(m);
}

static int spool_write(struct s3_put *p, const uint8_t *b, size_t len, uint64_t off)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = pwrite(p->fd, b + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            error_set(n < 0 ? errno : EIO, "spool %s: %s", p->key, n < 0 ? strerror(errno) : "short write");
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* A body outgrowing MEM_MAX (or finding none free) moves to an unlinked
 * file in the state directory. */
static int spill(struct s3_put *p)
{
    struct s3store *ss = S(p->base.s);
    const char *dir = ss->state[0] ? ss->state : "/tmp";

    p->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (p->fd < 0) {
        error_set(errno, "spool %s in %s: %s", p->key, dir, strerror(errno));
        return -1;
    }
    if (spool_write(p, p->mem, (size_t)p->size, 0) < 0)
        return -1;
    pool_give(ss, p->mem);
    p->mem = NULL;
    return 0;
}

static struct store_put *s3_put_begin(struct store *st, const char *key)
{
    struct s3store *ss = S(st);
    struct s3_put *p = calloc(1, sizeof *p);

    if (!p) {
        error_set(ENOMEM, "write %s: out of memory", key);
        return NULL;
    }
    p->base.s = st;
    p->fd = -1;
    snprintf(p->key, sizeof p->key, "%s", key);
    if (!(p->mem = pool_take(ss)) && spill(p) < 0) {
        free(p);
        return NULL;
    }
    bool sha = gnutls_hash_init(&p->sha, GNUTLS_DIG_SHA256) == 0;
    if (!sha || gnutls_hash_init(&p->md5, GNUTLS_DIG_MD5) < 0) {
        error_set(EIO, "gnutls: cannot hash");
        if (sha)
            gnutls_hash_deinit(p->sha, NULL);
        if (p->fd >= 0)
            close(p->fd);
        pool_give(ss, p->mem);
        free(p);
        return NULL;
    }
    p->hashing = true;
    return &p->base;
}

static int s3_put_write(struct store_put *sp, void *buf, size_t len, size_t cap)
{
    struct s3_put *p = (struct s3_put *)sp;

    (void)cap;
    if (p->committed || !p->hashing) {
        error_set(EINVAL, "write %s: already finished", p->key);
        return -1;
    }
    if (p->mem && p->size + len > S(sp->s)->mem_max && spill(p) < 0)
        return -1;
    if (p->mem)
        memcpy(p->mem + p->size, buf, len);
    else if (spool_write(p, buf, len, p->size) < 0)
        return -1;
    gnutls_hash(p->sha, buf, len);
    gnutls_hash(p->md5, buf, len);
    p->size += len;
    return 0;
}

static void hash_done(struct s3_put *p, struct s3_body *b)
{
    uint8_t d[32];

    gnutls_hash_deinit(p->sha, d);
    for (int i = 0; i < 32; i++)
        snprintf(b->sha256 + 2 * i, 3, "%02x", d[i]);
    gnutls_hash_deinit(p->md5, d);
    for (int i = 0; i < 16; i++)
        snprintf(b->md5 + 2 * i, 3, "%02x", d[i]);
    p->hashing = false;
}

/* PUTs a body and checks the ETag against its MD5 (a multipart or
 * encrypted ETag has a '-' or another form: only a plain one is compared). */
static int put_body(struct s3 *s, const char *key, const struct s3_body *b)
{
    /* Lock objects come and go: never retained. */
    struct s3_req r = { .method = "PUT", .key = key, .body = b,
                        .lock = s->lock_days > 0 && strncmp(key, "locks/", 6) != 0 };
    char name[2 * STORE_KEY_MAX];

    if (s3_do(s, &r) < 0)
        return -1;
    free(r.resp);
    if (strlen(r.etag) == 32 && strcasecmp(r.etag, b->md5) != 0) {
        (void)display(s, key, name, sizeof name);
        error_set(EIO, "PUT %s: the server's ETag %s is not the MD5 %s of what was sent", name,
                  r.etag, b->md5);
        return -1;
    }
    return 0;
}

static int s3_put_commit(struct store_put *sp)
{
    struct s3_put *p = (struct s3_put *)sp;
    struct s3_body b = { .fd = p->fd, .mem = p->mem, .len = p->size };

    if (p->committed || !p->hashing) {
        error_set(EINVAL, "write %s: already finished", p->key);
        return -1;
    }
    hash_done(p, &b);
    if (put_body(&S(sp->s)->s3, p->key, &b) < 0)
        return -1;
    p->committed = true;
    return 0;
}

static void s3_put_free(struct store_put *sp)
{
    struct s3_put *p = (struct s3_put *)sp;

    if (p->hashing) {
        gnutls_hash_deinit(p->sha, NULL);
        gnutls_hash_deinit(p->md5, NULL);
    }
    if (p->fd >= 0)
        close(p->fd);
    pool_give(S(sp->s), p->mem);
    free(p);
}

/* ---- Reading ------------------------------------------------------------ */

/* A HEAD answer has no body, so no S3 error code: a failed one is asked
 * again as a GET of the bucket's listing (for 404: is it the bucket?) or
 * of the object's first byte, whose error names the cause. */
static int head(struct s3 *s, const char *key, uint64_t *size)
{
    struct s3_req r = { .method = "HEAD", .key = key };
    uint8_t byte;

    if (s3_do(s, &r) == 0) {
        free(r.resp);
        *size = r.content_length;
        return 0;
    }
    free(r.resp);
    if (r.status == 404) {
        struct s3_req l = { .method = "GET", .query = "list-type=2&max-keys=1", .grow = true };
        struct error_saved e;
        error_save(&e);
        int bucket = s3_do(s, &l);
        free(l.resp);
        if (bucket == 0 || l.status != 404)
            error_restore(&e);
        return -1;
    }
    if (r.status >= 400) {
        struct s3_req g = { .method = "GET", .key = key, .range_len = 1, .out = &byte, .out_cap = 1 };
        struct error_saved e;
        error_save(&e);
        if (s3_do(s, &g) == 0)
            error_restore(&e);
        free(g.resp);
    }
    return -1;
}

static struct store_obj *s3_obj_open(struct store *st, const char *key)
{
    struct s3_obj *o = calloc(1, sizeof *o);

    if (!o) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    o->base.s = st;
    snprintf(o->key, sizeof o->key, "%s", key);
    if (head(&S(st)->s3, key, &o->size) < 0) {
        free(o);
        return NULL;
    }
    return &o->base;
}

static uint64_t s3_obj_size(const struct store_obj *so)
{
    return ((const struct s3_obj *)so)->size;
}

static ssize_t s3_obj_read(struct store_obj *so, void *buf, size_t len, uint64_t off)
{
    struct s3_obj *o = (struct s3_obj *)so;
    struct s3 *s = &S(so->s)->s3;

    /* Only packs, which are never written twice, go through the shared
     * windows: a lock object is rewritten under its key when refreshed. */
    if (!strncmp(o->key, "packs/", 6))
        return s3_cache_read(S(so->s)->cache, s, o->key, o->size, buf, len, off);
    if (off >= o->size || len == 0)
        return 0;
    if (len > o->size - off)
        len = (size_t)(o->size - off);
    size_t got;
    return s3_get_range(s, o->key, buf, len, off, &got) < 0 ? -1 : (ssize_t)got;
}

static void s3_obj_close(struct store_obj *so)
{
    free(so);
}

static void s3_obj_forget(struct store_obj *so)
{
    s3_cache_drop(S(so->s)->cache, ((struct s3_obj *)so)->key);
}

/* ---- Listing and removing ----------------------------------------------- */

struct page {
    char next[1024];               /* continuation token, "" at the end */
    int r;
};

static const char *child_text(xmlNode *n, const char *name)
{
    for (xmlNode *c = n->children; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name) && c->children &&
            c->children->type == XML_TEXT_NODE)
            return (const char *)c->children->content;
    return NULL;
}

static int parse_page(struct s3 *s, const char *xml, size_t len, struct page *pg,
                      int (*fn)(void *opaque, const char *key, uint64_t size, bool partial),
                      void *opaque)
{
    const struct xmllib *x = xmllib();
    if (!x)
        return -1;
    xmlDoc *doc = x->xmlReadMemory(xml, (int)len, "list.xml", NULL, XML_PARSE_NONET | XML_PARSE_NOBLANKS);
    size_t plen = strlen(s->prefix);
    xmlNode *root;

    pg->next[0] = 0;
    if (!doc || !(root = x->xmlDocGetRootElement(doc))) {
        x->xmlFreeDoc(doc);
        error_set(EIO, "list s3://%s/%s: the answer is not XML", s->bucket, s->prefix);
        return -1;
    }
    const char *trunc = child_text(root, "IsTruncated");
    const char *tok = child_text(root, "NextContinuationToken");
    bool truncated = trunc && !strcmp(trunc, "true"), no_token = !tok;
    if (truncated && tok)
        snprintf(pg->next, sizeof pg->next, "%s", tok);
    for (xmlNode *c = root->children; c && pg->r == 0; c = c->next) {
        if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "Contents"))
            continue;
        const char *key = child_text(c, "Key"), *size = child_text(c, "Size");
        if (!key || strncmp(key, s->prefix, plen) || store_check_key(key + plen) < 0)
            continue;              /* not an object this store writes */
        pg->r = fn(opaque, key + plen, size ? strtoull(size, NULL, 10) : 0, false);
    }
    x->xmlFreeDoc(doc);
    if (truncated && no_token && pg->r == 0) {
        error_set(EIO, "list s3://%s/%s: truncated without a continuation token", s->bucket, s->prefix);
        return -1;
    }
    return 0;
}

static int s3_list(struct store *st, const char *prefix,
                   int (*fn)(void *opaque, const char *key, uint64_t size, bool partial),
                   void *opaque)
{
    struct s3 *s = &S(st)->s3;
    struct page pg = { "", 0 };
    char full[2 * STORE_KEY_MAX], enc[6 * STORE_KEY_MAX], tok[3 * sizeof pg.next];
    char query[sizeof enc + sizeof tok + 80], page_max[32] = "";
    /* Tests: small pages, so that the continuation is taken. */
    const char *pm = getenv("NBDVAULT_S3_LIST_MAX");
    if (pm && atoi(pm) > 0)
        snprintf(page_max, sizeof page_max, "&max-keys=%d", atoi(pm));

    snprintf(full, sizeof full, "%s%s", s->prefix, prefix);
    if (s3_encode(full, false, enc, sizeof enc) < 0)
        return -1;
    do {
        if (s3_encode(pg.next, false, tok, sizeof tok) < 0)
            return -1;
        /* Keys in the order of the query string's canonical form. */
        snprintf(query, sizeof query, "%s%s%slist-type=2%s&prefix=%s",
                 pg.next[0] ? "continuation-token=" : "", pg.next[0] ? tok : "",
                 pg.next[0] ? "&" : "", page_max, enc);
        struct s3_req r = { .method = "GET", .query = query, .grow = true };
        if (s3_do(s, &r) < 0)
            return -1;
        int pr = parse_page(s, r.resp ? r.resp : "", r.resp_len, &pg, fn, opaque);
        free(r.resp);
        if (pr < 0)
            return -1;
    } while (pg.r == 0 && pg.next[0]);
    return pg.r;
}

static int s3_stat(struct store *st, const char *key, uint64_t *size)
{
    return head(&S(st)->s3, key, size);
}

static int s3_remove(struct store *st, const char *key)
{
    struct s3_req r = { .method = "DELETE", .key = key };

    if (s3_do(&S(st)->s3, &r) < 0)
        return -1;
    free(r.resp);
    return 0;
}

/* ---- The store ---------------------------------------------------------- */

static const char *s3_state_dir(const struct store *st)
{
    return S(st)->state[0] ? S(st)->state : NULL;
}

static int s3_display_name(const struct store *st, const char *key, char *out, size_t cap)
{
    return display(&S(st)->s3, key, out, cap);
}

static void s3_close(struct store *st)
{
    for (unsigned i = 0; i < S(st)->npool; i++)
        free(S(st)->pool[i]);
    pthread_mutex_destroy(&S(st)->pool_mu);
    s3_cache_free(S(st)->cache);
    s3_fini(&S(st)->s3);
    free(st->location);
    free(st);
}

static const struct store_ops s3_ops = {
    .kind = "s3",
    .close = s3_close,
    .state_dir = s3_state_dir,
    .display_name = s3_display_name,
    .put_begin = s3_put_begin,
    .put_write = s3_put_write,
    .put_commit = s3_put_commit,
    .put_free = s3_put_free,
    .obj_open = s3_obj_open,
    .obj_size = s3_obj_size,
    .obj_read = s3_obj_read,
    .obj_close = s3_obj_close,
    .obj_forget = s3_obj_forget,
    .list = s3_list,
    .stat = s3_stat,
    .remove = s3_remove,
};

int store_s3_locked_until(struct store *st, const char *key, time_t *until)
{
    struct s3_req r = { .method = "HEAD", .key = key };
    struct tm tm = { 0 };

    *until = 0;
    if (s3_do(&S(st)->s3, &r) < 0)
        return -1;
    free(r.resp);
    /* 2026-12-07T10:11:12.123Z */
    if (r.lock_until[0] && strptime(r.lock_until, "%Y-%m-%dT%H:%M:%S", &tm))
        *until = timegm(&tm);
    return 0;
}

int store_s3_set_state(struct store *st, const char *dir)
{
    struct s3store *ss = S(st);

    if (strlen(dir) >= sizeof ss->state) {
        error_set(ENAMETOOLONG, "path %s is too long", dir);
        return -1;
    }
    snprintf(ss->state, sizeof ss->state, "%s", dir);
    return 0;
}

uint64_t store_s3_retries(const struct store *st)
{
    struct s3 *s = (struct s3 *)&S(st)->s3;
    pthread_mutex_lock(&s->mu);
    uint64_t n = s->retried;
    pthread_mutex_unlock(&s->mu);
    return n;
}

unsigned store_s3_lock_days(const struct store *st)
{
    return S(st)->s3.lock_days;
}

struct store *store_s3_open(const char *url)
{
    struct s3store *ss = calloc(1, sizeof *ss);

    if (!ss || !(ss->base.location = strdup(url))) {
        free(ss);
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    ss->base.ops = &s3_ops;
    pthread_mutex_init(&ss->pool_mu, NULL);
    ss->mem_max = MEM_MAX;
    const char *v = getenv("NBDVAULT_S3_SPOOL_ABOVE");
    if (v && *v) {
        char *end;
        unsigned long long x = strtoull(v, &end, 10);
        if (!*end && x < MEM_MAX)
            ss->mem_max = (size_t)x;
    }
    if (!(ss->cache = s3_cache_new()) || s3_configure(&ss->s3, url) < 0 || s3_init(&ss->s3) < 0) {
        s3_cache_free(ss->cache);
        explicit_bzero(ss->s3.secret, sizeof ss->s3.secret);
        free(ss->base.location);
        free(ss);
        return NULL;
    }
    return &ss->base;
}
