/*
 * http.c: libcurl. One consul_http is one easy handle, its connection cache and its scratch
 * buffers; consul_http_perform sends one consul_req and fills one consul_resp. Knows nothing
 * of Lua, so it serves the Lua-facing client and the renewer thread alike.
 */
#include "consul.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
    /* Never paired with curl_global_cleanup: other users of libcurl may share the process. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void consul_http_global_init(void)
{
    pthread_once(&global_once, global_init);
}

const char *consul_code_name(int code)
{
    switch (code) {
    case CONSUL_ECONNECT: return "connect";
    case CONSUL_ETIMEOUT: return "timeout";
    case CONSUL_ETLS: return "tls";
    case CONSUL_EHTTP: return "http";
    case CONSUL_EDECODE: return "decode";
    case CONSUL_ECLOSED: return "closed";
    case CONSUL_ECONFLICT: return "conflict";
    case CONSUL_ENOMEM: return "memory";
    default: return NULL;
    }
}

/* ---- configuration ----------------------------------------------------- */

consul_conf *consul_conf_new(void)
{
    consul_conf *cf = calloc(1, sizeof *cf);
    if (cf == NULL)
        return NULL;
    cf->refs = 1;
    cf->timeout_ms = 10000;
    cf->verify = 1;
    return cf;
}

consul_conf *consul_conf_retain(consul_conf *cf)
{
    __atomic_add_fetch(&cf->refs, 1, __ATOMIC_RELAXED);
    return cf;
}

void consul_conf_release(consul_conf *cf)
{
    if (cf == NULL || __atomic_sub_fetch(&cf->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    free(cf->base_url);
    free(cf->hostport);
    free(cf->unix_path);
    if (cf->token != NULL) {
        /* A token is a secret: do not leave it in freed memory. */
        volatile char *p = cf->token;
        while (*p)
            *p++ = 0;
        free(cf->token);
    }
    free(cf->dc);
    free(cf->ca_file);
    free(cf->ca_path);
    free(cf->cert_file);
    free(cf->key_file);
    free(cf->connect_to);
    free(cf);
}

/* ---- callbacks: they only append to request-owned buffers ----------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    consul_http *h = ud;
    size_t len = size * n;
    if (h->rq->sink != NULL && h->rs->status >= 200 && h->rs->status < 300) {
        if (h->rq->sink(h->rq->sink_ud, p, len) != 0)
            return 0;  /* CURLE_WRITE_ERROR: the sink asked to stop */
        return len;
    }
    return consul_buf_add(&h->body, p, len) == 0 ? len : 0;
}

static int header_is(const char *line, size_t len, const char *name, const char **value,
                     size_t *vlen)
{
    size_t n = strlen(name);
    const char *v, *end = line + len;
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0)
        return 0;
    v = line + n + 1;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    *value = v;
    *vlen = (size_t)(end - v);
    return 1;
}

static uint64_t parse_u64(const char *v, size_t n, int *ok)
{
    uint64_t x = 0;
    size_t i;
    *ok = n > 0;
    for (i = 0; i < n; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (d > 9 || x > (UINT64_MAX - d) / 10) {
            *ok = 0;
            return 0;
        }
        x = x * 10 + d;
    }
    return x;
}

static size_t on_header(char *line, size_t size, size_t n, void *ud)
{
    consul_http *h = ud;
    consul_resp *rs = h->rs;
    size_t len = size * n;
    const char *v;
    size_t vlen;
    int ok;

    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* A new response (after a 100 Continue, say): forget the previous one's headers. */
        const char *sp = memchr(line, ' ', len), *end = line + len, *r;
        rs->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        r = sp ? memchr(sp + 1, ' ', (size_t)(end - sp - 1)) : NULL;
        rs->reason[0] = '\0';
        if (r != NULL) {
            size_t rlen = (size_t)(end - r - 1);
            while (rlen > 0 && (r[rlen] == '\r' || r[rlen] == '\n'))
                rlen--;
            if (rlen >= sizeof rs->reason)
                rlen = sizeof rs->reason - 1;
            memcpy(rs->reason, r + 1, rlen);
            rs->reason[rlen] = '\0';
        }
        rs->has_index = 0;
        rs->known_leader = -1;
        rs->last_contact = -1;
        rs->json = 0;
        consul_buf_reset(&h->body);
    } else if (header_is(line, len, "X-Consul-Index", &v, &vlen)) {
        rs->index = parse_u64(v, vlen, &ok);
        rs->has_index = ok;
    } else if (header_is(line, len, "X-Consul-Knownleader", &v, &vlen)) {
        rs->known_leader = vlen == 4 && strncasecmp(v, "true", 4) == 0;
    } else if (header_is(line, len, "X-Consul-Lastcontact", &v, &vlen)) {
        uint64_t ms = parse_u64(v, vlen, &ok);
        rs->last_contact = ok && ms < INT64_MAX ? (int64_t)ms : -1;
    } else if (header_is(line, len, "Content-Type", &v, &vlen)) {
        rs->json = vlen >= 16 && strncasecmp(v, "application/json", 16) == 0;
    }
    return len;
}

/* ---- the handle ------------------------------------------------------- */

/* A new easy handle for h, set up from its conf. 0 ok. */
static int setup_easy(consul_http *h)
{
    consul_conf *cf = h->conf;
    CURL *e = curl_easy_init();
    if (e == NULL)
        return -1;
    h->easy = e;
    h->pid = getpid();
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* A key "a/.." is a key, not a path to squash: Consul then refuses it (301) instead of
     * libcurl silently writing (or recursively deleting) "a/". */
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, cf->timeout_ms);
    if (cf->unix_path != NULL)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, cf->unix_path);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, cf->verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, cf->verify ? 2L : 0L);
    if (cf->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, cf->ca_file);
    if (cf->ca_path != NULL)
        curl_easy_setopt(e, CURLOPT_CAPATH, cf->ca_path);
    if (cf->cert_file != NULL)
        curl_easy_setopt(e, CURLOPT_SSLCERT, cf->cert_file);
    if (cf->key_file != NULL)
        curl_easy_setopt(e, CURLOPT_SSLKEY, cf->key_file);
    if (h->connect_to != NULL)
        curl_easy_setopt(e, CURLOPT_CONNECT_TO, h->connect_to);
    return 0;
}

int consul_http_init(consul_http *h, consul_conf *cf)
{
    consul_http_global_init();
    h->conf = consul_conf_retain(cf);
    if (consul_buf_reserve(&h->body, 0) != 0 || consul_buf_reserve(&h->url, 0) != 0)
        return -1;
    if (cf->connect_to != NULL && (h->connect_to = curl_slist_append(NULL, cf->connect_to)) == NULL)
        return -1;
    return setup_easy(h);
}

void consul_http_release(consul_http *h)
{
    if (h->easy != NULL) {
        curl_easy_cleanup(h->easy);
        h->easy = NULL;
    }
    if (h->slist != NULL) {
        curl_slist_free_all(h->slist);
        h->slist = NULL;
    }
    if (h->connect_to != NULL) {
        curl_slist_free_all(h->connect_to);
        h->connect_to = NULL;
    }
    consul_buf_free(&h->url);
    consul_buf_free(&h->body);
    if (h->conf != NULL) {
        consul_conf_release(h->conf);
        h->conf = NULL;
    }
}

static int add_header(consul_http *h, const char *fmt, const char *value)
{
    char line[512];
    struct curl_slist *s;
    consul_buf big = CONSUL_BUF_INIT;
    const char *text = line;
    int n = snprintf(line, sizeof line, fmt, value);
    if (n < 0)
        return -1;
    if ((size_t)n >= sizeof line) {
        if (consul_buf_addf(&big, fmt, value) != 0) {
            consul_buf_free(&big);
            return -1;
        }
        text = big.data;
    }
    s = curl_slist_append(h->slist, text);
    consul_buf_free(&big);
    if (s == NULL)
        return -1;
    h->slist = s;
    return 0;
}

static int fail(consul_resp *rs, int code, const char *fmt, const char *a, const char *b)
{
    rs->code = code;
    snprintf(rs->error, sizeof rs->error, fmt, a, b);
    return code;
}

static int map_error(consul_http *h, CURLcode rc, consul_resp *rs)
{
    const char *hp = h->conf->hostport;
    const char *why = h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc);
    long oserr = 0;

    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        curl_easy_getinfo(h->easy, CURLINFO_OS_ERRNO, &oserr);
        if (oserr == ECONNREFUSED)
            return fail(rs, CONSUL_ECONNECT, "connect to %s refused%s", hp, "");
        if (oserr == ENOENT && h->conf->unix_path != NULL)
            return fail(rs, CONSUL_ECONNECT, "connect to %s: no such socket%s", hp, "");
        return fail(rs, CONSUL_ECONNECT, "connect to %s failed: %s", hp, why);
    case CURLE_OPERATION_TIMEDOUT:
        return fail(rs, CONSUL_ETIMEOUT, "%s: %s", hp, why);
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
        return fail(rs, CONSUL_ETLS, "TLS with %s: %s", hp, why);
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE: {
        long opened = 0;
        curl_easy_getinfo(h->easy, CURLINFO_NUM_CONNECTS, &opened);
        /* A TLS peer that drops a connection it just accepted, before any status, refused
         * the handshake: typically a client certificate it requires and did not get. */
        if (rc != CURLE_PARTIAL_FILE && rs->status == 0 && opened > 0 &&
            strncmp(h->conf->base_url, "https:", 6) == 0)
            return fail(rs, CONSUL_ETLS,
                        "TLS with %s: the server ended the handshake (client certificate "
                        "required?): %s", hp, why);
        return fail(rs, CONSUL_ECLOSED, "%s closed the connection: %s", hp, why);
    }
    case CURLE_OUT_OF_MEMORY:
        return fail(rs, CONSUL_ENOMEM, "out of memory%s%s", "", "");
    default:
        return fail(rs, CONSUL_ECONNECT, "%s: %s", hp, why);
    }
}

/* Sets the handle up for rq; 0 ok, else rs->code. */
static int prepare(consul_http *h, const consul_req *rq, consul_resp *rs)
{
    consul_conf *cf = h->conf;
    CURL *e = h->easy;
    const char *token = rq->token != NULL ? rq->token : cf->token;
    long timeout = rq->timeout_ms > 0 ? rq->timeout_ms : cf->timeout_ms;

    memset(rs, 0, sizeof *rs);
    rs->known_leader = -1;
    rs->last_contact = -1;
    if (h->pid != getpid()) {
        /* Forked since: the kept-alive connection is the parent's too. Start afresh (closing
         * our copy of its socket leaves the parent's open). */
        curl_easy_cleanup(h->easy);
        h->easy = NULL;
        if (setup_easy(h) != 0)
            return fail(rs, CONSUL_ENOMEM, "out of memory%s%s", "", "");
        e = h->easy;
    }
    h->rq = rq;
    h->rs = rs;
    h->errbuf[0] = '\0';
    consul_buf_reset(&h->body);
    consul_buf_reset(&h->url);
    if (h->slist != NULL) {
        curl_slist_free_all(h->slist);
        h->slist = NULL;
    }

    if (consul_buf_adds(&h->url, cf->base_url) != 0 || consul_buf_adds(&h->url, rq->path) != 0 ||
        (rq->query != NULL && rq->query[0] != '\0' &&
         (consul_buf_add(&h->url, "?", 1) != 0 || consul_buf_adds(&h->url, rq->query) != 0)))
        return fail(rs, CONSUL_ENOMEM, "out of memory%s%s", "", "");
    /* "Expect:" keeps libcurl from waiting for a 100 Continue on large bodies. */
    if (add_header(h, "%sExpect:", "") != 0 ||
        (token != NULL && token[0] != '\0' && add_header(h, "X-Consul-Token: %s", token) != 0) ||
        (rq->body != NULL &&
         add_header(h, "Content-Type: %s",
                    rq->content_type ? rq->content_type : "application/octet-stream") != 0))
        return fail(rs, CONSUL_ENOMEM, "out of memory%s%s", "", "");
    for (const struct curl_slist *x = rq->headers; x != NULL; x = x->next)
        if (add_header(h, "%s", x->data) != 0)
            return fail(rs, CONSUL_ENOMEM, "out of memory%s%s", "", "");

    curl_easy_setopt(e, CURLOPT_URL, h->url.data);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->slist);
    if (strcmp(rq->method, "GET") == 0 && rq->body == NULL) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        /* POSTFIELDS gives a Content-Length (0 without a body); the method is replaced. */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)(rq->body != NULL ? rq->body_len : 0));
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body != NULL ? rq->body : "");
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq->method);
    }
    /* A blocking query may hold the answer for its wait, plus Consul's jitter of wait/16. */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                     rq->timeout_ms < 0 ? 0L : timeout + rq->wait_ms + rq->wait_ms / 16);
    return 0;
}

static int finish(consul_http *h, const consul_req *rq, CURLcode rc, consul_resp *rs)
{
    CURL *e = h->easy;
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &rs->connects);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &rs->status);
    h->rq = NULL;
    h->rs = NULL;
    rs->body = h->body.data;
    rs->body_len = h->body.len;

    if (rc == CURLE_OK)
        rs->code = rs->status >= 200 && rs->status < 300 ? CONSUL_OK : CONSUL_EHTTP;
    else if (rc == CURLE_ABORTED_BY_CALLBACK || (rc == CURLE_WRITE_ERROR && rq->sink != NULL &&
                                                 rs->status >= 200 && rs->status < 300))
        rs->code = CONSUL_OK;  /* we stopped it: the caller knows why */
    else
        map_error(h, rc, rs);
    return rs->code;
}

int consul_http_perform(consul_http *h, const consul_req *rq, consul_resp *rs)
{
    if (prepare(h, rq, rs) != 0)
        return rs->code;
    return finish(h, rq, curl_easy_perform(h->easy), rs);
}

int consul_http_start(consul_http *h, CURLM *m, const consul_req *rq, consul_resp *rs)
{
    if (prepare(h, rq, rs) != 0)
        return rs->code;
    if (curl_multi_add_handle(m, h->easy) != CURLM_OK)
        return finish(h, rq, CURLE_OUT_OF_MEMORY, rs);
    h->multi_rq = rq;
    return CONSUL_OK;
}

int consul_http_step(consul_http *h, CURLM *m, int timeout_ms, consul_resp *rs)
{
    CURLcode rc = CURLE_OK;
    CURLMsg *msg;
    int running = 0, left, done = 0;
    if (curl_multi_perform(m, &running) == CURLM_OK && running &&
        curl_multi_poll(m, NULL, 0, timeout_ms, NULL) == CURLM_OK)
        curl_multi_perform(m, &running);
    while ((msg = curl_multi_info_read(m, &left)) != NULL)
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == h->easy) {
            rc = msg->data.result;
            done = 1;
        }
    if (!done && running)
        return 1;
    curl_multi_remove_handle(m, h->easy);
    finish(h, h->multi_rq, rc, rs);
    h->multi_rq = NULL;
    return 0;
}

int consul_http_finish(consul_http *h, CURLM *m, CURLcode rc, consul_resp *rs)
{
    curl_multi_remove_handle(m, h->easy);
    finish(h, h->multi_rq, rc, rs);
    h->multi_rq = NULL;
    return rs->code;
}

void consul_http_abort(consul_http *h, CURLM *m, consul_resp *rs)
{
    if (h->multi_rq == NULL)
        return;
    curl_multi_remove_handle(m, h->easy);
    finish(h, h->multi_rq, CURLE_ABORTED_BY_CALLBACK, rs);
    h->multi_rq = NULL;
}

/* Why an HTTP failure failed, in one line: Consul's JSON Errors (a txn's), else the body's
 * first line, else the status line's reason. */
static void failure_text(const consul_resp *rs, char *out, size_t n)
{
    const char *b = rs->body ? rs->body : "";
    int len;
    out[0] = '\0';
    if (rs->json) {
        cJSON *doc = cJSON_ParseWithLength(b, rs->body_len), *errs, *e;
        size_t used = 0;
        int i = 0;
        errs = cJSON_GetObjectItemCaseSensitive(doc, "Errors");
        cJSON_ArrayForEach(e, errs) {
            cJSON *what = cJSON_GetObjectItemCaseSensitive(e, "What");
            cJSON *op = cJSON_GetObjectItemCaseSensitive(e, "OpIndex");
            if (cJSON_IsString(what) && used < n) {
                int k = snprintf(out + used, n - used, "%sop %d: %s", i++ ? "; " : "",
                                 cJSON_IsNumber(op) ? op->valueint : 0, what->valuestring);
                used += k > 0 ? (size_t)k : 0;
            }
        }
        cJSON_Delete(doc);
        if (out[0] != '\0')
            return;
    }
    /* The body on one line: each run of white space becomes one space (Consul's multi-line
     * errors put the reason after the first line break). */
    {
        size_t o = 0, i, cap = n - 1 < 300 ? n - 1 : 300;
        int space = 1;
        for (i = 0; i < rs->body_len && o < cap; i++) {
            unsigned char ch = (unsigned char)b[i];
            if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
                if (!space)
                    out[o++] = ' ';
                space = 1;
            } else {
                out[o++] = (char)ch;
                space = 0;
            }
        }
        while (o > 0 && out[o - 1] == ' ')
            o--;
        out[o] = '\0';
    }
    len = (int)strlen(out);
    if (len == 0)
        snprintf(out, n, "%s", rs->reason);
}

void consul_format_failure(char *out, size_t n, const char *method, const char *path,
                           const consul_resp *rs)
{
    if (rs->code == CONSUL_EHTTP) {
        char why[512];
        failure_text(rs, why, sizeof why);
        snprintf(out, n, "consul: %s %s: %ld%s%s", method, path, rs->status, why[0] ? " " : "",
                 why);
    } else if (rs->code == CONSUL_EDECODE) {
        snprintf(out, n, "consul: %s %s: malformed JSON answer", method, path);
    } else {
        snprintf(out, n, "consul: %s %s: %s", method, path, rs->error);
    }
}
