/*
 * json.c: JSON in both directions.
 *
 * Decoding uses cJSON, which keeps numbers as doubles: 64-bit Flags and Raft indexes at or
 * above 2^53 would be rounded. Integers below 2^53 are exact as doubles and read from them.
 * The first time a larger one is read, the text's number tokens are found, in document order,
 * and each number node's valueint is replaced by the offset of its token: any integer can then
 * be read again exactly from its own digits. cJSON's children keep document order, so the two
 * walks agree. Most answers (a KV list, say) never need the second walk.
 *
 * Encoding writes Lua values straight into a consul_buf (owned by the client, so an error
 * raised halfway leaks nothing).
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

/* ---- parsing ------------------------------------------------------------ */

/* The next number token of the text from *pp (strings skipped), or NULL; *pp moves past it. */
static const char *next_number(const char **pp, const char *end)
{
    const char *p = *pp, *tok;
    while (p < end) {
        char ch = *p;
        if (ch == '"') {
            /* Jump to the closing quote: one not preceded by an odd run of backslashes. */
            for (;;) {
                const char *q = memchr(p + 1, '"', (size_t)(end - p - 1)), *b;
                if (q == NULL) {
                    *pp = end;
                    return NULL;  /* unterminated: cannot be, cJSON parsed it */
                }
                for (b = q; b > p + 1 && b[-1] == '\\'; b--)
                    ;
                p = q;
                if (((q - b) & 1) == 0)
                    break;
            }
            p++;
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

int consul_json_parse(consul_json *d, const char *text, size_t len)
{
    consul_json_free(d);
    /* text[len] is '\0': counting it makes cJSON reject trailing garbage. */
    d->root = cJSON_ParseWithLengthOpts(text, len + 1, NULL, 1);
    if (d->root == NULL)
        return -1;
    d->text = text;
    d->len = len;
    return 0;
}

/* The second walk, once per document: 1 when every number node has its token's offset. */
static int index_numbers(consul_json *d)
{
    if (d->indexed == 0) {
        const char *p = d->text, *end = d->text + d->len;
        /* a mismatch cannot happen for valid JSON; numbers are doubles then */
        d->indexed = number_nodes(d->root, d->text, &p, end) == 0 &&
                     next_number(&p, end) == NULL ? 1 : -1;
    }
    return d->indexed == 1;
}

void consul_json_free(consul_json *d)
{
    if (d->root != NULL) {
        cJSON_Delete(d->root);
        d->root = NULL;
    }
    d->text = NULL;
    d->len = 0;
    d->indexed = 0;
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
    return 0;
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

int consul_to_u64(lua_State *L, int idx, uint64_t *out)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tostring(L, idx);
        char *end;
        unsigned long long v;
        if (*s < '0' || *s > '9')
            return -1;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || *end != '\0')
            return -1;
        *out = (uint64_t)v;
        return 0;
    }
#if LUA_VERSION_NUM >= 503
    if (!lua_isinteger(L, idx))
        return -1;
    *out = (uint64_t)(int64_t)lua_tointeger(L, idx);
    return 0;
#else
    lua_Number v;
    if (lua_type(L, idx) != LUA_TNUMBER)
        return -1;
    v = lua_tonumber(L, idx);
    if (v != floor(v) || !(v >= -9223372036854775808.0 && v < 18446744073709551616.0))
        return -1;
    *out = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
    return 0;
#endif
}

static void push_number(lua_State *L, consul_json *d, const cJSON *n)
{
    int64_t i;
    uint64_t u;
    if (consul_json_i64(d, n, &i) == 0)
        lua_pushinteger(L, (lua_Integer)i);
    else if (consul_json_u64(d, n, &u) == 0)
        consul_push_u64(L, u);
    else
        lua_pushnumber(L, (lua_Number)n->valuedouble);
}

/* A base64 "Value" is decoded in place in the answer's own tree: base64 only shrinks. */
void consul_json_push_b64(lua_State *L, cJSON *n)
{
    long got = consul_base64_decode_inplace(n->valuestring, strlen(n->valuestring));
    if (got < 0)
        lua_pushstring(L, n->valuestring);  /* not base64 after all: hand it over as is */
    else
        lua_pushlstring(L, n->valuestring, (size_t)got);
}

/* The keys of the objects of one array: records of a list name the same fields in the same
 * order, so the Lua string of each name is made once and reused. */
#define KEYS 16
typedef struct keycache {
    int idx;                 /* stack index of a table: i -> the Lua string of name[i - 1] */
    const char *name[KEYS];  /* names of the previous object, alive as long as the document */
} keycache;

static void push_value(lua_State *L, consul_json *d, cJSON *n, int flags, keycache *kc);

static void push_key(lua_State *L, const char *name, int i, keycache *kc)
{
    if (kc == NULL || i >= KEYS) {
        lua_pushstring(L, name);
    } else if (kc->name[i] != NULL && strcmp(kc->name[i], name) == 0) {
        lua_rawgeti(L, kc->idx, i + 1);
    } else {
        lua_pushstring(L, name);
        lua_pushvalue(L, -1);
        lua_rawseti(L, kc->idx, i + 1);
        kc->name[i] = name;
    }
}

static void push_object(lua_State *L, consul_json *d, cJSON *n, int flags, keycache *kc)
{
    cJSON *c;
    int i = 0;
    lua_createtable(L, 0, 8);
    for (c = n->child; c != NULL; c = c->next, i++) {
        int is_value = c->string[0] == 'V' ? (flags & CONSUL_JSON_B64VALUE) &&
                                                 strcmp(c->string, "Value") == 0
                     : c->string[0] == 'P' && (flags & CONSUL_JSON_B64PAYLOAD) &&
                           strcmp(c->string, "Payload") == 0;
        if (cJSON_IsNull(c) && !(is_value && c->string[0] == 'V'))
            continue;  /* an absent field reads as nil */
        push_key(L, c->string, i, kc);
        if (is_value && cJSON_IsString(c))
            consul_json_push_b64(L, c);
        else if (is_value && cJSON_IsNull(c))
            lua_pushliteral(L, "");  /* Consul writes an empty KV value as null */
        else
            push_value(L, d, c, flags, NULL);
        lua_rawset(L, -3);
    }
}

static void push_value(lua_State *L, consul_json *d, cJSON *n, int flags, keycache *kc)
{
    cJSON *c;
    lua_Integer i = 0;
    luaL_checkstack(L, 6, "JSON nested too deep");
    switch (n->type & 0xff) {
    case cJSON_False: lua_pushboolean(L, 0); break;
    case cJSON_True: lua_pushboolean(L, 1); break;
    case cJSON_NULL: lua_pushlightuserdata(L, NULL_UD); break;
    case cJSON_Number: push_number(L, d, n); break;
    case cJSON_String: lua_pushstring(L, n->valuestring); break;
    case cJSON_Array: {
        /* several objects: their keys go through a cache of this array's own */
        int cached = cJSON_IsObject(n->child) && n->child->next != NULL;
        keycache own;
        if (cached) {
            memset(&own, 0, sizeof own);
            lua_createtable(L, KEYS, 0);
            own.idx = lua_gettop(L);
        }
        lua_createtable(L, cJSON_GetArraySize(n), 0);
        for (c = n->child; c != NULL; c = c->next) {
            push_value(L, d, c, flags, cached && cJSON_IsObject(c) ? &own : NULL);
            lua_rawseti(L, -2, (int)++i);
        }
        if (cached)
            lua_remove(L, own.idx);
        break;
    }
    case cJSON_Object: push_object(L, d, n, flags, kc); break;
    default: lua_pushnil(L); break;
    }
}

void consul_json_push(lua_State *L, consul_json *d, cJSON *n, int flags)
{
    push_value(L, d, n == NULL ? d->root : n, flags, NULL);
}

/* ---- Lua to JSON ---------------------------------------------------------- */

#define ENC_MAXDEPTH 64

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

static void enc_string(enc *e, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;
    enc_raw(e, "\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f)
            continue;
        enc_raw(e, s + run, i - run);
        run = i + 1;
        switch (ch) {
        case '"': enc_raw(e, "\\\"", 2); break;
        case '\\': enc_raw(e, "\\\\", 2); break;
        case '\n': enc_raw(e, "\\n", 2); break;
        case '\r': enc_raw(e, "\\r", 2); break;
        case '\t': enc_raw(e, "\\t", 2); break;
        default: {
            char u[6] = { '\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15] };
            enc_raw(e, u, 6);
        }
        }
    }
    enc_raw(e, s + run, n - run);
    enc_raw(e, "\"", 1);
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
    if (key != NULL && strcmp(key, "Flags") == 0 && consul_to_u64(L, idx, &u) == 0) {
        /* uint64: a 5.4 integer above 2^63 is negative, a 5.1 one a large double */
        n = snprintf(num, sizeof num, "%llu", (unsigned long long)u);
    } else if (consul_isinteger(L, idx)) {
        int64_t v = (int64_t)lua_tointeger(L, idx);
        if (duration)
            n = snprintf(num, sizeof num, "\"%llds\"", (long long)v);
        else
            n = snprintf(num, sizeof num, "%lld", (long long)v);
    } else {
        double v = (double)lua_tonumber(L, idx);
        if (isnan(v) || isinf(v))
            luaL_argerror(L, e->arg, "cannot encode NaN or infinity as JSON");
        /* a Go duration never in exponent form ("1e+10s" is none) */
        n = snprintf(num, sizeof num, duration ? "\"%.3fs\"" : "%.17g", v);
    }
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

static int consul_json_null(lua_State *L)
{
    lua_pushlightuserdata(L, NULL_UD);
    return 1;
}

static int consul_json_empty_array(lua_State *L)
{
    lua_pushlightuserdata(L, EMPTY_ARRAY_UD);
    return 1;
}

void consul_json_open(lua_State *L)
{
    consul_json_null(L);
    lua_setfield(L, -2, "null");
    consul_json_empty_array(L);
    lua_setfield(L, -2, "empty_array");
}
