/*
 * json.c: JSON in both directions.
 *
 * Decoding uses cJSON, which keeps numbers as doubles and strings as C strings: 64-bit Flags
 * and Raft indexes at or above 2^53 would be rounded, and a string holding "\u0000" cut.
 *   - Integers below 2^53 are exact as doubles and read from them. The first time a larger
 *     one is read, the text's number tokens are found, in document order, and each number
 *     node's valueint is replaced by the offset of its token: any integer can then be read
 *     again exactly from its own digits.
 *   - A text holding "\u0000" (rare: a look at its backslashes finds out) has its string
 *     tokens decoded again,
 *     in document order, at parse time; those holding NUL bytes get buffers of their own,
 *     whose lengths are kept in a table sorted by address.
 * cJSON's children keep document order, so the walks agree. A raw NUL byte is not JSON.
 *
 * Pushing to Lua checks shapes as it goes: a KV record's fields have their types, a base64
 * Value is base64; otherwise nothing is pushed and the answer is "decode". A large answer
 * looks at the clock as it goes and gives up at the call's deadline ("timeout").
 *
 * Encoding writes Lua values straight into a consul_buf (owned by the call, so an error
 * raised halfway leaks nothing). Every number that goes into a fixed buffer is bounded.
 */
#include "consul.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The two sentinels: consul.null (JSON null) and consul.empty_array (JSON []). */
static const char empty_array_key = 0;
#define NULL_UD ((void *)0)
#define EMPTY_ARRAY_UD ((void *)&empty_array_key)

/* ---- tokens ----------------------------------------------------------------- */

/* The end of the string token whose opening quote is at p: its closing quote, or NULL. */
static const char *string_end(const char *p, const char *end)
{
    for (;;) {
        const char *q = memchr(p + 1, '"', (size_t)(end - p - 1)), *b;
        if (q == NULL)
            return NULL;
        for (b = q; b > p + 1 && b[-1] == '\\'; b--)
            ;
        if (((q - b) & 1) == 0)
            return q;  /* not preceded by an odd run of backslashes */
        p = q;
    }
}

/* The next number token of the text from *pp (strings skipped), or NULL; *pp moves past it. */
static const char *next_number(const char **pp, const char *end)
{
    const char *p = *pp, *tok;
    while (p < end) {
        char ch = *p;
        if (ch == '"') {
            const char *q = string_end(p, end);
            if (q == NULL)
                break;  /* unterminated: cannot be, cJSON parsed it */
            p = q + 1;
        } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
            tok = p;
            while (p < end && ((*p >= '0' && *p <= '9') || *p == '-' || *p == '+' || *p == '.' ||
                               *p == 'e' || *p == 'E'))
                p++;
            *pp = p;
            return tok;
        } else {
            p++;
        }
    }
    *pp = end;
    return NULL;
}

/* The next string token from *pp: its contents [*tok, *tokend); 0, or -1 when none. */
static int next_string(const char **pp, const char *end, const char **tok, const char **tokend)
{
    const char *p = memchr(*pp, '"', (size_t)(end - *pp)), *q;
    if (p == NULL || (q = string_end(p, end)) == NULL)
        return -1;
    *tok = p + 1;
    *tokend = q;
    *pp = q + 1;
    return 0;
}

/* ---- integers ------------------------------------------------------------------ */

/* Both walks in document order at once: each number node's valueint becomes the offset of
 * its token. No allocation. 0 ok, -1 when they disagree (cannot be for valid JSON). */
static int number_nodes(cJSON *n, const char *t, const char **pp, const char *end)
{
    for (; n != NULL; n = n->next) {
        if (cJSON_IsNumber(n)) {
            const char *tok = next_number(pp, end);
            if (tok == NULL || tok - t > INT_MAX)
                return -1;
            n->valueint = (int)(tok - t);
        } else if (n->child != NULL && number_nodes(n->child, t, pp, end) != 0) {
            return -1;
        }
    }
    return 0;
}

/* The second walk, once per document: 1 when every number node has its token's offset. */
static int index_numbers(consul_json *d)
{
    if (d->indexed == 0) {
        const char *p = d->text, *end = d->text + d->len;
        d->indexed = number_nodes(d->root, d->text, &p, end) == 0 &&
                     next_number(&p, end) == NULL ? 1 : -1;
    }
    return d->indexed == 1;
}

static const char *int_token(consul_json *d, const cJSON *n)
{
    const char *t;
    size_t i;
    if (!index_numbers(d) || n->valueint < 0 || (size_t)n->valueint >= d->len)
        return NULL;
    t = d->text + n->valueint;
    for (i = (*t == '-'); t[i] >= '0' && t[i] <= '9'; i++)
        ;
    return (t[i] == '.' || t[i] == 'e' || t[i] == 'E') ? NULL : t;
}

#define EXACT_DOUBLE 9007199254740992.0  /* 2^53 */

/* Below 2^53 in magnitude doubles hold every integer, so there n's double says it all:
 * 1 an integer (in *out), -1 not an integer. 0: at or above 2^53 (9007199254740993 rounds
 * to 2^53), only the token can tell. */
static int small_int(const cJSON *n, int64_t *out)
{
    double v = n->valuedouble;
    if (v > -EXACT_DOUBLE && v < EXACT_DOUBLE) {
        if (v != (double)(int64_t)v)
            return -1;
        *out = (int64_t)v;
        return 1;
    }
    return isnan(v) ? -1 : 0;
}

int consul_json_u64(consul_json *d, const cJSON *n, uint64_t *out)
{
    const char *t;
    unsigned long long v;
    int64_t small;
    if (n == NULL || !cJSON_IsNumber(n))
        return -1;
    switch (small_int(n, &small)) {
    case 1:
        if (small < 0)
            return -1;
        *out = (uint64_t)small;
        return 0;
    case -1:
        return -1;
    }
    if ((t = int_token(d, n)) == NULL || *t == '-')
        return -1;
    errno = 0;
    v = strtoull(t, NULL, 10);
    if (errno != 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int consul_json_i64(consul_json *d, const cJSON *n, int64_t *out)
{
    const char *t;
    long long v;
    if (n == NULL || !cJSON_IsNumber(n))
        return -1;
    switch (small_int(n, out)) {
    case 1:
        return 0;
    case -1:
        return -1;
    }
    if ((t = int_token(d, n)) == NULL)
        return -1;
    errno = 0;
    v = strtoll(t, NULL, 10);
    if (errno != 0)
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* ---- strings with NUL bytes ---------------------------------------------------- */

static void put_utf8(char **o, unsigned long cp)
{
    char *p = *o;
    if (cp < 0x80) {
        *p++ = (char)cp;
    } else if (cp < 0x800) {
        *p++ = (char)(0xc0 | cp >> 6);
        *p++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *p++ = (char)(0xe0 | cp >> 12);
        *p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *p++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *p++ = (char)(0xf0 | cp >> 18);
        *p++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *p++ = (char)(0x80 | (cp & 0x3f));
    }
    *o = p;
}

static unsigned long hex4(const char *s)
{
    unsigned long v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = s[i];
        v = v << 4 | (unsigned long)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/* Decodes the contents of a string token (cJSON accepted it: its escapes are valid) into a
 * new buffer; *len its length. NULL: out of memory. */
static char *decode_token(const char *s, const char *end, size_t *len)
{
    char *buf = malloc((size_t)(end - s) + 1), *o = buf;
    if (buf == NULL)
        return NULL;
    while (s < end) {
        if (*s != '\\') {
            *o++ = *s++;
            continue;
        }
        switch (s[1]) {
        case 'b': *o++ = '\b'; s += 2; break;
        case 'f': *o++ = '\f'; s += 2; break;
        case 'n': *o++ = '\n'; s += 2; break;
        case 'r': *o++ = '\r'; s += 2; break;
        case 't': *o++ = '\t'; s += 2; break;
        case 'u': {
            unsigned long cp = end - s >= 6 ? hex4(s + 2) : 0xfffd;
            s += 6;
            if (cp >= 0xd800 && cp < 0xdc00 && end - s >= 6 && s[0] == '\\' && s[1] == 'u') {
                unsigned long lo = hex4(s + 2);
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                s += 6;
            }
            put_utf8(&o, cp);
            break;
        }
        default: *o++ = s[1]; s += 2; break;  /* \" \\ \/ */
        }
    }
    *o = '\0';
    *len = (size_t)(o - buf);
    return buf;
}

/* Whether the text holds "\u0000": by its backslashes, which Consul's answers rarely have
 * (memchr is much faster than memmem here). */
static int has_escaped_nul(const char *p, size_t n)
{
    const char *end = p + n;
    while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
        if (end - p >= 6 && memcmp(p + 1, "u0000", 5) == 0)
            return 1;
        p += 2;  /* the backslash and the character it escapes */
        if (p >= end)
            break;
    }
    return 0;
}

/* Re-decodes the token of a string (a value, or a key: *slot) when it holds an escaped NUL;
 * 0 ok, -1 out of memory. */
static int whole_string(consul_json *d, char **slot, const char *tok, const char *tokend,
                        size_t *cap)
{
    char *buf;
    size_t len;
    if (!has_escaped_nul(tok, (size_t)(tokend - tok)))
        return 0;
    if ((buf = decode_token(tok, tokend, &len)) == NULL)
        return -1;
    if (memchr(buf, '\0', len) == NULL) {  /* "\\u0000": an escaped backslash, then text */
        free(buf);
        return 0;
    }
    if (d->nnul == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        consul_jstr *t = realloc(d->nul, ncap * sizeof *t);
        if (t == NULL) {
            free(buf);
            return -1;
        }
        d->nul = t;
        *cap = ncap;
    }
    free(*slot);  /* cJSON's own copy, from malloc (no hooks are installed) */
    *slot = buf;
    d->nul[d->nnul].p = buf;
    d->nul[d->nnul].len = len;
    d->nnul++;
    return 0;
}

static int string_nodes(consul_json *d, cJSON *n, int in_object, const char **pp,
                        const char *end, size_t *cap)
{
    const char *tok, *tokend;
    for (; n != NULL; n = n->next) {
        if (in_object && (next_string(pp, end, &tok, &tokend) != 0 ||
                          whole_string(d, &n->string, tok, tokend, cap) != 0))
            return -1;
        if (cJSON_IsString(n)) {
            if (next_string(pp, end, &tok, &tokend) != 0 ||
                whole_string(d, &n->valuestring, tok, tokend, cap) != 0)
                return -1;
        } else if (n->child != NULL &&
                   string_nodes(d, n->child, cJSON_IsObject(n), pp, end, cap) != 0) {
            return -1;
        }
    }
    return 0;
}

static int cmp_jstr(const void *a, const void *b)
{
    const char *x = ((const consul_jstr *)a)->p, *y = ((const consul_jstr *)b)->p;
    return x < y ? -1 : x > y;
}

static size_t str_len(const consul_json *d, const char *s)
{
    if (d->nnul > 0) {
        consul_jstr key, *hit;
        key.p = s;
        hit = bsearch(&key, d->nul, d->nnul, sizeof key, cmp_jstr);
        if (hit != NULL)
            return hit->len;
    }
    return strlen(s);
}

const char *consul_json_str(const consul_json *d, const cJSON *n, size_t *len)
{
    if (!cJSON_IsString(n) || n->valuestring == NULL)
        return NULL;
    *len = str_len(d, n->valuestring);
    return n->valuestring;
}

const char *consul_json_key(const consul_json *d, const cJSON *n, size_t *len)
{
    *len = str_len(d, n->string);
    return n->string;
}

const char *consul_json_field_str(const consul_json *d, const cJSON *o, const char *name,
                                  size_t *len)
{
    return consul_json_str(d, cJSON_GetObjectItemCaseSensitive(o, name), len);
}

/* ---- parse ------------------------------------------------------------------- */


int consul_json_parse(consul_json *d, const char *text, size_t len)
{
    consul_json_free(d);
    if (text == NULL || memchr(text, '\0', len) != NULL)
        return -1;  /* a raw NUL byte is not JSON (and would cut a string) */
    /* text[len] is '\0': counting it makes cJSON reject trailing garbage. */
    d->root = cJSON_ParseWithLengthOpts(text, len + 1, NULL, 1);
    if (d->root == NULL)
        return -1;
    d->text = text;
    d->len = len;
    if (has_escaped_nul(text, len)) {
        const char *p = text;
        size_t cap = 0;
        if (string_nodes(d, d->root, 0, &p, text + len, &cap) != 0) {
            consul_json_free(d);
            return -1;
        }
        if (d->nnul > 1)
            qsort(d->nul, d->nnul, sizeof *d->nul, cmp_jstr);
    }
    return 0;
}

void consul_json_free(consul_json *d)
{
    if (d->root != NULL) {
        cJSON_Delete(d->root);
        d->root = NULL;
    }
    free(d->nul);
    d->nul = NULL;
    d->nnul = 0;
    d->text = NULL;
    d->len = 0;
    d->indexed = 0;
}

/* ---- a scan without a tree ---------------------------------------------------- */

/* The grammar of RFC 8259, strictly, to a fixed depth. Only what cJSON surely reads the same
 * way is answered: a document it would refuse (an escape \u, whose surrogates it checks; a
 * number token over 63 bytes, which it cuts) or read otherwise (a key written with escapes,
 * the wrong type on the path, an integer that is not plain digits) leaves the answer to it. */
#define SCAN_DEPTH 32

typedef struct scan {
    const char *p, *end;
    const char *const *path;
    int npath;
    int found, unsure;
    int is_str;         /* what was found: a string [str, str + str_len), else val */
    uint64_t val;
    const char *str;
    size_t str_len;
} scan;

static void sc_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* A string token; *a, *b its raw contents; *esc whether it holds escapes. 0 ok, -1 invalid. */
static int sc_string(scan *s, const char **a, const char **b, int *esc)
{
    const char *p = s->p + 1;
    *esc = 0;
    *a = p;
    for (; p < s->end; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            *b = p;
            s->p = p + 1;
            return 0;
        }
        if (ch < 0x20)
            return -1;
        if (ch == '\\') {
            *esc = 1;
            if (++p >= s->end)
                return -1;
            switch (*p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                break;
            case 'u':
                s->unsure = 1;  /* valid here; cJSON also checks surrogates */
                break;
            default:
                return -1;
            }
        }
    }
    return -1;
}

/* A number token; *plain: it is 0 or [1-9][0-9]* (an unsigned integer as Consul writes one). */
static int sc_number(scan *s, int *plain)
{
    const char *p = s->p, *start = p;
    *plain = 1;
    if (p < s->end && *p == '-')
        p++, *plain = 0;
    if (p < s->end && *p == '0')
        p++;
    else if (p < s->end && *p >= '1' && *p <= '9')
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    else
        return -1;
    if (p < s->end && *p == '.') {
        *plain = 0;
        if (++p >= s->end || *p < '0' || *p > '9')
            return -1;
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < s->end && (*p == 'e' || *p == 'E')) {
        *plain = 0;
        if (++p < s->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= s->end || *p < '0' || *p > '9')
            return -1;
        while (p < s->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p - start > 63)
        s->unsure = 1;
    s->p = p;
    return 0;
}

/* The value of plain digits [p, end) (a token sc_number found plain): 0, or -1 over 64 bits. */
static int digits_u64(const char *p, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    if (end - p > 20)
        return -1;
    for (; p < end; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int sc_word(scan *s, const char *w, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

/* After a member or an element: 1 a comma (another follows), 0 the closing bracket, -1 neither. */
static int sc_next(scan *s, char close)
{
    sc_ws(s);
    if (s->p < s->end && *s->p == ',') {
        s->p++;
        return 1;
    }
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    return -1;
}

/* One value at s->p. on: the path's first `on` steps lead here (-1: off the path). */
static int sc_value(scan *s, int depth, int on)
{
    const char *a, *b;
    int esc, plain, r;
    if (depth > SCAN_DEPTH) {
        s->unsure = 1;
        return -1;
    }
    sc_ws(s);
    if (s->p >= s->end)
        return -1;
    if (on >= 0 && on < s->npath && ((s->path[on] == NULL) != (*s->p == '[')) &&
        (*s->p == '[' || *s->p == '{'))
        s->unsure = 1;  /* an object where an array is wanted, or the reverse */
    switch (*s->p) {
    case '{': {
        int matched = 0;
        s->p++;
        sc_ws(s);
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            return 0;
        }
        for (;;) {
            int next = -1;
            sc_ws(s);
            if (s->p >= s->end || *s->p != '"' || sc_string(s, &a, &b, &esc) != 0)
                return -1;
            if (on >= 0 && on < s->npath && s->path[on] != NULL && !matched) {
                if (esc)
                    s->unsure = 1;  /* it might spell the key */
                else if (strlen(s->path[on]) == (size_t)(b - a) &&
                         memcmp(s->path[on], a, (size_t)(b - a)) == 0)
                    next = on + 1, matched = 1;  /* the first of its name counts, as in cJSON */
            }
            sc_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return -1;
            s->p++;
            if (sc_value(s, depth + 1, next) != 0)
                return -1;
            if ((r = sc_next(s, '}')) <= 0)
                return r;
        }
    }
    case '[': {
        int last = on >= 0 && on < s->npath && s->path[on] == NULL;
        s->p++;
        if (last)
            s->found = 0;  /* an empty array has no last element */
        sc_ws(s);
        if (s->p < s->end && *s->p == ']') {
            s->p++;
            return 0;
        }
        for (;;) {
            if (last)
                s->found = 0;  /* only the last element's counts */
            if (sc_value(s, depth + 1, last ? on + 1 : -1) != 0)
                return -1;
            if ((r = sc_next(s, ']')) <= 0)
                return r;
        }
    }
    case '"':
        if (sc_string(s, &a, &b, &esc) != 0)
            return -1;
        if (on == s->npath && !esc) {
            s->found = s->is_str = 1;
            s->str = a;
            s->str_len = (size_t)(b - a);
        } else if (on >= 0) {
            s->unsure = 1;  /* escapes, or a string on the way */
        }
        return 0;
    case 't':
    case 'f':
    case 'n':
        if (sc_word(s, "true", 4) != 0 && sc_word(s, "false", 5) != 0 && sc_word(s, "null", 4) != 0)
            return -1;
        if (on >= 0)
            s->unsure = 1;
        return 0;
    default: {
        const char *tok = s->p;
        if (sc_number(s, &plain) != 0)
            return -1;
        if (on == s->npath) {
            uint64_t v;
            if (!plain || digits_u64(tok, s->p, &v) != 0) {
                s->unsure = 1;  /* not plain digits, or over 64 bits */
                return 0;
            }
            s->val = v;
            s->found = 1;
            s->is_str = 0;
        } else if (on >= 0) {
            s->unsure = 1;
        }
        return 0;
    }
    }
}

/* The whole text scanned for path: 1 found (s says what), 0 not sure. */
static int scan_path(scan *s, const char *text, size_t len, const char *const *path, int npath)
{
    if (text == NULL || npath < 1 || path[0] == NULL)
        return 0;
    memset(s, 0, sizeof *s);
    s->p = text;
    s->end = text + len;
    s->path = path;
    s->npath = npath;
    if (sc_value(s, 0, 0) != 0 || s->unsure || !s->found)
        return 0;
    sc_ws(s);
    return s->p == s->end;
}

int consul_json_scan_u64(const char *text, size_t len, const char *const *path, int npath,
                         uint64_t *out)
{
    scan s;
    if (!scan_path(&s, text, len, path, npath) || s.is_str)
        return 0;
    *out = s.val;
    return 1;
}

int consul_json_scan_str(const char *text, size_t len, const char *const *path, int npath,
                         const char **str, size_t *n)
{
    scan s;
    if (!scan_path(&s, text, len, path, npath) || !s.is_str)
        return 0;
    *str = s.str;
    *n = s.str_len;
    return 1;
}

/* ---- JSON to Lua ---------------------------------------------------------- */

void consul_push_u64(lua_State *L, uint64_t v)
{
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)(int64_t)v);  /* above 2^63: two's complement */
#else
    lua_pushnumber(L, (lua_Number)v);  /* the double nearest, as a Lua 5.1 literal gives */
#endif
}

void consul_push_index(lua_State *L, uint64_t v)
{
#if LUA_VERSION_NUM < 503
    if (v > (UINT64_C(1) << 53)) {
        /* Not exact as a double (event indexes are hashes): a decimal string then, which
         * an index option takes back as it is. */
        char num[32];
        snprintf(num, sizeof num, "%llu", (unsigned long long)v);
        lua_pushstring(L, num);
        return;
    }
#endif
    consul_push_u64(L, v);
}

int consul_to_u64(lua_State *L, int idx, uint64_t *out, int twos)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        char *end;
        unsigned long long v;
        if (n == 0 || n > 20 || *s < '0' || *s > '9')
            return -1;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || end != s + n)
            return -1;
        *out = (uint64_t)v;
        return 0;
    }
#if LUA_VERSION_NUM >= 503
    if (!lua_isinteger(L, idx) || (!twos && lua_tointeger(L, idx) < 0))
        return -1;
    *out = (uint64_t)(int64_t)lua_tointeger(L, idx);
    return 0;
#else
    {
        lua_Number v;
        if (lua_type(L, idx) != LUA_TNUMBER)
            return -1;
        v = lua_tonumber(L, idx);
        if (v != floor(v) || !(v >= (twos ? -9223372036854775808.0 : 0) &&
                               v < 18446744073709551616.0))
            return -1;
        *out = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
        return 0;
    }
#endif
}

/* What one push needs along the way. */
typedef struct pusher {
    lua_State *L;
    consul_json *d;
    int flags;
    int64_t deadline;
    unsigned budget;  /* nodes until the clock is read again */
} pusher;

static void push_number(pusher *p, const cJSON *n)
{
    int64_t i;
    uint64_t u;
    if (consul_json_i64(p->d, n, &i) == 0)
        lua_pushinteger(p->L, (lua_Integer)i);
    else if (consul_json_u64(p->d, n, &u) == 0)
        consul_push_u64(p->L, u);
    else
        lua_pushnumber(p->L, (lua_Number)n->valuedouble);
}

static void push_string(pusher *p, const cJSON *n)
{
    size_t len = 0;
    const char *s = consul_json_str(p->d, n, &len);
    lua_pushlstring(p->L, s != NULL ? s : "", len);
}

/* A base64 string node pushed decoded (in place in the answer's own tree: base64 only
 * shrinks, and the node is spent); null is "". Else CONSUL_EDECODE, nothing pushed. */
static int push_b64(pusher *p, cJSON *n)
{
    size_t len;
    const char *s;
    long got;
    if (cJSON_IsNull(n)) {
        lua_pushliteral(p->L, "");  /* Consul writes an empty value as null */
        return CONSUL_OK;
    }
    if ((s = consul_json_str(p->d, n, &len)) == NULL ||
        (got = consul_base64_decode_inplace(n->valuestring, len)) < 0)
        return CONSUL_EDECODE;
    lua_pushlstring(p->L, s, (size_t)got);
    return CONSUL_OK;
}

/* What a field is, by its name: how it is decoded and, in a KV record, checked. */
enum { F_PLAIN, F_VALUE, F_PAYLOAD, F_KEY, F_SESSION, F_U64 };

static int field_kind(const char *k)
{
    switch (k[0]) {
    case 'V': return strcmp(k, "Value") == 0 ? F_VALUE : F_PLAIN;
    case 'P': return strcmp(k, "Payload") == 0 ? F_PAYLOAD : F_PLAIN;
    case 'K': return strcmp(k, "Key") == 0 ? F_KEY : F_PLAIN;
    case 'S': return strcmp(k, "Session") == 0 ? F_SESSION : F_PLAIN;
    case 'F': return strcmp(k, "Flags") == 0 ? F_U64 : F_PLAIN;
    case 'C': return strcmp(k, "CreateIndex") == 0 ? F_U64 : F_PLAIN;
    case 'M': return strcmp(k, "ModifyIndex") == 0 ? F_U64 : F_PLAIN;
    case 'L': return strcmp(k, "LockIndex") == 0 ? F_U64 : F_PLAIN;
    default: return F_PLAIN;
    }
}

/* The keys of the objects of one array: records of a list name the same fields in the same
 * order, so the Lua string of each name is made once and reused, and what the field is
 * found out once. */
#define KEYS 16
typedef struct keycache {
    int idx;                 /* stack index of a table: i -> the Lua string of name[i - 1] */
    const char *name[KEYS];  /* names of the previous object, alive as long as the document */
    unsigned char kind[KEYS];
} keycache;

static int push_value(pusher *p, cJSON *n, keycache *kc);

/* Field i of an object: its kind; *cached: its name's Lua string is slot i + 1 of the
 * cache's table (else push it from the node). */
static int key_kind(const pusher *p, const cJSON *c, int i, keycache *kc, int *cached)
{
    const char *name = c->string;
    *cached = 0;
    if (p->d->nnul > 0 || kc == NULL || i >= KEYS)
        return field_kind(name);
    if (kc->name[i] != NULL && strcmp(kc->name[i], name) == 0) {
        *cached = 1;
        return kc->kind[i];
    }
    lua_pushstring(p->L, name);
    lua_rawseti(p->L, kc->idx, i + 1);
    kc->name[i] = name;
    kc->kind[i] = (unsigned char)field_kind(name);
    *cached = 1;
    return kc->kind[i];
}

static int push_object(pusher *p, cJSON *n, keycache *kc, int record)
{
    lua_State *L = p->L;
    cJSON *c;
    int i = 0, rc, has_key = 0;
    lua_createtable(L, 0, 8);
    for (c = n->child; c != NULL; c = c->next, i++) {
        int cached, kind = key_kind(p, c, i, kc, &cached);
        int b64 = (kind == F_VALUE && (p->flags & CONSUL_JSON_B64VALUE)) ||
                  (kind == F_PAYLOAD && (p->flags & CONSUL_JSON_B64PAYLOAD) && !cJSON_IsNull(c));
        if (record) {
            uint64_t u;
            switch (kind) {
            case F_KEY:
                if (!cJSON_IsString(c))
                    return CONSUL_EDECODE;
                has_key = 1;
                break;
            case F_SESSION:
                if (!cJSON_IsString(c) && !cJSON_IsNull(c))
                    return CONSUL_EDECODE;
                break;
            case F_U64:
                if (consul_json_u64(p->d, c, &u) != 0)
                    return CONSUL_EDECODE;
                break;
            }
        }
        if (cJSON_IsNull(c) && !b64)
            continue;  /* an absent field reads as nil */
        if (cached) {
            lua_rawgeti(L, kc->idx, i + 1);
        } else {
            size_t len;
            const char *k = consul_json_key(p->d, c, &len);
            lua_pushlstring(L, k, len);
        }
        rc = b64 ? push_b64(p, c) : push_value(p, c, NULL);
        if (rc != CONSUL_OK)
            return rc;
        lua_rawset(L, -3);
    }
    return record && !has_key ? CONSUL_EDECODE : CONSUL_OK;
}

static int push_array(pusher *p, cJSON *n, int records)
{
    lua_State *L = p->L;
    cJSON *c;
    lua_Integer i = 0;
    /* several objects: their keys go through a cache of this array's own */
    int cached = cJSON_IsObject(n->child) && n->child->next != NULL, rc;
    keycache own;
    if (cached) {
        memset(&own, 0, sizeof own);
        lua_createtable(L, KEYS, 0);
        own.idx = lua_gettop(L);
    }
    lua_createtable(L, cJSON_GetArraySize(n), 0);
    for (c = n->child; c != NULL; c = c->next) {
        if (records) {
            if (!cJSON_IsObject(c))
                return CONSUL_EDECODE;
            rc = push_object(p, c, cached ? &own : NULL, 1);
        } else {
            rc = push_value(p, c, cached && cJSON_IsObject(c) ? &own : NULL);
        }
        if (rc != CONSUL_OK)
            return rc;
        lua_rawseti(L, -2, (int)++i);
    }
    if (cached)
        lua_remove(L, own.idx);
    return CONSUL_OK;
}

static int push_value(pusher *p, cJSON *n, keycache *kc)
{
    lua_State *L = p->L;
    luaL_checkstack(L, 6, "JSON nested too deep");
    if (--p->budget == 0) {
        p->budget = 4096;
        if (consul_now_ms() > p->deadline)
            return CONSUL_ETIMEOUT;
    }
    switch (n->type & 0xff) {
    case cJSON_False: lua_pushboolean(L, 0); break;
    case cJSON_True: lua_pushboolean(L, 1); break;
    case cJSON_NULL: lua_pushlightuserdata(L, NULL_UD); break;
    case cJSON_Number: push_number(p, n); break;
    case cJSON_String: push_string(p, n); break;
    case cJSON_Array: return push_array(p, n, 0);
    case cJSON_Object: return push_object(p, n, kc, 0);
    default: return CONSUL_EDECODE;
    }
    return CONSUL_OK;
}

int consul_json_push(lua_State *L, consul_json *d, cJSON *node, int flags, int64_t deadline)
{
    pusher p;
    int top = lua_gettop(L), rc;
    p.L = L;
    p.d = d;
    p.flags = flags;
    p.deadline = deadline;
    p.budget = 4096;
    if (node == NULL)
        node = d->root;
    if (!(flags & CONSUL_JSON_KVREC))
        rc = push_value(&p, node, NULL);
    else if (cJSON_IsObject(node))
        rc = push_object(&p, node, NULL, 1);
    else if (cJSON_IsArray(node))
        rc = push_array(&p, node, 1);
    else
        rc = CONSUL_EDECODE;
    if (rc != CONSUL_OK)
        lua_settop(L, top);
    else
        lua_settop(L, top + 1);  /* the value, without what a failed branch left */
    return rc;
}

/* ---- KV records without a tree ------------------------------------------------ */

/* The shape Consul writes a record list in, and nothing else: an array of objects whose
 * members are strings without escapes, plain unsigned integers, true, false or null, Values
 * of at most REC_VALUE_MAX decoded bytes. Checked and pushed as push_object does (the same
 * field kinds, the same checks, the same Lua values); anything else, and a deadline passed,
 * leaves the answer to the tree. */
#define REC_VALUE_MAX 3072

/* One member's value, pushed. 0 ok, -1 not sure (something may be pushed: the caller
 * drops it). */
static int rec_member(scan *s, lua_State *L, int kind)
{
    const char *a, *b, *tok;
    int esc, plain;
    sc_ws(s);
    if (s->p >= s->end)
        return -1;
    tok = s->p;
    switch (*s->p) {
    case '"':
        if (sc_string(s, &a, &b, &esc) != 0 || esc)
            return -1;
        if (kind == F_U64)
            return -1;
        if (kind == F_VALUE) {
            unsigned char out[REC_VALUE_MAX];
            size_t n = (size_t)(b - a);
            long got;
            if (n / 4 * 3 > REC_VALUE_MAX || (got = consul_base64_decode(a, n, out)) < 0)
                return -1;
            lua_pushlstring(L, (const char *)out, (size_t)got);
        } else {
            lua_pushlstring(L, a, (size_t)(b - a));
        }
        return 0;
    case 'n':
        if (sc_word(s, "null", 4) != 0 || kind == F_KEY || kind == F_U64)
            return -1;
        if (kind == F_VALUE)
            lua_pushliteral(L, "");  /* Consul writes an empty value as null */
        else
            lua_pushnil(L);  /* an absent field: the caller skips it */
        return 0;
    case 't':
    case 'f':
        if (kind != F_PLAIN && kind != F_PAYLOAD)
            return -1;
        if (sc_word(s, "true", 4) == 0)
            lua_pushboolean(L, 1);
        else if (sc_word(s, "false", 5) == 0)
            lua_pushboolean(L, 0);
        else
            return -1;
        return 0;
    default: {
        uint64_t v;
        if (kind == F_KEY || kind == F_SESSION || kind == F_VALUE ||
            sc_number(s, &plain) != 0 || !plain || s->unsure || digits_u64(tok, s->p, &v) != 0)
            return -1;
        if (v <= (uint64_t)INT64_MAX)
            lua_pushinteger(L, (lua_Integer)(int64_t)v);
        else
            consul_push_u64(L, v);
        return 0;
    }
    }
}

/* One record at s->p ('{'), pushed as a table. cache: stack index of the names' Lua strings,
 * names/lens the names they are (from the record before). 0 ok, -1 not sure. */
static int rec_object(scan *s, lua_State *L, int cache, const char **names, size_t *lens,
                      unsigned char *kinds)
{
    int i = 0, has_key = 0, r;
    const char *a, *b;
    int esc;
    s->p++;
    lua_createtable(L, 0, 8);
    sc_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return -1;  /* no Key: the tree says why */
    }
    for (;; i++) {
        int kind;
        size_t n;
        sc_ws(s);
        if (s->p >= s->end || *s->p != '"' || sc_string(s, &a, &b, &esc) != 0 || esc)
            return -1;
        n = (size_t)(b - a);
        if (i < KEYS && names[i] != NULL && lens[i] == n && memcmp(names[i], a, n) == 0) {
            kind = kinds[i];
            lua_rawgeti(L, cache, i + 1);
        } else {
            char name[32];
            if (n >= sizeof name)
                return -1;  /* no field of a record is named so long */
            memcpy(name, a, n);
            name[n] = '\0';
            kind = field_kind(name);
            lua_pushlstring(L, a, n);
            if (i < KEYS) {
                names[i] = a;
                lens[i] = n;
                kinds[i] = (unsigned char)kind;
                lua_pushvalue(L, -1);
                lua_rawseti(L, cache, i + 1);
            }
        }
        sc_ws(s);
        if (s->p >= s->end || *s->p != ':')
            return -1;
        s->p++;
        if (rec_member(s, L, kind) != 0)
            return -1;
        if (kind == F_KEY)
            has_key = 1;
        if (lua_isnil(L, -1))
            lua_pop(L, 2);  /* null: an absent field reads as nil */
        else
            lua_rawset(L, -3);
        if ((r = sc_next(s, '}')) <= 0)
            return r == 0 && has_key ? 0 : -1;
    }
}

int consul_json_push_records(lua_State *L, const char *text, size_t len, int64_t deadline)
{
    int top = lua_gettop(L), cache, arr, r;
    const char *names[KEYS];
    size_t lens[KEYS];
    unsigned char kinds[KEYS];
    lua_Integer i = 0;
    scan s;
    if (text == NULL)
        return 0;
    memset(names, 0, sizeof names);
    memset(&s, 0, sizeof s);
    s.p = text;
    s.end = text + len;
    luaL_checkstack(L, 8, "not enough memory");
    lua_createtable(L, KEYS, 0);
    cache = lua_gettop(L);
    sc_ws(&s);
    if (s.p >= s.end || *s.p != '[')
        goto unsure;
    s.p++;
    lua_createtable(L, 0, 0);
    arr = lua_gettop(L);
    sc_ws(&s);
    if (s.p < s.end && *s.p == ']') {
        s.p++;
    } else {
        for (;;) {
            sc_ws(&s);
            if (s.p >= s.end || *s.p != '{' ||
                rec_object(&s, L, cache, names, lens, kinds) != 0)
                goto unsure;
            lua_rawseti(L, arr, ++i);
            if ((i & 255) == 0 && consul_now_ms() > deadline)
                goto unsure;  /* the tree's way says "timeout" */
            if ((r = sc_next(&s, ']')) < 0)
                goto unsure;
            if (r == 0)
                break;
        }
    }
    sc_ws(&s);
    if (s.p != s.end)
        goto unsure;
    lua_remove(L, cache);
    return 1;
unsure:
    lua_settop(L, top);
    return 0;
}

/* ---- Lua to JSON ---------------------------------------------------------- */

#define ENC_MAXDEPTH 64
/* A Go duration is int64 nanoseconds: at most 2^63 ns, about 292 years. */
#define MAX_DURATION_S 9223372036.0

typedef struct enc {
    lua_State *L;
    consul_buf *b;
    int arg, flags;
} enc;

static void enc_oom(enc *e)
{
    luaL_error(e->L, "not enough memory");  /* does not return */
}

static void enc_raw(enc *e, const char *s, size_t n)
{
    if (consul_buf_add(e->b, s, n) != 0)
        enc_oom(e);
}

static void enc_value(enc *e, int idx, const char *key, int depth);

static void enc_number(enc *e, int idx, const char *key)
{
    lua_State *L = e->L;
    char num[64];
    int n;
    /* Session TTL and LockDelay given in seconds go out as Go durations. */
    int duration = key != NULL && (e->flags & CONSUL_JSON_DURATIONS) &&
                   (strcmp(key, "TTL") == 0 || strcmp(key, "LockDelay") == 0);
    uint64_t u;
    if (key != NULL && strcmp(key, "Flags") == 0 && consul_to_u64(L, idx, &u, 1) == 0) {
        /* uint64: a 5.4 integer above 2^63 is negative, a 5.1 one a large double */
        n = snprintf(num, sizeof num, "%llu", (unsigned long long)u);
    } else if (duration) {
        double v = (double)lua_tonumber(L, idx);
        if (!(v >= 0 && v <= MAX_DURATION_S)) {
            lua_pushfstring(L, "%s must be 0..%f seconds", key, MAX_DURATION_S);
            luaL_argerror(L, e->arg, lua_tostring(L, -1));
        }
        if (consul_isinteger(L, idx))
            n = snprintf(num, sizeof num, "\"%llds\"", (long long)lua_tointeger(L, idx));
        else
            n = snprintf(num, sizeof num, "\"%.3fs\"", v);  /* never in exponent form */
    } else if (consul_isinteger(L, idx)) {
        n = snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
    } else {
        double v = (double)lua_tonumber(L, idx);
        if (isnan(v) || isinf(v))
            luaL_argerror(L, e->arg, "cannot encode NaN or infinity as JSON");
        n = snprintf(num, sizeof num, "%.17g", v);
    }
    if (n < 0 || (size_t)n >= sizeof num)
        luaL_argerror(L, e->arg, "cannot encode this number");
    enc_raw(e, num, (size_t)n);
}

/* 0: an object, n > 0: an array of n, -1: neither (raises). */
static lua_Integer table_kind(enc *e, int idx)
{
    lua_State *L = e->L;
    lua_Integer count = 0, max = 0;
    int strings = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            strings = 1;
        } else if (consul_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            lua_Integer k = lua_tointeger(L, -1);
            count++;
            if (k > max)
                max = k;
        } else {
            lua_pop(L, 1);
            luaL_argerror(L, e->arg, "JSON object keys must be strings");
        }
    }
    if (strings && count > 0)
        luaL_argerror(L, e->arg, "cannot encode a table with both array and string keys");
    if (count > 0 && max != count)
        luaL_argerror(L, e->arg, "cannot encode a sparse array as JSON");
    return count;
}

static void enc_string(enc *e, const char *s, size_t n)
{
    if (consul_buf_add_json_string(e->b, s, n) != 0)
        enc_oom(e);
}

static void enc_table(enc *e, int idx, int depth)
{
    lua_State *L = e->L;
    lua_Integer n, i;
    int first = 1;
    if (depth > ENC_MAXDEPTH)
        luaL_argerror(L, e->arg, "table nested too deep (a cycle?)");
    luaL_checkstack(L, 6, "table nested too deep");
    n = table_kind(e, idx);
    if (n > 0) {
        enc_raw(e, "[", 1);
        for (i = 1; i <= n; i++) {
            if (i > 1)
                enc_raw(e, ",", 1);
            lua_rawgeti(L, idx, (int)i);
            enc_value(e, lua_gettop(L), NULL, depth + 1);
            lua_pop(L, 1);
        }
        enc_raw(e, "]", 1);
        return;
    }
    enc_raw(e, "{", 1);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t klen;
        const char *k = lua_tolstring(L, -2, &klen);  /* a string: table_kind checked */
        if (!first)
            enc_raw(e, ",", 1);
        first = 0;
        enc_string(e, k, klen);
        enc_raw(e, ":", 1);
        enc_value(e, lua_gettop(L), k, depth + 1);
        lua_pop(L, 1);
    }
    enc_raw(e, "}", 1);
}

static void enc_value(enc *e, int idx, const char *key, int depth)
{
    lua_State *L = e->L;
    size_t n;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: enc_raw(e, "null", 4); break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            enc_raw(e, "true", 4);
        else
            enc_raw(e, "false", 5);
        break;
    case LUA_TNUMBER: enc_number(e, idx, key); break;
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        if (key != NULL && (e->flags & CONSUL_JSON_B64VALUE) && strcmp(key, "Value") == 0) {
            enc_raw(e, "\"", 1);
            if (consul_buf_add_base64(e->b, (const unsigned char *)s, n) != 0)
                enc_oom(e);
            enc_raw(e, "\"", 1);
        } else {
            enc_string(e, s, n);
        }
        break;
    case LUA_TTABLE: enc_table(e, idx, depth); break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL_UD) {
            enc_raw(e, "null", 4);
            break;
        }
        if (lua_touserdata(L, idx) == EMPTY_ARRAY_UD) {
            enc_raw(e, "[]", 2);
            break;
        }
        /* fall through */
    default:
        lua_pushfstring(L, "cannot encode a %s as JSON", luaL_typename(L, idx));
        luaL_argerror(L, e->arg, lua_tostring(L, -1));
    }
}

void consul_json_encode(lua_State *L, int idx, int arg, consul_buf *b, int flags)
{
    enc e;
    e.L = L;
    e.b = b;
    e.arg = arg;
    e.flags = flags;
    enc_value(&e, consul_absindex(L, idx), NULL, 0);
}

void consul_json_open(lua_State *L)
{
    lua_pushlightuserdata(L, NULL_UD);
    lua_setfield(L, -2, "null");
    lua_pushlightuserdata(L, EMPTY_ARRAY_UD);
    lua_setfield(L, -2, "empty_array");
}
