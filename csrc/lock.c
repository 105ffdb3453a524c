/*
 * lock.c: distributed locks, in the wire format of Consul's own `consul lock` and Go client
 * (api/lock.go): the key carries Flags 0x2ddccbc058a50c18 and the holder's session.
 *
 * Acquire (a machine, mach.c): read the key; other flags is a conflict; our session means
 * held; another session means wait for the key to change with a blocking query; free means
 * take it. Taking it is one transaction (lock + the entry back), so the fence (the key's
 * ModifyIndex with our session in it) costs no extra request. A refused take with no holder
 * is lock-delay: wait it out, do not spin. A session the lock created is renewed while
 * waiting. A failure worth retrying (the agent unreachable, a 5xx, a timeout) is retried with
 * backoff until `wait` runs out. `wait` is a deadline: no request runs past it by more than
 * a second, and a failed attempt's session is left to the renewer to destroy (renew.c).
 *
 * The next take of a key this client released last is one transaction too: check-index of
 * the index our release left it at, then lock (a 409: someone came between, so Go's way).
 *
 * Release (a machine too, run by the caller or by the renewer): the txn verb unlock with our
 * flags and value, as Go's Unlock does with PUT ?release=&flags= (a PUT without flags would
 * reset them to 0), whose answer says the index the key is left at; then destroying a session
 * the lock created. A release that fails for a reason worth retrying is the renewer's to
 * finish (renew.c), in the background.
 *
 * Guarded writes (lock:put, lock:delete, lock:txn) begin with check-session of the key.
 *
 * Keys are any bytes (escaped for the URL and for JSON); a session ID from the server is
 * checked before it is kept, and escaped wherever it goes.
 */
#include "consul.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRACE_MS CONSUL_WAIT_GRACE_MS
#define RETRY_MIN_MS 100  /* backoff after a failure worth retrying, doubling */
#define RETRY_MAX_MS 1000

const char *consul_lock_name(const consul_lock *lk, char *out, size_t n)
{
    consul_buf b = CONSUL_BUF_INIT;
    if (consul_buf_add_printable(&b, lk->key, lk->key_len, 200) != 0 || b.data == NULL)
        snprintf(out, n, "?");
    else
        snprintf(out, n, "%s", b.data);
    consul_buf_free(&b);
    return out;
}

/* ---- acquire ------------------------------------------------------------------- */

enum {
    A_START, A_CREATE, A_RENEW, A_READ, A_HOLDER, A_TAKE, A_RECHECK, A_SLEEP_TAKE, A_SLEEP_RETRY,
    A_FAST
};

typedef struct acq {
    int64_t wait_ms;          /* -1: for ever, 0: one try */
    int64_t deadline;         /* CONSUL_NEVER: for ever */
    int64_t next_renew;
    int64_t holder_delay, freed_at, backoff, retry;
    uint64_t index;
    char holder[64];
    int tries;
    int created;              /* this attempt made the session */
    int failed;               /* saw a failure worth retrying: ... */
    consul_resp fail;         /* ... this one, the last */
    char fail_msg[512];
} acq;

/* How long a blocking read may wait: to the deadline or the next renewal, less Consul's
 * jitter of wait/16, 1 ms..5 min. */
static long read_wait(const consul_lock *lk, const acq *a, int64_t now)
{
    int64_t left = a->deadline == CONSUL_NEVER ? CONSUL_MAX_WAIT_MS : (a->deadline - now) * 16 / 17;
    if (lk->own_session && LOAD(&lk->ttl_ms) > 0 && a->next_renew - now < left)
        left = a->next_renew - now;
    return (long)(left > CONSUL_MAX_WAIT_MS ? CONSUL_MAX_WAIT_MS : left < 1 ? 1 : left);
}

static int acq_timeout(consul_mach *m)
{
    acq *a = m->ext;
    consul_lock *lk = m->lk;
    char name[256];
    consul_lock_name(lk, name, sizeof name);
    if (a->holder[0] != '\0')
        snprintf(m->msg, sizeof m->msg,
                 "consul: lock %s: not acquired in %.3g s: held by session %s", name,
                 (double)a->wait_ms / 1000, a->holder);
    else if (a->failed)
        snprintf(m->msg, sizeof m->msg, "consul: lock %s: not acquired in %.3g s: %s", name,
                 (double)a->wait_ms / 1000, a->fail_msg);
    else
        snprintf(m->msg, sizeof m->msg, "consul: lock %s: not acquired in %.3g s", name,
                 (double)a->wait_ms / 1000);
    if (a->failed && a->holder[0] == '\0') {
        /* the agent never let us find out: say how it failed */
        m->last = a->fail;
        m->rc = a->fail.code;
        return CONSUL_DONE;
    }
    consul_resp_reset(&m->last);
    m->last.code = CONSUL_ETIMEOUT;
    m->rc = CONSUL_ETIMEOUT;
    return CONSUL_DONE;
}

/* A failure: retried after a backoff when worth it and there is time, else the end. */
static int acq_failed(consul_mach *m, const consul_resp *rs)
{
    acq *a = m->ext;
    int64_t now = consul_now_ms(), pause;
    if (a->wait_ms == 0 || !consul_retryable(rs->code, rs->status))
        return consul_mach_done(m, rs->code, rs, NULL);
    a->failed = 1;
    consul_resp_copy(&a->fail, rs);
    consul_format_failure(a->fail_msg, sizeof a->fail_msg, m->rq.method, m->rq.path, rs);
    if (a->deadline != CONSUL_NEVER && now >= a->deadline)
        return acq_timeout(m);
    pause = a->retry;
    a->retry = a->retry * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : a->retry * 2;
    if (a->deadline != CONSUL_NEVER && now + pause > a->deadline)
        pause = a->deadline - now;
    a->index = 0;  /* read afresh: a take that timed out may have happened */
    m->state = A_SLEEP_RETRY;
    m->sleep_ms = pause > 0 ? pause : 1;
    return CONSUL_SLEEP;
}

static int acq_next(consul_mach *m, int take);

/* One transaction: lock the key with our session, flags and value, and read it back; with a
 * guard, only if the key's ModifyIndex is still the one our last release left it at. */
static int send_take_guarded(consul_mach *m, int guarded, uint64_t index)
{
    consul_lock *lk = m->lk;
    consul_buf *b = &m->body;
    consul_buf_reset(b);
    if (consul_buf_adds(b, "[") != 0 ||
        (guarded && (consul_buf_adds(b, "{\"KV\":{\"Verb\":\"check-index\",\"Key\":") != 0 ||
                     consul_buf_add_json_string(b, lk->key, lk->key_len) != 0 ||
                     consul_buf_addf(b, ",\"Index\":%llu}},", (unsigned long long)index) != 0)) ||
        consul_buf_adds(b, "{\"KV\":{\"Verb\":\"lock\",\"Key\":") != 0 ||
        consul_buf_add_json_string(b, lk->key, lk->key_len) != 0 ||
        consul_buf_addf(b, ",\"Flags\":%llu,\"Session\":", (unsigned long long)lk->flags) != 0 ||
        consul_buf_add_json_string(b, lk->session, strlen(lk->session)) != 0 ||
        consul_buf_adds(b, ",\"Value\":\"") != 0 ||
        consul_buf_add_base64(b, (const unsigned char *)lk->value, lk->value_len) != 0 ||
        consul_buf_adds(b, "\"}}]") != 0)
        return consul_mach_done(m, CONSUL_ENOMEM, NULL, "consul: out of memory");
    m->state = guarded ? A_FAST : A_TAKE;
    return consul_mach_sendf(m, "PUT", "/v1/txn", NULL, b->data, b->len, 0);
}

static int send_take(consul_mach *m)
{
    return send_take_guarded(m, 0, 0);
}

/* A take Consul refused for what a lock waits out (held, lock-delay, our guard's index):
 * 1; refused for another reason (an ACL's "Permission denied"): 0, a failure. */
static int take_refused(const consul_resp *rs)
{
    return rs->body == NULL || strstr(rs->body, "Permission denied") == NULL;
}

/* The ModifyIndex of the last result of a txn answer (the lock or unlock op's). */
static int txn_index(consul_mach *m, const consul_resp *rs, uint64_t *mi)
{
    static const char *const path[] = { "Results", NULL, "KV", "ModifyIndex" };
    cJSON *r, *last = NULL;
    if (consul_json_scan_u64(rs->body, rs->body_len, path, 4, mi) == 1)
        return 0;  /* as Consul writes it: no tree needed */
    if (consul_mach_parse(m, rs) != 0)
        return -1;
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(m->doc.root, "Results"))
        last = r;
    return consul_json_u64(&m->doc,
                           cJSON_GetObjectItemCaseSensitive(
                               cJSON_GetObjectItemCaseSensitive(last, "KV"), "ModifyIndex"),
                           mi);
}

/* The first try: the guarded take when our last release of this key is known, else the
 * read Go's algorithm starts with. */
static int acq_begin(consul_mach *m)
{
    consul_lock *lk = m->lk;
    uint64_t index;
    if (lk->kind == CONSUL_KIND_LOCK && consul_conf_key_get(lk->conf, lk->path, &index))
        return send_take_guarded(m, 1, index);  /* (no try yet: a refusal reads next) */
    return acq_next(m, 0);
}

/* What a read of the key says: 1 ours (fence set), 2 held by another (holder set), 0 free,
 * -1 not a lock (m done), -2 unreadable (m done). */
static int read_key(consul_mach *m, const consul_resp *rs)
{
    consul_lock *lk = m->lk;
    acq *a = m->ext;
    cJSON *rec;
    uint64_t flags = 0;
    size_t n;
    const char *s;
    if (rs->status == 404)
        return 0;
    if (consul_mach_parse(m, rs) != 0 || !cJSON_IsArray(m->doc.root)) {
        consul_resp_copy(&m->last, rs);
        m->last.code = CONSUL_EDECODE;
        consul_mach_done(m, CONSUL_EDECODE, NULL, NULL);
        return -2;
    }
    if ((rec = m->doc.root->child) == NULL)
        return 0;
    if (consul_json_u64(&m->doc, cJSON_GetObjectItemCaseSensitive(rec, "Flags"), &flags) != 0 ||
        flags != lk->flags) {
        char name[256];
        snprintf(m->msg, sizeof m->msg,
                 "consul: lock %s: the key exists and is not a lock (flags %llu)",
                 consul_lock_name(lk, name, sizeof name), (unsigned long long)flags);
        consul_mach_done(m, CONSUL_ECONFLICT, NULL, m->msg);
        consul_resp_reset(&m->last);
        m->last.code = CONSUL_ECONFLICT;
        return -1;
    }
    s = consul_json_field_str(&m->doc, rec, "Session", &n);
    if (s == NULL || n == 0)
        return 0;
    if (strlen(lk->session) == n && memcmp(s, lk->session, n) == 0) {
        uint64_t mi;
        if (consul_json_u64(&m->doc, cJSON_GetObjectItemCaseSensitive(rec, "ModifyIndex"),
                            &mi) == 0)
            lk->fence = mi;
        return 1;
    }
    if (!consul_valid_id(s, n) || n >= sizeof a->holder) {
        consul_resp_copy(&m->last, rs);
        m->last.code = CONSUL_EDECODE;
        snprintf(m->last.error, sizeof m->last.error, "a lock held by a malformed session");
        consul_mach_done(m, CONSUL_EDECODE, NULL, NULL);
        return -2;
    }
    if (strlen(a->holder) != n || memcmp(a->holder, s, n) != 0) {
        memcpy(a->holder, s, n);
        a->holder[n] = '\0';
        a->holder_delay = -2;  /* a new holder: its lock-delay is to be read */
    }
    return 2;
}

/* The loop's head: the deadline, a renewal due, then a read (or a take, after a sleep). */
static int acq_next(consul_mach *m, int take)
{
    consul_lock *lk = m->lk;
    acq *a = m->ext;
    int64_t now = consul_now_ms();
    if (a->tries > 0 && a->deadline != CONSUL_NEVER && now >= a->deadline)
        return acq_timeout(m);
    if (lk->own_session && LOAD(&lk->ttl_ms) > 0 && now >= a->next_renew) {
        m->state = A_RENEW;
        return consul_sess_renew(m);
    }
    a->tries++;
    if (take)
        return send_take(m);
    m->state = A_READ;
    consul_buf_reset(&m->query);
    if (a->index > 0) {
        long w = read_wait(lk, a, now);
        if (consul_buf_addf(&m->query, "index=%llu&wait=%ldms", (unsigned long long)a->index,
                            w) != 0)
            return consul_mach_done(m, CONSUL_ENOMEM, NULL, "consul: out of memory");
        consul_buf_reset(&m->path);
        if (consul_buf_adds(&m->path, lk->path) != 0)
            return consul_mach_done(m, CONSUL_ENOMEM, NULL, "consul: out of memory");
        return consul_mach_send(m, "GET", NULL, 0, w);
    }
    return consul_mach_sendf(m, "GET", lk->path, NULL, NULL, 0, 0);
}

static int acq_step(consul_mach *m, const consul_resp *rs)
{
    consul_lock *lk = m->lk;
    acq *a = m->ext;
    int r;
    int64_t now;

    switch (m->state) {
    case A_START:
        if (lk->session[0] == '\0') {
            m->state = A_CREATE;
            return consul_sess_create(m);
        }
        a->next_renew = LOAD(&lk->lease_ms) + consul_lock_lease(lk) / 2;
        return acq_begin(m);

    case A_CREATE:
        if (rs->code != CONSUL_OK)
            return acq_failed(m, rs);
        if (consul_sess_created(m, rs) != 0)
            return consul_mach_done(m, m->last.code, NULL, NULL);
        a->created = 1;
        a->next_renew = LOAD(&lk->lease_ms) + consul_lock_lease(lk) / 2;
        return acq_begin(m);

    case A_FAST: {
        uint64_t mi;
        if (rs->status == 409 && take_refused(rs)) {
            /* the key changed since we left it (or is held, or in lock-delay): Go's way */
            consul_conf_key_drop(lk->conf, lk->path);
            return acq_next(m, 0);
        }
        if (rs->code != CONSUL_OK)
            return acq_failed(m, rs);
        if (txn_index(m, rs, &mi) != 0) {
            consul_resp_copy(&m->last, rs);
            m->last.code = CONSUL_EDECODE;
            return consul_mach_done(m, CONSUL_EDECODE, NULL, NULL);
        }
        lk->fence = mi;
        return consul_mach_done(m, CONSUL_OK, rs, NULL);
    }

    case A_RENEW:
        if (rs->code == CONSUL_EHTTP && rs->status == 404) {
            /* our session is gone (invalidated, expired): start over with a new one */
            lk->session[0] = '\0';
            lk->own_session = 0;
            m->state = A_CREATE;
            return consul_sess_create(m);
        }
        if (rs->code != CONSUL_OK)
            return acq_failed(m, rs);
        consul_sess_renewed(m, rs, m->sent);
        a->next_renew = m->sent + consul_lock_lease(lk) / 2;
        return acq_next(m, 0);

    case A_READ:
        if (rs->code != CONSUL_OK && rs->status != 404)
            return acq_failed(m, rs);
        a->retry = RETRY_MIN_MS;
        if ((r = read_key(m, rs)) < 0)
            return CONSUL_DONE;
        if (r == 1)
            return consul_mach_done(m, CONSUL_OK, rs, NULL);  /* ours already */
        if (r == 2) {
            /* held by another: wait for the key to change */
            if (a->wait_ms == 0)
                return acq_timeout(m);
            a->index = rs->has_index ? rs->index : 0;
            a->freed_at = 0;
            if (a->holder_delay == -2) {  /* its lock-delay: how long to wait once it goes */
                m->state = A_HOLDER;
                return consul_sess_info(m, a->holder);
            }
            return acq_next(m, 0);
        }
        if (a->holder[0] != '\0' && a->freed_at == 0)
            a->freed_at = consul_now_ms();
        return send_take(m);

    case A_HOLDER:
        a->holder_delay = consul_sess_lock_delay(m, rs);
        return acq_next(m, 0);

    case A_TAKE: {
        cJSON *kv;
        uint64_t mi;
        if (rs->status == 409 && take_refused(rs)) {
            /* refused: held, or lock-delay */
            if (a->wait_ms == 0)
                return acq_timeout(m);
            m->state = A_RECHECK;
            return consul_mach_sendf(m, "GET", lk->path, NULL, NULL, 0, 0);
        }
        if (rs->code != CONSUL_OK)
            return acq_failed(m, rs);
        if (consul_mach_parse(m, rs) != 0)
            return consul_mach_done(m, CONSUL_EDECODE, NULL, NULL);
        kv = cJSON_GetObjectItemCaseSensitive(m->doc.root, "Results");
        kv = cJSON_IsArray(kv) && kv->child ? cJSON_GetObjectItemCaseSensitive(kv->child, "KV")
                                            : NULL;
        if (consul_json_u64(&m->doc, cJSON_GetObjectItemCaseSensitive(kv, "ModifyIndex"), &mi) != 0) {
            consul_resp_copy(&m->last, rs);
            m->last.code = CONSUL_EDECODE;
            return consul_mach_done(m, CONSUL_EDECODE, NULL, NULL);
        }
        lk->fence = mi;
        return consul_mach_done(m, CONSUL_OK, rs, NULL);
    }

    case A_RECHECK: {
        /* Refused. Held again by someone (the next read waits on it), or free but for the
         * last holder's lock-delay: then sleep until it ends (when we saw that holder), or
         * back off, and take again without reading first. */
        int64_t until;
        if (rs->code != CONSUL_OK && rs->status != 404)
            return acq_failed(m, rs);
        if ((r = read_key(m, rs)) < 0)
            return CONSUL_DONE;
        if (r == 1)
            return consul_mach_done(m, CONSUL_OK, rs, NULL);
        a->index = 0;
        if (r == 2)
            return acq_next(m, 0);
        now = consul_now_ms();
        if (a->holder_delay >= 0 && a->freed_at > 0 && a->freed_at + a->holder_delay + 10 > now) {
            until = a->freed_at + a->holder_delay + 10;
        } else {
            until = now + a->backoff;
            a->backoff = a->backoff * 2 > 2000 ? 2000 : a->backoff * 2;
        }
        if (a->deadline != CONSUL_NEVER && until > a->deadline)
            until = a->deadline;
        if (lk->own_session && LOAD(&lk->ttl_ms) > 0 && until > a->next_renew)
            until = a->next_renew;
        m->state = A_SLEEP_TAKE;
        m->sleep_ms = until > now ? until - now : 0;
        return CONSUL_SLEEP;
    }

    case A_SLEEP_TAKE:
        now = consul_now_ms();
        return acq_next(m, a->deadline == CONSUL_NEVER || now < a->deadline);

    case A_SLEEP_RETRY:
        if (lk->session[0] == '\0') {
            m->state = A_CREATE;
            return consul_sess_create(m);
        }
        return acq_next(m, 0);
    }
    return consul_mach_done(m, CONSUL_ENOMEM, NULL, "consul: lock machine lost its way");
}

/* An acquire that never ended (its nginx request went away): its session goes to the
 * renewer, the lock is free for another attempt. */
static void acq_abandon(consul_mach *m)
{
    acq *a = m->ext;
    consul_lock *lk = m->lk;
    if (lk == NULL)
        return;
    lk->busy = 0;
    if (a != NULL && lk->own_session && lk->session[0] != '\0')
        consul_renew_cleanup(lk);
}

void consul_lock_acquire_init(consul_mach *m, consul_lock *lk, int64_t wait_ms)
{
    acq *a = calloc(1, sizeof *a);
    int64_t now = consul_now_ms();
    consul_lock_retain(lk);
    m->lk = lk;
    m->step = acq_step;
    m->abandon = acq_abandon;
    m->state = A_START;
    m->ext = a;
    m->ext_free = NULL;
    if (a == NULL) {
        m->step = NULL;
        return;
    }
    a->wait_ms = wait_ms;
    a->deadline = wait_ms < 0 ? CONSUL_NEVER : now + wait_ms;
    m->hard = wait_ms < 0 ? CONSUL_NEVER : now + wait_ms + GRACE_MS;
    a->holder_delay = -1;
    a->backoff = 250;
    a->retry = RETRY_MIN_MS;
}

/* ---- release ------------------------------------------------------------------- */

enum { R_START, R_RELEASE, R_DESTROY };

static int rel_step(consul_mach *m, const consul_resp *rs)
{
    consul_lock *lk = m->lk;
    switch (m->state) {
    case R_START: {
        consul_buf *b = &m->body;
        if (lk->session[0] == '\0')
            return consul_mach_done(m, CONSUL_OK, NULL, NULL);
        /* Unlock keeping our flags and value, as Go's Unlock does with PUT ?release=&flags=
         * (a PUT without flags would reset them to 0); as a transaction, the answer says the
         * index the key is left at, for the next acquire of it (A_FAST). */
        consul_buf_reset(b);
        if (consul_buf_adds(b, "[{\"KV\":{\"Verb\":\"unlock\",\"Key\":") != 0 ||
            consul_buf_add_json_string(b, lk->key, lk->key_len) != 0 ||
            consul_buf_addf(b, ",\"Flags\":%llu,\"Session\":", (unsigned long long)lk->flags) != 0 ||
            consul_buf_add_json_string(b, lk->session, strlen(lk->session)) != 0 ||
            consul_buf_adds(b, ",\"Value\":\"") != 0 ||
            consul_buf_add_base64(b, (const unsigned char *)lk->value, lk->value_len) != 0 ||
            consul_buf_adds(b, "\"}}]") != 0)
            return consul_mach_done(m, CONSUL_ENOMEM, NULL, "consul: out of memory");
        m->state = R_RELEASE;
        return consul_mach_sendf(m, "PUT", "/v1/txn", NULL, b->data, b->len, 0);
    }
    case R_RELEASE: {
        uint64_t mi;
        if (rs->status == 409 && take_refused(rs)) {
            consul_conf_key_drop(lk->conf, lk->path);  /* not ours (any more): nothing to unlock */
        } else if (rs->code != CONSUL_OK && consul_retryable(rs->code, rs->status)) {
            return consul_mach_done(m, rs->code, rs, NULL);  /* to be tried again */
        } else if (rs->code != CONSUL_OK) {
            /* refused for good (an ACL): the session still goes, which frees the key (after
             * its lock-delay); the failure is what the release answers */
            consul_mach_keep_failure(m, rs);
        } else if (lk->kind == CONSUL_KIND_LOCK && txn_index(m, rs, &mi) == 0) {
            consul_conf_key_put(lk->conf, lk->path, mi);
        }
        if (!lk->own_session)
            return consul_mach_done_kept(m, rs);
        m->state = R_DESTROY;
        return consul_sess_destroy(m);
    }
    case R_DESTROY:
        if (rs->code != CONSUL_OK && rs->status != 404)
            return consul_mach_done(m, rs->code, rs, NULL);  /* the session stays: retry */
        lk->session[0] = '\0';
        lk->own_session = 0;
        return consul_mach_done_kept(m, rs);
    }
    return consul_mach_done(m, CONSUL_ENOMEM, NULL, "consul: release machine lost its way");
}

/* A release that never ended: the renewer finishes it. */
static void rel_abandon(consul_mach *m)
{
    consul_lock *lk = m->lk;
    if (lk == NULL)
        return;
    lk->busy = 0;
    if (lk->session[0] != '\0')
        consul_renew_cleanup(lk);
}

void consul_lock_release_init(consul_mach *m, consul_lock *lk)
{
    if (lk->kind == CONSUL_KIND_SEMAPHORE) {
        consul_sem_release_init(m, lk);
    } else {
        consul_lock_retain(lk);
        m->lk = lk;
        m->step = rel_step;
        m->state = R_START;
    }
    m->abandon = rel_abandon;
}

/* ---- Lua ------------------------------------------------------------------- */

typedef struct lock_ud {
    consul_lock *lk;
} lock_ud;

static consul_lock *checklock(lua_State *L, int idx)
{
    lock_ud *u = luaL_checkudata(L, idx, CONSUL_LOCK_MT);
    if (u->lk == NULL)
        consul_error(L, "consul lock is gone");
    return u->lk;
}

/* The client of the lock at idx, pushed (nil when it was closed). */
static consul_client *lock_client(lua_State *L, int idx)
{
    consul_client *c;
    consul_getuservalue(L, idx);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    c = consul_testudata(L, -1, CONSUL_CLIENT_MT);
    return c != NULL && !c->closed ? c : NULL;
}

/* A bad lock option: "bad argument #N to 'lock' (option 'x' ...)", at the user's line. */
static void opt_error(lua_State *L, int arg, const char *name, const char *what)
{
    lua_pushfstring(L, "option '%s' %s", name, what);
    consul_argerror(L, arg, lua_tostring(L, -1));  /* does not return */
}

static int64_t opt_seconds_ms(lua_State *L, int idx, int arg, const char *name, int64_t dflt)
{
    int64_t ms = dflt;
    lua_pushstring(L, name);
    lua_rawget(L, idx);
    if (lua_type(L, -1) == LUA_TNUMBER) {
        lua_Number s = lua_tonumber(L, -1);
        if (!(s >= 0 && s <= 86400 * 365))
            opt_error(L, arg, name, "must be 0 or more seconds (at most a year)");
        ms = (int64_t)(s * 1000 + 0.5);
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        ms = consul_rawlen(L, -1) < 64 ? consul_duration_ms(lua_tostring(L, -1)) : -1;
        if (ms < 0 || ms > (int64_t)86400 * 365 * 1000 ||
            strlen(lua_tostring(L, -1)) != consul_rawlen(L, -1))
            opt_error(L, arg, name, "must be a duration like \"15s\"");
    } else if (!lua_isnil(L, -1)) {
        opt_error(L, arg, name, "must be seconds or a duration like \"15s\"");
    }
    lua_pop(L, 1);
    return ms;
}

static const char *const lock_options[] = { "wait", "value", "session", "ttl", "lock_delay",
                                            "behavior", "name", NULL };
/* lock:acquire again: the lock's own definition stays; only how long to wait is new */
static const char *const acquire_options[] = { "wait", NULL };

static void check_names(lua_State *L, int idx, int arg, const char *const *names)
{
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        int i, known = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            consul_argerror(L, arg, "option names must be strings");
        for (i = 0; names[i] != NULL && !known; i++)
            known = strcmp(names[i], lua_tostring(L, -1)) == 0;
        if (!known) {
            lua_pushfstring(L, "unknown option '%s'", lua_tostring(L, -1));
            consul_argerror(L, arg, lua_tostring(L, -1));
        }
    }
}

/* Reads the options at idx (the caller's argument arg) into lk (raises on bad ones);
 * returns wait in ms (-1: for ever). */
static int64_t lock_configure(lua_State *L, int idx, int arg, consul_lock *lk, int first)
{
    int64_t wait_ms = -1;
    size_t n;
    const char *s;
    if (lua_isnoneornil(L, idx)) {
        if (first) {
            lk->name = malloc(9);
            if (lk->name == NULL)
                consul_error(L, "not enough memory");
            memcpy(lk->name, "Lua lock", 9);
            lk->ttl_def_ms = 15000;
            lk->lock_delay_ms = 15000;
            lk->behavior_delete = lk->kind == CONSUL_KIND_SEMAPHORE;
        }
        return -1;
    }
    if (lua_type(L, idx) != LUA_TTABLE) {
        lua_pushfstring(L, "table expected, got %s", luaL_typename(L, idx));
        consul_argerror(L, arg, lua_tostring(L, -1));
    }
    check_names(L, idx, arg, first ? lock_options : acquire_options);
    lua_pushliteral(L, "wait");
    lua_rawget(L, idx);
    if (!lua_isnil(L, -1)) {
        lua_Number w = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || !(w >= 0))
            opt_error(L, arg, "wait", "must be 0 or more seconds (math.huge: for ever)");
        wait_ms = w >= 1e12 ? -1 : (int64_t)(w * 1000 + 0.5);  /* math.huge: for ever */
    }
    lua_pop(L, 1);
    if (!first)
        return wait_ms;

    lua_pushliteral(L, "value");
    lua_rawget(L, idx);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            opt_error(L, arg, "value", "must be a string");
        s = lua_tolstring(L, -1, &n);
        if ((lk->value = malloc(n + 1)) == NULL)
            consul_error(L, "not enough memory");
        memcpy(lk->value, s, n + 1);
        lk->value_len = n;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "session");
    lua_rawget(L, idx);
    if (!lua_isnil(L, -1)) {
        s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
        if (s == NULL || !consul_valid_id(s, n) || n >= sizeof lk->session)
            opt_error(L, arg, "session", "must be a session ID");
        memcpy(lk->session, s, n + 1);
        lk->own_session = 0;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "name");
    lua_rawget(L, idx);
    if (lua_isnil(L, -1)) {
        s = "Lua lock";
        n = 8;
    } else if (lua_type(L, -1) != LUA_TSTRING) {
        opt_error(L, arg, "name", "must be a string");
        n = 0, s = NULL;  /* not reached */
    } else {
        s = lua_tolstring(L, -1, &n);
        if (memchr(s, '\0', n) != NULL || n > 1024)
            opt_error(L, arg, "name", "must be a string without NUL bytes (1 KiB at most)");
    }
    if ((lk->name = malloc(n + 1)) == NULL)
        consul_error(L, "not enough memory");
    memcpy(lk->name, s, n + 1);
    lua_pop(L, 1);
    lk->ttl_def_ms = opt_seconds_ms(L, idx, arg, "ttl", 15000);
    lk->lock_delay_ms = opt_seconds_ms(L, idx, arg, "lock_delay", 15000);
    lua_pushliteral(L, "behavior");
    lua_rawget(L, idx);
    /* Go's semaphores use "delete": a dead holder's contender key goes with its session. */
    s = lua_isnil(L, -1) ? (lk->kind == CONSUL_KIND_SEMAPHORE ? "delete" : "release")
        : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (s == NULL || (strcmp(s, "release") != 0 && strcmp(s, "delete") != 0))
        opt_error(L, arg, "behavior", "must be \"release\" or \"delete\"");
    lk->behavior_delete = strcmp(s, "delete") == 0;
    lua_pop(L, 1);
    return wait_ms;
}

/* nil, err, {code = "timeout"}: past the atexit wait, nothing more is done for a lock (its
 * session ends by its TTL); the lock's handles may still be the parked renewer's. */
static int exiting_failure(lua_State *L, consul_lock *lk)
{
    consul_resp rs;
    char name[256];
    consul_resp_reset(&rs);
    rs.code = CONSUL_ETIMEOUT;
    lua_pushnil(L);
    lua_pushfstring(L, "consul: lock %s: the process is exiting",
                    consul_lock_name(lk, name, sizeof name));
    consul_push_meta(L, &rs);
    return 3;
}

/* An op for a machine on the lock at ud (a stack index); its box pushed. */
static consul_op *lock_op(lua_State *L, int ud, consul_lock *lk, consul_client **cp)
{
    consul_client *c = lock_client(L, ud);         /* the client (or nil), pushed */
    consul_op *op;
    consul_client tmp;
    if (c == NULL) {
        /* a closed client: the op needs only the lock's conf */
        memset(&tmp, 0, sizeof tmp);
        tmp.conf = lk->conf;
        c = &tmp;
    }
    op = consul_op_new(L, c);
    c = c == &tmp ? NULL : c;
    *cp = c;
    consul_op_keep(L, op, ud);
    op->answer = CONSUL_ANS_CUSTOM;
    return op;
}

/* Runs the lock op (box at the top): over the client's connection while it is open (its
 * c:stats() then counts the requests), else the lock's own. */
static int lock_op_call(lua_State *L, consul_client *c, consul_op *op, consul_lock *lk)
{
    int box = lua_gettop(L);
    if (c != NULL)
        return consul_op_call(L, c, op, box);
    if (consul_lock_handle(lk, &lk->own) != 0)
        return consul_error(L, "cannot create a libcurl handle");
    return consul_op_call_on(L, NULL, &lk->own, op, box);
}

static int push_lock_failure(lua_State *L, consul_op *op)
{
    int rc = op->m.rc, n = consul_push_op_failure(L, op);
    if (rc == CONSUL_ETIMEOUT || rc == CONSUL_ECONFLICT) {
        lua_pushnil(L);
        lua_setfield(L, -2, "status");  /* not an HTTP failure */
    }
    return n;
}

/* The end of an acquire: the lock (kept value 0), or nil, err, meta. */
static int acquire_finish(lua_State *L, consul_op *op)
{
    consul_lock *lk = op->m.lk;
    lk->busy = 0;
    if (op->m.rc == CONSUL_OK && consul_renew_start(lk) != 0) {
        char name[256];
        snprintf(op->m.msg, sizeof op->m.msg, "consul: lock %s: cannot start the renewer",
                 consul_lock_name(lk, name, sizeof name));
        op->m.rc = CONSUL_ENOMEM;
        op->m.last.code = CONSUL_ENOMEM;
    }
    if (op->m.rc != CONSUL_OK) {
        /* A failed attempt leaks nothing: the renewer destroys a session it made (and
         * releases the key, should a take that timed out have happened after all). */
        if (lk->own_session && lk->session[0] != '\0')
            consul_renew_cleanup(lk);
        consul_lock_free_handles(lk);
        return push_lock_failure(L, op);
    }
    STORE(&lk->held, 1);
    consul_op_kept(L, op, 0);
    return 1;
}

/* Starts an acquire of the lock at ud: its results. */
static int run_acquire(lua_State *L, int ud, consul_lock *lk, int64_t wait_ms)
{
    consul_client *c;
    consul_op *op;
    if (consul_renew_exiting())
        return exiting_failure(L, lk);  /* it could be taken, never renewed nor released */
    if (lk->busy)
        return consul_error(L, "consul: lock is busy (acquired or released in another thread)");
    op = lock_op(L, ud, lk, &c);
    if (lk->kind == CONSUL_KIND_SEMAPHORE)
        consul_sem_acquire_init(&op->m, lk, wait_ms);
    else
        consul_lock_acquire_init(&op->m, lk, wait_ms);
    if (op->m.step == NULL)
        return consul_error(L, "not enough memory");
    op->finish = acquire_finish;
    lk->busy = 1;
    return lock_op_call(L, c, op, lk);
}

/* The lock object for c:lock and c:semaphore: key at 2, options at opts (the caller's
 * argument optarg). */
static int new_lock(lua_State *L, int kind, int limit, int opts, int optarg)
{
    consul_client *c = consul_checkclient(L, 1);
    lock_ud *u;
    consul_lock *lk;
    size_t n;
    const char *key;
    int64_t wait_ms;
    consul_buf path = CONSUL_BUF_INIT;

    /* The lock's C state (about 3 KiB, freed when Lua collects the lock) is memory the
     * collector cannot see: without this, a loop of lock cycles piled up a few hundred dead
     * ones between collections, and every new one was fresh memory, cold in the caches
     * (make bench: about 10% of a lock cycle's CPU). First, while nothing is held. */
    consul_gc_hint(L, sizeof *lk);
    consul_checkargs(L, opts, kind == CONSUL_KIND_LOCK ? "key and options expected"
                                                        : "prefix, limit and options expected");
    key = consul_checkstring(L, 2, &n);
    while (n > 0 && *key == '/')
        key++, n--;
    while (kind == CONSUL_KIND_SEMAPHORE && n > 0 && key[n - 1] == '/')
        n--;
    if (n == 0)
        return consul_argerror(L, 2, "a non-empty key expected");
    lua_settop(L, opts);

    u = consul_newuserdata(L, sizeof *u);
    u->lk = NULL;
    luaL_getmetatable(L, CONSUL_LOCK_MT);
    lua_setmetatable(L, -2);
    /* The lock keeps its client alive, in a table (Lua 5.1's environments are tables). */
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    consul_setuservalue(L, -2);
    u->lk = lk = consul_lock_new(c->conf);
    if (lk == NULL)
        return consul_error(L, "not enough memory");
    lk->kind = kind;
    lk->limit = limit;
    lk->flags = kind == CONSUL_KIND_SEMAPHORE ? CONSUL_SEMAPHORE_FLAG : CONSUL_LOCK_FLAG;
    if ((lk->key = malloc(n + 1)) == NULL)
        return consul_error(L, "not enough memory");
    memcpy(lk->key, key, n);
    lk->key[n] = '\0';
    lk->key_len = n;
    if (consul_buf_adds(&path, "/v1/kv/") != 0 || consul_buf_add_escaped(&path, key, n, 1) != 0 ||
        (kind == CONSUL_KIND_SEMAPHORE && consul_buf_addlit(&path, "/") != 0)) {
        consul_buf_free(&path);
        return consul_error(L, "not enough memory");
    }
    lk->path = path.data;  /* ownership moves to the lock */
    if (path.len > CONSUL_MAX_LOCK_PATH)
        return consul_argerror(L, 2, "key too long (over 1000 bytes once escaped)");
    wait_ms = lock_configure(L, opts, optarg, lk, 1);
    lua_replace(L, 1);
    lua_settop(L, 1);
    return run_acquire(L, 1, lk, wait_ms);
}

/* c:lock(key[, opts]) --> lock | nil, err, meta */
static int client_lock(lua_State *L)
{
    return new_lock(L, CONSUL_KIND_LOCK, 1, 3, 3);
}

/* c:semaphore(prefix, limit[, opts]) --> semaphore | nil, err, meta */
static int client_semaphore(lua_State *L)
{
    lua_Number n;
    int limit;
    consul_checkargs(L, 4, "prefix, limit and options expected");
    consul_checktype(L, 3, LUA_TNUMBER);
    n = lua_tonumber(L, 3);
    /* not luaL_checkinteger: LuaJIT's truncates 2.5 to 2 */
    if (!(n >= 1 && n <= 1000))
        return consul_argerror(L, 3, "a limit of 1..1000 expected");
    limit = (int)n;
    if ((lua_Number)limit != n)
        return consul_argerror(L, 3, "number has no integer representation");
    lua_remove(L, 3);
    return new_lock(L, CONSUL_KIND_SEMAPHORE, limit, 3, 4);
}

/* The end of a release: true, or nil, err, meta (meta.pending: the renewer goes on). */
static int release_finish(lua_State *L, consul_op *op)
{
    consul_lock *lk = op->m.lk;
    int rc = op->m.rc, n;
    lk->busy = 0;
    consul_lock_free_handles(lk);  /* its connections go now, not when Lua collects it */
    if (rc == CONSUL_OK) {
        lk->release_pending = 0;
        lua_pushboolean(L, 1);
        return 1;
    }
    n = consul_push_op_failure(L, op);
    if (consul_retryable(rc, op->m.last.status) && lk->session[0] != '\0' &&
        consul_renew_cleanup(lk) == 0) {
        /* the renewer releases it in the background, retrying until its session ends */
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "pending");
        lk->release_pending = 0;
    } else {
        lk->release_pending = lk->session[0] != '\0';
    }
    return n;
}

/* lock:acquire([opts]): takes a released or lost lock again */
static int lock_acquire(lua_State *L)
{
    consul_lock *lk = checklock(L, 1);
    int64_t wait_ms;
    consul_checkargs(L, 2, "options expected");
    if (consul_renew_exiting())
        return exiting_failure(L, lk);
    wait_ms = lock_configure(L, 2, 2, lk, 0);
    if (consul_lock_held(lk))
        return lua_settop(L, 1), 1;
    if (lk->busy)
        return consul_error(L, "consul: lock is busy (acquired or released in another thread)");
    if (consul_renew_stop(lk, 0) != 0)  /* a lost lock is still registered */
        return exiting_failure(L, lk);
    STORE(&lk->held, 0);
    if (lk->own_session && lk->session[0] != '\0') {
        /* Lost: its session may be gone (destroyed, expired) or still alive (the key was
         * deleted). Either way a new attempt starts with a new session; the old one is the
         * renewer's to end. */
        consul_renew_cleanup(lk);
    }
    lua_settop(L, 1);
    return run_acquire(L, 1, lk, wait_ms);
}

/* lock:release() --> true | nil, err, meta (idempotent) */
static int lock_release(lua_State *L)
{
    consul_lock *lk = checklock(L, 1);
    consul_client *c;
    consul_op *op;
    consul_checkargs(L, 1, "none expected");
    if (consul_renew_exiting())
        return exiting_failure(L, lk);  /* what it held is the renewer's (or its TTL's) */
    if (lk->busy)
        return consul_error(L, "consul: lock is busy (acquired or released in another thread)");
    if (consul_renew_stop(lk, 0) != 0)
        return exiting_failure(L, lk);
    if (lk->session[0] == '\0' ||
        (!LOAD(&lk->held) && !lk->own_session && !lk->release_pending)) {
        STORE(&lk->held, 0);
        lua_pushboolean(L, 1);
        return 1;
    }
    STORE(&lk->held, 0);
    op = lock_op(L, 1, lk, &c);
    consul_lock_release_init(&op->m, lk);
    op->finish = release_finish;
    lk->busy = 1;
    return lock_op_call(L, c, op, lk);
}

static int lock_held(lua_State *L)
{
    consul_lock *lk = checklock(L, 1);
    consul_checkargs(L, 1, "none expected");
    lua_pushboolean(L, consul_lock_held(lk));
    return 1;
}

/* __gc: hands a held lock to the renewer to release; never blocks, never raises. */
static int lock_gc(lua_State *L)
{
    lock_ud *u = consul_testudata(L, 1, CONSUL_LOCK_MT);
    if (u != NULL && u->lk != NULL) {
        consul_lock *lk = u->lk;
        u->lk = NULL;
        if (consul_renew_stop(lk, 1) == 0 && !lk->registered && lk->session[0] != '\0' &&
            (lk->own_session || lk->release_pending) && !lk->busy)
            consul_renew_cleanup(lk);  /* not held (lost, failed release): end its session */
        consul_lock_unref(lk);
    }
    return 0;
}

/* __close: releases at scope exit, and never raises (an error there would mask the
 * block's own). */
static int lock_close(lua_State *L)
{
    lock_ud *u = consul_testudata(L, 1, CONSUL_LOCK_MT);
    if (u != NULL && u->lk != NULL && !u->lk->busy) {
        lua_settop(L, 1);
        lua_pushcfunction(L, lock_release);
        lua_insert(L, 1);
        lua_pcall(L, 1, 0, 0);  /* a failure to release stays unsaid here: see release() */
    }
    return 0;
}

static int lock_index(lua_State *L)
{
    consul_lock *lk = checklock(L, 1);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "key") == 0) {
        lua_pushlstring(L, lk->key, lk->key_len);
    } else if (strcmp(k, "session") == 0) {
        if (lk->session[0])
            lua_pushstring(L, lk->session);
        else
            lua_pushnil(L);
    } else if (strcmp(k, "fence") == 0) {
        if (lk->kind == CONSUL_KIND_LOCK)
            consul_push_u64(L, lk->fence);
        else
            lua_pushnil(L);  /* a semaphore has no single holder to fence */
    } else if (strcmp(k, "limit") == 0) {
        if (lk->kind == CONSUL_KIND_SEMAPHORE)
            lua_pushinteger(L, lk->limit);
        else
            lua_pushnil(L);
    } else {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(1));
    }
    return 1;
}

static int lock_tostring(lua_State *L)
{
    lock_ud *u = luaL_checkudata(L, 1, CONSUL_LOCK_MT);
    char name[256];
    if (u->lk == NULL)
        lua_pushliteral(L, "consul.Lock (gone)");
    else
        lua_pushfstring(L, "consul.%s (%s, %s)",
                        u->lk->kind == CONSUL_KIND_SEMAPHORE ? "Semaphore" : "Lock",
                        consul_lock_name(u->lk, name, sizeof name),
                        consul_lock_held(u->lk) ? "held" : "not held");
    return 1;
}

/* ---- guarded writes: lock:put, lock:delete, lock:txn --------------------------------
 *
 * One transaction that begins with check-session of the lock's key (a semaphore's: its
 * contender key) for the lock's session: Consul applies the writes only if the lock is held
 * at the moment it applies them, whatever the clocks, the lock-delay or the faults did. The
 * check's own result (op 0) is not handed back: the caller's ops keep their own numbers. */

enum { G_PUT, G_DELETE, G_TXN, G_CAS = 16 /* put or delete with a cas */ };

/* The check-session op, then a comma: the start of a guarded transaction's body. */
static int guard_op(consul_lock *lk, consul_buf *b)
{
    if (consul_buf_adds(b, "[{\"KV\":{\"Verb\":\"check-session\",\"Key\":") != 0)
        return -1;
    if (lk->kind == CONSUL_KIND_SEMAPHORE) {
        /* prefix/<session>: the key holds the prefix without its slash */
        consul_buf k = CONSUL_BUF_INIT;
        int rc = consul_buf_add(&k, lk->key, lk->key_len) != 0 || consul_buf_addlit(&k, "/") != 0 ||
                 consul_buf_adds(&k, lk->session) != 0 ||
                 consul_buf_add_json_string(b, k.data, k.len) != 0;
        consul_buf_free(&k);
        if (rc)
            return -1;
    } else if (consul_buf_add_json_string(b, lk->key, lk->key_len) != 0) {
        return -1;
    }
    return consul_buf_adds(b, ",\"Session\":") != 0 ||
                   consul_buf_add_json_string(b, lk->session, strlen(lk->session)) != 0 ||
                   consul_buf_adds(b, "}},") != 0
               ? -1
               : 0;
}

/* The end of a guarded write: true (put, delete) or the caller's results (txn); the lock not
 * held any more when Consul applied it: nil, err, {code = "lost"}, and the lock is lost. */
static int guarded_finish(lua_State *L, consul_op *op)
{
    consul_lock *lk = op->m.lk;
    consul_resp *rs = &op->m.last;
    consul_json *d = &op->m.doc;
    cJSON *e, *results;
    char name[256], msg[1024];
    int kind = op->json_flags >> 8;

    if (rs->code != CONSUL_OK && rs->status != 409)
        return consul_push_op_failure(L, op);
    if (consul_json_parse(d, rs->body, rs->body_len) != 0 || !cJSON_IsObject(d->root)) {
        rs->code = CONSUL_EDECODE;
        snprintf(rs->error, sizeof rs->error, "malformed JSON answer");
        op->m.msg[0] = '\0';
        return consul_push_op_failure(L, op);
    }
    if (rs->status == 409) {
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(d->root, "Errors")) {
            cJSON *oi = cJSON_GetObjectItemCaseSensitive(e, "OpIndex");
            size_t n;
            const char *what = consul_json_field_str(d, e, "What", &n);
            if (cJSON_IsNumber(oi) && oi->valuedouble == 0 && what != NULL &&
                strstr(what, "Permission denied") == NULL) {
                /* the guard refused: the lock is not ours at the moment Consul looked */
                STORE(&lk->lost, 1);
                snprintf(msg, sizeof msg, "consul: %s %s: not held when the write came (%.300s)",
                         lk->kind == CONSUL_KIND_SEMAPHORE ? "semaphore" : "lock",
                         consul_lock_name(lk, name, sizeof name), what);
                rs->code = CONSUL_ELOST;
                return consul_push_failure(L, msg, rs);
            }
        }
        /* put/delete with a cas whose index is stale: false, as kv:put and kv:delete say it */
        if ((kind & G_CAS) != 0) {
            cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(d->root, "Errors")) {
                size_t n;
                const char *what = consul_json_field_str(d, e, "What", &n);
                if (what != NULL && strstr(what, "index is stale") != NULL) {
                    lua_pushboolean(L, 0);
                    lua_pushnil(L);
                    consul_push_meta(L, rs);
                    return 3;
                }
            }
        }
        /* a write of the caller's refused (an ACL, a txn op): its own op number */
        {
            size_t used = 0;
            used += (size_t)snprintf(msg, sizeof msg, "consul: PUT /v1/txn: 409");
            cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(d->root, "Errors")) {
                cJSON *oi = cJSON_GetObjectItemCaseSensitive(e, "OpIndex");
                size_t n;
                const char *what = consul_json_field_str(d, e, "What", &n);
                int i = cJSON_IsNumber(oi) && oi->valuedouble >= 1 && oi->valuedouble < 1e6
                            ? (int)oi->valuedouble - 1 : 0;
                if (used < sizeof msg - 1)
                    used += (size_t)snprintf(msg + used, sizeof msg - used, "%s op %d: %.200s",
                                             used > 25 ? ";" : "", i, what != NULL ? what : "?");
            }
            rs->code = CONSUL_EHTTP;
            return consul_push_failure(L, msg, rs);
        }
    }
    if ((kind & ~G_CAS) != G_TXN) {
        lua_pushboolean(L, 1);
    } else {
        int rc;
        results = cJSON_GetObjectItemCaseSensitive(d->root, "Results");
        if (cJSON_IsArray(results) && results->child != NULL)
            cJSON_DeleteItemFromArray(results, 0);  /* the guard's own result */
        rc = consul_json_push(L, d, d->root, CONSUL_JSON_B64VALUE, op->deadline);
        if (rc != CONSUL_OK) {
            rs->code = rc;
            snprintf(rs->error, sizeof rs->error, "an answer of the wrong shape");
            op->m.msg[0] = '\0';
            return consul_push_op_failure(L, op);
        }
    }
    lua_pushnil(L);
    consul_push_meta(L, rs);
    return 3;
}

static int guarded(lua_State *L, int kind)
{
    consul_lock *lk = checklock(L, 1);
    consul_client *c;
    consul_op *op;
    consul_buf *b;
    size_t klen = 0, vlen = 0;
    const char *key = NULL, *value = NULL;
    int nargs = kind == G_PUT ? 4 : 3, box;
    uint64_t cas = 0, flags = 0;
    int has_cas = 0, has_flags = 0, recurse = 0;

    consul_checkargs(L, nargs, kind == G_PUT ? "key, value and options expected"
                               : kind == G_DELETE ? "key and options expected"
                                                  : "ops and options expected");
    lua_settop(L, nargs);
    if (kind != G_TXN) {
        key = consul_checkstring(L, 2, &klen);
        while (klen > 0 && *key == '/')
            key++, klen--;  /* "/a" is "a", as kv:put has it */
        if (klen == 0)
            return consul_argerror(L, 2, "a non-empty key expected");
    } else {
        consul_checktype(L, 2, LUA_TTABLE);
        if (consul_rawlen(L, 2) == 0)
            return consul_argerror(L, 2, "an array of transaction operations expected");
    }
    if (kind == G_PUT)
        value = consul_checkstring(L, 3, &vlen);
    if (!lua_isnil(L, nargs)) {
        /* opts: put takes cas and flags; delete cas and recurse; txn none */
        static const char *const put_opts[] = { "cas", "flags", NULL };
        static const char *const del_opts[] = { "cas", "recurse", NULL };
        static const char *const txn_opts[] = { NULL };
        const char *const *names = kind == G_PUT ? put_opts : kind == G_DELETE ? del_opts : txn_opts;
        if (lua_type(L, nargs) != LUA_TTABLE)
            return consul_argerror(L, nargs, "options table expected");
        check_names(L, nargs, nargs, names);
        lua_pushliteral(L, "cas");
        lua_rawget(L, nargs);
        if (!lua_isnil(L, -1)) {
            if (consul_to_u64(L, -1, &cas, 0) != 0)
                opt_error(L, nargs, "cas", "must be a non-negative integer (or a decimal string)");
            has_cas = 1;
        }
        lua_pop(L, 1);
        lua_pushliteral(L, "flags");
        lua_rawget(L, nargs);
        if (!lua_isnil(L, -1)) {
            if (consul_to_u64(L, -1, &flags, 1) != 0)
                opt_error(L, nargs, "flags", "must be an integer (or a decimal string)");
            has_flags = 1;
        }
        lua_pop(L, 1);
        lua_pushliteral(L, "recurse");
        lua_rawget(L, nargs);
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TBOOLEAN)
                opt_error(L, nargs, "recurse", "must be a boolean");
            recurse = lua_toboolean(L, -1);
        }
        lua_pop(L, 1);
        if (recurse && has_cas)
            opt_error(L, nargs, "cas", "does not go with recurse (Consul deletes a tree without one)");
    }
    if (lk->session[0] == '\0' || !LOAD(&lk->held) || LOAD(&lk->lost)) {
        /* released, never held, or seen lost: nothing for Consul to check (a lease that ran
         * out is Consul's to judge: the write goes) */
        consul_resp t;
        char name[256], msg[512];
        consul_resp_reset(&t);
        t.code = CONSUL_ELOST;
        snprintf(msg, sizeof msg, "consul: %s %s: not held",
                 lk->kind == CONSUL_KIND_SEMAPHORE ? "semaphore" : "lock",
                 consul_lock_name(lk, name, sizeof name));
        return consul_push_failure(L, msg, &t);
    }
    {
        consul_client tmp;
        c = lock_client(L, 1);                     /* nargs + 1 */
        if (c == NULL) {
            memset(&tmp, 0, sizeof tmp);
            tmp.conf = lk->conf;
            op = consul_op_new(L, &tmp);           /* nargs + 2 */
        } else {
            op = consul_op_new(L, c);
        }
    }
    box = lua_gettop(L);
    consul_lock_retain(lk);
    op->m.lk = lk;
    op->answer = CONSUL_ANS_CUSTOM;
    op->flags = CONSUL_CALL_FINISH_ALL;
    op->json_flags = (kind | (has_cas ? G_CAS : 0)) << 8;  /* (which write, for the finish) */
    op->finish = guarded_finish;
    op->m.rq.method = "PUT";
    consul_op_path(L, op, "/v1/txn");
    b = &op->m.body;
    if (guard_op(lk, b) != 0)
        return consul_error(L, "not enough memory");
    if (kind == G_TXN) {
        /* "[guard}}," then the caller's "[a,b]" in the op's own buffer (encoding may raise),
         * its bracket dropped: "[guard},a,b]" */
        size_t at = b->len;
        consul_json_encode(L, 2, 2, b, CONSUL_JSON_B64VALUE);
        if (b->len < at + 2 || b->data[at] != '[')
            return consul_argerror(L, 2, "an array of transaction operations expected");
        memmove(b->data + at, b->data + at + 1, b->len - at - 1);
        b->len--;
        b->data[b->len] = '\0';
    } else {
        const char *verb = kind == G_PUT ? (has_cas ? "cas" : "set")
                         : recurse ? "delete-tree" : has_cas ? "delete-cas" : "delete";
        if (consul_buf_addf(b, "{\"KV\":{\"Verb\":\"%s\",\"Key\":", verb) != 0 ||
            consul_buf_add_json_string(b, key, klen) != 0 ||
            (has_cas && consul_buf_addf(b, ",\"Index\":%llu", (unsigned long long)cas) != 0) ||
            (has_flags && consul_buf_addf(b, ",\"Flags\":%llu", (unsigned long long)flags) != 0) ||
            (kind == G_PUT && (consul_buf_adds(b, ",\"Value\":\"") != 0 ||
                               consul_buf_add_base64(b, (const unsigned char *)value, vlen) != 0 ||
                               consul_buf_adds(b, "\"") != 0)) ||
            consul_buf_adds(b, "}}]") != 0)
            return consul_error(L, "not enough memory");
    }
    op->m.rq.body = b->data;
    op->m.rq.body_len = b->len;
    op->m.rq.content_type = "application/json";
    consul_op_opts(L, 0, op, 0);  /* the client's dc */
    if (c == NULL) {
        if (consul_lock_handle(lk, &lk->own) != 0)
            return consul_error(L, "cannot create a libcurl handle");
        return consul_op_call_on(L, NULL, &lk->own, op, box);
    }
    return consul_op_call(L, c, op, box);
}

/* lock:put(key, value[, opts]) --> true | false (cas: stale index) | nil, err, meta (code
 * "lost": not held) */
static int lock_put(lua_State *L)
{
    return guarded(L, G_PUT);
}

/* lock:delete(key[, opts]) --> true | false (cas) | nil, err, meta */
static int lock_delete(lua_State *L)
{
    return guarded(L, G_DELETE);
}

/* lock:txn(ops) --> Consul's { Results =, Errors = } for ops | nil, err, meta */
static int lock_txn(lua_State *L)
{
    return guarded(L, G_TXN);
}

static const luaL_Reg lock_methods[] = {
    { "acquire", lock_acquire },
    { "release", lock_release },
    { "held", lock_held },
    { "put", lock_put },
    { "delete", lock_delete },
    { "txn", lock_txn },
    { NULL, NULL }
};

void consul_lock_open(lua_State *L)
{
    /* module */
    consul_renew_atexit_once();
    luaL_newmetatable(L, CONSUL_LOCK_MT);          /* module, mt */
    consul_newlib(L, lock_methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "Lock");                   /* consul.Lock: the methods, for nginx */
    lua_pushcclosure(L, lock_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lock_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, lock_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, lock_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, CONSUL_LOCK_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_getfield(L, -1, "Client");                 /* module, client methods */
    lua_pushcfunction(L, client_lock);
    lua_setfield(L, -2, "lock");
    lua_pushcfunction(L, client_semaphore);
    lua_setfield(L, -2, "semaphore");
    lua_pop(L, 1);
}
