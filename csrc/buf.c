/*
 * buf.c: growable byte buffers and the byte-level encodings the wire needs: percent-escaping
 * of path segments and query values, JSON strings, base64 for KV values inside JSON, Go
 * durations, printable keys for messages, a stream's lines. Knows nothing of Lua or libcurl. Everything that goes out is escaped here, for where it goes,
 * whoever it came from (the caller, or the server: a session ID, a semaphore's holders).
 */
#include "consul.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int consul_buf_reserve(consul_buf *b, size_t extra)
{
    size_t need, cap;
    char *p;
    if (extra > SIZE_MAX - b->len - 1)
        return -1;
    need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    /* doubling, for what grows by pieces; exactly what is asked, for a jump past that (a body
     * of known length: 1 MiB + 1 is not rounded up to 2 MiB) */
    cap = b->cap == 0 ? 256 : b->cap > SIZE_MAX / 2 ? need : b->cap * 2;
    if (cap < need)
        cap = need;
    p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    p[b->len] = '\0';  /* NUL-terminated whenever non-NULL, even when empty */
    b->data = p;
    b->cap = cap;
    return 0;
}

int consul_buf_add(consul_buf *b, const void *p, size_t n)
{
    if (consul_buf_reserve(b, n) != 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int consul_buf_adds(consul_buf *b, const char *s)
{
    return consul_buf_add(b, s, strlen(s));
}

int consul_buf_addf(consul_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    char small[64];

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof small)
        return consul_buf_add(b, small, (size_t)n);
    if (consul_buf_reserve(b, (size_t)n) != 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void consul_buf_reset(consul_buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void consul_buf_free(consul_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int unreserved(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

int consul_buf_add_escaped(consul_buf *b, const char *s, size_t n, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    char *o;
    if (consul_buf_reserve(b, n * 3) != 0)
        return -1;
    o = b->data + b->len;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (unreserved(ch) || (keep_slash && ch == '/')) {
            *o++ = (char)ch;
        } else {
            *o++ = '%';
            *o++ = hex[ch >> 4];
            *o++ = hex[ch & 15];
        }
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
    return 0;
}

int consul_buf_add_json_string(consul_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;
    if (consul_buf_reserve(b, n + 2) != 0 || consul_buf_add(b, "\"", 1) != 0)
        return -1;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char e[6] = { '\\', 0, '0', '0', hex[ch >> 4], hex[ch & 15] };
        size_t elen = 2;
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f)
            continue;
        switch (ch) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default: e[1] = 'u', elen = 6;
        }
        if (consul_buf_add(b, s + run, i - run) != 0 || consul_buf_add(b, e, elen) != 0)
            return -1;
        run = i + 1;
    }
    return consul_buf_add(b, s + run, n - run) != 0 ? -1 : consul_buf_add(b, "\"", 1);
}

int consul_buf_add_printable(consul_buf *b, const char *s, size_t n, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n && i < max; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f || ch == '\\') {
            char e[4] = { '\\', 'x', hex[ch >> 4], hex[ch & 15] };
            if (consul_buf_add(b, e, 4) != 0)
                return -1;
        } else if (consul_buf_add(b, s + i, 1) != 0) {
            return -1;
        }
    }
    return i < n ? consul_buf_adds(b, "...") : 0;
}

int consul_valid_id(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || n > 63)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
              ch == '-'))
            return 0;
    }
    return 1;
}

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int consul_buf_add_base64(consul_buf *b, const unsigned char *p, size_t n)
{
    size_t i;
    char *o;
    if (n > (SIZE_MAX / 4) * 3 - 3 || consul_buf_reserve(b, (n + 2) / 3 * 4) != 0)
        return -1;
    o = b->data + b->len;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        *o++ = b64chars[v >> 18];
        *o++ = b64chars[(v >> 12) & 63];
        *o++ = b64chars[(v >> 6) & 63];
        *o++ = b64chars[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
        *o++ = b64chars[v >> 18];
        *o++ = b64chars[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
    return 0;
}

/* 0..63 for a base64 digit, 64 for '=', 255 for anything else. */
static const unsigned char b64dec[256] = {
#define X 255
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, 62, X, X, X, 63, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, X, X,
    X, 64, X, X, X, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, X, X, X, X, X, X, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X
#undef X
};

/* Decodes in to out (which may be in itself: a group is read before its bytes are written,
 * and they land before it). On failure *done holds how many bytes of whole groups were
 * written. */
static long decode(const char *in, size_t n, unsigned char *out, size_t *done)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t i, full;
    long len = 0;
    *done = 0;
    if (n % 4 != 0)
        return -1;
    if (n == 0)
        return 0;
    full = n - 4;  /* every group but the last has no padding */
    for (i = 0; i < full; i += 4) {
        unsigned a = b64dec[s[i]], b = b64dec[s[i + 1]], c = b64dec[s[i + 2]], d = b64dec[s[i + 3]];
        if ((a | b | c | d) >= 64) {
            *done = (size_t)len;
            return -1;
        }
        if (out != NULL) {
            out[len] = (unsigned char)(a << 2 | b >> 4);
            out[len + 1] = (unsigned char)(b << 4 | c >> 2);
            out[len + 2] = (unsigned char)(c << 6 | d);
        }
        len += 3;
    }
    {
        unsigned a = b64dec[s[i]], b = b64dec[s[i + 1]], c = b64dec[s[i + 2]], d = b64dec[s[i + 3]];
        if (a >= 64 || b >= 64 || c > 64 || d > 64 || (c == 64 && d != 64)) {
            *done = (size_t)len;
            return -1;
        }
        if (out != NULL)
            out[len] = (unsigned char)(a << 2 | b >> 4);
        len++;
        if (c != 64) {
            if (out != NULL)
                out[len] = (unsigned char)(b << 4 | c >> 2);
            len++;
            if (d != 64) {
                if (out != NULL)
                    out[len] = (unsigned char)(c << 6 | d);
                len++;
            }
        }
    }
    return len;
}

long consul_base64_decode(const char *in, size_t n, unsigned char *out)
{
    size_t done;
    return decode(in, n, out, &done);
}

long consul_base64_decode_inplace(char *s, size_t n)
{
    size_t done, g;
    long got = decode(s, n, (unsigned char *)s, &done);
    if (got >= 0)
        return got;
    /* Not base64 after all: encode the whole groups already decoded back where they were,
     * last first (a group's 4 characters reach over the next group's 3 bytes). A group of
     * 4 characters without padding and its 3 bytes map one to one, so this is exact. */
    for (g = done / 3; g-- > 0;) {
        const unsigned char *p = (const unsigned char *)s + 3 * g;
        unsigned v = (unsigned)p[0] << 16 | (unsigned)p[1] << 8 | p[2];
        char *o = s + 4 * g;
        o[0] = b64chars[v >> 18];
        o[1] = b64chars[(v >> 12) & 63];
        o[2] = b64chars[(v >> 6) & 63];
        o[3] = b64chars[v & 63];
    }
    return -1;
}

int consul_lines_add(consul_lines *l, const char *p, size_t n)
{
    if (l->pos > 0 && l->pos == l->buf.len) {
        consul_buf_reset(&l->buf);  /* all read: start the buffer over */
        l->pos = 0;
    }
    if (n > l->max || l->buf.len - l->pos > l->max - n)
        return -1;
    if (l->pos > l->buf.len / 2 && l->pos > 4096) {
        /* keep what is unread at the front, so the buffer does not creep */
        memmove(l->buf.data, l->buf.data + l->pos, l->buf.len - l->pos);
        l->buf.len -= l->pos;
        l->buf.data[l->buf.len] = '\0';
        l->pos = 0;
    }
    return consul_buf_add(&l->buf, p, n);
}

int consul_lines_next(consul_lines *l, int partial, const char **line, size_t *len)
{
    const char *start = l->buf.data != NULL ? l->buf.data + l->pos : NULL;
    size_t avail = l->buf.len - l->pos, n;
    const char *nl = avail ? memchr(start, '\n', avail) : NULL;
    if (nl == NULL && !(partial && avail > 0))
        return 0;
    n = nl != NULL ? (size_t)(nl - start) : avail;
    l->pos += n + (nl != NULL);
    if (n > 0 && start[n - 1] == '\r')
        n--;
    *line = start;
    *len = n;
    return 1;
}

void consul_lines_free(consul_lines *l)
{
    consul_buf_free(&l->buf);
    l->pos = 0;
}

int64_t consul_duration_ms(const char *s)
{
    double total = 0;
    int any = 0;
    if (strcmp(s, "0") == 0)
        return 0;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        double unit;
        if (end == s || !(v >= 0) || *s == ' ')
            return -1;
        s = end;
        if (strncmp(s, "ns", 2) == 0) unit = 1e-6, s += 2;
        else if (strncmp(s, "us", 2) == 0) unit = 1e-3, s += 2;
        else if (strncmp(s, "\xc2\xb5s", 3) == 0) unit = 1e-3, s += 3;
        else if (strncmp(s, "ms", 2) == 0) unit = 1, s += 2;
        else if (*s == 's') unit = 1000, s += 1;
        else if (*s == 'm') unit = 60000, s += 1;
        else if (*s == 'h') unit = 3600000, s += 1;
        else return -1;
        total += v * unit;
        any = 1;
    }
    if (!any || total > 9.2e15)
        return -1;
    return (int64_t)(total + 0.5);
}

int64_t consul_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void consul_millisleep(int64_t ms)
{
    struct timespec ts;
    if (ms <= 0)
        return;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0)
        ;
}
