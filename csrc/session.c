/*
 * session.c: the session and request steps that locks and semaphores share. An "attempt"
 * carries one handle, the last answer and its parsed JSON, and the failure message, so the
 * lock algorithms read as their steps. No Lua here: the renewer runs these too.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>



int consul_att_send(attempt *a, const char *method, const char *path, const char *query,
                const char *body, size_t blen, long wait_ms)
{
    consul_req rq;
    memset(&rq, 0, sizeof rq);
    rq.method = method;
    rq.path = path;
    rq.query = query;
    rq.body = body;
    rq.body_len = blen;
    rq.content_type = "application/json";
    rq.wait_ms = wait_ms;
    a->method = method;
    a->path = path;
    consul_json_free(&a->doc);
    consul_http_perform(a->h, &rq, &a->rs);
    if (a->requests != NULL) {
        (*a->requests)++;
        *a->connects += a->rs.connects;
    }
    return a->rs.code;
}

int consul_att_failed(attempt *a)
{
    consul_format_failure(a->msg, sizeof a->msg, a->method, a->path, &a->rs);
    return a->rs.code;
}

int consul_att_parse(attempt *a)
{
    if (consul_json_parse(&a->doc, a->rs.body, a->rs.body_len) != 0) {
        a->rs.code = CONSUL_EDECODE;
        return consul_att_failed(a);
    }
    return CONSUL_OK;
}

void consul_millisleep(int64_t ms)
{
    struct timespec ts;
    if (ms <= 0)
        return;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* A Go duration for ms: "15s" when whole seconds, else "1500ms". */
static void duration(char *out, size_t n, int64_t ms)
{
    if (ms % 1000 == 0)
        snprintf(out, n, "%llds", (long long)(ms / 1000));
    else
        snprintf(out, n, "%lldms", (long long)ms);
}

int consul_att_session_create(consul_lock *lk, attempt *a)
{
    cJSON *id;
    char ttl[32], delay[32];
    duration(ttl, sizeof ttl, lk->ttl_def_ms);
    duration(delay, sizeof delay, lk->lock_delay_ms);
    consul_buf_reset(&a->body);
    if (consul_buf_adds(&a->body, "{\"Name\":\"") != 0 ||
        consul_buf_adds(&a->body, lk->name) != 0 ||  /* checked: no quote or backslash */
        consul_buf_addf(&a->body, "\",\"TTL\":\"%s\",\"LockDelay\":\"%s\",\"Behavior\":\"%s\"}",
                        ttl, delay, lk->behavior_delete ? "delete" : "release") != 0)
        return CONSUL_ENOMEM;
    if (consul_att_send(a, "PUT", "/v1/session/create", NULL, a->body.data, a->body.len, 0) != CONSUL_OK)
        return consul_att_failed(a);
    if (consul_att_parse(a) != CONSUL_OK)
        return a->rs.code;
    id = cJSON_GetObjectItemCaseSensitive(a->doc.root, "ID");
    if (!cJSON_IsString(id) || strlen(id->valuestring) >= sizeof lk->session) {
        a->rs.code = CONSUL_EDECODE;
        return consul_att_failed(a);
    }
    strcpy(lk->session, id->valuestring);
    lk->own_session = 1;
    STORE(&lk->ttl_ms, lk->ttl_def_ms);
    STORE(&lk->lease_ms, consul_now_ms());
    return CONSUL_OK;
}

int consul_att_session_destroy(consul_lock *lk, attempt *a)
{
    char path[128];
    if (!lk->own_session || lk->session[0] == '\0')
        return CONSUL_OK;  /* a session the caller gave stays: the lock may take it again */
    snprintf(path, sizeof path, "/v1/session/destroy/%s", lk->session);
    if (consul_att_send(a, "PUT", path, NULL, NULL, 0, 0) != CONSUL_OK && a->rs.status != 404) {
        int rc = consul_att_failed(a);  /* now, while path lives; the session stays to retry */
        a->path = NULL;
        return rc;
    }
    a->path = NULL;
    lk->session[0] = '\0';
    lk->own_session = 0;
    return CONSUL_OK;
}

/* Renews the session while waiting; CONSUL_OK, or a failure (the session is gone). */
int consul_att_session_renew(consul_lock *lk, attempt *a)
{
    char path[128];
    cJSON *ttl;
    snprintf(path, sizeof path, "/v1/session/renew/%s", lk->session);
    if (consul_att_send(a, "PUT", path, NULL, NULL, 0, 0) != CONSUL_OK)
        return consul_att_failed(a);
    STORE(&lk->lease_ms, consul_now_ms());
    if (consul_att_parse(a) == CONSUL_OK && cJSON_IsArray(a->doc.root) &&
        (ttl = cJSON_GetObjectItemCaseSensitive(a->doc.root->child, "TTL")) != NULL &&
        cJSON_IsString(ttl) && consul_duration_ms(ttl->valuestring) > 0)
        STORE(&lk->ttl_ms, consul_duration_ms(ttl->valuestring));
    return CONSUL_OK;
}

/* The LockDelay of another session, in ms; -1 when unknown. */
int64_t consul_att_lock_delay(attempt *a, const char *id)
{
    char path[128];
    int64_t ns;
    cJSON *d;
    snprintf(path, sizeof path, "/v1/session/info/%s", id);
    if (consul_att_send(a, "GET", path, NULL, NULL, 0, 0) != CONSUL_OK || consul_att_parse(a) != CONSUL_OK ||
        !cJSON_IsArray(a->doc.root) || a->doc.root->child == NULL)
        return -1;
    d = cJSON_GetObjectItemCaseSensitive(a->doc.root->child, "LockDelay");
    if (consul_json_i64(&a->doc, d, &ns) != 0)
        return -1;
    return ns / 1000000;
}


void consul_att_release(attempt *a)
{
    consul_json_free(&a->doc);
    consul_buf_free(&a->body);
}

int consul_att_keep_alive(consul_lock *lk, attempt *a, int64_t now, int64_t *next_renew)
{
    int rc;
    if (!lk->own_session || LOAD(&lk->ttl_ms) <= 0 || now < *next_renew)
        return CONSUL_OK;
    if ((rc = consul_att_session_renew(lk, a)) != CONSUL_OK)
        return rc;
    *next_renew = now + LOAD(&lk->ttl_ms) / 2;
    return CONSUL_OK;
}

long consul_att_wait_ms(const consul_lock *lk, int64_t now, int64_t deadline, int64_t next_renew)
{
    int64_t left = deadline - now;
    if (lk->own_session && next_renew - now < left)
        left = next_renew - now;
    return (long)(left > CONSUL_MAX_WAIT_MS ? CONSUL_MAX_WAIT_MS : left < 1 ? 1 : left);
}
