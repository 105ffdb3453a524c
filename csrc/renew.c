/*
 * renew.c: the renewer, one background thread per process that keeps every held lock alive,
 * and the lock's reference-counted C state.
 *
 * For each registered lock the renewer renews the session every TTL/2 (every second after a
 * failure, until the TTL has passed since the last success), adopts a TTL that Consul raises,
 * and watches the key with a blocking query from 200 ms after acquiring: the key deleted,
 * taken over, or left by our session marks the lock lost at once. All requests run on the
 * renewer's one libcurl multi handle (connections shared), each lock with its own easy
 * handles; the renewer touches no lua_State. A collected lock is released by the renewer.
 *
 * A lock released within 200 ms of acquiring never had a request made for it here: taking it
 * back is a list operation under the mutex. At process exit (atexit) locks still registered
 * are released, a few seconds at most.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_WAIT_MS 3000
#define RETRY_MS 1000
#define FIRST_WATCH_MS 200  /* a lock held for less needs no watch (and opens no connection) */
#define NEVER INT64_MAX


enum { CTL_IDLE, CTL_RENEW, CTL_RELEASE, CTL_DESTROY };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;  /* a lock left the list */
static consul_lock *head;
static CURLM *multi;
static int started;
static int64_t wake_at = NEVER;  /* when the renewer will look again by itself */
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

int consul_lock_held(consul_lock *lk)
{
    int64_t ttl = LOAD(&lk->ttl_ms);
    if (!LOAD(&lk->held) || LOAD(&lk->lost))
        return 0;
    /* The local lease: no successful renewal for a whole TTL means Consul may have let the
     * session go, whether or not we can reach it to ask. */
    return ttl <= 0 || consul_now_ms() - LOAD(&lk->lease_ms) < ttl;
}

/* ---- the renewer's requests (all under mu) ------------------------------------ */

static int start(consul_lock *lk, consul_http *h, consul_req *rq, consul_resp *rs,
                 const char *method, const char *path, const char *query, const char *body,
                 size_t blen, long wait_ms)
{
    if (consul_lock_handle(lk, h) != 0)
        return -1;
    memset(rq, 0, sizeof *rq);
    rq->method = method;
    rq->path = path;
    rq->query = query;
    rq->body = body;
    rq->body_len = blen;
    rq->wait_ms = wait_ms;
    curl_easy_setopt(h->easy, CURLOPT_PRIVATE, (void *)lk);
    return consul_http_start(h, multi, rq, rs) == CONSUL_OK ? 0 : -1;
}

static void abort_all(consul_lock *lk)
{
    consul_resp rs;
    if (lk->ctl_step != CTL_IDLE)
        consul_http_abort(&lk->http, multi, &rs);
    if (lk->watch_busy)
        consul_http_abort(&lk->watch, multi, &rs);
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

/* Releasing a collected lock, step by step, each step once the previous one's request is
 * done (`after`: CTL_IDLE to begin, then CTL_RELEASE, then CTL_DESTROY): release the key,
 * destroy a session the lock created, leave the list. */
static void release_next(consul_lock *lk, int after)
{
    if (after == CTL_IDLE && lk->session[0] != '\0' && lk->kind == CONSUL_KIND_LOCK) {
        snprintf(lk->ctl_query, sizeof lk->ctl_query, "release=%s&flags=%llu", lk->session,
                 (unsigned long long)lk->flags);
        if (start(lk, &lk->http, &lk->ctl_rq, &lk->ctl_rs, "PUT", lk->path, lk->ctl_query,
                  lk->value ? lk->value : "", lk->value_len, 0) == 0) {
            lk->ctl_step = CTL_RELEASE;
            return;
        }
    }
    if (after == CTL_IDLE && lk->session[0] != '\0' && lk->kind == CONSUL_KIND_SEMAPHORE &&
        consul_lock_handle(lk, &lk->http) == 0) {
        /* A semaphore's release is several dependent requests (read, CAS, delete, each up to
         * the timeout): made here in one go, without the mutex, so that Lua's calls and the
         * other locks do not wait for them. The lock is busy meanwhile, and the caller scans
         * the list afresh after (it may have changed). */
        attempt a;
        memset(&a, 0, sizeof a);
        a.h = &lk->http;
        lk->ctl_step = CTL_RELEASE;
        pthread_mutex_unlock(&mu);
        consul_sem_release(lk, &a);
        consul_att_release(&a);
        pthread_mutex_lock(&mu);
        lk->ctl_step = CTL_IDLE;
    }
    if (after != CTL_DESTROY && lk->own_session && lk->session[0] != '\0') {
        snprintf(lk->ctl_path, sizeof lk->ctl_path, "/v1/session/destroy/%s", lk->session);
        if (start(lk, &lk->http, &lk->ctl_rq, &lk->ctl_rs, "PUT", lk->ctl_path, NULL, NULL, 0,
                  0) == 0) {
            lk->ctl_step = CTL_DESTROY;
            return;
        }
    }
    /* Done, or nothing could be sent: the session then expires by its TTL. */
    lk->ctl_step = CTL_IDLE;
    lk->session[0] = '\0';
    lk->own_session = 0;
    STORE(&lk->held, 0);
    unlink_lock(lk);
    consul_lock_unref(lk);  /* the renewer's reference */
}

static void renew_done(consul_lock *lk, consul_json *doc)
{
    consul_resp *rs = &lk->ctl_rs;
    cJSON *ttl;
    int64_t now = consul_now_ms();
    if (rs->status == 404) {
        STORE(&lk->lost, 1);  /* the session is gone */
        return;
    }
    if (rs->code != CONSUL_OK || rs->status != 200) {
        lk->next_renew = now + RETRY_MS;
        return;
    }
    STORE(&lk->lease_ms, now);
    if (consul_json_parse(doc, rs->body, rs->body_len) == 0 && cJSON_IsArray(doc->root) &&
        (ttl = cJSON_GetObjectItemCaseSensitive(doc->root->child, "TTL")) != NULL &&
        cJSON_IsString(ttl) && consul_duration_ms(ttl->valuestring) > 0)
        STORE(&lk->ttl_ms, consul_duration_ms(ttl->valuestring));  /* Consul may raise it */
    consul_json_free(doc);
    lk->next_renew = now + LOAD(&lk->ttl_ms) / 2;
}

static void watch_done(consul_lock *lk, consul_json *doc)
{
    consul_resp *rs = &lk->watch_rs;
    cJSON *rec, *s, *f;
    uint64_t flags;
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
        s = cJSON_GetObjectItemCaseSensitive(rec, "Session");
        f = cJSON_GetObjectItemCaseSensitive(rec, "Flags");
        ours = cJSON_IsString(s) && strcmp(s->valuestring, lk->session) == 0 &&
               consul_json_u64(doc, f, &flags) == 0 && flags == lk->flags;
    }
    consul_json_free(doc);
    if (!ours)
        STORE(&lk->lost, 1);
    /* An index that goes backwards (a restored snapshot, say) starts the watch over. */
    lk->watch_index = rs->has_index && rs->index >= lk->watch_index ? rs->index : 0;
    lk->next_watch = consul_now_ms();
}

/* What a lock needs now; returns when it next needs something. */
static int64_t tend(consul_lock *lk, int64_t now)
{
    int64_t ttl = LOAD(&lk->ttl_ms), next = NEVER;
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
            snprintf(lk->ctl_path, sizeof lk->ctl_path, "/v1/session/renew/%s", lk->session);
            if (start(lk, &lk->http, &lk->ctl_rq, &lk->ctl_rs, "PUT", lk->ctl_path, NULL, NULL,
                      0, 0) == 0)
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
            if (start(lk, &lk->watch, &lk->watch_rq, &lk->watch_rs, "GET", lk->path,
                      lk->watch_query, NULL, 0, CONSUL_MAX_WAIT_MS) == 0)
                lk->watch_busy = 1;
            else
                lk->next_watch = now + RETRY_MS;
        }
        if (!lk->watch_busy && lk->next_watch < next)
            next = lk->next_watch;
    }
    return next;
}

static void *renewer(void *arg)
{
    consul_json doc;
    (void)arg;
    memset(&doc, 0, sizeof doc);
    pthread_mutex_lock(&mu);
    for (;;) {
        int64_t now = consul_now_ms(), next = NEVER;
        consul_lock *lk, *nx;
        CURLMsg *msg;
        int running, left;

    scan:
        for (lk = head; lk != NULL; lk = nx) {
            int64_t t;
            nx = lk->next;
            if (lk->detach && lk->release_on_detach && lk->kind == CONSUL_KIND_SEMAPHORE &&
                lk->ctl_step == CTL_IDLE && !lk->watch_busy) {
                release_next(lk, CTL_IDLE);  /* drops the mutex for a while */
                goto scan;
            }
            if (lk->detach && lk->release_on_detach) {
                if (lk->watch_busy) {
                    consul_resp rs;
                    consul_http_abort(&lk->watch, multi, &rs);
                    lk->watch_busy = 0;
                }
                if (lk->ctl_step == CTL_RENEW) {
                    consul_resp rs;
                    consul_http_abort(&lk->http, multi, &rs);
                    lk->ctl_step = CTL_IDLE;
                }
                if (lk->ctl_step == CTL_IDLE) {
                    if (lk->kind == CONSUL_KIND_SEMAPHORE)
                        goto scan;  /* now idle: the branch above releases it */
                    release_next(lk, CTL_IDLE);  /* may unlink and free lk */
                }
                continue;
            }
            if (lk->detach) {
                abort_all(lk);
                unlink_lock(lk);
                consul_lock_unref(lk);
                continue;
            }
            t = tend(lk, now);
            if (t < next)
                next = t;
        }
        wake_at = next;
        pthread_mutex_unlock(&mu);
        now = consul_now_ms();
        curl_multi_poll(multi, NULL, 0,
                        next == NEVER ? CONSUL_MAX_WAIT_MS : next <= now ? 0 : (int)(next - now), NULL);
        pthread_mutex_lock(&mu);
        wake_at = 0;  /* awake: a new lock needs no wakeup until the next plan */
        curl_multi_perform(multi, &running);
        while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
            char *priv = NULL;
            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
            lk = (consul_lock *)(void *)priv;
            if (lk == NULL)
                continue;
            if (msg->easy_handle == lk->watch.easy) {
                CURLcode rc = msg->data.result;
                consul_http_finish(&lk->watch, multi, rc, &lk->watch_rs);
                lk->watch_busy = 0;
                if (!lk->detach)
                    watch_done(lk, &doc);
            } else if (msg->easy_handle == lk->http.easy) {
                CURLcode rc = msg->data.result;
                int step = lk->ctl_step;
                consul_http_finish(&lk->http, multi, rc, &lk->ctl_rs);
                lk->ctl_step = CTL_IDLE;
                if (step == CTL_RENEW && !lk->detach)
                    renew_done(lk, &doc);
                else if (step == CTL_RELEASE || step == CTL_DESTROY)
                    release_next(lk, step);  /* may unlink and free lk */
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
    lk->next_renew = LOAD(&lk->lease_ms) + LOAD(&lk->ttl_ms) / 2;
    lk->next_watch = now + FIRST_WATCH_MS;
    __atomic_add_fetch(&lk->refs, 1, __ATOMIC_RELAXED);
    lk->registered = 1;
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

/* At exit, locks still registered are released by the renewer, a few seconds at most. Then
 * the mutex stays taken: the renewer parks on it the next time it comes back from libcurl,
 * so none of its requests runs on while the rest of exit tears down (OpenSSL's own atexit
 * cleanup, say). Calls made after this point (a finalizer of a state closed later) return
 * at once instead of waiting for it. */
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
    while (head != NULL)
        if (pthread_cond_timedwait(&cv, &mu, &until) != 0)
            break;
    STORE(&exiting, 1);
    /* mu is not given back */
}

/* fork() copies this process's memory but not its renewer: the child starts afresh. Locks
 * taken before the fork are the parent's: the child sees them lost and never renews nor
 * releases them (their session is the parent's to end). */
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
    multi = NULL;  /* the parent's, with the parent's connections */
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
