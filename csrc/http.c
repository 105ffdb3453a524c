/*
 * http.c: a client's configuration, what an answer's status line and headers say, and
 * libcurl. One consul_http is one kept-alive connection per way of using it:
 * consul_http_perform (a blocking call) sends one consul_req and fills one consul_resp, the
 * body into a buffer the caller owns, framing HTTP/1.1 itself (wire.c) on a connection
 * libcurl makes; a stream and the renewer thread use libcurl's transfer on a multi handle.
 * Knows nothing of Lua, so it serves the Lua-facing calls and the renewer thread alike.
 *
 * Every answer is bounded: its head by CONSUL_MAX_HEAD, its body by the conf's max_answer,
 * its time by the request's budget (a stream's by its idle limit). An answer that arrived but
 * cannot be read is "decode", whatever libcurl calls it; "connect" means none could be asked.
 */
#include "consul.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static void co_close(consul_http *h);

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static unsigned fork_gen;  /* how many fork()s this process descends from, since loading */

static void forked(void)
{
    fork_gen++;
}

static void global_init(void)
{
    /* Never paired with curl_global_cleanup: other users of libcurl may share the process. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_atfork(NULL, NULL, forked);
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
    case CONSUL_ELOST: return "lost";
    case CONSUL_ENOMEM: return "memory";
    default: return NULL;
    }
}

int consul_retryable(int code, long status)
{
    return code == CONSUL_ECONNECT || code == CONSUL_ETIMEOUT || code == CONSUL_ECLOSED ||
           (code == CONSUL_EHTTP && status >= 500);
}

/* ---- configuration ----------------------------------------------------- */

consul_conf *consul_conf_new(void)
{
    consul_conf *cf = calloc(1, sizeof *cf);
    if (cf == NULL)
        return NULL;
    cf->refs = 1;
    pthread_mutex_init(&cf->kmu, NULL);
    cf->timeout_ms = 10000;
    cf->max_answer = CONSUL_DEFAULT_MAX_ANSWER;
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
    free(cf->host);
    free(cf->server_name);
    free(cf->host_line);
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
    free(cf->pool);
    for (unsigned i = 0; i < sizeof cf->kcache / sizeof cf->kcache[0]; i++)
        free(cf->kcache[i].path);
    pthread_mutex_destroy(&cf->kmu);
    free(cf);
}

#define NKCACHE (sizeof ((consul_conf *)0)->kcache / sizeof ((consul_conf *)0)->kcache[0])

static int kcache_find(consul_conf *cf, const char *path)
{
    unsigned i;
    for (i = 0; i < NKCACHE; i++)
        if (cf->kcache[i].path != NULL && strcmp(cf->kcache[i].path, path) == 0)
            return (int)i;
    return -1;
}

int consul_conf_key_get(consul_conf *cf, const char *path, uint64_t *index)
{
    int i;
    pthread_mutex_lock(&cf->kmu);
    if ((i = kcache_find(cf, path)) >= 0)
        *index = cf->kcache[i].index;
    pthread_mutex_unlock(&cf->kmu);
    return i >= 0;
}

void consul_conf_key_put(consul_conf *cf, const char *path, uint64_t index)
{
    int i;
    pthread_mutex_lock(&cf->kmu);
    if ((i = kcache_find(cf, path)) < 0) {
        char *p = strdup(path);
        if (p != NULL) {
            /* the oldest entry makes room */
            i = (int)(cf->knext++ % NKCACHE);
            free(cf->kcache[i].path);
            cf->kcache[i].path = p;
        }
    }
    if (i >= 0)
        cf->kcache[i].index = index;
    pthread_mutex_unlock(&cf->kmu);
}

void consul_conf_key_drop(consul_conf *cf, const char *path)
{
    int i;
    pthread_mutex_lock(&cf->kmu);
    if ((i = kcache_find(cf, path)) >= 0) {
        free(cf->kcache[i].path);
        cf->kcache[i].path = NULL;
    }
    pthread_mutex_unlock(&cf->kmu);
}

/* ---- answers: status line and headers (both drivers) --------------------------- */

/* The head only, and the two strings' first bytes: an answer is reset (and copied) once or
 * twice per request, and the strings are most of it (460 of 560 bytes), written only on a
 * failure. */
void consul_resp_reset(consul_resp *rs)
{
    memset(rs, 0, offsetof(consul_resp, error));
    rs->known_leader = -1;
    rs->last_contact = -1;
    rs->error[0] = '\0';
    rs->reason[0] = '\0';
}

/* (not snprintf: its set-up is most of the cost of copying two strings, mostly empty) */
static void copy_string(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void consul_resp_copy(consul_resp *dst, const consul_resp *src)
{
    if (dst == src)
        return;
    memcpy(dst, src, offsetof(consul_resp, error));
    copy_string(dst->error, sizeof dst->error, src->error);
    copy_string(dst->reason, sizeof dst->reason, src->reason);
}

int consul_resp_fail(consul_resp *rs, int code, const char *fmt, ...)
{
    va_list ap;
    rs->code = code;
    va_start(ap, fmt);
    vsnprintf(rs->error, sizeof rs->error, fmt, ap);
    va_end(ap);
    return code;
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

int consul_resp_status(consul_resp *rs, const char *line, size_t len)
{
    /* "HTTP/1.1 200 OK": a version, three digits, an optional reason */
    size_t r;
    if (len < 12 || memcmp(line, "HTTP/1.", 7) != 0 || (line[7] != '0' && line[7] != '1') ||
        line[8] != ' ' || line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' ||
        line[11] < '0' || line[11] > '9' || (len > 12 && line[12] != ' '))
        return -1;
    if (memchr(line, '\0', len) != NULL)
        return -1;
    /* A new answer (after a 100 Continue, say): forget the previous one's headers. */
    rs->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    rs->has_index = rs->has_length = rs->chunked = rs->json = 0;
    rs->close = line[7] == '0';  /* HTTP/1.0 closes unless it says keep-alive */
    rs->known_leader = -1;
    rs->last_contact = -1;
    r = len > 13 ? len - 13 : 0;
    if (r >= sizeof rs->reason)
        r = sizeof rs->reason - 1;
    memcpy(rs->reason, line + 13, r);
    rs->reason[r] = '\0';
    return 0;
}

#define VALUE_IS(v, n, word) \
    ((n) == sizeof(word) - 1 && strncasecmp(v, word, sizeof(word) - 1) == 0)

int consul_resp_header(consul_resp *rs, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len), *v, *end = line + len;
    size_t nlen, vlen;
    int ok, named = 1;
    if (colon == NULL || colon == line || memchr(colon, '\0', (size_t)(end - colon)) != NULL)
        return -1;
    nlen = (size_t)(colon - line);
    /* Only these are read: Content-Length/-Type, Connection, Transfer-Encoding, X-Consul-* */
    if (nlen != 10 && nlen != 12 && nlen != 14 && nlen != 17 && nlen != 20)
        return memchr(line, '\0', nlen) != NULL ? -1 : 0;
    v = colon + 1;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    vlen = (size_t)(end - v);
    /* (Consul writes names in Go's canonical case: compared exactly first) */
#define NAME_IS(s)                                                                         \
    (nlen == sizeof(s) - 1 && (line[0] | 0x20) == (s[0] | 0x20) &&                        \
     (memcmp(line, s, nlen) == 0 || strncasecmp(line, s, nlen) == 0))
    switch (nlen) {
    case 14:
        if (NAME_IS("X-Consul-Index")) {
            rs->index = parse_u64(v, vlen, &ok);
            rs->has_index = ok;
        } else if (NAME_IS("Content-Length")) {
            uint64_t n = parse_u64(v, vlen, &ok);
            if (!ok || (rs->has_length && n != rs->length))
                return -1;  /* not a number, or two that disagree */
            rs->length = n;
            rs->has_length = 1;
        } else {
            named = 0;
        }
        break;
    case 20:
        if (NAME_IS("X-Consul-Knownleader")) {
            rs->known_leader = VALUE_IS(v, vlen, "true");
        } else if (NAME_IS("X-Consul-Lastcontact")) {
            uint64_t ms = parse_u64(v, vlen, &ok);
            rs->last_contact = ok && ms < INT64_MAX ? (int64_t)ms : -1;
        } else {
            named = 0;
        }
        break;
    case 12:
        if (NAME_IS("Content-Type"))
            rs->json = vlen >= 16 && strncasecmp(v, "application/json", 16) == 0;
        else
            named = 0;
        break;
    case 17:
        if (NAME_IS("Transfer-Encoding")) {
            if (!VALUE_IS(v, vlen, "chunked"))
                return -1;  /* Consul sends no other coding, and we asked for none */
            rs->chunked = 1;
        } else {
            named = 0;
        }
        break;
    case 10:
        if (NAME_IS("Connection")) {
            if (VALUE_IS(v, vlen, "close"))
                rs->close = 1;
            else if (VALUE_IS(v, vlen, "keep-alive"))
                rs->close = 0;
        } else {
            named = 0;
        }
        break;
    }
#undef NAME_IS
    if (!named) {
        /* of a length we read, but none we read: still no white space in a field name (one
         * we read has none, being equal to ours) */
        for (v = line; v < colon; v++)
            if (*v == ' ' || *v == '\t' || *v == '\0')
                return -1;
    }
    return 0;
}

/* ---- libcurl's callbacks: they only append to request-owned buffers ------------ */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    consul_http *h = ud;
    consul_resp *rs = h->rs;
    size_t len = size * n;
    if (h->rq->sink != NULL && rs->status >= 200 && rs->status < 300)
        return h->rq->sink(h->rq->sink_ud, p, len) != 0 ? 0 : len;  /* non-zero: stop */
    if (len > h->conf->max_answer - h->out->len) {  /* out->len never exceeds it */
        h->oversize = 1;
        consul_resp_fail(rs, CONSUL_EDECODE, "the answer is over %zu bytes (max_answer)",
                         h->conf->max_answer);
        return 0;
    }
    return consul_buf_add(h->out, p, len) == 0 ? len : 0;
}

static size_t on_header(char *line, size_t size, size_t n, void *ud)
{
    consul_http *h = ud;
    consul_resp *rs = h->rs;
    size_t len = size * n, l = len;
    h->head_bytes += len;
    if (h->head_bytes > CONSUL_MAX_HEAD) {
        h->oversize = 1;
        consul_resp_fail(rs, CONSUL_EDECODE, "the answer's headers are over %d bytes",
                         CONSUL_MAX_HEAD);
        return 0;
    }
    while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r'))
        l--;
    if (l == 0) {
        /* The end of a head. A body announced over the limit is refused before it comes. */
        if (rs->status >= 200 && rs->has_length && rs->length > h->conf->max_answer &&
            (h->rq->sink == NULL || rs->status >= 300)) {
            h->oversize = 1;
            consul_resp_fail(rs, CONSUL_EDECODE, "the answer is over %zu bytes (max_answer)",
                             h->conf->max_answer);
            return 0;
        }
        if (rs->status >= 200 && rs->has_length && h->rq->sink == NULL &&
            consul_buf_reserve(h->out, (size_t)rs->length) != 0)
            return 0;  /* the whole body in one allocation: no copies as it grows */
        return len;
    }
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        if (consul_resp_status(rs, line, l) != 0) {
            h->oversize = 1;
            consul_resp_fail(rs, CONSUL_EDECODE, "a malformed status line");
            return 0;
        }
        h->head_bytes = len;
        consul_buf_reset(h->out);
        return len;
    }
    if (consul_resp_header(rs, line, l) != 0) {
        h->oversize = 1;
        consul_resp_fail(rs, CONSUL_EDECODE, "a malformed header line");
        return 0;
    }
    return len;
}

/* ---- the handle ------------------------------------------------------- */

/* What any connection of h's needs: where, how (TLS, a Unix socket), and its socket options. */
static void set_connection(consul_http *h, CURL *e)
{
    consul_conf *cf = h->conf;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* HTTP/1.1 over TLS too (Consul offers h2 by ALPN): one framing for both drivers */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
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
}

/* A new easy handle for h, set up from its conf. 0 ok. */
static int setup_easy(consul_http *h)
{
    CURL *e = curl_easy_init();
    if (e == NULL)
        return -1;
    h->easy = e;
    h->gen = fork_gen;
    h->set_timeout = h->set_idle = -1;  /* none set yet */
    set_connection(h, e);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
    /* libcurl reads 16 KiB a system call and sends 64 KiB by default: a 1 MiB get took 64
     * reads and polls. 512 KiB both ways (the most libcurl < 7.88 reads at once): on the raw
     * client's 1 MiB get and put, larger sizes gained less than the rounds' spread (README,
     * Benchmark). The read buffer is the handle's, allocated once, and only the pages a
     * transfer fills become resident; libcurl allocates the send buffer for each upload of
     * more than 64 KiB and frees it after: at 1 MiB that malloc/free made glibc grow and trim
     * its heap around each put (2 ms of page faults per 1 MiB put + get), at 512 KiB it did not. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024);
    /* A key "a/.." is a key, not a path to squash: Consul then refuses it (301) instead of
     * libcurl silently writing (or recursively deleting) "a/". */
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
    return 0;
}

int consul_http_init(consul_http *h, consul_conf *cf)
{
    consul_http_global_init();
    h->conf = consul_conf_retain(cf);
    if (consul_buf_reserve(&h->url, 0) != 0)
        return -1;
    if (cf->connect_to != NULL && (h->connect_to = curl_slist_append(NULL, cf->connect_to)) == NULL)
        return -1;
    return setup_easy(h);
}

void consul_http_release(consul_http *h)
{
    co_close(h);
    consul_buf_free(&h->head);
    consul_wire_free(&h->wire);
    free(h->piece);
    h->piece = NULL;
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
    if (h->base != NULL) {
        curl_slist_free_all(h->base);
        h->base = NULL;
    }
    if (h->json != NULL) {
        curl_slist_free_all(h->json);
        h->json = NULL;
    }
    consul_buf_free(&h->url);
    if (h->conf != NULL) {
        consul_conf_release(h->conf);
        h->conf = NULL;
    }
}

static int add_header(struct curl_slist **list, const char *a, const char *b, size_t blen)
{
    consul_buf line = CONSUL_BUF_INIT;
    struct curl_slist *s = NULL;
    if (consul_buf_adds(&line, a) == 0 && consul_buf_add(&line, b, blen) == 0)
        s = curl_slist_append(*list, line.data);
    consul_buf_free(&line);
    if (s == NULL)
        return -1;
    *list = s;
    return 0;
}

/* The headers every request starts with: no "Expect: 100-continue" round trip on large
 * bodies, and the token (unless the request has its own). */
static int base_headers(struct curl_slist **list, const char *token)
{
    return add_header(list, "Expect:", "", 0) != 0 ||
                   (token != NULL && token[0] != '\0' &&
                    add_header(list, "X-Consul-Token: ", token, strlen(token)) != 0)
               ? -1
               : 0;
}

/* What went wrong, once libcurl says so. A request that was sent got an answer we cannot
 * read (decode), or the connection closed (closed), or time ran out; one that was not sent
 * could not reach the agent (connect). */
static int map_error(consul_http *h, CURL *e, const char *errbuf, CURLcode rc, consul_resp *rs)
{
    const char *hp = h->conf->hostport;
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    long oserr = 0, opened = 0, sent = 0;

    curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &sent);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &oserr);
        if (oserr == ECONNREFUSED)
            return consul_resp_fail(rs, CONSUL_ECONNECT, "connect to %s refused", hp);
        if (oserr == ENOENT && h->conf->unix_path != NULL)
            return consul_resp_fail(rs, CONSUL_ECONNECT, "connect to %s: no such socket", hp);
        return consul_resp_fail(rs, CONSUL_ECONNECT, "connect to %s failed: %s", hp, why);
    case CURLE_OPERATION_TIMEDOUT:
        return consul_resp_fail(rs, CONSUL_ETIMEOUT, "%s: %s", hp, why);
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
        return consul_resp_fail(rs, CONSUL_ETLS, "TLS with %s: %s", hp, why);
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &opened);
        /* A TLS peer that drops a connection it just accepted, before any status, refused
         * the handshake: typically a client certificate it requires and did not get. */
        if (rc != CURLE_PARTIAL_FILE && rs->status == 0 && opened > 0 &&
            strncmp(h->conf->base_url, "https:", 6) == 0)
            return consul_resp_fail(rs, CONSUL_ETLS,
                                    "TLS with %s: the server ended the handshake (client "
                                    "certificate required?): %s", hp, why);
        return consul_resp_fail(rs, CONSUL_ECLOSED, "%s closed the connection: %s", hp, why);
    case CURLE_OUT_OF_MEMORY:
        if (sent > 0)  /* libcurl's word for an answer it would not hold: a header line over
                        * its own limit (100 KiB), before ours (CONSUL_MAX_HEAD) saw it */
            return consul_resp_fail(rs, CONSUL_EDECODE, "%s: the answer's headers are too "
                                    "large (a line over libcurl's 100 KiB)", hp);
        return consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
    default:
        if (sent > 0 || rs->status > 0)
            return consul_resp_fail(rs, CONSUL_EDECODE, "%s: a malformed answer: %s", hp, why);
        return consul_resp_fail(rs, CONSUL_ECONNECT, "%s: %s", hp, why);
    }
}

/* Sets the handle up for rq; 0 ok, else rs->code. */
static int prepare(consul_http *h, const consul_req *rq, consul_resp *rs, consul_buf *out)
{
    consul_conf *cf = h->conf;
    CURL *e = h->easy;
    const char *token = rq->token != NULL ? rq->token : cf->token;
    const char *p;

    consul_resp_reset(rs);
    if (h->gen != fork_gen) {
        /* Forked since: the kept-alive connection is the parent's too. Start afresh (closing
         * our copy of its socket leaves the parent's open). */
        curl_easy_cleanup(h->easy);
        h->easy = NULL;
        if (setup_easy(h) != 0)
            return consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
        e = h->easy;
    }
    h->rq = rq;
    h->rs = rs;
    h->out = out;
    h->head_bytes = 0;
    h->oversize = 0;
    h->errbuf[0] = '\0';
    consul_buf_reset(out);
    consul_buf_reset(&h->url);
    if (h->slist != NULL) {
        curl_slist_free_all(h->slist);
        h->slist = NULL;
    }

    if (consul_buf_adds(&h->url, cf->base_url) != 0 || consul_buf_adds(&h->url, rq->path) != 0 ||
        (rq->query != NULL && rq->query[0] != '\0' &&
         (consul_buf_addlit(&h->url, "?") != 0 || consul_buf_adds(&h->url, rq->query) != 0)))
        return consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
    if (rq->token == NULL && rq->headers == NULL &&
        (rq->body == NULL || rq->content_type == NULL ||
         strcmp(rq->content_type, "application/octet-stream") == 0 ||
         strcmp(rq->content_type, "application/json") == 0)) {
        /* the usual headers, made once per handle (bytes go with libcurl's own Content-Type,
         * which Consul does not read where it takes bytes) */
        int json = rq->body != NULL && rq->content_type != NULL &&
                   strcmp(rq->content_type, "application/json") == 0;
        struct curl_slist **l = json ? &h->json : &h->base;
        if (*l == NULL && (base_headers(l, cf->token) != 0 ||
                           (json && add_header(l, "Content-Type: ", "application/json", 16) != 0)))
            return consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, *l);
    } else {
        if (base_headers(&h->slist, token) != 0 ||
            (rq->body != NULL && rq->content_type != NULL &&
             add_header(&h->slist, "Content-Type: ", rq->content_type,
                        strlen(rq->content_type)) != 0))
            return consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
        for (p = rq->headers; p != NULL && *p != '\0';) {
            const char *nl = strchr(p, '\n');
            size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
            if (add_header(&h->slist, "", p, n) != 0)
                return consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
            p += n + (nl != NULL);
        }
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h->slist);
    }
    curl_easy_setopt(e, CURLOPT_URL, h->url.data);
    if (strcmp(rq->method, "GET") == 0 && rq->body == NULL) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        /* POSTFIELDS sends the caller's bytes as they are (no copy) with a Content-Length
         * (0 without a body); the method is replaced. */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)(rq->body != NULL ? rq->body_len : 0));
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body != NULL ? rq->body : "");
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq->method);
    }
    {
        /* The request's bounds, set when they change: a stream has no end to wait for, and
         * moving under 1 KiB a second for idle_ms ends it (a monitor steps its transfer
         * itself and sets no idle limit here); anything else has its budget, which libcurl
         * is given whenever it is smaller than the one it has, or 10 ms larger. */
        long timeout = rq->stream ? 0L : rq->timeout_ms > 0 ? rq->timeout_ms : 1L;
        long idle = rq->stream && rq->idle_ms > 0 ? (rq->idle_ms + 999) / 1000 : 0L;
        long connect = rq->timeout_ms > 0 && rq->timeout_ms < cf->timeout_ms ? rq->timeout_ms
                                                                           : cf->timeout_ms;
        if (timeout != h->set_timeout && (timeout == 0 || h->set_timeout == 0 ||
                                          timeout < h->set_timeout ||
                                          timeout > h->set_timeout + 10)) {
            curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
            h->set_timeout = timeout;
        }
        if (idle != h->set_idle) {
            curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, idle > 0 ? 1024L : 0L);
            curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, idle);
            h->set_idle = idle;
        }
        if (connect != h->set_connect) {
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect);
            h->set_connect = connect;
        }
    }
    return 0;
}

static int finish(consul_http *h, const consul_req *rq, CURLcode rc, consul_resp *rs)
{
    CURL *e = h->easy;
    consul_buf *out = h->out;
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &rs->connects);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (rs->status == 0)
        rs->status = status;
    if (rs->status < 200)
        rs->status = 0;  /* only an interim answer (100 Continue) came: no answer */
    h->rq = NULL;
    h->rs = NULL;
    h->out = NULL;
    if (consul_buf_reserve(out, 0) != 0) {
        consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
        return rs->code;
    }
    rs->body = out->data;
    rs->body_len = out->len;

    if (h->oversize)
        return rs->code;  /* our own limit: code and why are set */
    if (rc == CURLE_OK)
        rs->code = rs->status >= 200 && rs->status < 300 ? CONSUL_OK : CONSUL_EHTTP;
    else if (rc == CURLE_ABORTED_BY_CALLBACK || (rc == CURLE_WRITE_ERROR && rq->sink != NULL &&
                                                 rs->status >= 200 && rs->status < 300))
        rs->code = CONSUL_OK;  /* we stopped it: the caller knows why */
    else
        map_error(h, e, h->errbuf, rc, rs);
    return rs->code;
}

/* ---- the blocking driver: libcurl connects, wire.c frames ----------------------- */

/* A blocking request is framed by the module itself (wire.c, as nginx's driver does) on a
 * connection libcurl makes (CURLOPT_CONNECT_ONLY: TCP or a Unix socket, TLS, connect_to), so
 * that a body is received straight into the answer buffer. Through libcurl's transfer each
 * byte went through libcurl's buffer first: a copy of every 1 MiB get, on top of the one
 * that makes the Lua string (README, Benchmark). Streams (a sink, an idle limit) keep
 * libcurl's transfer, on the handle's other easy handle. */

#define CO_PIECE (256 * 1024)   /* what is not received in place is read into this */
#define CO_HEAD_PIECE 16384     /* ... this much of it at a time until the head is whole */
#define CO_INLINE 4096         /* a body up to this long goes out with the head, copied */

static void co_close(consul_http *h)
{
    if (h->co != NULL) {
        curl_easy_cleanup(h->co);
        h->co = NULL;
    }
}

/* ms left before deadline (0: none) */
static long left_ms(int64_t deadline)
{
    int64_t left = deadline - consul_now_ms();
    return left <= 0 ? 0 : left > LONG_MAX ? LONG_MAX : (long)left;
}

/* A new connection: 0, else -1 and rs says why. */
static int co_connect(consul_http *h, int64_t deadline, consul_resp *rs)
{
    consul_conf *cf = h->conf;
    long left = left_ms(deadline);
    CURLcode rc;
    CURL *e;
    if (left == 0) {
        consul_resp_fail(rs, CONSUL_ETIMEOUT, "%s: no time left to connect", cf->hostport);
        return -1;
    }
    if ((e = curl_easy_init()) == NULL) {
        consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
        return -1;
    }
    set_connection(h, e);
    h->co_err[0] = '\0';
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, h->co_err);
    curl_easy_setopt(e, CURLOPT_URL, cf->base_url);
    curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
    /* a proxy from the environment (libcurl honours http_proxy, no_proxy...): a tunnel to the
     * agent, since the request that follows is ours, not one libcurl sends to the proxy */
    curl_easy_setopt(e, CURLOPT_HTTPPROXYTUNNEL, 1L);
    /* curl_easy_recv reads at most the buffer size a call, 16 KiB by default: a 1 MiB body
     * took 64 receives and polls. As setup_easy's (only what a receive fills is touched). */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, left < cf->timeout_ms ? left : cf->timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, left);
    if ((rc = curl_easy_perform(e)) != CURLE_OK) {
        map_error(h, e, h->co_err, rc, rs);
        curl_easy_cleanup(e);
        return -1;
    }
    h->co = e;
    h->co_gen = fork_gen;
    return 0;
}

/* Until the connection can take (POLLOUT) or give (POLLIN) bytes: what poll saw (> 0); -1
 * the deadline came first; -2 the connection is gone. */
static int co_wait(consul_http *h, short ev, int64_t deadline)
{
    curl_socket_t fd = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(h->co, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK || fd == CURL_SOCKET_BAD)
        return -2;
    for (;;) {
        struct pollfd p;
        long left = left_ms(deadline);
        int r;
        if (left == 0)
            return -1;
        p.fd = fd;
        p.events = ev;
        p.revents = 0;
        r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r > 0)
            return p.revents;  /* (an error or a hang-up too: the next send or receive says
                                * which) */
        if (r < 0 && errno != EINTR)
            return -2;
    }
}

/* All n bytes: 0; -1 the deadline came first; 1 the connection broke (*rc says how); 2 the
 * agent is answering already. An agent may answer a request before it has read its body
 * (413 to a value over its kv_max_value_size) and then stop reading it: that answer is what
 * the request gets, so a send that cannot go on watches for it. */
static int co_send(consul_http *h, const char *p, size_t n, int64_t deadline, CURLcode *rc)
{
    while (n > 0) {
        size_t k = 0;
        if (left_ms(deadline) == 0)
            return -1;
        *rc = curl_easy_send(h->co, p, n, &k);
        if (*rc == CURLE_AGAIN) {
            int w = co_wait(h, POLLOUT | POLLIN, deadline);
            if (w == -1)
                return -1;
            if (w < 0) {
                *rc = CURLE_SEND_ERROR;
                return 1;
            }
            if ((w & POLLIN) && !(w & POLLOUT))
                return 2;
            continue;
        }
        if (*rc != CURLE_OK)
            return 1;
        p += k;
        n -= k;
    }
    return 0;
}

/* The answer, into rs and out: 0 whole; -1 the deadline came first; -2 it could not be read
 * (rs says why); 1 the connection broke (*rc says how; *got, whether a byte had come). */
static int co_receive(consul_http *h, const consul_req *rq, consul_resp *rs, consul_buf *out,
                      int64_t deadline, CURLcode *rc, int *got)
{
    consul_wire *w = &h->wire;
    size_t max = h->conf->max_answer;
    consul_wire_begin(w, rs, out);
    for (;;) {
        char *dst = NULL;
        if (left_ms(deadline) == 0)
            return -1;  /* (also when every receive finds bytes: a fast agent, a slow copy) */
        size_t room = consul_wire_room(w, rq, rs, out, max, &dst), n = 0;
        int direct = room > 0, r;
        if (!direct) {
            /* a head is read in small pieces: body bytes read with it are copied once more */
            dst = h->piece;
            room = consul_wire_head_done(w) ? CO_PIECE : CO_HEAD_PIECE;
        }
        *rc = curl_easy_recv(h->co, dst, room, &n);
        if (*rc == CURLE_AGAIN) {
            int wr = co_wait(h, POLLIN, deadline);
            if (wr == -1)
                return -1;
            if (wr < 0) {
                *rc = CURLE_RECV_ERROR;
                return 1;
            }
            continue;
        }
        if (*rc != CURLE_OK)
            return 1;
        if (n == 0) {
            /* the peer closed: before a byte, the connection broke; else the answer ends
             * here, whole or not */
            if (!*got) {
                *rc = CURLE_GOT_NOTHING;
                return 1;
            }
            r = consul_wire_feed(w, rq, rs, out, max, NULL, 0);
        } else {
            *got = 1;
            r = direct ? consul_wire_took(w, rs, out, n)
                       : consul_wire_feed(w, rq, rs, out, max, dst, n);
            if (r == CONSUL_WIRE_DONE && direct && w->keepalive) {
                /* Fed, an answer's last piece shows whether bytes came after it; received
                 * in place, none past its end were read: one look, and a connection with
                 * more in it is not reused (those bytes would begin the next answer). */
                size_t more = 0;
                if (curl_easy_recv(h->co, h->piece, 1, &more) != CURLE_AGAIN)
                    w->keepalive = 0;
            }
        }
        if (r == CONSUL_WIRE_DONE)
            return 0;
        if (r < 0)
            return -2;
    }
}

/* One request on the kept connection, or on a new one: a kept connection the agent closed
 * meanwhile (it broke before a byte of answer came) is replaced once, as libcurl and the
 * nginx driver do; a new one that breaks so is an answer of its own. */
static int co_perform(consul_http *h, const consul_req *rq, consul_resp *rs, consul_buf *out)
{
    consul_conf *cf = h->conf;
    int64_t deadline = consul_now_ms() + (rq->timeout_ms > 0 ? rq->timeout_ms : 1);
    size_t blen = rq->body != NULL ? rq->body_len : 0;
    long connects = 0;
    int attempt;

    consul_resp_reset(rs);
    consul_buf_reset(out);
    if (h->co != NULL && h->co_gen != fork_gen)
        co_close(h);  /* forked since: as prepare() does with the transfer's handle */
    if (consul_wire_head(&h->head, cf, rq) != 0 ||
        (blen > 0 && blen <= CO_INLINE && consul_buf_add(&h->head, rq->body, blen) != 0) ||
        (h->piece == NULL && (h->piece = malloc(CO_PIECE)) == NULL))
        return consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
    if (blen <= CO_INLINE)
        blen = 0;  /* sent with the head */
    for (attempt = 0; attempt < 2; attempt++) {
        int fresh = h->co == NULL, got = 0, r;
        CURLcode rc = CURLE_OK;
        if (fresh) {
            if (co_connect(h, deadline, rs) != 0)
                break;
            connects++;
        }
        r = co_send(h, h->head.data, h->head.len, deadline, &rc);
        if (r == 0 && blen > 0)
            r = co_send(h, rq->body, blen, deadline, &rc);
        if (r != -1) {
            /* all sent; or the agent answers early, or stopped reading and closed: its
             * answer may be there all the same (as libcurl's transfer, reading while it
             * sends, would have had it) */
            int partial = r != 0;
            CURLcode sent_rc = rc;
            r = co_receive(h, rq, rs, out, deadline, &rc, &got);
            if (r == 0 && partial)
                h->wire.keepalive = 0;  /* the rest of the body is still owed on it */
            if (r == 1 && !got && partial && sent_rc != CURLE_OK)
                rc = sent_rc;  /* nothing came: the send's failure says it best */
        }
        if (r == 0) {
            if (!h->wire.keepalive)
                co_close(h);
            break;
        }
        co_close(h);
        if (rs->status < 200)
            rs->status = 0;  /* only an interim answer (100 Continue) came: no answer */
        if (r == -2) {
            if (rs->code == CONSUL_ECLOSED)
                consul_resp_fail(rs, CONSUL_ECLOSED, "%s closed the connection: the answer "
                                 "was cut short", cf->hostport);
            break;
        }
        if (r == -1) {
            consul_resp_fail(rs, CONSUL_ETIMEOUT, "%s: %s within %ld ms", cf->hostport,
                             got ? "the answer did not come whole" : "no answer",
                             rq->timeout_ms);
            break;
        }
        if (!got && !fresh)
            continue;  /* a kept connection the agent had closed */
        {
            const char *why = h->co_err[0] ? h->co_err : curl_easy_strerror(rc);
            /* A TLS peer that drops a connection it just accepted, before any answer,
             * refused the handshake: typically a client certificate it requires and did
             * not get (with TLS 1.3 the client hears so only at its first read). */
            if (fresh && !got && cf->https)
                consul_resp_fail(rs, CONSUL_ETLS, "TLS with %s: the server ended the handshake "
                                 "(client certificate required?): %s", cf->hostport, why);
            else
                consul_resp_fail(rs, CONSUL_ECLOSED, "%s closed the connection: %s",
                                 cf->hostport, why);
        }
        break;
    }
    rs->connects = connects;
    return rs->code;
}

int consul_http_perform(consul_http *h, const consul_req *rq, consul_resp *rs, consul_buf *out)
{
    if (rq->stream || rq->sink != NULL) {
        if (prepare(h, rq, rs, out) != 0)
            return rs->code;
        return finish(h, rq, curl_easy_perform(h->easy), rs);
    }
    return co_perform(h, rq, rs, out);
}

int consul_http_start(consul_http *h, CURLM *m, const consul_req *rq, consul_resp *rs,
                      consul_buf *out)
{
    if (prepare(h, rq, rs, out) != 0)
        return rs->code;
    if (curl_multi_add_handle(m, h->easy) != CURLM_OK)
        return finish(h, rq, CURLE_OUT_OF_MEMORY, rs);
    return CONSUL_OK;
}

int consul_http_finish(consul_http *h, CURLM *m, CURLcode rc, consul_resp *rs)
{
    const consul_req *rq = h->rq;
    curl_multi_remove_handle(m, h->easy);
    if (rq == NULL)
        return rs->code;
    h->rs = rs;
    return finish(h, rq, rc, rs);
}

void consul_http_abort(consul_http *h, CURLM *m, consul_resp *rs)
{
    if (h->rq == NULL)
        return;
    curl_multi_remove_handle(m, h->easy);
    h->rs = rs;
    finish(h, h->rq, CURLE_ABORTED_BY_CALLBACK, rs);
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
    consul_http_finish(h, m, rc, rs);
    return 0;
}

/* Why an HTTP failure failed, in one line: Consul's JSON Errors (a txn's), else the body's
 * first line, else the status line's reason. */
static void failure_text(const consul_resp *rs, char *out, size_t n)
{
    const char *b = rs->body ? rs->body : "";
    size_t used = 0;
    out[0] = '\0';
    if (rs->json && rs->body != NULL) {
        cJSON *doc = cJSON_ParseWithLength(b, rs->body_len), *errs, *e;
        int i = 0;
        errs = cJSON_GetObjectItemCaseSensitive(doc, "Errors");
        cJSON_ArrayForEach(e, errs) {
            cJSON *what = cJSON_GetObjectItemCaseSensitive(e, "What");
            cJSON *op = cJSON_GetObjectItemCaseSensitive(e, "OpIndex");
            if (cJSON_IsString(what) && used + 1 < n) {
                int k = snprintf(out + used, n - used, "%sop %d: %.200s", i++ ? "; " : "",
                                 cJSON_IsNumber(op) && op->valuedouble >= 0 &&
                                         op->valuedouble < 1e6 ? (int)op->valuedouble : 0,
                                 what->valuestring);
                used += k > 0 ? (size_t)k : 0;
                if (used >= n)
                    used = n - 1;
            }
        }
        cJSON_Delete(doc);
        if (out[0] != '\0')
            return;
    }
    /* The body on one line: each run of white space or control bytes becomes one space
     * (Consul's multi-line errors put the reason after the first line break). */
    {
        size_t o = 0, i, cap = n - 1 < 300 ? n - 1 : 300;
        int space = 1;
        for (i = 0; i < rs->body_len && o < cap; i++) {
            unsigned char ch = (unsigned char)b[i];
            if (ch <= ' ' || ch == 0x7f) {
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
    if (out[0] == '\0')
        snprintf(out, n, "%s", rs->reason);
}

void consul_format_failure(char *out, size_t n, const char *method, const char *path,
                           const consul_resp *rs)
{
    if (rs->code == CONSUL_EHTTP) {
        char why[512];
        failure_text(rs, why, sizeof why);
        snprintf(out, n, "consul: %s %.300s: %ld%s%s", method, path, rs->status,
                 why[0] ? " " : "", why);
    } else if (rs->code == CONSUL_EDECODE && rs->error[0] == '\0') {
        snprintf(out, n, "consul: %s %.300s: malformed answer", method, path);
    } else {
        snprintf(out, n, "consul: %s %.300s: %s", method, path, rs->error);
    }
}
