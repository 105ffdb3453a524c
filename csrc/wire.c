/*
 * wire.c: requests and answers as bytes, for a driver that moves the bytes itself (nginx's
 * cosockets, lua/consul/ngx.lua; the blocking driver on a libcurl connection, http.c).
 * consul_wire_head writes a request's HTTP/1.1 head;
 * consul_wire_feed reads an answer as it arrives, in pieces of any size, into the same
 * consul_resp and body buffer that libcurl's transfer fills for a stream (http.c), with the
 * same limits: a head of CONSUL_MAX_HEAD, a body of max_answer, Content-Length, chunked or
 * until-close framing; consul_wire_room lets a driver receive body bytes in place instead.
 * No Lua, no sockets: fuzzed as it is (fuzz/).
 */
#include "consul.h"

#include <string.h>

/* n in decimal, to the buffer */
static int add_size(consul_buf *b, size_t n)
{
    char d[24], *p = d + sizeof d;
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    return consul_buf_add(b, p, (size_t)(d + sizeof d - p));
}

int consul_wire_head(consul_buf *b, const consul_conf *cf, const consul_req *rq)
{
    const char *token = rq->token != NULL ? rq->token : cf->token;
    int has_body = rq->body != NULL || strcmp(rq->method, "GET") != 0;
    consul_buf_reset(b);
    if (consul_buf_adds(b, rq->method) != 0 || consul_buf_addlit(b, " ") != 0 ||
        consul_buf_adds(b, rq->path) != 0 ||
        (rq->query != NULL && rq->query[0] != '\0' &&
         (consul_buf_addlit(b, "?") != 0 || consul_buf_adds(b, rq->query) != 0)) ||
        consul_buf_add(b, cf->host_line, cf->host_line_len) != 0)
        return -1;
    if (token != NULL && token[0] != '\0' &&
        (consul_buf_addlit(b, "X-Consul-Token: ") != 0 || consul_buf_adds(b, token) != 0 ||
         consul_buf_addlit(b, "\r\n") != 0))
        return -1;
    if (rq->body != NULL && rq->content_type != NULL &&
        (consul_buf_addlit(b, "Content-Type: ") != 0 || consul_buf_adds(b, rq->content_type) != 0 ||
         consul_buf_addlit(b, "\r\n") != 0))
        return -1;
    if (has_body && (consul_buf_addlit(b, "Content-Length: ") != 0 ||
                     add_size(b, rq->body != NULL ? rq->body_len : 0) != 0 ||
                     consul_buf_addlit(b, "\r\n") != 0))
        return -1;
    if (rq->headers != NULL) {
        const char *p = rq->headers;
        while (*p != '\0') {
            const char *nl = strchr(p, '\n');
            size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
            if (consul_buf_add(b, p, n) != 0 || consul_buf_addlit(b, "\r\n") != 0)
                return -1;
            p += n + (nl != NULL);
        }
    }
    return consul_buf_addlit(b, "\r\n");
}

/* ---- the answer -------------------------------------------------------------- */

enum {
    W_STATUS,      /* the status line */
    W_HEADERS,     /* header lines, up to the blank one */
    W_BODY,        /* Content-Length bytes */
    W_CHUNK_SIZE,  /* a chunk's size line */
    W_CHUNK_DATA,
    W_CHUNK_END,   /* the CRLF after a chunk's data */
    W_TRAILER,     /* trailer lines, up to the blank one */
    W_UNTIL_CLOSE, /* a body without length: to the end of the connection */
    W_DONE,
    W_FAILED
};

#define MAX_CHUNK_LINE 1024

void consul_wire_begin(consul_wire *w, consul_resp *rs, consul_buf *out)
{
    consul_buf_reset(&w->line);
    w->state = W_STATUS;
    w->head_bytes = 0;
    w->left = 0;
    w->keepalive = 0;
    w->stopped = 0;
    consul_resp_reset(rs);
    consul_buf_reset(out);
}

int consul_wire_head_done(const consul_wire *w)
{
    return w->state != W_STATUS && w->state != W_HEADERS && w->state != W_FAILED;
}

void consul_wire_free(consul_wire *w)
{
    consul_buf_free(&w->line);
}

static int fail(consul_wire *w, consul_resp *rs, int code, const char *why)
{
    w->state = W_FAILED;
    w->keepalive = 0;
    consul_resp_fail(rs, code, "%s", why);
    return -code;
}

/* Body bytes: to the sink (a 2xx stream) or the buffer, within max_answer. */
static int body(consul_wire *w, const consul_req *rq, consul_resp *rs, consul_buf *out,
                size_t max_answer, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (rq->sink != NULL && rs->status >= 200 && rs->status < 300) {
        if (rq->sink(rq->sink_ud, p, n) != 0) {
            w->state = W_DONE;  /* the sink stopped it: the caller knows why */
            w->stopped = 1;
            return 1;
        }
        return 0;
    }
    if (n > max_answer - out->len) {  /* out->len never exceeds it */
        w->state = W_FAILED;
        w->keepalive = 0;
        consul_resp_fail(rs, CONSUL_EDECODE, "the answer is over %zu bytes (max_answer)",
                         max_answer);
        return -1;
    }
    if (consul_buf_add(out, p, n) != 0) {
        w->state = W_FAILED;
        consul_resp_fail(rs, CONSUL_ENOMEM, "out of memory");
        return -1;
    }
    return 0;
}

/* The head is complete: how does the body come? */
static int head_done(consul_wire *w, const consul_req *rq, consul_resp *rs, consul_buf *out,
                     size_t max_answer)
{
    if (rs->status < 200) {
        /* 100 Continue and friends: another head follows */
        w->state = W_STATUS;
        return 0;
    }
    if (rs->status == 204 || rs->status == 304 || strcmp(rq->method, "HEAD") == 0 ||
        (rs->has_length && rs->length == 0 && !rs->chunked)) {
        /* (a HEAD answer's Content-Length is the GET's: no body follows) */
        w->state = W_DONE;
        return 0;
    }
    if (rs->chunked) {
        if (rs->has_length)
            return fail(w, rs, CONSUL_EDECODE, "an answer both chunked and with a length");
        w->state = W_CHUNK_SIZE;
        return 0;
    }
    if (rs->has_length) {
        int stream = rq->sink != NULL && rs->status < 300;
        if (!stream && rs->length > max_answer) {
            w->state = W_FAILED;
            consul_resp_fail(rs, CONSUL_EDECODE, "the answer is over %zu bytes (max_answer)",
                             max_answer);
            return -CONSUL_EDECODE;
        }
        if (!stream && consul_buf_reserve(out, (size_t)rs->length) != 0)
            return fail(w, rs, CONSUL_ENOMEM, "out of memory");
        w->left = rs->length;
        w->state = W_BODY;
        return 0;
    }
    rs->close = 1;
    w->state = W_UNTIL_CLOSE;
    return 0;
}

/* The next line, up to its LF: 1 a whole line (without CR LF) in *line, *len (in place in
 * p when it came whole, else gathered in w->line), 0 more is needed, -1 over max. *used:
 * bytes taken from p. */
static int take_line(consul_wire *w, const char *p, size_t n, size_t *used, size_t max,
                     const char **line, size_t *len)
{
    const char *nl = memchr(p, '\n', n);
    size_t take = nl != NULL ? (size_t)(nl - p) + 1 : n;
    if (w->line.len + take > max)
        return -1;
    *used = take;
    if (nl != NULL && w->line.len == 0) {
        *line = p;
        *len = take - 1;  /* without the LF */
    } else {
        if (consul_buf_add(&w->line, p, take) != 0)
            return -1;
        if (nl == NULL)
            return 0;
        *line = w->line.data;
        *len = w->line.len - 1;
    }
    if (*len > 0 && (*line)[*len - 1] == '\r')
        (*len)--;
    return 1;
}

static int chunk_size(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        char ch = s[i];
        unsigned d = ch >= '0' && ch <= '9' ? (unsigned)(ch - '0')
                   : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10)
                   : ch >= 'A' && ch <= 'F' ? (unsigned)(ch - 'A' + 10) : 16;
        if (d == 16)
            break;
        if (v >> 60)
            return -1;  /* over 2^64 */
        v = v << 4 | d;
    }
    if (i == 0 || (i < n && s[i] != ';' && s[i] != ' ' && s[i] != '\t'))
        return -1;
    *out = v;
    return 0;
}

/* The answer is whole; clean: nothing came after it on the connection. */
static int done(consul_wire *w, consul_resp *rs, consul_buf *out, int clean)
{
    w->keepalive = clean && !rs->close && !w->stopped;
    if (consul_buf_reserve(out, 0) != 0)
        return fail(w, rs, CONSUL_ENOMEM, "out of memory");
    rs->body = out->data;
    rs->body_len = out->len;
    rs->code = rs->status >= 200 && rs->status < 300 ? CONSUL_OK : CONSUL_EHTTP;
    return CONSUL_WIRE_DONE;
}

int consul_wire_feed(consul_wire *w, const consul_req *rq, consul_resp *rs, consul_buf *out,
                     size_t max_answer, const char *p, size_t n)
{
    if (w->state == W_FAILED)
        return -rs->code;
    if (p == NULL) {
        /* The peer closed the connection. */
        switch (w->state) {
        case W_UNTIL_CLOSE:
            w->state = W_DONE;
            /* fall through */
        case W_DONE:
            w->keepalive = 0;
            break;
        case W_STATUS:
            if (w->line.len == 0 && w->head_bytes == 0)
                return fail(w, rs, CONSUL_ECLOSED, "the agent closed the connection without "
                                                   "an answer");
            /* fall through */
        default:
            return fail(w, rs, CONSUL_ECLOSED, "the agent closed the connection mid-answer");
        }
    }
    while (n > 0 && w->state != W_DONE) {
        size_t used = 0, ll = 0;
        const char *ln = NULL;
        int r;
        switch (w->state) {
        case W_STATUS:
        case W_HEADERS:
        case W_TRAILER:
            r = take_line(w, p, n, &used, CONSUL_MAX_HEAD, &ln, &ll);
            w->head_bytes += used;
            if (r < 0 || w->head_bytes > CONSUL_MAX_HEAD)
                return fail(w, rs, CONSUL_EDECODE, "the answer's headers are over 65536 bytes");
            if (r == 0)
                break;
            if (w->state == W_STATUS) {
                if (ll == 0 && rs->status >= 100 && rs->status < 200) {
                    /* the blank line some servers send between a 100 and its answer */
                } else if (consul_resp_status(rs, ln, ll) != 0) {
                    return fail(w, rs, CONSUL_EDECODE, "a malformed status line");
                } else {
                    w->state = W_HEADERS;
                }
            } else if (ll == 0) {
                if (w->state == W_TRAILER) {
                    w->state = W_DONE;
                } else if ((r = head_done(w, rq, rs, out, max_answer)) < 0) {
                    return r;
                } else if (w->state == W_STATUS) {
                    w->head_bytes = 0;
                }
            } else if (w->state == W_HEADERS &&
                       consul_resp_header(rs, ln, ll) != 0) {
                return fail(w, rs, CONSUL_EDECODE, "a malformed header line");
            }
            consul_buf_reset(&w->line);
            break;
        case W_BODY:
        case W_CHUNK_DATA:
            used = w->left < n ? (size_t)w->left : n;
            if ((r = body(w, rq, rs, out, max_answer, p, used)) < 0)
                return -rs->code;
            w->left -= used;
            if (r > 0)
                used = n;  /* stopped: the rest is not read */
            else if (w->left == 0)
                w->state = w->state == W_BODY ? W_DONE : W_CHUNK_END;
            break;
        case W_CHUNK_SIZE:
        case W_CHUNK_END:
            r = take_line(w, p, n, &used, MAX_CHUNK_LINE, &ln, &ll);
            if (r < 0)
                return fail(w, rs, CONSUL_EDECODE, "a malformed chunk");
            if (r == 0)
                break;
            if (w->state == W_CHUNK_END) {
                if (ll != 0)
                    return fail(w, rs, CONSUL_EDECODE, "a malformed chunk");
                w->state = W_CHUNK_SIZE;
            } else if (chunk_size(ln, ll, &w->left) != 0) {
                return fail(w, rs, CONSUL_EDECODE, "a malformed chunk size");
            } else {
                w->state = w->left == 0 ? W_TRAILER : W_CHUNK_DATA;
            }
            consul_buf_reset(&w->line);
            break;
        case W_UNTIL_CLOSE:
            used = n;
            if (body(w, rq, rs, out, max_answer, p, used) < 0)
                return -rs->code;
            break;
        }
        p += used;
        n -= used;
    }
    if (w->state != W_DONE)
        return CONSUL_WIRE_MORE;
    /* Done: a reusable connection has sent exactly this answer, nothing after it. A sink
     * that stopped the answer has left the rest unread: that connection is not reusable. */
    return done(w, rs, out, p != NULL && n == 0);
}

size_t consul_wire_room(const consul_wire *w, const consul_req *rq, const consul_resp *rs,
                        consul_buf *out, size_t max_answer, char **dst)
{
    uint64_t room;
    if ((w->state != W_BODY && w->state != W_CHUNK_DATA) || w->left == 0 ||
        (rq->sink != NULL && rs->status < 300))
        return 0;
    /* A body of known length has all its room reserved already (head_done); a chunk gets
     * room for itself when it is worth it, within max_answer (beyond it, feeding the bytes
     * fails as it should). */
    if (w->state == W_CHUNK_DATA) {
        uint64_t want = w->left < max_answer - out->len ? w->left : max_answer - out->len;
        if (want < 4096 || consul_buf_reserve(out, (size_t)want) != 0)
            return 0;
    }
    if (out->data == NULL)
        return 0;
    room = out->cap - out->len - 1;
    if (room > w->left)
        room = w->left;
    if (room > max_answer - out->len)
        room = max_answer - out->len;
    *dst = out->data + out->len;
    return (size_t)room;
}

int consul_wire_took(consul_wire *w, consul_resp *rs, consul_buf *out, size_t n)
{
    /* (n is at most what consul_wire_room gave) */
    out->len += n;
    out->data[out->len] = '\0';
    w->left -= n;
    if (w->left > 0)
        return CONSUL_WIRE_MORE;
    if (w->state == W_CHUNK_DATA) {
        w->state = W_CHUNK_END;
        return CONSUL_WIRE_MORE;
    }
    w->state = W_DONE;
    return done(w, rs, out, 1);
}
