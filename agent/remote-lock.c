/* agent/remote-lock.c: lock objects in the bucket (agent/remote.h).
 *
 * A lock is an object "locks/<kind>-<random>" holding JSON: its kind
 * (shared for a backup, exclusive for prune and gc), host, pid, what it
 * is for and when it was last refreshed.  Taking one: write it, then list
 * the others; a conflicting live one (exclusive against anything) makes
 * us remove ours and refuse, naming the holder.  Both of two racing
 * takers may refuse, never both succeed.  A holder refreshes its lock
 * every 5 minutes; one not refreshed for 30 minutes is stale and removed
 * with a warning (restic's rules).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "agent/internal.h"
#include "agent/remote.h"
#include "common/error.h"
#include "store/store.h"

#define LOCKS "locks/"
#define REFRESH_S 300
#define STALE_S 1800

struct remote_lock {
    struct agent_repo *r;
    char key[STORE_KEY_MAX];
    char body[1024];
    bool exclusive;
    char what[256];
    pthread_t refresher;
    bool started, stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static unsigned env_secs(const char *name, unsigned dflt)
{
    const char *v = getenv(name);        /* tests: shorter times */
    return v && atoi(v) > 0 ? (unsigned)atoi(v) : dflt;
}

static int write_lock(struct remote_lock *l)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    struct json_object *j = json_object_new_object();
    json_object_object_add(j, "kind", json_object_new_string(l->exclusive ? "exclusive" : "shared"));
    json_object_object_add(j, "host", json_object_new_string(host));
    json_object_object_add(j, "pid", json_object_new_int((int)getpid()));
    json_object_object_add(j, "what", json_object_new_string(l->what));
    json_object_object_add(j, "time", json_object_new_int64((int64_t)time(NULL)));
    snprintf(l->body, sizeof l->body, "%s", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
    json_object_put(j);
    return store_put_all(l->r->store, l->key, l->body, strlen(l->body));
}

struct holder {
    char key[STORE_KEY_MAX];
    bool exclusive;
    char host[256], what[256];
    long long pid, time;
};

static int read_holder(struct agent_repo *r, const char *key, struct holder *h)
{
    void *buf;
    size_t len;

    memset(h, 0, sizeof *h);
    snprintf(h->key, sizeof h->key, "%s", key);
    if (store_get_all(r->store, key, &buf, &len) < 0)
        return error_errno() == ENOENT ? 0 : -1;      /* released meanwhile */
    char *txt = strndup(buf, len);
    free(buf);
    struct json_object *j = txt ? json_tokener_parse(txt) : NULL, *v;
    free(txt);
    if (j && json_object_object_get_ex(j, "kind", &v))
        h->exclusive = !strcmp(json_object_get_string(v), "exclusive");
    else
        h->exclusive = true;       /* a lock we cannot read excludes everything */
    if (j && json_object_object_get_ex(j, "host", &v))
        snprintf(h->host, sizeof h->host, "%s", json_object_get_string(v));
    if (j && json_object_object_get_ex(j, "what", &v))
        snprintf(h->what, sizeof h->what, "%s", json_object_get_string(v));
    if (j && json_object_object_get_ex(j, "pid", &v))
        h->pid = json_object_get_int64(v);
    if (j && json_object_object_get_ex(j, "time", &v))
        h->time = json_object_get_int64(v);
    json_object_put(j);
    return 1;
}

struct scan {
    struct remote_lock *l;
    agent_warn_fn warn;
    void *opaque;
    struct holder conflict;
    bool found;
};

static int check_other(void *opaque, const char *key, uint64_t size, bool partial)
{
    struct scan *sc = opaque;
    struct holder h;
    int f;

    if (!strcmp(key, sc->l->key) || sc->found)
        return 0;
    if ((f = read_holder(sc->l->r, key, &h)) <= 0)
        return f;
    long long age = (long long)time(NULL) - h.time;
    if (age > (long long)env_secs("NBDVAULT_S3_LOCK_STALE", STALE_S)) {
        agent_notify(sc->warn, sc->opaque, "breaking the stale lock %s of %s on %s (pid %lld), "
                     "not refreshed for %lld s", key, h.what[0] ? h.what : "?", h.host, h.pid, age);
        return store_remove(sc->l->r->store, key) < 0 && error_errno() != ENOENT ? -1 : 0;
    }
    if (sc->l->exclusive || h.exclusive) {
        sc->conflict = h;
        sc->found = true;
    }
    return 0;
}

static void *refresh_main(void *opaque)
{
    struct remote_lock *l = opaque;

    pthread_setname_np(pthread_self(), "nbdvault-lock");
    unsigned every = env_secs("NBDVAULT_S3_LOCK_REFRESH", REFRESH_S);

    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += every;
        if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) == ETIMEDOUT && !l->stop) {
            pthread_mutex_unlock(&l->mu);
            (void)write_lock(l);   /* a failed refresh is tried again next time */
            pthread_mutex_lock(&l->mu);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

struct remote_lock *remote_lock(struct agent_repo *r, bool exclusive, const char *what,
                                agent_warn_fn warn, void *opaque)
{
    struct remote_lock *l = calloc(1, sizeof *l);
    char rnd[17];
    uint8_t b[8];

    if (!l) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    l->r = r;
    l->exclusive = exclusive;
    snprintf(l->what, sizeof l->what, "%s", what);
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        error_set(EIO, "getrandom: %s", strerror(errno));
        goto fail;
    }
    for (int i = 0; i < 8; i++)
        snprintf(rnd + 2 * i, 3, "%02x", b[i]);
    snprintf(l->key, sizeof l->key, LOCKS "%s-%s", exclusive ? "exclusive" : "shared", rnd);
    if (write_lock(l) < 0)
        goto fail;
    struct scan sc = { .l = l, .warn = warn, .opaque = opaque };
    if (store_list(r->store, LOCKS, check_other, &sc) < 0)
        goto fail_written;
    if (sc.found) {
        char when[32];
        time_t t = (time_t)sc.conflict.time;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
        error_set(EBUSY, "%s is locked by %s on host %s (pid %lld, refreshed %s; lock object %s)",
                  r->dir, sc.conflict.what[0] ? sc.conflict.what : "another nbdvault",
                  sc.conflict.host, sc.conflict.pid, when, sc.conflict.key);
        goto fail_written;
    }
    if (pthread_create(&l->refresher, NULL, refresh_main, l) == 0)
        l->started = true;
    return l;
fail_written:;
    struct error_saved e;
    error_save(&e);
    (void)store_remove(r->store, l->key);
    error_restore(&e);
fail:
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
    return NULL;
}

void remote_unlock(struct remote_lock *l)
{
    if (!l)
        return;
    if (l->started) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->refresher, NULL);
    }
    struct error_saved e;
    error_save(&e);
    (void)store_remove(l->r->store, l->key);
    error_restore(&e);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
}

int agent_bucket_lock(struct agent_repo *r, bool exclusive, const char *task, const char *disk,
                      unsigned wait_s, agent_warn_fn warn, void *opaque, struct remote_lock **out)
{
    char what[320];
    bool said = false;

    if (disk)
        snprintf(what, sizeof what, "%s of %s", task, disk);
    else
        snprintf(what, sizeof what, "%s", task);
    *out = NULL;
    for (unsigned waited = 0; !(*out = remote_lock(r, exclusive, what, warn, opaque)); waited++) {
        if (error_errno() != EBUSY || waited >= wait_s)
            return -1;
        if (!said)
            agent_notify(warn, opaque, "waiting for the repository: %s", error_msg());
        said = true;
        sleep(1);
    }
    if (remote_sync(r) < 0) {
        struct error_saved e;
        error_save(&e);
        remote_unlock(*out);
        *out = NULL;
        error_restore(&e);
        return -1;
    }
    return 0;
}
