/* store/s3http.c: S3 requests over libcurl, with their retries.
 *
 * Handles are pooled (at most s->connections at once) and reset between
 * requests, which keeps their connections alive.  The error of a request
 * that failed for good names the object, the HTTP status and S3's error
 * code from the XML body; a secret never reaches a message.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <gnutls/crypto.h>

#include "common/dynlib.h"
#include "common/error.h"
#include "common/log.h"
#include "store/s3int.h"

#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ERR_BODY_MAX 4096
#define BACKOFF_BASE_MS 100
#define BACKOFF_CAP_MS 10000
#define RETRY_AFTER_CAP_S 120
#define UPLOAD_BUFFER (1L << 20)    /* curl's upload buffer (its default: 64 KiB) */
#define RECV_BUFFER (512L << 10)    /* and its receive buffer (its default: 16 KiB) */

/* libcurl, loaded when the first bucket is opened (common/dynlib.h). */
#define CURL_SYMS(X) \
    X(curl_easy_cleanup) X(curl_easy_getinfo) X(curl_easy_init) X(curl_easy_perform) \
    X(curl_easy_reset) X(curl_easy_setopt) X(curl_easy_strerror) X(curl_global_init) \
    X(curl_slist_append) X(curl_slist_free_all)
#define DECLARE_SYM(f) static __typeof__(f) *sym_##f;
CURL_SYMS(DECLARE_SYM)
#undef DECLARE_SYM

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_rc = -1;
static char global_err[512];

static int load_curl(void)
{
    /* Built against libcurl4-gnutls-dev; libcurl4-openssl-dev's will do. */
    void *h = dynlib_open("libcurl-gnutls.so.4", "libcurl", global_err, sizeof global_err);

    if (!h && !(h = dynlib_open("libcurl.so.4", "libcurl", global_err, sizeof global_err)))
        return -1;
#define LOAD_SYM(f) \
    if (!DYNLIB_SYM(sym_##f, h, f, "libcurl", global_err)) \
        return -1;
    CURL_SYMS(LOAD_SYM)
#undef LOAD_SYM
    return 0;
}

static void global_init(void)
{
    if (load_curl() < 0)
        return;
    CURLcode rc = sym_curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        snprintf(global_err, sizeof global_err, "libcurl: %s", sym_curl_easy_strerror(rc));
        return;
    }
    global_rc = 0;
}

int s3_init(struct s3 *s)
{
    pthread_once(&global_once, global_init);
    if (global_rc < 0) {
        error_set(EIO, "%s", global_err);
        return -1;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    return 0;
}

void s3_fini(struct s3 *s)
{
    for (unsigned i = 0; i < s->nfree; i++)
        sym_curl_easy_cleanup(s->free_handles[i]);
    s->nfree = 0;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    explicit_bzero(s->secret, sizeof s->secret);
    explicit_bzero(s->token, sizeof s->token);
}

static CURL *handle_get(struct s3 *s)
{
    CURL *h = NULL;

    pthread_mutex_lock(&s->mu);
    while (!s->nfree && s->nopen >= s->connections)
        pthread_cond_wait(&s->cv, &s->mu);
    if (s->nfree) {
        h = s->free_handles[--s->nfree];
    } else {
        h = sym_curl_easy_init();
        if (h)
            s->nopen++;
    }
    pthread_mutex_unlock(&s->mu);
    if (!h)
        error_set(ENOMEM, "libcurl: cannot create a handle");
    return h;
}

static void handle_put(struct s3 *s, CURL *h, bool keep)
{
    pthread_mutex_lock(&s->mu);
    if (keep && s->nfree < S3_MAX_HANDLES) {
        s->free_handles[s->nfree++] = h;
        h = NULL;
    } else {
        s->nopen--;
    }
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (h)
        sym_curl_easy_cleanup(h);
}

/* ---- Encoding and hashes ---------------------------------------------------- */

int s3_encode(const char *in, bool keep_slash, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;

    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        bool plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
                     *p == '~' || (keep_slash && *p == '/');
        if (n + 4 > cap) {
            error_set(ENAMETOOLONG, "object name too long");
            return -1;
        }
        if (plain) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = 0;
    return 0;
}

static void to_hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

#define HASH_STEP (256u << 10)

int s3_body_hash(struct s3_body *b)
{
    gnutls_hash_hd_t sha, md5;
    uint8_t d[32], *buf = NULL;
    int ret = -1;

    if (gnutls_hash_init(&sha, GNUTLS_DIG_SHA256) < 0)
        goto fail;
    if (gnutls_hash_init(&md5, GNUTLS_DIG_MD5) < 0) {
        gnutls_hash_deinit(sha, NULL);
        goto fail;
    }
    if (b->fd < 0) {
        /* Both digests over each 256 KiB while it is in the cache: one
         * pass over a 48 MiB body from memory, not two. */
        for (size_t off = 0, n; off < b->len; off += n) {
            n = b->len - off < HASH_STEP ? (size_t)(b->len - off) : HASH_STEP;
            gnutls_hash(sha, (const uint8_t *)b->mem + off, n);
            gnutls_hash(md5, (const uint8_t *)b->mem + off, n);
        }
        ret = 0;
    } else if ((buf = malloc(1 << 20))) {
        uint64_t off = 0;
        ret = 0;
        while (off < b->len) {
            size_t want = b->len - off < (1 << 20) ? (size_t)(b->len - off) : (1 << 20);
            ssize_t n = pread(b->fd, buf, want, (off_t)off);
            if (n <= 0) {
                error_set(n < 0 ? errno : EIO, "read spooled object: %s",
                          n < 0 ? strerror(errno) : "short");
                ret = -1;
                break;
            }
            gnutls_hash(sha, buf, (size_t)n);
            gnutls_hash(md5, buf, (size_t)n);
            off += (uint64_t)n;
        }
        free(buf);
    }
    gnutls_hash_deinit(sha, d);
    to_hex(d, 32, b->sha256);
    gnutls_hash_deinit(md5, d);
    to_hex(d, 16, b->md5);
    if (ret < 0 && !buf)
        error_set(ENOMEM, "out of memory");
    return ret;
fail:
    error_set(EIO, "gnutls: cannot hash");
    return -1;
}

static int md5_base64(const char *hex, char out[32])
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t raw[18] = { 0 };
    size_t o = 0;

    for (int i = 0; i < 16; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        raw[i] = (uint8_t)v;
    }
    for (int i = 0; i < 18; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        out[o++] = i + 1 < 16 ? tab[v >> 6 & 63] : '=';
        out[o++] = i + 2 < 16 ? tab[v & 63] : '=';
    }
    out[o] = 0;
    return 0;
}

/* ---- One attempt ---------------------------------------------------------------- */

struct xfer {
    struct s3_req *r;
    CURL *h;
    uint64_t upload_off;
    char err[ERR_BODY_MAX + 1];
    size_t err_len;
    long retry_after;             /* seconds, -1 none */
    bool overflow;
};

static long status_of(CURL *h)
{
    long st = 0;
    sym_curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
    return st;
}

static size_t on_body(char *p, size_t size, size_t n, void *opaque)
{
    struct xfer *x = opaque;
    struct s3_req *r = x->r;
    size_t len = size * n;
    long st = status_of(x->h);

    if (st >= 300) {
        size_t take = ERR_BODY_MAX - x->err_len < len ? ERR_BODY_MAX - x->err_len : len;
        memcpy(x->err + x->err_len, p, take);
        x->err_len += take;
        x->err[x->err_len] = 0;
        return len;
    }
    if (r->grow) {
        char *nb = realloc(r->resp, r->resp_len + len + 1);
        if (!nb)
            return 0;
        memcpy(nb + r->resp_len, p, len);
        r->resp = nb;
        r->resp_len += len;
        r->resp[r->resp_len] = 0;
        return len;
    }
    if (r->out_len + len > r->out_cap) {
        x->overflow = true;
        return 0;
    }
    memcpy((char *)r->out + r->out_len, p, len);
    r->out_len += len;
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *opaque)
{
    struct xfer *x = opaque;
    size_t len = size * n;
    char line[256];

    if (len >= sizeof line)
        return len;
    memcpy(line, p, len);
    line[len] = 0;
    line[strcspn(line, "\r\n")] = 0;
    if (!strncasecmp(line, "etag:", 5)) {
        const char *v = line + 5;
        while (*v == ' ' || *v == '"')
            v++;
        snprintf(x->r->etag, sizeof x->r->etag, "%.79s", v);
        char *q = strchr(x->r->etag, '"');
        if (q)
            *q = 0;
    } else if (!strncasecmp(line, "x-amz-object-lock-retain-until-date:", 36)) {
        const char *v = line + 36;
        while (*v == ' ')
            v++;
        snprintf(x->r->lock_until, sizeof x->r->lock_until, "%.39s", v);
    } else if (!strncasecmp(line, "retry-after:", 12)) {
        x->retry_after = strtol(line + 12, NULL, 10);
    } else if (!strncasecmp(line, "content-length:", 15)) {
        x->r->content_length = strtoull(line + 15, NULL, 10);
    } else if (!strncasecmp(line, "HTTP/", 5)) {
        /* A new response (after a redirect or 100): forget the old one. */
        x->r->etag[0] = 0;
        x->retry_after = -1;
    }
    return len;
}

static size_t on_upload(char *p, size_t size, size_t n, void *opaque)
{
    struct xfer *x = opaque;
    const struct s3_body *b = x->r->body;
    size_t want = size * n;

    if (x->upload_off >= b->len)
        return 0;
    if (want > b->len - x->upload_off)
        want = (size_t)(b->len - x->upload_off);
    if (b->fd < 0) {
        memcpy(p, (const char *)b->mem + x->upload_off, want);
    } else {
        ssize_t got = pread(b->fd, p, want, (off_t)x->upload_off);
        if (got <= 0)
            return CURL_READFUNC_ABORT;
        want = (size_t)got;
    }
    x->upload_off += want;
    return want;
}

static int url_of(const struct s3 *s, const struct s3_req *r, char *out, size_t cap)
{
    char path[3 * STORE_KEY_MAX * 2 + 8] = "", full[2 * STORE_KEY_MAX];
    const char *scheme_end = strstr(s->endpoint, "://");
    int n;

    if (r->key) {
        snprintf(full, sizeof full, "%s%s", s->prefix, r->key);
        if (s3_encode(full, true, path, sizeof path) < 0)
            return -1;
    }
    if (s->path_style || !scheme_end)
        n = snprintf(out, cap, "%s/%s/%s%s%s", s->endpoint, s->bucket, path,
                     r->query ? "?" : "", r->query ? r->query : "");
    else
        n = snprintf(out, cap, "%.*s%s.%s/%s%s%s", (int)(scheme_end + 3 - s->endpoint),
                     s->endpoint, s->bucket, scheme_end + 3, path, r->query ? "?" : "",
                     r->query ? r->query : "");
    if (n < 0 || (size_t)n >= cap) {
        error_set(ENAMETOOLONG, "URL too long");
        return -1;
    }
    return 0;
}

static void lock_until(unsigned days, char out[32])
{
    time_t t = time(NULL) + (time_t)days * 86400;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static struct curl_slist *headers_of(const struct s3 *s, const struct s3_req *r)
{
    struct curl_slist *hl = NULL, *t;
    char line[2200];
#define ADD(...)                                                       \
    do {                                                               \
        snprintf(line, sizeof line, __VA_ARGS__);                      \
        if (!(t = sym_curl_slist_append(hl, line)))                        \
            goto oom;                                                  \
        hl = t;                                                        \
    } while (0)

    ADD("x-amz-content-sha256: %s", r->body ? r->body->sha256 : EMPTY_SHA256);
    if (s->token[0])
        ADD("x-amz-security-token: %s", s->token);
    if (r->body) {
        char b64[32];
        if (md5_base64(r->body->md5, b64) == 0)
            ADD("Content-MD5: %s", b64);
        /* No "Expect:" to switch 100-continue off: libcurl would sign the
         * empty header without sending it (403 SignatureDoesNotMatch). */
        ADD("Content-Type: application/octet-stream");
    }
    if (r->lock && s->lock_days) {
        char until[32];
        lock_until(s->lock_days, until);
        ADD("x-amz-object-lock-mode: %s", s->lock_compliance ? "COMPLIANCE" : "GOVERNANCE");
        ADD("x-amz-object-lock-retain-until-date: %s", until);
    }
    if (r->range_len)
        ADD("Range: bytes=%llu-%llu", (unsigned long long)r->range_off,
            (unsigned long long)(r->range_off + r->range_len - 1));
    return hl;
#undef ADD
oom:
    sym_curl_slist_free_all(hl);
    return NULL;
}

static CURLcode attempt(struct s3 *s, CURL *h, struct s3_req *r, struct xfer *x, char *curl_err)
{
    char url[4096], sigv4[96];
    struct curl_slist *hl;
    CURLcode rc;

    if (url_of(s, r, url, sizeof url) < 0)
        return CURLE_URL_MALFORMAT;
    if (!(hl = headers_of(s, r)))
        return CURLE_OUT_OF_MEMORY;
    snprintf(sigv4, sizeof sigv4, "aws:amz:%s:s3", s->region);
    sym_curl_easy_reset(h);
    sym_curl_easy_setopt(h, CURLOPT_URL, url);
    sym_curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    sym_curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4);
    sym_curl_easy_setopt(h, CURLOPT_USERNAME, s->access);
    sym_curl_easy_setopt(h, CURLOPT_PASSWORD, s->secret);
    sym_curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    sym_curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    sym_curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    sym_curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)s->low_speed_time);
    sym_curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)s->timeout);
    sym_curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
    /* Windows of packs come in 512 KiB reads, not 16 KiB ones. */
    sym_curl_easy_setopt(h, CURLOPT_BUFFERSIZE, RECV_BUFFER);
    sym_curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    sym_curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    sym_curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    sym_curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    sym_curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (s->ca_file[0])
        sym_curl_easy_setopt(h, CURLOPT_CAINFO, s->ca_file);
    if (!strcmp(r->method, "HEAD")) {
        sym_curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (!strcmp(r->method, "PUT")) {
        sym_curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        /* A pack goes out in 1 MiB sends, not curl's 64 KiB: a sixteenth
         * of the read callbacks and send(2)s. */
        sym_curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, (long)UPLOAD_BUFFER);
        sym_curl_easy_setopt(h, CURLOPT_READFUNCTION, on_upload);
        sym_curl_easy_setopt(h, CURLOPT_READDATA, x);
        sym_curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body->len);
    } else if (strcmp(r->method, "GET")) {
        sym_curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
    }
    curl_err[0] = 0;
    rc = sym_curl_easy_perform(h);
    sym_curl_slist_free_all(hl);
    return rc;
}

/* S3's <Code> from an error body ("" when none). */
static void error_code(const char *body, char *out, size_t cap)
{
    const char *a = strstr(body, "<Code>"), *b;

    out[0] = 0;
    if (a && (b = strstr(a + 6, "</Code>")) && (size_t)(b - a - 6) < cap)
        snprintf(out, cap, "%.*s", (int)(b - a - 6), a + 6);
}

static bool retryable_curl(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT: case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT: case CURLE_SEND_ERROR: case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE: case CURLE_GOT_NOTHING: case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
        return true;
    default:
        return false;
    }
}

static void backoff(unsigned attempt_no, long retry_after)
{
    uint64_t ms = BACKOFF_BASE_MS;
    uint32_t rnd = 0;

    for (unsigned i = 0; i < attempt_no && ms < BACKOFF_CAP_MS; i++)
        ms *= 2;
    if (ms > BACKOFF_CAP_MS)
        ms = BACKOFF_CAP_MS;
    (void)getrandom(&rnd, sizeof rnd, GRND_NONBLOCK);
    ms = ms / 2 + rnd % (ms / 2 + 1);              /* jitter: [ms/2, ms] */
    if (retry_after > 0) {
        uint64_t ra = (uint64_t)(retry_after > RETRY_AFTER_CAP_S ? RETRY_AFTER_CAP_S : retry_after) * 1000;
        if (ra > ms)
            ms = ra;
    }
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void name_of(const struct s3 *s, const struct s3_req *r, char *out, size_t cap)
{
    snprintf(out, cap, "s3://%s/%s%s", s->bucket, s->prefix, r->key ? r->key : "");
}

static int fail_status(const struct s3 *s, struct s3_req *r, const char *errbody)
{
    char name[STORE_KEY_MAX * 2 + 80];
    int err = r->status == 404 ? ENOENT : r->status == 403 ? EACCES : EIO;

    static const struct { long status; const char *name; } reasons[] = {
        { 400, "BadRequest" }, { 403, "Forbidden" }, { 409, "Conflict" },
        { 429, "TooManyRequests" }, { 500, "InternalError" }, { 501, "NotImplemented" },
        { 502, "BadGateway" }, { 503, "ServiceUnavailable" }, { 504, "GatewayTimeout" },
    };

    error_code(errbody, r->code, sizeof r->code);
    if (!r->code[0] && r->status == 404)
        snprintf(r->code, sizeof r->code, "%s", r->key ? "NoSuchKey" : "NoSuchBucket");
    /* A HEAD answer has no body: the status's own name. */
    for (size_t i = 0; !r->code[0] && i < sizeof reasons / sizeof *reasons; i++)
        if (reasons[i].status == r->status)
            snprintf(r->code, sizeof r->code, "%s", reasons[i].name);
    name_of(s, r, name, sizeof name);
    if (r->status == 404 && !strcmp(r->code, "NoSuchKey"))
        error_set(ENOENT, "%s is missing", name);
    else if (r->status == 404 && !strcmp(r->code, "NoSuchBucket"))
        error_set(ENXIO, "%s %s: 404 NoSuchBucket (the bucket %s does not exist at %s)", r->method,
                  name, s->bucket, s->endpoint);
    else
        error_set(err, "%s %s: %ld %s", r->method, name, r->status, r->code[0] ? r->code : "error");
    return -1;
}

int s3_do(struct s3 *s, struct s3_req *r)
{
    char curl_err[CURL_ERROR_SIZE], name[STORE_KEY_MAX * 2 + 80];
    struct xfer *x = calloc(1, sizeof *x);
    CURL *h = NULL;
    int ret = -1;

    if (!x || !(h = handle_get(s))) {
        if (!x)
            error_set(ENOMEM, "out of memory");
        free(x);
        return -1;
    }
    for (unsigned n = 0;; n++) {
        *x = (struct xfer){ .r = r, .h = h, .retry_after = -1 };
        r->out_len = 0;
        free(r->resp);
        r->resp = NULL;
        r->resp_len = 0;
        r->status = 0;
        r->code[0] = 0;
        r->etag[0] = 0;
        r->lock_until[0] = 0;
        CURLcode rc = attempt(s, h, r, x, curl_err);
        bool again;
        if (rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && status_of(h) >= 300)) {
            r->status = status_of(h);
            error_code(x->err, r->code, sizeof r->code);
            again = r->status >= 500 || r->status == 429 || !strcmp(r->code, "SlowDown");
            if (r->status >= 200 && r->status < 300) {
                ret = 0;
                break;
            }
        } else {
            again = retryable_curl(rc);
        }
        if (!again || n >= s->retries) {
            name_of(s, r, name, sizeof name);
            if (x->overflow)
                error_set(EIO, "%s %s: the answer is longer than asked for", r->method, name);
            else if (r->status)
                fail_status(s, r, x->err);
            else
                error_set(EIO, "%s %s: %s", r->method, name, curl_err[0] ? curl_err : sym_curl_easy_strerror(rc));
            if (n > 0)
                error_prefix("after %u attempts: ", n + 1);
            break;
        }
        pthread_mutex_lock(&s->mu);
        s->retried++;
        pthread_mutex_unlock(&s->mu);
        if (log_enabled(LOG_LEVEL_DEBUG)) {
            name_of(s, r, name, sizeof name);
            log_msg(LOG_LEVEL_DEBUG, "s3: retrying %s %s (%ld %s%s)", r->method, name, r->status,
                    r->code, curl_err);
        }
        backoff(n, x->retry_after);
    }
    handle_put(s, h, ret == 0 || r->status > 0);
    free(x);
    return ret;
}
