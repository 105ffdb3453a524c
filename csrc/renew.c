/*
 * renew.c: the background thread of a held lock, and the lock's reference-counted C state.
 *
 * While a lock is held its thread renews the session every TTL/2 (every second after a
 * failure, until the TTL has passed since the last success), adopts a TTL that Consul raises,
 * and watches the key with a blocking query: the key deleted, taken over, or left by our
 * session marks the lock lost at once. It owns its own libcurl handles and touches no
 * lua_State. It ends when told to, releasing the lock first when asked (a collected lock).
 *
 * At process exit (atexit) the threads still running are told to release and are waited
 * for, a few seconds at most.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_WAIT_MS 3000
#define RETRY_MS 1000
#define FIRST_WATCH_MS 200   /* a lock held for less needs no watch (and opens no connection) */
#define MAX_WAIT_MS 300000

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cv = PTHREAD_COND_INITIALIZER;
static consul_lock *reg_head;
static int reg_running;

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

consul_lock *consul_lock_new(consul_conf *cf)
{
    consul_lock *lk = calloc(1, sizeof *lk);
    if (lk == NULL)
        return NULL;
    lk->refs = 1;
    lk->flags = CONSUL_LOCK_FLAG;
    if (consul_http_init(&lk->http, cf) != 0 || (lk->multi = curl_multi_init()) == NULL) {
        consul_lock_unref(lk);
        return NULL;
    }
    lk->conf = consul_conf_retain(cf);
    return lk;
}

void consul_lock_unref(consul_lock *lk)
{
    if (lk == NULL || __atomic_sub_fetch(&lk->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    consul_http_release(&lk->http);
    if (lk->multi != NULL)
        curl_multi_cleanup(lk->multi);
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

/* Sleeps ms or until woken by consul_renew_stop. */
static void nap(consul_lock *lk, int64_t ms)
{
    if (ms <= 0)
        return;
    if (ms > MAX_WAIT_MS)
        ms = MAX_WAIT_MS;
    curl_multi_poll(lk->multi, NULL, 0, (int)ms, NULL);
}

static int request(consul_lock *lk, const char *method, const char *path, const char *query,
                   long wait_ms, consul_resp *rs)
{
    consul_req rq;
    memset(&rq, 0, sizeof rq);
    rq.method = method;
    rq.path = path;
    rq.query = query;
    rq.wait_ms = wait_ms;
    return consul_http_perform_multi(&lk->http, lk->multi, &rq, rs, &lk->stop);
}

/* Renews the session; 1 renewed, 0 failed (retry), -1 the session is gone. */
static int renew(consul_lock *lk, consul_json *doc)
{
    char path[128];
    consul_resp rs;
    cJSON *ttl;
    snprintf(path, sizeof path, "/v1/session/renew/%s", lk->session);
    request(lk, "PUT", path, NULL, 0, &rs);
    if (rs.status == 404)
        return -1;
    if (rs.code != CONSUL_OK || rs.status != 200)
        return 0;
    STORE(&lk->lease_ms, consul_now_ms());
    if (consul_json_parse(doc, rs.body, rs.body_len) == 0 && cJSON_IsArray(doc->root) &&
        (ttl = cJSON_GetObjectItemCaseSensitive(doc->root->child, "TTL")) != NULL &&
        cJSON_IsString(ttl)) {
        int64_t ms = consul_duration_ms(ttl->valuestring);
        if (ms > 0)
            STORE(&lk->ttl_ms, ms);  /* Consul may raise it under load: adopt it */
    }
    consul_json_free(doc);
    return 1;
}

/* One blocking read of the key: 1 still ours, 0 failed (retry), -1 lost. */
static int watch(consul_lock *lk, consul_json *doc, uint64_t *index, int64_t wait_ms)
{
    char query[96];
    consul_resp rs;
    cJSON *rec, *s, *f;
    uint64_t flags;
    int ours;
    if (wait_ms < 1)
        wait_ms = 1;
    snprintf(query, sizeof query, "%sindex=%llu&wait=%lldms",
             lk->kind == CONSUL_KIND_SEMAPHORE ? "recurse&" : "", (unsigned long long)*index,
             (long long)wait_ms);
    request(lk, "GET", lk->path, query, (long)wait_ms, &rs);
    if (LOAD(&lk->stop))
        return 1;
    if (rs.status == 404)
        return -1;  /* deleted */
    if (rs.code != CONSUL_OK || rs.status != 200)
        return 0;
    if (consul_json_parse(doc, rs.body, rs.body_len) != 0 || !cJSON_IsArray(doc->root) ||
        (rec = doc->root->child) == NULL) {
        consul_json_free(doc);
        return 0;
    }
    if (lk->kind == CONSUL_KIND_SEMAPHORE) {
        ours = consul_sem_check(lk, doc) > 0;
        consul_json_free(doc);
        *index = rs.has_index && rs.index >= *index ? rs.index : 0;
        return ours ? 1 : -1;
    }
    s = cJSON_GetObjectItemCaseSensitive(rec, "Session");
    f = cJSON_GetObjectItemCaseSensitive(rec, "Flags");
    ours = cJSON_IsString(s) && strcmp(s->valuestring, lk->session) == 0 &&
           consul_json_u64(doc, f, &flags) == 0 && flags == lk->flags;
    consul_json_free(doc);
    /* An index that goes backwards (a restored snapshot, say) starts the watch over. */
    *index = rs.has_index && rs.index >= *index ? rs.index : 0;
    return ours ? 1 : -1;
}

static void *renew_main(void *arg)
{
    consul_lock *lk = arg;
    consul_json doc;
    uint64_t index = lk->fence;
    int64_t ttl = LOAD(&lk->ttl_ms);
    int64_t next_renew = LOAD(&lk->lease_ms) + ttl / 2;
    int64_t first_watch = consul_now_ms() + FIRST_WATCH_MS;

    memset(&doc, 0, sizeof doc);
    while (!LOAD(&lk->stop)) {
        int64_t now = consul_now_ms();
        ttl = LOAD(&lk->ttl_ms);
        if (LOAD(&lk->lost)) {
            nap(lk, MAX_WAIT_MS);  /* nothing left to do but be told to end */
            continue;
        }
        if (ttl > 0 && now - LOAD(&lk->lease_ms) >= ttl) {
            STORE(&lk->lost, 1);  /* the lease ran out locally */
            continue;
        }
        if (ttl > 0 && now >= next_renew) {
            int r = renew(lk, &doc);
            if (r < 0)
                STORE(&lk->lost, 1);
            next_renew = consul_now_ms() + (r > 0 ? LOAD(&lk->ttl_ms) / 2 : RETRY_MS);
            continue;
        }
        if (now < first_watch) {
            nap(lk, first_watch - now < next_renew - now || ttl <= 0 ? first_watch - now
                                                                    : next_renew - now);
            continue;
        }
        {
            int64_t w = ttl > 0 ? next_renew - now : MAX_WAIT_MS;
            int r = watch(lk, &doc, &index, w > MAX_WAIT_MS ? MAX_WAIT_MS : w);
            if (r < 0)
                STORE(&lk->lost, 1);
            else if (r == 0)
                nap(lk, ttl > 0 && next_renew - now < RETRY_MS ? next_renew - now : RETRY_MS);
        }
    }
    consul_json_release(&doc);

    if (LOAD(&lk->release_on_stop)) {
        consul_resp rs;
        attempt a;
        char msg[64];
        memset(&a, 0, sizeof a);
        a.h = &lk->http;
        consul_lock_release_now(lk, &a, &rs, msg, sizeof msg);
    }
    pthread_mutex_lock(&reg_mu);
    if (lk->prev != NULL)
        lk->prev->next = lk->next;
    else
        reg_head = lk->next;
    if (lk->next != NULL)
        lk->next->prev = lk->prev;
    lk->next = lk->prev = NULL;
    reg_running--;
    pthread_cond_broadcast(&reg_cv);
    pthread_mutex_unlock(&reg_mu);
    consul_lock_unref(lk);  /* the thread's reference */
    return NULL;
}

int consul_renew_start(consul_lock *lk)
{
    int rc;
    STORE(&lk->stop, 0);
    STORE(&lk->release_on_stop, 0);
    STORE(&lk->lost, 0);
    __atomic_add_fetch(&lk->refs, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&reg_mu);
    rc = pthread_create(&lk->thread, NULL, renew_main, lk);
    if (rc == 0) {
        lk->running = 1;
        lk->detached = 0;
        lk->prev = NULL;
        lk->next = reg_head;
        if (reg_head != NULL)
            reg_head->prev = lk;
        reg_head = lk;
        reg_running++;
    }
    pthread_mutex_unlock(&reg_mu);
    if (rc != 0) {
        __atomic_sub_fetch(&lk->refs, 1, __ATOMIC_RELAXED);
        return -1;
    }
    return 0;
}

void consul_renew_stop(consul_lock *lk, int release, int wait)
{
    if (!lk->running)
        return;
    if (release)
        STORE(&lk->release_on_stop, 1);
    STORE(&lk->stop, 1);
    curl_multi_wakeup(lk->multi);
    if (wait && !lk->detached)
        pthread_join(lk->thread, NULL);
    else if (!lk->detached)
        pthread_detach(lk->thread);
    lk->detached = !wait;
    lk->running = 0;
}

/* At exit, locks still held are released: by their threads, a few seconds at most. */
static void renew_atexit(void)
{
    struct timespec until;
    consul_lock *lk;
    pthread_mutex_lock(&reg_mu);
    for (lk = reg_head; lk != NULL; lk = lk->next) {
        if (!LOAD(&lk->stop))
            STORE(&lk->release_on_stop, 1);
        STORE(&lk->stop, 1);
        curl_multi_wakeup(lk->multi);
    }
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += EXIT_WAIT_MS / 1000;
    while (reg_running > 0)
        if (pthread_cond_timedwait(&reg_cv, &reg_mu, &until) != 0)
            break;
    pthread_mutex_unlock(&reg_mu);
}

static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;

static void register_atexit(void)
{
    atexit(renew_atexit);
}

void consul_renew_atexit_once(void)
{
    pthread_once(&atexit_once, register_atexit);
}
