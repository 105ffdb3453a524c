/*
 * session.c: the session steps that lock and semaphore machines share: create, renew,
 * destroy, and reading another session's lock-delay. Each builds a request of the machine's
 * (returning what consul_mach_send returns) or reads its answer. No Lua here: the renewer
 * runs these too. A session ID from the server is checked before it is kept, and escaped
 * wherever it goes.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A Go duration for ms: "15s" when whole seconds, else "1500ms". */
static void duration(char *out, size_t n, int64_t ms)
{
    if (ms % 1000 == 0)
        snprintf(out, n, "%llds", (long long)(ms / 1000));
    else
        snprintf(out, n, "%lldms", (long long)ms);
}

/* m->path = prefix + the escaped session ID */
static int session_path(consul_mach *m, const char *prefix, const char *id)
{
    consul_buf_reset(&m->path);
    consul_buf_reset(&m->query);
    return consul_buf_adds(&m->path, prefix) != 0 ||
                   consul_buf_add_escaped(&m->path, id, strlen(id), 0) != 0
               ? -1
               : 0;
}

static int oom(consul_mach *m)
{
    consul_resp t;
    consul_resp_reset(&t);
    consul_resp_fail(&t, CONSUL_ENOMEM, "out of memory");
    return consul_mach_done(m, CONSUL_ENOMEM, &t, NULL);
}

int consul_sess_create(consul_mach *m)
{
    consul_lock *lk = m->lk;
    char ttl[32], delay[32];
    duration(ttl, sizeof ttl, lk->ttl_def_ms);
    duration(delay, sizeof delay, lk->lock_delay_ms);
    consul_buf_reset(&m->body);
    consul_buf_reset(&m->path);
    consul_buf_reset(&m->query);
    if (consul_buf_adds(&m->body, "{\"Name\":") != 0 ||
        consul_buf_add_json_string(&m->body, lk->name, strlen(lk->name)) != 0 ||
        consul_buf_addf(&m->body, ",\"TTL\":\"%s\",\"LockDelay\":\"%s\",\"Behavior\":\"%s\"}",
                        ttl, delay, lk->behavior_delete ? "delete" : "release") != 0 ||
        consul_buf_adds(&m->path, "/v1/session/create") != 0)
        return oom(m);
    return consul_mach_send(m, "PUT", m->body.data, m->body.len, 0);
}

int consul_sess_created(consul_mach *m, const consul_resp *rs)
{
    consul_lock *lk = m->lk;
    static const char *const path[] = { "ID" };
    const char *id;
    size_t n;
    if (!consul_json_scan_str(rs->body, rs->body_len, path, 1, &id, &n)) {
        if (consul_mach_parse(m, rs) != 0)
            return -1;
        id = consul_json_field_str(&m->doc, m->doc.root, "ID", &n);
        if (!cJSON_IsObject(m->doc.root))
            id = NULL;
    }
    if (id == NULL || !consul_valid_id(id, n) || n >= sizeof lk->session) {
        consul_resp_copy(&m->last, rs);
        m->last.code = CONSUL_EDECODE;
        snprintf(m->last.error, sizeof m->last.error, "no session ID in the answer");
        return -1;
    }
    memcpy(lk->session, id, n);
    lk->session[n] = '\0';
    lk->own_session = 1;
    STORE(&lk->ttl_ms, lk->ttl_def_ms);
    STORE(&lk->lease_ms, m->sent);  /* the session's clock started at most then */
    return 0;
}

int consul_sess_renew(consul_mach *m)
{
    if (session_path(m, "/v1/session/renew/", m->lk->session) != 0)
        return oom(m);
    return consul_mach_send(m, "PUT", NULL, 0, 0);
}

int consul_sess_renewed(consul_mach *m, const consul_resp *rs, int64_t sent)
{
    consul_lock *lk = m->lk;
    cJSON *ttl;
    int64_t ms;
    if (rs->code != CONSUL_OK)
        return -1;
    STORE(&lk->lease_ms, sent);
    if (consul_json_parse(&m->doc, rs->body, rs->body_len) == 0 && cJSON_IsArray(m->doc.root) &&
        (ttl = cJSON_GetObjectItemCaseSensitive(m->doc.root->child, "TTL")) != NULL &&
        cJSON_IsString(ttl) && (ms = consul_duration_ms(ttl->valuestring)) > 0)
        STORE(&lk->ttl_ms, ms);  /* Consul may raise it */
    return 0;
}

int consul_sess_destroy(consul_mach *m)
{
    if (session_path(m, "/v1/session/destroy/", m->lk->session) != 0)
        return oom(m);
    return consul_mach_send(m, "PUT", NULL, 0, 0);
}

int consul_sess_info(consul_mach *m, const char *id)
{
    if (session_path(m, "/v1/session/info/", id) != 0)
        return oom(m);
    return consul_mach_send(m, "GET", NULL, 0, 0);
}

int64_t consul_sess_lock_delay(consul_mach *m, const consul_resp *rs)
{
    int64_t ns;
    if (rs->code != CONSUL_OK ||
        consul_json_parse(&m->doc, rs->body, rs->body_len) != 0 || !cJSON_IsArray(m->doc.root) ||
        m->doc.root->child == NULL ||
        consul_json_i64(&m->doc, cJSON_GetObjectItemCaseSensitive(m->doc.root->child, "LockDelay"),
                        &ns) != 0 || ns < 0)
        return -1;
    return ns / 1000000;
}
