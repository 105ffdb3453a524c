/*
 * semaphore.c: N holders, in the layout of Consul's Go client (api/semaphore.go) and so of
 * `consul lock -n N`: each contender holds prefix/<session> (acquired by its session, flags
 * 0xe0f69a2baa414de0), and prefix/.lock holds {"Limit":N,"Holders":{"<session>":true,...}},
 * changed only by check-and-set. Holders whose sessions no longer hold a contender key are
 * pruned by whoever updates the .lock next.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HOLDERS 1024

/* The decoded prefix/.lock */
typedef struct semlock {
    int exists;
    uint64_t modify_index;
    long limit;
    int n;
    char holders[MAX_HOLDERS][64];
    consul_json value;  /* the decoded Value's own parse */
} semlock;

static int find_holder(const semlock *s, const char *session)
{
    int i;
    for (i = 0; i < s->n; i++)
        if (strcmp(s->holders[i], session) == 0)
            return i;
    return -1;
}

/* Reads the .lock record rec into s: 0 ok, -1 its flags are not ours, -2 unreadable. */
static int decode_lock(consul_lock *lk, consul_json *d, cJSON *rec, semlock *s)
{
    uint64_t flags;
    cJSON *v, *root, *h;
    long got;
    char *text;
    s->exists = 1;
    s->n = 0;
    if (consul_json_u64(d, cJSON_GetObjectItemCaseSensitive(rec, "Flags"), &flags) != 0 ||
        flags != lk->flags)
        return -1;
    consul_json_u64(d, cJSON_GetObjectItemCaseSensitive(rec, "ModifyIndex"), &s->modify_index);
    v = cJSON_GetObjectItemCaseSensitive(rec, "Value");
    if (!cJSON_IsString(v) ||
        (got = consul_base64_decode_inplace(v->valuestring, strlen(v->valuestring))) < 0)
        return -2;
    text = v->valuestring;  /* decoded in place: base64 only shrinks */
    text[got] = '\0';
    if (consul_json_parse(&s->value, text, (size_t)got) != 0)
        return -2;
    root = s->value.root;
    v = cJSON_GetObjectItemCaseSensitive(root, "Limit");
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= 1000000))
        return -2;
    s->limit = (long)v->valuedouble;
    cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(root, "Holders")) {
        /* a holder we cannot keep would be dropped by our next check-and-set: refuse */
        if (s->n >= MAX_HOLDERS || h->string == NULL || strlen(h->string) >= 64)
            return -2;
        strcpy(s->holders[s->n++], h->string);
    }
    return 0;
}

/* Finds prefix/.lock among the records of a recursive read. */
static cJSON *find_lock_record(consul_lock *lk, consul_json *d)
{
    cJSON *rec;
    size_t plen = strlen(lk->key);
    cJSON_ArrayForEach(rec, d->root) {
        cJSON *k = cJSON_GetObjectItemCaseSensitive(rec, "Key");
        if (cJSON_IsString(k) && strncmp(k->valuestring, lk->key, plen) == 0 &&
            strcmp(k->valuestring + plen, "/.lock") == 0)
            return rec;
    }
    return NULL;
}

/* Drops holders whose session holds no contender key under the prefix. */
static void prune(consul_lock *lk, consul_json *d, semlock *s)
{
    int i = 0;
    (void)lk;
    while (i < s->n) {
        cJSON *rec;
        int alive = 0;
        cJSON_ArrayForEach(rec, d->root) {
            cJSON *ss = cJSON_GetObjectItemCaseSensitive(rec, "Session");
            if (cJSON_IsString(ss) && strcmp(ss->valuestring, s->holders[i]) == 0)
                alive = 1;
        }
        if (alive) {
            i++;
        } else {
            memmove(s->holders[i], s->holders[i + 1], (size_t)(s->n - i - 1) * 64);
            s->n--;
        }
    }
}

static int encode_lock(consul_buf *b, const semlock *s)
{
    int i;
    consul_buf_reset(b);
    if (consul_buf_addf(b, "{\"Limit\":%ld,\"Holders\":{", s->limit) != 0)
        return -1;
    for (i = 0; i < s->n; i++)
        if (consul_buf_addf(b, "%s\"%s\":true", i ? "," : "", s->holders[i]) != 0)
            return -1;
    return consul_buf_adds(b, "}}");
}

static int kv_path(consul_lock *lk, char *out, size_t n, const char *leaf)
{
    return snprintf(out, n, "%s%s", lk->path, leaf) < (int)n ? 0 : -1;
}

/* PUT prefix/.lock?cas=<index>&flags=<sem> with s: 1 set, 0 lost the race, else -code. */
static int cas_lock(consul_lock *lk, attempt *a, const semlock *s, consul_buf *body)
{
    char path[1200], query[96];
    if (kv_path(lk, path, sizeof path, ".lock") != 0 || encode_lock(body, s) != 0)
        return -CONSUL_ENOMEM;
    snprintf(query, sizeof query, "cas=%llu&flags=%llu", (unsigned long long)s->modify_index,
             (unsigned long long)lk->flags);
    if (consul_att_send(a, "PUT", path, query, body->data, body->len, 0) != CONSUL_OK)
        return -consul_att_failed(a);
    return a->rs.body_len >= 4 && strncmp(a->rs.body, "true", 4) == 0;
}

int consul_sem_acquire(consul_lock *lk, attempt *a, int64_t wait_ms)
{
    int64_t start = consul_now_ms(), now, next_renew;
    int64_t deadline = wait_ms < 0 ? INT64_MAX : start + wait_ms;
    uint64_t index = 0;
    char path[1200], query[160];
    consul_buf body = CONSUL_BUF_INIT;
    semlock *s = calloc(1, sizeof *s);
    int tries = 0, races = 0, rc;

    if (s == NULL)
        return CONSUL_ENOMEM;
    if (lk->session[0] == '\0' && (rc = consul_att_session_create(lk, a)) != CONSUL_OK)
        goto done;
    next_renew = LOAD(&lk->lease_ms) + LOAD(&lk->ttl_ms) / 2;

    /* Our contender key, held by our session. (new_lock bounds the path: this fits.) */
    if (kv_path(lk, path, sizeof path, lk->session) != 0) {
        rc = CONSUL_ENOMEM;
        goto done;
    }
    snprintf(query, sizeof query, "acquire=%s&flags=%llu", lk->session,
             (unsigned long long)lk->flags);
    if (consul_att_send(a, "PUT", path, query, lk->value ? lk->value : "", lk->value_len, 0) !=
        CONSUL_OK) {
        rc = consul_att_failed(a);
        goto done;
    }
    if (a->rs.body_len < 4 || strncmp(a->rs.body, "true", 4) != 0) {
        snprintf(a->msg, sizeof a->msg, "consul: semaphore %.200s: cannot take contender key %.300s",
                 lk->key, path);
        rc = CONSUL_ECONFLICT;
        goto done;
    }

    for (;;) {
        cJSON *rec;
        long w = 0;
        now = consul_now_ms();
        /* A lost check-and-set race is no try: read again at once (wait = 0 too). */
        if (tries > 0 && now >= deadline && !(races > 0 && races <= 64)) {
            snprintf(a->msg, sizeof a->msg,
                     "consul: semaphore %s: not acquired in %.3g s: %d of %ld slots taken",
                     lk->key, (double)wait_ms / 1000, s->n, s->limit);
            rc = CONSUL_ETIMEOUT;
            goto done;
        }
        if ((rc = consul_att_keep_alive(lk, a, now, &next_renew)) != CONSUL_OK)
            goto done;
        tries++;
        if (index > 0) {
            w = consul_att_wait_ms(lk, now, deadline, next_renew);
            snprintf(query, sizeof query, "recurse&index=%llu&wait=%ldms",
                     (unsigned long long)index, w);
        } else {
            snprintf(query, sizeof query, "recurse");
        }
        consul_att_send(a, "GET", lk->path, query, NULL, 0, w);
        if (a->rs.code != CONSUL_OK) {
            rc = consul_att_failed(a);
            goto done;
        }
        if ((rc = consul_att_parse(a)) != CONSUL_OK)
            goto done;
        consul_json_free(&s->value);
        memset(s, 0, sizeof *s);
        rec = find_lock_record(lk, &a->doc);
        s->limit = lk->limit;
        if (rec != NULL) {
            int d = decode_lock(lk, &a->doc, rec, s);
            if (d == -1) {
                snprintf(a->msg, sizeof a->msg,
                         "consul: semaphore %s: %s/.lock exists and is not a semaphore",
                         lk->key, lk->key);
                rc = CONSUL_ECONFLICT;
                goto done;
            }
            if (d == -2) {
                a->rs.code = CONSUL_EDECODE;
                rc = consul_att_failed(a);
                goto done;
            }
            if (s->limit != lk->limit) {
                snprintf(a->msg, sizeof a->msg,
                         "consul: semaphore %s: limit conflict (.lock says %ld, we say %d)",
                         lk->key, s->limit, lk->limit);
                rc = CONSUL_ECONFLICT;
                goto done;
            }
        }
        prune(lk, &a->doc, s);
        if (find_holder(s, lk->session) >= 0) {
            rc = CONSUL_OK;
            goto done;
        }
        if (s->n >= s->limit) {
            races = 0;
            if (wait_ms == 0)
                continue;  /* the deadline check above ends it */
            index = a->rs.has_index ? a->rs.index : 0;
            continue;
        }
        if (s->n >= MAX_HOLDERS) {
            rc = CONSUL_ENOMEM;
            goto done;
        }
        strcpy(s->holders[s->n++], lk->session);
        rc = cas_lock(lk, a, s, &body);
        if (rc == 1) {
            rc = CONSUL_OK;
            goto done;
        }
        if (rc < 0) {
            rc = -rc;
            goto done;
        }
        index = 0;  /* lost the race: read again at once */
        races++;
    }

done:
    if (rc != CONSUL_OK && lk->session[0] != '\0' &&
        kv_path(lk, path, sizeof path, lk->session) == 0) {
        /* A failed attempt leaves no contender behind. */
        consul_resp keep = a->rs;
        char msg[sizeof a->msg];
        memcpy(msg, a->msg, sizeof msg);
        consul_att_send(a, "DELETE", path, NULL, NULL, 0, 0);
        a->rs = keep;
        memcpy(a->msg, msg, sizeof msg);
    }
    consul_json_free(&s->value);
    free(s);
    consul_buf_free(&body);
    return rc;
}

/* For the watch thread: the parsed recursive read still lists us as a holder? */
int consul_sem_check(consul_lock *lk, consul_json *doc)
{
    semlock *s = calloc(1, sizeof *s);
    cJSON *rec;
    int ours = -1;
    if (s == NULL)
        return 0;
    rec = cJSON_IsArray(doc->root) ? find_lock_record(lk, doc) : NULL;
    if (rec != NULL && decode_lock(lk, doc, rec, s) == 0) {
        prune(lk, doc, s);  /* our contender key lost its session: we are no holder */
        if (find_holder(s, lk->session) >= 0)
            ours = 1;
    }
    consul_json_free(&s->value);
    free(s);
    return ours;
}

/* Leaves the holders (by CAS, retried), deletes the contender key. CONSUL_OK or a code. */
int consul_sem_release(consul_lock *lk, attempt *a)
{
    char path[1200];
    consul_buf body = CONSUL_BUF_INIT;
    semlock *s = calloc(1, sizeof *s);
    int tries, rc = CONSUL_OK;
    if (s == NULL)
        return CONSUL_ENOMEM;
    if (kv_path(lk, path, sizeof path, ".lock") != 0) {
        free(s);
        return CONSUL_ENOMEM;
    }
    for (tries = 0; tries < 16; tries++) {
        cJSON *rec;
        int i;
        if (consul_att_send(a, "GET", path, NULL, NULL, 0, 0) != CONSUL_OK) {
            if (a->rs.status != 404)
                rc = consul_att_failed(a);
            break;
        }
        if (consul_att_parse(a) != CONSUL_OK || !cJSON_IsArray(a->doc.root) ||
            (rec = a->doc.root->child) == NULL)
            break;
        consul_json_free(&s->value);
        memset(s, 0, sizeof *s);
        if (decode_lock(lk, &a->doc, rec, s) != 0 || (i = find_holder(s, lk->session)) < 0)
            break;
        memmove(s->holders[i], s->holders[i + 1], (size_t)(s->n - i - 1) * 64);
        s->n--;
        i = cas_lock(lk, a, s, &body);
        if (i != 0) {
            if (i < 0)
                rc = -i;
            break;
        }
    }
    if (lk->session[0] != '\0' && kv_path(lk, path, sizeof path, lk->session) == 0 &&
        consul_att_send(a, "DELETE", path, NULL, NULL, 0, 0) != CONSUL_OK && rc == CONSUL_OK)
        rc = consul_att_failed(a);
    consul_json_free(&s->value);
    free(s);
    consul_buf_free(&body);
    return rc;
}
