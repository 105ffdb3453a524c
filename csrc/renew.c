/*
 * renew.c: the renewer, one background thread per process, and the lock's reference-counted
 * C state. It touches no lua_State.
 *
 * Held locks: the renewer renews each one's session every lease/2 (the lease: the TTL, or the
 * lock-delay when shorter; every second after a failure, until the TTL has passed since the
 * last renewal that succeeded was sent), adopts a TTL that
 * Consul raises, and watches the key with a blocking query from 50 ms after acquiring: the
 * key deleted, taken over, or left by our session marks the lock lost at once.
 *
 * Jobs: a lock to release or a session to end, run as the same release machines the Lua
 * side runs (lock.c, semaphore.c): a lock collected by Lua, a failed attempt's session, a
 * release that failed for a reason worth retrying. A job that fails so is retried with
 * backoff (0.1 s to 1 s, so a lock freed during a leader election is free again within a
 * second of the new leader) for up to twice the session's TTL; then its session has ended
 * by itself. Such a job works on a copy of the lock's identity, so the lock itself is free
 * to be acquired again meanwhile.
 *
 * All requests run on one libcurl multi handle, each lock and job with its own easy
 * handles. A lock released within 50 ms of acquiring never had a request made for it here:
 * taking it back is a list operation under the mutex, and while locks come and go the renewer
 * looks every 50 ms by itself rather than being woken for each. At process exit (atexit)
 * what is still held is released and the jobs are given their chance, 3 seconds at most.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_WAIT_MS 3000
#define RETRY_MS 1000
#define FIRST_WATCH_MS 50  /* a lock held for less needs no watch (and opens no connection) */
#define JOB_RETRY_MIN_MS 100
#define JOB_RETRY_MAX_MS 1000
#define JOB_MIN_LIFE_MS 10000
#define NEVER CONSUL_NEVER

enum { CTL_IDLE, CTL_RENEW };
enum { ROLE_CTL = 1, ROLE_WATCH, ROLE_JOB };

/* A background release: its machine, its connection, its schedule. */
typedef struct job {
    consul_lock *lk;          /* a reference */
    consul_mach m;
    consul_http http;
    consul_resp rs;
    int busy;                 /* a request in flight */
    int64_t wake;             /* when to step it again (NEVER: when its request ends) */
    int64_t give_up;
    int64_t backoff;
    struct job *next;
} job;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;  /* a lock or a job left its list */
static consul_lock *head;
static job *jobs;
static CURLM *multi;
static int started;
static int64_t wake_at = NEVER;  /* when the renewer will look again by itself */
static int64_t last_start;       /* when a lock was last registered */
#define LINGER_MS 2000  /* after a registration, look every FIRST_WATCH_MS this long */
static int exiting;  /* set once by atexit, which then keeps mu: see renew_atexit */

/* ---- the lock's state --------------------------------------------------- */

consul_lock *consul_lock_new(consul_conf *cf)
{
    consul_lock *lk = calloc(1, sizeof *lk);
    if (lk == NULL)
        return NULL;
    lk->refs = 1;
    lk->flags = CONSUL_LOCK_FLAG;
    lk->conf = consul_conf_retain(cf);
    return lk;
}

void consul_lock_retain(consul_lock *lk)
{
    __atomic_add_fetch(&lk->refs, 1, __ATOMIC_RELAXED);
}

int consul_lock_handle(consul_lock *lk, consul_http *h)
{
    if (h->easy != NULL)
        return 0;
    if (consul_http_init(h, lk->conf) != 0) {
        consul_http_release(h);
        return -1;
    }
    return 0;
}

void consul_lock_free_handles(consul_lock *lk)
{
    consul_http_release(&lk->http);
    consul_http_release(&lk->watch);
    consul_http_release(&lk->own);
    consul_buf_free(&lk->ctl_out);
    consul_buf_free(&lk->watch_out);
}

void consul_lock_unref(consul_lock *lk)
{
    if (lk == NULL || __atomic_sub_fetch(&lk->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    consul_lock_free_handles(lk);
    consul_conf_release(lk->conf);
    free(lk->key);
    free(lk->path);
    free(lk->value);
    free(lk->name);
    free(lk);
}

/* The local lease, from when the last renewal that succeeded was sent: no longer than the
 * TTL (after it Consul may let the session go whenever it likes) nor, when the session has a
 * lock-delay, than that. A session may end at any moment for its node (failed, left) without
 * a word to us, but a lock it held is then kept from anyone else for its lock-delay, counted
 * from a moment after our renewal was sent; semaphore contenders wait as long before they
 * prune a dead holder (semaphore.c). 0: no lease (a session of the caller's, with no TTL
 * that we know of). */
int64_t consul_lock_lease(const consul_lock *lk)
{
    int64_t ttl = LOAD(&lk->ttl_ms);
    if (ttl > 0 && lk->own_session && lk->lock_delay_ms > 0 && lk->lock_delay_ms < ttl)
        return lk->lock_delay_ms;
    return ttl;
}

int consul_lock_held(consul_lock *lk)
{
    int64_t lease = consul_lock_lease(lk);
    if (!LOAD(&lk->held) || LOAD(&lk->lost))
        return 0;
    /* no successful renewal for a whole lease: Consul may have given it to another by now,
     * whether or not we can reach it to ask (a later renewal that succeeds gives it back) */
    return lease <= 0 || consul_now_ms() - LOAD(&lk->lease_ms) < lease;
}

/* A copy of what a release needs to know of lk, for a job; lk then has no session. */
static consul_lock *take_identity(consul_lock *lk)
{
    consul_lock *c = consul_lock_new(lk->conf);
    size_t plen = strlen(lk->path);
    if (c == NULL)
        return NULL;
    c->key = malloc(lk->key_len + 1);
    c->path = malloc(plen + 1);
    c->value = lk->value != NULL ? malloc(lk->value_len + 1) : NULL;
    if (c->key == NULL || c->path == NULL || (lk->value != NULL && c->value == NULL)) {
        consul_lock_unref(c);
        return NULL;
    }
    memcpy(c->key, lk->key, lk->key_len + 1);
    c->key_len = lk->key_len;
    memcpy(c->path, lk->path, plen + 1);
    if (lk->value != NULL)
        memcpy(c->value, lk->value, lk->value_len + 1);
    c->value_len = lk->value_len;
    c->flags = lk->flags;
    c->kind = lk->kind;
    c->limit = lk->limit;
    memcpy(c->session, lk->session, sizeof c->session);
    c->own_session = lk->own_session;
    c->ttl_ms = LOAD(&lk->ttl_ms);
    c->lease_ms = LOAD(&lk->lease_ms);
    lk->session[0] = '\0';
    lk->own_session = 0;
    lk->release_pending = 0;
    return c;
}

/* ---- the renewer's requests (all under mu) ------------------------------------ */

static int start(consul_http *h, int role, void *owner, consul_conf *cf, const consul_req *rq,
                 consul_resp *rs, consul_buf *out)
{
    if (h->easy == NULL && consul_http_init(h, cf) != 0) {
        consul_http_release(h);
        return -1;
    }
    h->role = role;
    h->owner = owner;
    curl_easy_setopt(h->easy, CURLOPT_PRIVATE, (void *)h);
    return consul_http_start(h, multi, rq, rs, out) == CONSUL_OK ? 0 : -1;
}

static void lock_req(consul_req *rq, const char *method, const char *path, const char *query,
                     long wait_ms, long timeout_ms)
{
    memset(rq, 0, sizeof *rq);
    rq->method = method;
    rq->path = path;
    rq->query = query;
    rq->wait_ms = wait_ms;
    rq->timeout_ms = timeout_ms + wait_ms + wait_ms / 16;
}

static void abort_all(consul_lock *lk)
{
    consul_resp rs;  /* what an aborted transfer leaves: nobody reads it */
    if (lk->ctl_step != CTL_IDLE) {
        consul_resp_reset(&rs);
        consul_http_abort(&lk->http, multi, &rs);
    }
    if (lk->watch_busy) {
        consul_resp_reset(&rs);
        consul_http_abort(&lk->watch, multi, &rs);
    }
    lk->ctl_step = CTL_IDLE;
    lk->watch_busy = 0;
}

static void unlink_lock(consul_lock *lk)
{
    if (lk->prev != NULL)
        lk->prev->next = lk->next;
    else
        head = lk->next;
    if (lk->next != NULL)
        lk->next->prev = lk->prev;
    lk->next = lk->prev = NULL;
    lk->registered = 0;
    pthread_cond_broadcast(&cv);
}

static void renew_done(consul_lock *lk, consul_json *doc)
{
    consul_resp *rs = &lk->ctl_rs;
    cJSON *ttl;
    int64_t now = consul_now_ms(), ms;
    if (rs->status == 404) {
        STORE(&lk->lost, 1);  /* the session is gone */
        return;
    }
    if (rs->code != CONSUL_OK || rs->status != 200) {
        lk->next_renew = now + RETRY_MS;
        return;
    }
    STORE(&lk->lease_ms, lk->renew_sent);  /* counted from when it was sent */
    if (consul_json_parse(doc, rs->body, rs->body_len) == 0 && cJSON_IsArray(doc->root) &&
        (ttl = cJSON_GetObjectItemCaseSensitive(doc->root->child, "TTL")) != NULL &&
        cJSON_IsString(ttl) && (ms = consul_duration_ms(ttl->valuestring)) > 0)
        STORE(&lk->ttl_ms, ms);  /* Consul may raise it */
    consul_json_free(doc);
    lk->next_renew = lk->renew_sent + consul_lock_lease(lk) / 2;
}

static void watch_done(consul_lock *lk, consul_json *doc)
{
    consul_resp *rs = &lk->watch_rs;
    cJSON *rec;
    uint64_t flags;
    size_t n;
    const char *s;
    int ours;
    if (rs->status == 404) {
        STORE(&lk->lost, 1);  /* deleted */
        return;
    }
    if (rs->code != CONSUL_OK || rs->status != 200 ||
        consul_json_parse(doc, rs->body, rs->body_len) != 0 || !cJSON_IsArray(doc->root) ||
        (rec = doc->root->child) == NULL) {
        consul_json_free(doc);
        lk->next_watch = consul_now_ms() + RETRY_MS;
        return;
    }
    if (lk->kind == CONSUL_KIND_SEMAPHORE) {
        ours = consul_sem_check(lk, doc) > 0;
    } else {
        s = consul_json_field_str(doc, rec, "Session", &n);
        ours = s != NULL && n == strlen(lk->session) && memcmp(s, lk->session, n) == 0 &&
               consul_json_u64(doc, cJSON_GetObjectItemCaseSensitive(rec, "Flags"), &flags) == 0 &&
               flags == lk->flags;
    }
    consul_json_free(doc);
    if (!ours)
        STORE(&lk->lost, 1);
    /* An index that goes backwards (a restored snapshot, say) starts the watch over. */
    lk->watch_index = rs->has_index && rs->index >= lk->watch_index ? rs->index : 0;
    lk->next_watch = consul_now_ms();
}

/* What a held lock needs now; returns when it next needs something. */
static int64_t tend(consul_lock *lk, int64_t now)
{
    int64_t ttl = LOAD(&lk->ttl_ms), next = NEVER;
    long timeout = lk->conf->timeout_ms;
    if (lk->detach)
        return NEVER;
    if (LOAD(&lk->lost)) {
        abort_all(lk);
        return NEVER;
    }
    if (ttl > 0 && now - LOAD(&lk->lease_ms) >= ttl) {
        STORE(&lk->lost, 1);  /* the lease ran out locally */
        abort_all(lk);
        return NEVER;
    }
    if (ttl > 0 && lk->ctl_step == CTL_IDLE) {
        if (now >= lk->next_renew) {
            consul_buf b = CONSUL_BUF_INIT;
            int ok = consul_buf_adds(&b, "/v1/session/renew/") == 0 &&
                     consul_buf_add_escaped(&b, lk->session, strlen(lk->session), 0) == 0 &&
                     b.len < sizeof lk->ctl_path;
            if (ok)
                memcpy(lk->ctl_path, b.data, b.len + 1);
            consul_buf_free(&b);
            /* a renewal may take no longer than the lease has left */
            lock_req(&lk->ctl_rq, "PUT", lk->ctl_path, NULL, 0,
                     timeout < ttl - (now - LOAD(&lk->lease_ms)) ? timeout
                                                                   : ttl - (now - LOAD(&lk->lease_ms)));
            lk->renew_sent = now;
            if (ok && start(&lk->http, ROLE_CTL, lk, lk->conf, &lk->ctl_rq, &lk->ctl_rs,
                            &lk->ctl_out) == 0)
                lk->ctl_step = CTL_RENEW;
            else
                lk->next_renew = now + RETRY_MS;
        }
        if (lk->ctl_step == CTL_IDLE)
            next = lk->next_renew;
    }
    if (ttl > 0) {
        int64_t expiry = LOAD(&lk->lease_ms) + ttl;
        if (expiry < next)
            next = expiry;
    }
    if (!lk->watch_busy) {
        if (now >= lk->next_watch) {
            snprintf(lk->watch_query, sizeof lk->watch_query, "%sindex=%llu&wait=%dms",
                     lk->kind == CONSUL_KIND_SEMAPHORE ? "recurse&" : "",
                     (unsigned long long)lk->watch_index, CONSUL_MAX_WAIT_MS);
            lock_req(&lk->watch_rq, "GET", lk->path, lk->watch_query, CONSUL_MAX_WAIT_MS,
                     timeout);
            if (start(&lk->watch, ROLE_WATCH, lk, lk->conf, &lk->watch_rq, &lk->watch_rs,
                      &lk->watch_out) == 0)
                lk->watch_busy = 1;
            else
                lk->next_watch = now + RETRY_MS;
        }
        if (!lk->watch_busy && lk->next_watch < next)
            next = lk->next_watch;
    }
    return next;
}

/* ---- jobs ---------------------------------------------------------------------- */

/* A new job releasing lk (its reference moves to the job). Under mu. */
static job *add_job(consul_lock *lk)
{
    int64_t now = consul_now_ms(), ttl = LOAD(&lk->ttl_ms);
    job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->lk = lk;
    consul_mach_init(&j->m, lk->conf);
    consul_lock_release_init(&j->m, lk);
    j->m.abandon = NULL;  /* the renewer's own: given up only when its time is over */
    j->wake = now;
    j->backoff = JOB_RETRY_MIN_MS;
    j->give_up = now + (2 * ttl > JOB_MIN_LIFE_MS ? 2 * ttl : JOB_MIN_LIFE_MS);
    j->next = jobs;
    jobs = j;
    return j;
}

static void free_job(job *j)
{
    consul_mach_release(&j->m);
    consul_http_release(&j->http);
    consul_lock_unref(j->lk);
    free(j);
}

/* Steps a job with rs (NULL: the start, or after a sleep) until it waits for something.
 * 1 when it is over (the caller unlinks and frees it). Under mu. */
static int step_job(job *j, const consul_resp *rs)
{
    int act = j->m.step != NULL ? j->m.step(&j->m, rs) : CONSUL_DONE;
    int64_t now = consul_now_ms();
    if (act == CONSUL_SEND) {
        if (start(&j->http, ROLE_JOB, j, j->lk->conf, &j->m.rq, &j->rs, &j->m.out) == 0) {
            j->busy = 1;
            j->wake = NEVER;
            return 0;
        }
        act = CONSUL_DONE;
        j->m.rc = CONSUL_ENOMEM;
    }
    if (act == CONSUL_SLEEP) {
        j->wake = now + j->m.sleep_ms;
        return 0;
    }
    if (j->m.rc == CONSUL_OK || j->lk->session[0] == '\0' || now >= j->give_up ||
        !(consul_retryable(j->m.rc, j->m.last.status) || j->m.rc == CONSUL_ENOMEM))
        return 1;
    /* Worth another try: the same release from the start, after a pause. */
    consul_mach_release(&j->m);
    consul_mach_init(&j->m, j->lk->conf);
    consul_lock_release_init(&j->m, j->lk);
    j->m.abandon = NULL;
    j->wake = now + j->backoff;
    j->backoff = j->backoff * 2 > JOB_RETRY_MAX_MS ? JOB_RETRY_MAX_MS : j->backoff * 2;
    return 0;
}

static void unlink_job(job *j)
{
    job **p = &jobs;
    while (*p != NULL && *p != j)
        p = &(*p)->next;
    if (*p == j)
        *p = j->next;
    pthread_cond_broadcast(&cv);
}

/* ---- the thread -------------------------------------------------------------------- */

static void *renewer(void *arg)
{
    consul_json doc;
    (void)arg;
    memset(&doc, 0, sizeof doc);
    pthread_mutex_lock(&mu);
    for (;;) {
        int64_t now = consul_now_ms(), next = NEVER;
        consul_lock *lk, *nx;
        job *j, *jn;
        CURLMsg *msg;
        int running, left;

        for (lk = head; lk != NULL; lk = nx) {
            int64_t t;
            nx = lk->next;
            if (lk->detach) {
                /* taken back (release()), or collected by Lua (release it here) */
                abort_all(lk);
                unlink_lock(lk);
                if (!lk->release_on_detach || add_job(lk) == NULL)
                    consul_lock_unref(lk);  /* the renewer's reference */
                continue;
            }
            t = tend(lk, now);
            if (t < next)
                next = t;
        }
        for (j = jobs; j != NULL; j = jn) {
            jn = j->next;
            if (!j->busy && j->wake <= now && step_job(j, NULL)) {
                unlink_job(j);
                free_job(j);
                continue;
            }
            if (!j->busy && j->wake < next)
                next = j->wake;
        }
        if (next == NEVER && now - last_start < LINGER_MS)
            next = now + FIRST_WATCH_MS;  /* locks come and go: no wakeup for each */
        wake_at = next;
        pthread_mutex_unlock(&mu);
        now = consul_now_ms();
        curl_multi_poll(multi, NULL, 0,
                        next == NEVER ? CONSUL_MAX_WAIT_MS : next <= now ? 0 : (int)(next - now),
                        NULL);
        pthread_mutex_lock(&mu);
        wake_at = 0;  /* awake: a new lock needs no wakeup until the next plan */
        curl_multi_perform(multi, &running);
        while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
            char *priv = NULL;
            consul_http *h;
            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
            if ((h = (consul_http *)(void *)priv) == NULL)
                continue;
            if (h->role == ROLE_JOB) {
                j = h->owner;
                consul_http_finish(&j->http, multi, msg->data.result, &j->rs);
                j->busy = 0;
                if (step_job(j, &j->rs)) {
                    unlink_job(j);
                    free_job(j);
                }
            } else if (h->role == ROLE_WATCH) {
                lk = h->owner;
                consul_http_finish(&lk->watch, multi, msg->data.result, &lk->watch_rs);
                lk->watch_busy = 0;
                if (!lk->detach)
                    watch_done(lk, &doc);
            } else if (h->role == ROLE_CTL) {
                lk = h->owner;
                consul_http_finish(&lk->http, multi, msg->data.result, &lk->ctl_rs);
                lk->ctl_step = CTL_IDLE;
                if (!lk->detach)
                    renew_done(lk, &doc);
            }
        }
    }
    return NULL;
}

/* ---- the Lua side's calls ------------------------------------------------------ */

static int ensure_started(void)
{
    pthread_t th;
    if (started)
        return 0;
    consul_http_global_init();
    multi = curl_multi_init();
    if (multi == NULL)
        return -1;
    if (pthread_create(&th, NULL, renewer, NULL) != 0) {
        curl_multi_cleanup(multi);
        multi = NULL;
        return -1;
    }
    pthread_detach(th);  /* it lives as long as the process */
    started = 1;
    return 0;
}

int consul_renew_start(consul_lock *lk)
{
    int64_t now = consul_now_ms();
    if (LOAD(&exiting))
        return -1;
    pthread_mutex_lock(&mu);
    if (ensure_started() != 0) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    STORE(&lk->lost, 0);
    lk->detach = lk->release_on_detach = 0;
    lk->ctl_step = CTL_IDLE;
    lk->watch_busy = 0;
    lk->watch_index = lk->fence;
    lk->next_renew = LOAD(&lk->lease_ms) + consul_lock_lease(lk) / 2;
    lk->next_watch = now + FIRST_WATCH_MS;
    consul_lock_retain(lk);
    lk->registered = 1;
    last_start = now;
    lk->prev = NULL;
    lk->next = head;
    if (head != NULL)
        head->prev = lk;
    head = lk;
    /* Wake the renewer only when it would otherwise look too late. */
    if (wake_at > lk->next_watch || (LOAD(&lk->ttl_ms) > 0 && wake_at > lk->next_renew)) {
        wake_at = 0;
        curl_multi_wakeup(multi);
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int consul_renew_exiting(void)
{
    return LOAD(&exiting);
}

int consul_renew_stop(consul_lock *lk, int release)
{
    if (LOAD(&exiting)) {
        /* Past the atexit wait (a state closed late, a finalizer): mu stays with exit and the
         * renewer is parked. A lock it still has is its own now; registered no longer
         * changes (only under mu). */
        return lk->registered ? -1 : 0;
    }
    pthread_mutex_lock(&mu);
    if (!lk->registered) {
        pthread_mutex_unlock(&mu);
        return 0;
    }
    if (release) {
        lk->detach = lk->release_on_detach = 1;
        curl_multi_wakeup(multi);
    } else if (lk->ctl_step == CTL_IDLE && !lk->watch_busy) {
        /* Nothing in flight: take it back here, no need to wake anyone. */
        unlink_lock(lk);
        __atomic_sub_fetch(&lk->refs, 1, __ATOMIC_RELAXED);  /* the caller still holds one */
    } else {
        lk->detach = 1;
        curl_multi_wakeup(multi);
        while (lk->registered)
            pthread_cond_wait(&cv, &mu);
    }
    pthread_mutex_unlock(&mu);
    return 0;
}

int consul_renew_cleanup(consul_lock *lk)
{
    consul_lock *c;
    if (LOAD(&exiting) || lk->session[0] == '\0')
        return -1;
    pthread_mutex_lock(&mu);
    if (ensure_started() != 0 || (c = take_identity(lk)) == NULL) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    if (add_job(c) == NULL) {
        consul_lock_unref(c);
        pthread_mutex_unlock(&mu);
        return -1;
    }
    wake_at = 0;
    curl_multi_wakeup(multi);
    pthread_mutex_unlock(&mu);
    return 0;
}

/* At exit, locks still registered are released by the renewer and the jobs run, a few
 * seconds at most. Then the mutex stays taken: the renewer parks on it the next time it
 * comes back from libcurl, so none of its requests runs on while the rest of exit tears down
 * (OpenSSL's own atexit cleanup, say). Calls made after this point (a finalizer of a state
 * closed later) return at once instead of waiting for it. */
static void renew_atexit(void)
{
    struct timespec until;
    consul_lock *lk;
    pthread_mutex_lock(&mu);
    if (!started) {
        pthread_mutex_unlock(&mu);
        return;
    }
    for (lk = head; lk != NULL; lk = lk->next)
        lk->detach = lk->release_on_detach = 1;
    curl_multi_wakeup(multi);
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += EXIT_WAIT_MS / 1000;
    while (head != NULL || jobs != NULL)
        if (pthread_cond_timedwait(&cv, &mu, &until) != 0)
            break;
    STORE(&exiting, 1);
    /* mu is not given back */
}

/* fork() copies this process's memory but not its renewer: the child starts afresh. Locks
 * taken before the fork are the parent's: the child sees them lost and never renews nor
 * releases them (their session is the parent's to end); so are the parent's jobs. */
static void atfork_child(void)
{
    consul_lock *lk, *nx;
    pthread_mutex_init(&mu, NULL);
    pthread_cond_init(&cv, NULL);
    for (lk = head; lk != NULL; lk = nx) {
        nx = lk->next;
        lk->next = lk->prev = NULL;
        lk->registered = 0;
        lk->ctl_step = CTL_IDLE;
        lk->watch_busy = 0;
        lk->session[0] = '\0';
        lk->own_session = 0;
        STORE(&lk->lost, 1);
        STORE(&lk->held, 0);
        /* the renewer's reference is not given back: the parent's renewer holds it */
    }
    head = NULL;
    jobs = NULL;  /* the parent's, with the parent's connections: left as they are */
    multi = NULL;
    started = 0;
    wake_at = NEVER;
}

static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;

static void register_atexit(void)
{
    atexit(renew_atexit);
    pthread_atfork(NULL, NULL, atfork_child);
}

void consul_renew_atexit_once(void)
{
    pthread_once(&atexit_once, register_atexit);
}
