/*
 * semaphore.c: N holders, in the layout of Consul's Go client (api/semaphore.go) and so of
 * `consul lock -n N`: each contender holds prefix/<session> (acquired by its session, flags
 * 0xe0f69a2baa414de0), and prefix/.lock holds {"Limit":N,"Holders":{"<session>":true,...}},
 * changed only by check-and-set. Holders whose sessions no longer hold a contender key are
 * pruned by whoever updates the .lock next.
 *
 * Acquire and release are machines (mach.c), like a lock's. Holder names read from the
 * .lock are kept with their lengths and written back JSON-escaped, whatever they hold; a
 * failure is reported with its own request's answer.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HOLDERS 1024
#define GRACE_MS CONSUL_WAIT_GRACE_MS
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 1000

typedef struct holder {
    char name[64];
    size_t len;
} holder;

/* The decoded prefix/.lock */
typedef struct semlock {
    int exists;
    uint64_t modify_index;
    long limit;
    int n;
    holder holders[MAX_HOLDERS];
    consul_json value;  /* the decoded Value's own parse */
} semlock;

/* A holder whose session no longer holds a contender key, since when we have seen it so. */
typedef struct gone {
    holder h;
    int64_t since;
} gone;

typedef struct sem {
    semlock s;
    int64_t wait_ms, deadline, next_renew, retry;
    gone *gone;               /* holders seen dead, not yet pruned (their lock-delay) */
    int ngone, cap_gone;
    int64_t prune_at;         /* when the first of them may be pruned (CONSUL_NEVER: none) */
    uint64_t index;
    int tries, races;
    int failed;
    consul_resp fail;
    char fail_msg[512];
} sem;

static void sem_free(void *p)
{
    sem *x = p;
    consul_json_free(&x->s.value);
    free(x->gone);
    free(x);
}

static int find_holder(const semlock *s, const char *session)
{
    int i;
    size_t n = strlen(session);
    for (i = 0; i < s->n; i++)
        if (s->holders[i].len == n && memcmp(s->holders[i].name, session, n) == 0)
            return i;
    return -1;
}

static void drop_holder(semlock *s, int i)
{
    memmove(&s->holders[i], &s->holders[i + 1], (size_t)(s->n - i - 1) * sizeof s->holders[0]);
    s->n--;
}

/* Reads the .lock record rec into s: 0 ok, -1 its flags are not ours, -2 unreadable. */
static int decode_lock(consul_lock *lk, consul_json *d, cJSON *rec, semlock *s)
{
    uint64_t flags;
    cJSON *v, *root, *h;
    long got;
    size_t len;
    char *text;
    consul_json_free(&s->value);
    s->exists = 1;
    s->n = 0;
    if (consul_json_u64(d, cJSON_GetObjectItemCaseSensitive(rec, "Flags"), &flags) != 0 ||
        flags != lk->flags)
        return -1;
    if (consul_json_u64(d, cJSON_GetObjectItemCaseSensitive(rec, "ModifyIndex"),
                        &s->modify_index) != 0)
        return -2;
    v = cJSON_GetObjectItemCaseSensitive(rec, "Value");
    if (consul_json_str(d, v, &len) == NULL ||
        (got = consul_base64_decode_inplace(v->valuestring, len)) < 0)
        return -2;
    text = v->valuestring;  /* decoded in place: base64 only shrinks */
    text[got] = '\0';
    if (consul_json_parse(&s->value, text, (size_t)got) != 0)
        return -2;
    root = s->value.root;
    v = cJSON_GetObjectItemCaseSensitive(root, "Limit");
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= 1000000) ||
        v->valuedouble != (double)(long)v->valuedouble)
        return -2;
    s->limit = (long)v->valuedouble;
    h = cJSON_GetObjectItemCaseSensitive(root, "Holders");
    if (h != NULL && !cJSON_IsObject(h) && !cJSON_IsNull(h))
        return -2;
    cJSON_ArrayForEach(h, h) {
        const char *k;
        /* a holder we cannot keep would be dropped by our next check-and-set: refuse */
        if (s->n >= MAX_HOLDERS || h->string == NULL)
            return -2;
        k = consul_json_key(&s->value, h, &len);
        if (len >= sizeof s->holders[0].name)
            return -2;
        memcpy(s->holders[s->n].name, k, len);
        s->holders[s->n].len = len;
        s->n++;
    }
    return 0;
}

/* Finds prefix/.lock among the records of a recursive read. */
static cJSON *find_lock_record(consul_lock *lk, consul_json *d)
{
    cJSON *rec;
    cJSON_ArrayForEach(rec, d->root) {
        size_t n;
        const char *k = consul_json_field_str(d, rec, "Key", &n);
        if (k != NULL && n == lk->key_len + 6 && memcmp(k, lk->key, lk->key_len) == 0 &&
            memcmp(k + lk->key_len, "/.lock", 6) == 0)
            return rec;
    }
    return NULL;
}

/* Whether holder i of s has its session among the records of d (the prefix's listing). */
static int holder_alive(consul_json *d, const semlock *s, int i)
{
    cJSON *rec;
    cJSON_ArrayForEach(rec, d->root) {
        size_t n;
        const char *ss = consul_json_field_str(d, rec, "Session", &n);
        if (ss != NULL && n == s->holders[i].len && memcmp(ss, s->holders[i].name, n) == 0)
            return 1;
    }
    return 0;
}

/* Drops holders whose session holds no contender key under the prefix. */
static void prune(consul_json *d, semlock *s)
{
    int i = 0;
    while (i < s->n) {
        if (holder_alive(d, s, i))
            i++;
        else
            drop_holder(s, i);
    }
}

/* As prune, for a contender that takes a slot: a dead holder is dropped only once it has
 * been seen dead for the lock-delay (the acquirer's lock_delay). Consul's lock-delay keeps a
 * lock from a new holder for that long after its holder's session ended, and a holder's local
 * lease is no longer than it (renew.c): a slot is handed on no sooner than a lock would be.
 * Sets x->prune_at to when the next one is due. -1: out of memory. */
static int prune_aged(consul_json *d, semlock *s, sem *x, int64_t delay, int64_t now)
{
    int i = 0, j;
    x->prune_at = CONSUL_NEVER;
    while (i < s->n) {
        int alive = holder_alive(d, s, i);
        if (alive || delay <= 0) {
            if (alive)
                i++;
            else
                drop_holder(s, i);
            continue;
        }
        for (j = 0; j < x->ngone; j++)
            if (x->gone[j].h.len == s->holders[i].len &&
                memcmp(x->gone[j].h.name, s->holders[i].name, s->holders[i].len) == 0)
                break;
        if (j == x->ngone) {
            if (x->ngone == x->cap_gone) {
                int cap = x->cap_gone ? x->cap_gone * 2 : 8;
                gone *g = realloc(x->gone, (size_t)cap * sizeof *g);
                if (g == NULL)
                    return -1;
                x->gone = g;
                x->cap_gone = cap;
            }
            x->gone[j].h = s->holders[i];
            x->gone[j].since = now;
            x->ngone++;
        }
        if (now - x->gone[j].since >= delay) {
            drop_holder(s, i);
            continue;
        }
        if (x->gone[j].since + delay < x->prune_at)
            x->prune_at = x->gone[j].since + delay;
        i++;
    }
    return 0;
}

static int encode_lock(consul_buf *b, const semlock *s)
{
    int i;
    consul_buf_reset(b);
    if (consul_buf_addf(b, "{\"Limit\":%ld,\"Holders\":{", s->limit) != 0)
        return -1;
    for (i = 0; i < s->n; i++)
        if ((i > 0 && consul_buf_addlit(b, ",") != 0) ||
            consul_buf_add_json_string(b, s->holders[i].name, s->holders[i].len) != 0 ||
            consul_buf_adds(b, ":true") != 0)
            return -1;
    return consul_buf_adds(b, "}}");
}

/* m->path = the prefix's path + leaf (escaped unless it is ".lock") */
static int leaf_path(consul_mach *m, const char *leaf)
{
    consul_buf_reset(&m->path);
    consul_buf_reset(&m->query);
    return consul_buf_adds(&m->path, m->lk->path) != 0 ||
                   consul_buf_add_escaped(&m->path, leaf, strlen(leaf), 0) != 0
               ? -1
               : 0;
}

static int oom(consul_mach *m)
{
    return consul_mach_done(m, CONSUL_ENOMEM, NULL, "consul: out of memory");
}

/* PUT prefix/.lock?cas=<index>&flags=<sem> with s */
static int send_cas(consul_mach *m, const semlock *s)
{
    if (leaf_path(m, ".lock") != 0 || encode_lock(&m->body, s) != 0 ||
        consul_buf_addf(&m->query, "cas=%llu&flags=%llu", (unsigned long long)s->modify_index,
                        (unsigned long long)m->lk->flags) != 0)
        return oom(m);
    return consul_mach_send(m, "PUT", m->body.data, m->body.len, 0);
}

static int answered_true(const consul_resp *rs)
{
    return rs->body_len >= 4 && strncmp(rs->body, "true", 4) == 0;
}

/* ---- acquire ------------------------------------------------------------------- */

enum { S_START, S_CREATE, S_CONTENDER, S_RENEW, S_READ, S_CAS, S_SLEEP_RETRY };

static int sem_timeout(consul_mach *m)
{
    sem *x = m->ext;
    char name[256];
    consul_lock_name(m->lk, name, sizeof name);
    if (x->failed && x->s.limit == 0) {
        snprintf(m->msg, sizeof m->msg, "consul: semaphore %s: not acquired in %.3g s: %s",
                 name, (double)x->wait_ms / 1000, x->fail_msg);
        m->last = x->fail;
        m->rc = x->fail.code;
        m->done = 1;
        return CONSUL_DONE;
    }
    snprintf(m->msg, sizeof m->msg,
             "consul: semaphore %s: not acquired in %.3g s: %d of %ld slots taken", name,
             (double)x->wait_ms / 1000, x->s.n, x->s.limit ? x->s.limit : (long)m->lk->limit);
    consul_resp_reset(&m->last);
    m->last.code = CONSUL_ETIMEOUT;
    m->rc = CONSUL_ETIMEOUT;
    m->done = 1;
    return CONSUL_DONE;
}

static int sem_failed(consul_mach *m, const consul_resp *rs)
{
    sem *x = m->ext;
    int64_t now = consul_now_ms(), pause;
    if (x->wait_ms == 0 || !consul_retryable(rs->code, rs->status))
        return consul_mach_done(m, rs->code, rs, NULL);
    x->failed = 1;
    consul_resp_copy(&x->fail, rs);
    consul_format_failure(x->fail_msg, sizeof x->fail_msg, m->rq.method, m->rq.path, rs);
    if (x->deadline != CONSUL_NEVER && now >= x->deadline)
        return sem_timeout(m);
    pause = x->retry;
    x->retry = x->retry * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : x->retry * 2;
    if (x->deadline != CONSUL_NEVER && now + pause > x->deadline)
        pause = x->deadline - now;
    x->index = 0;
    m->state = S_SLEEP_RETRY;
    m->sleep_ms = pause > 0 ? pause : 1;
    return CONSUL_SLEEP;
}

static int send_contender(consul_mach *m)
{
    consul_lock *lk = m->lk;
    if (leaf_path(m, lk->session) != 0 || consul_buf_adds(&m->query, "acquire=") != 0 ||
        consul_buf_add_escaped(&m->query, lk->session, strlen(lk->session), 0) != 0 ||
        consul_buf_addf(&m->query, "&flags=%llu", (unsigned long long)lk->flags) != 0)
        return oom(m);
    m->state = S_CONTENDER;
    return consul_mach_send(m, "PUT", lk->value != NULL ? lk->value : "", lk->value_len, 0);
}

static int sem_next(consul_mach *m)
{
    consul_lock *lk = m->lk;
    sem *x = m->ext;
    int64_t now = consul_now_ms();
    long w = 0;
    /* A lost check-and-set race is no try: read again at once (wait = 0 too). */
    if (x->tries > 0 && x->deadline != CONSUL_NEVER && now >= x->deadline &&
        !(x->races > 0 && x->races <= 64))
        return sem_timeout(m);
    if (lk->own_session && LOAD(&lk->ttl_ms) > 0 && now >= x->next_renew) {
        m->state = S_RENEW;
        return consul_sess_renew(m);
    }
    x->tries++;
    consul_buf_reset(&m->path);
    consul_buf_reset(&m->query);
    if (consul_buf_adds(&m->path, lk->path) != 0 || consul_buf_adds(&m->query, "recurse") != 0)
        return oom(m);
    if (x->index > 0) {
        int64_t left = x->deadline == CONSUL_NEVER ? CONSUL_MAX_WAIT_MS
                                                   : (x->deadline - now) * 16 / 17;
        if (lk->own_session && LOAD(&lk->ttl_ms) > 0 && x->next_renew - now < left)
            left = x->next_renew - now;
        if (x->prune_at != CONSUL_NEVER && x->prune_at - now < left)
            left = x->prune_at - now;  /* a dead holder's slot comes free then */
        w = (long)(left > CONSUL_MAX_WAIT_MS ? CONSUL_MAX_WAIT_MS : left < 1 ? 1 : left);
        if (consul_buf_addf(&m->query, "&index=%llu&wait=%ldms", (unsigned long long)x->index,
                            w) != 0)
            return oom(m);
    }
    m->state = S_READ;
    return consul_mach_send(m, "GET", NULL, 0, w);
}

static int sem_step(consul_mach *m, const consul_resp *rs)
{
    consul_lock *lk = m->lk;
    sem *x = m->ext;
    semlock *s = &x->s;
    cJSON *rec;
    char name[256];
    int d;

    switch (m->state) {
    case S_START:
        if (lk->session[0] == '\0') {
            m->state = S_CREATE;
            return consul_sess_create(m);
        }
        x->next_renew = LOAD(&lk->lease_ms) + consul_lock_lease(lk) / 2;
        return send_contender(m);

    case S_CREATE:
        if (rs->code != CONSUL_OK)
            return sem_failed(m, rs);
        if (consul_sess_created(m, rs) != 0)
            return consul_mach_done(m, m->last.code, NULL, NULL);
        x->next_renew = LOAD(&lk->lease_ms) + consul_lock_lease(lk) / 2;
        return send_contender(m);

    case S_CONTENDER:
        if (rs->code != CONSUL_OK)
            return sem_failed(m, rs);
        if (!answered_true(rs)) {
            snprintf(m->msg, sizeof m->msg, "consul: semaphore %s: cannot take contender key "
                                            "%.300s", consul_lock_name(lk, name, sizeof name),
                     m->rq.path);
            consul_mach_done(m, CONSUL_ECONFLICT, NULL, m->msg);
            consul_resp_reset(&m->last);
            m->last.code = CONSUL_ECONFLICT;
            return CONSUL_DONE;
        }
        return sem_next(m);

    case S_RENEW:
        if (rs->code != CONSUL_OK)
            return sem_failed(m, rs);  /* a 404 (session gone) is no retry: it fails */
        consul_sess_renewed(m, rs, m->sent);
        x->next_renew = m->sent + consul_lock_lease(lk) / 2;
        return sem_next(m);

    case S_READ:
        if (rs->code != CONSUL_OK)
            return sem_failed(m, rs);
        x->retry = RETRY_MIN_MS;
        if (consul_mach_parse(m, rs) != 0 || !cJSON_IsArray(m->doc.root))
            return consul_mach_done(m, CONSUL_EDECODE, NULL, NULL);
        consul_json_free(&s->value);
        memset(s, 0, sizeof *s);
        rec = find_lock_record(lk, &m->doc);
        s->limit = lk->limit;
        if (rec != NULL) {
            d = decode_lock(lk, &m->doc, rec, s);
            if (d == -1) {
                snprintf(m->msg, sizeof m->msg,
                         "consul: semaphore %s: %s/.lock exists and is not a semaphore",
                         consul_lock_name(lk, name, sizeof name), name);
                consul_mach_done(m, CONSUL_ECONFLICT, NULL, m->msg);
                consul_resp_reset(&m->last);
                m->last.code = CONSUL_ECONFLICT;
                return CONSUL_DONE;
            }
            if (d == -2) {
                consul_resp_copy(&m->last, rs);
                m->last.code = CONSUL_EDECODE;
                snprintf(m->last.error, sizeof m->last.error, "a malformed .lock");
                return consul_mach_done(m, CONSUL_EDECODE, NULL, NULL);
            }
            if (s->limit != lk->limit) {
                snprintf(m->msg, sizeof m->msg,
                         "consul: semaphore %s: limit conflict (.lock says %ld, we say %d)",
                         consul_lock_name(lk, name, sizeof name), s->limit, lk->limit);
                consul_mach_done(m, CONSUL_ECONFLICT, NULL, m->msg);
                consul_resp_reset(&m->last);
                m->last.code = CONSUL_ECONFLICT;
                return CONSUL_DONE;
            }
        }
        if (prune_aged(&m->doc, s, x, lk->lock_delay_ms, consul_now_ms()) != 0)
            return oom(m);
        if (find_holder(s, lk->session) >= 0)
            return consul_mach_done(m, CONSUL_OK, rs, NULL);
        if (s->n >= s->limit) {
            x->races = 0;
            if (x->wait_ms != 0)
                x->index = rs->has_index ? rs->index : 0;
            return sem_next(m);  /* the deadline check ends a wait = 0 */
        }
        if (s->n >= MAX_HOLDERS)
            return oom(m);
        memcpy(s->holders[s->n].name, lk->session, strlen(lk->session));
        s->holders[s->n].len = strlen(lk->session);
        s->n++;
        m->state = S_CAS;
        return send_cas(m, s);

    case S_CAS:
        if (rs->code != CONSUL_OK)
            return sem_failed(m, rs);
        if (answered_true(rs))
            return consul_mach_done(m, CONSUL_OK, rs, NULL);
        x->index = 0;  /* lost the race: read again at once */
        x->races++;
        return sem_next(m);

    case S_SLEEP_RETRY:
        if (lk->session[0] == '\0') {
            m->state = S_CREATE;
            return consul_sess_create(m);
        }
        return x->tries == 0 ? send_contender(m) : sem_next(m);
    }
    return oom(m);
}

static void sem_abandon(consul_mach *m)
{
    consul_lock *lk = m->lk;
    if (lk == NULL)
        return;
    lk->busy = 0;
    if (lk->own_session && lk->session[0] != '\0')
        consul_renew_cleanup(lk);
}

void consul_sem_acquire_init(consul_mach *m, consul_lock *lk, int64_t wait_ms)
{
    sem *x = calloc(1, sizeof *x);
    int64_t now = consul_now_ms();
    consul_lock_retain(lk);
    m->lk = lk;
    m->step = x != NULL ? sem_step : NULL;
    m->abandon = sem_abandon;
    m->state = S_START;
    m->ext = x;
    m->ext_free = sem_free;
    if (x == NULL)
        return;
    x->wait_ms = wait_ms;
    x->deadline = wait_ms < 0 ? CONSUL_NEVER : now + wait_ms;
    m->hard = wait_ms < 0 ? CONSUL_NEVER : now + wait_ms + GRACE_MS;
    x->retry = RETRY_MIN_MS;
    x->prune_at = CONSUL_NEVER;
}

/* For the watch: the parsed recursive read still lists us as a holder? */
int consul_sem_check(consul_lock *lk, consul_json *doc)
{
    semlock *s = calloc(1, sizeof *s);
    cJSON *rec;
    int ours = -1;
    if (s == NULL)
        return 0;
    rec = cJSON_IsArray(doc->root) ? find_lock_record(lk, doc) : NULL;
    if (rec != NULL && decode_lock(lk, doc, rec, s) == 0) {
        prune(doc, s);  /* our contender key lost its session: we are no holder */
        if (find_holder(s, lk->session) >= 0)
            ours = 1;
    }
    consul_json_free(&s->value);
    free(s);
    return ours;
}

/* ---- release: leave the holders (by CAS, retried), delete the contender key, destroy an
 * own session ------------------------------------------------------------------------ */

enum { SR_START, SR_READ, SR_CAS, SR_DELETE, SR_DESTROY };

static int send_delete(consul_mach *m)
{
    if (leaf_path(m, m->lk->session) != 0)
        return oom(m);
    m->state = SR_DELETE;
    return consul_mach_send(m, "DELETE", NULL, 0, 0);
}

static int semrel_step(consul_mach *m, const consul_resp *rs)
{
    consul_lock *lk = m->lk;
    sem *x = m->ext;
    semlock *s = &x->s;
    cJSON *rec;
    int i;

    switch (m->state) {
    case SR_START:
        if (lk->session[0] == '\0')
            return consul_mach_done(m, CONSUL_OK, NULL, NULL);
        if (leaf_path(m, ".lock") != 0)
            return oom(m);
        m->state = SR_READ;
        return consul_mach_send(m, "GET", NULL, 0, 0);

    case SR_READ:
        if (rs->status == 404)
            return send_delete(m);
        if (rs->code != CONSUL_OK && consul_retryable(rs->code, rs->status))
            return consul_mach_done(m, rs->code, rs, NULL);  /* to be tried again */
        if (rs->code != CONSUL_OK) {
            consul_mach_keep_failure(m, rs);  /* for good (an ACL): the rest still goes */
            return send_delete(m);
        }
        if (consul_mach_parse(m, rs) != 0 || !cJSON_IsArray(m->doc.root) ||
            (rec = m->doc.root->child) == NULL)
            return send_delete(m);
        consul_json_free(&s->value);
        memset(s, 0, sizeof *s);
        if (decode_lock(lk, &m->doc, rec, s) != 0 || (i = find_holder(s, lk->session)) < 0)
            return send_delete(m);
        drop_holder(s, i);
        m->state = SR_CAS;
        return send_cas(m, s);

    case SR_CAS:
        if (rs->code != CONSUL_OK && consul_retryable(rs->code, rs->status))
            return consul_mach_done(m, rs->code, rs, NULL);
        if (rs->code != CONSUL_OK) {
            consul_mach_keep_failure(m, rs);
            return send_delete(m);
        }
        if (answered_true(rs) || ++x->races >= 16)
            return send_delete(m);  /* out of the holders (or pruned by the next one) */
        if (leaf_path(m, ".lock") != 0)
            return oom(m);
        m->state = SR_READ;
        return consul_mach_send(m, "GET", NULL, 0, 0);

    case SR_DELETE:
        if (rs->code != CONSUL_OK && consul_retryable(rs->code, rs->status))
            return consul_mach_done(m, rs->code, rs, NULL);
        if (rs->code != CONSUL_OK)
            consul_mach_keep_failure(m, rs);  /* its session's end deletes it (Behavior) */
        if (!lk->own_session)
            return consul_mach_done_kept(m, rs);
        m->state = SR_DESTROY;
        return consul_sess_destroy(m);

    case SR_DESTROY:
        if (rs->code != CONSUL_OK && rs->status != 404)
            return consul_mach_done(m, rs->code, rs, NULL);
        lk->session[0] = '\0';
        lk->own_session = 0;
        return consul_mach_done_kept(m, rs);
    }
    return oom(m);
}

void consul_sem_release_init(consul_mach *m, consul_lock *lk)
{
    sem *x = calloc(1, sizeof *x);
    consul_lock_retain(lk);
    m->lk = lk;
    m->step = x != NULL ? semrel_step : NULL;
    m->state = SR_START;
    m->ext = x;
    m->ext_free = sem_free;
}
