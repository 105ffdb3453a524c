/*
 * mach.c: machines. A call that makes requests (one, or the many of a lock acquire) is a
 * consul_mach: its step function says what it wants next ("send this request", "sleep this
 * long", "done") and is given each answer. A driver moves the bytes: consul_mach_run below
 * in the caller's thread (consul_http_perform: wire.c's framing on a connection libcurl
 * makes); lua/consul/ngx.lua with nginx's cosockets, stepping the
 * same machine from Lua (op.c); the renewer thread on its multi handle (renew.c). So every
 * algorithm exists once, and none of them knows how its requests travel.
 *
 * A machine owns the storage of the request it asks for and of the answers it is given, and
 * holds its own references (conf, lock): nothing it uses is borrowed from a client or from
 * Lua, so Lua code that runs between its steps (in nginx) cannot pull anything from under it.
 *
 * Budgets: every request is bounded by the client's timeout (plus a blocking query's wait)
 * and by the machine's hard deadline, whichever comes first; a machine with no time left
 * sends nothing and ends with "timeout".
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void consul_mach_init(consul_mach *m, consul_conf *cf)
{
    m->conf = consul_conf_retain(cf);
    m->hard = CONSUL_NEVER;
    m->done = 0;
    m->kept = 0;
    m->abandon = NULL;
    m->state = 0;
    m->rc = CONSUL_OK;
    m->msg[0] = '\0';
    consul_resp_reset(&m->last);
    memset(&m->rq, 0, sizeof m->rq);
}

void consul_mach_release(consul_mach *m)
{
    if (!m->done && m->abandon != NULL && m->step != NULL)
        m->abandon(m);
    m->abandon = NULL;
    consul_buf_free(&m->path);
    consul_buf_free(&m->query);
    consul_buf_free(&m->body);
    consul_buf_free(&m->hdrs);
    consul_buf_free(&m->out);
    consul_json_free(&m->doc);
    if (m->token != NULL) {
        volatile char *p = m->token;
        while (*p)
            *p++ = 0;
        free(m->token);
        m->token = NULL;
    }
    if (m->ext != NULL) {
        if (m->ext_free != NULL)
            m->ext_free(m->ext);
        else
            free(m->ext);
        m->ext = NULL;
        m->ext_free = NULL;
    }
    if (m->lk != NULL) {
        consul_lock_unref(m->lk);
        m->lk = NULL;
    }
    if (m->conf != NULL) {
        consul_conf_release(m->conf);
        m->conf = NULL;
    }
    m->step = NULL;
}

int consul_mach_done(consul_mach *m, int rc, const consul_resp *rs, const char *msg)
{
    m->done = 1;
    m->rc = rc;
    if (rs != NULL && rs != &m->last)
        consul_resp_copy(&m->last, rs);
    if (rc != CONSUL_OK && m->last.code == CONSUL_OK) {
        m->last.code = rc;  /* a failure of the machine's own: no request failed */
        m->last.status = 0;
    }
    if (msg != NULL && msg != m->msg)
        snprintf(m->msg, sizeof m->msg, "%s", msg);
    else if (msg == NULL)
        m->msg[0] = '\0';
    return CONSUL_DONE;
}

void consul_mach_keep_failure(consul_mach *m, const consul_resp *rs)
{
    if (m->kept)
        return;
    m->kept = 1;
    consul_resp_copy(&m->last, rs);
    consul_format_failure(m->msg, sizeof m->msg, m->rq.method, m->rq.path, rs);
}

int consul_mach_done_kept(consul_mach *m, const consul_resp *rs)
{
    if (m->kept)
        return consul_mach_done(m, m->last.code, &m->last, m->msg);
    return consul_mach_done(m, CONSUL_OK, rs, NULL);
}

void consul_mach_message(const consul_mach *m, char *out, size_t n)
{
    if (m->msg[0] != '\0')
        snprintf(out, n, "%s", m->msg);
    else
        consul_format_failure(out, n, m->rq.method != NULL ? m->rq.method : "?",
                              m->rq.path != NULL ? m->rq.path : "?", &m->last);
}

int consul_mach_parse(consul_mach *m, const consul_resp *rs)
{
    if (consul_json_parse(&m->doc, rs->body, rs->body_len) == 0)
        return 0;
    consul_resp_copy(&m->last, rs);
    m->last.code = CONSUL_EDECODE;
    m->last.error[0] = '\0';
    return -1;
}

int consul_mach_send(consul_mach *m, const char *method, const char *body, size_t blen,
                     long wait_ms)
{
    consul_req *rq = &m->rq;
    int64_t budget = m->conf->timeout_ms + wait_ms + wait_ms / 16;
    if (m->hard != CONSUL_NEVER) {
        int64_t left = m->hard - consul_now_ms();
        if (left <= 0) {
            consul_resp t;
            consul_resp_reset(&t);
            consul_resp_fail(&t, CONSUL_ETIMEOUT, "no time left");
            rq->method = method;
            rq->path = m->path.data;
            return consul_mach_done(m, CONSUL_ETIMEOUT, &t, NULL);
        }
        if (left < budget)
            budget = left;
    }
    if (consul_buf_reserve(&m->path, 0) != 0 || consul_buf_reserve(&m->query, 0) != 0) {
        consul_resp t;
        consul_resp_reset(&t);
        consul_resp_fail(&t, CONSUL_ENOMEM, "out of memory");
        return consul_mach_done(m, CONSUL_ENOMEM, &t, NULL);
    }
    rq->method = method;
    rq->path = m->path.data;
    rq->query = m->query.len > 0 ? m->query.data : NULL;
    rq->token = m->token;
    rq->body = body;
    rq->body_len = body != NULL ? blen : 0;
    rq->content_type = body == NULL ? NULL
                     : blen > 0 && (body[0] == '{' || body[0] == '[') ? "application/json"
                                                                     : "application/octet-stream";
    rq->headers = m->hdrs.len > 0 ? m->hdrs.data : NULL;
    rq->wait_ms = wait_ms;
    rq->timeout_ms = (long)budget;
    m->sent = consul_now_ms();
    return CONSUL_SEND;
}

int consul_mach_sendf(consul_mach *m, const char *method, const char *path, const char *query,
                      const char *body, size_t blen, long wait_ms)
{
    consul_buf_reset(&m->path);
    consul_buf_reset(&m->query);
    if (consul_buf_adds(&m->path, path) != 0 ||
        (query != NULL && consul_buf_adds(&m->query, query) != 0)) {
        consul_resp t;
        consul_resp_reset(&t);
        consul_resp_fail(&t, CONSUL_ENOMEM, "out of memory");
        return consul_mach_done(m, CONSUL_ENOMEM, &t, NULL);
    }
    return consul_mach_send(m, method, body, blen, wait_ms);
}

int consul_step_single(consul_mach *m, const consul_resp *rs)
{
    if (rs == NULL) {
        /* the request was prepared by its caller; only its budget is set here */
        int64_t budget = m->conf->timeout_ms + m->rq.wait_ms + m->rq.wait_ms / 16;
        if (m->hard != CONSUL_NEVER) {
            int64_t left = m->hard - consul_now_ms();
            if (left <= 0) {
                consul_resp t;
                consul_resp_reset(&t);
                consul_resp_fail(&t, CONSUL_ETIMEOUT, "no time left");
                return consul_mach_done(m, CONSUL_ETIMEOUT, &t, NULL);
            }
            if (left < budget)
                budget = left;
        }
        m->rq.timeout_ms = (long)budget;
        m->sent = consul_now_ms();
        return CONSUL_SEND;
    }
    return consul_mach_done(m, rs->code, rs, NULL);
}

int consul_mach_run(consul_mach *m, consul_http *h, int count)
{
    consul_resp rs;
    int act = m->step(m, NULL);
    while (act != CONSUL_DONE) {
        if (act == CONSUL_SEND) {
            consul_http_perform(h, &m->rq, &rs, &m->out);
            if (count) {
                __atomic_add_fetch(&m->conf->requests, 1, __ATOMIC_RELAXED);
                __atomic_add_fetch(&m->conf->connects, rs.connects, __ATOMIC_RELAXED);
            }
            act = m->step(m, &rs);
        } else {
            consul_millisleep(m->sleep_ms);
            act = m->step(m, NULL);
        }
    }
    m->done = 1;
    return m->rc;
}
