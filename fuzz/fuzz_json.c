/*
 * fuzz_json.c: JSON text to Lua values. The first byte picks the decoding flags (base64
 * Values and Payloads, KV record checks); the rest is the text. Every number node is also
 * read as an exact integer, and every string as its bytes. Where the scan without a tree
 * (consul_json_scan_u64, _str) answers a txn's Results[last].KV.ModifyIndex or an object's
 * "ID", cJSON must agree;
 * where the record list's fast path (consul_json_push_records) pushes, the tree's push must
 * push the same Lua value.
 */
#include "fuzz.h"

static lua_State *L;

static void walk(consul_json *d, cJSON *n)
{
    for (; n != NULL; n = n->next) {
        uint64_t u;
        int64_t i;
        size_t len;
        consul_json_u64(d, n, &u);
        consul_json_i64(d, n, &i);
        if (n->string != NULL)
            consul_json_key(d, n, &len);
        if (consul_json_str(d, n, &len) != NULL && len > 0)
            (void)n->valuestring[len - 1];  /* the bytes said to be there are there */
        walk(d, n->child);
    }
}

/* The fast path may only answer what cJSON answers the same: else abort (a finding). */
static void check_scan(const char *text, size_t len, int parsed, consul_json *d)
{
    static const char *const path[] = { "Results", NULL, "KV", "ModifyIndex" };
    uint64_t fast, slow;
    cJSON *r, *last = NULL;
    static const char *const id[] = { "ID" };
    const char *str, *want;
    size_t n, wn;
    if (consul_json_scan_str(text, len, id, 1, &str, &n) == 1) {
        want = parsed && cJSON_IsObject(d->root) ? consul_json_field_str(d, d->root, "ID", &wn)
                                                 : NULL;
        if (want == NULL || wn != n || memcmp(want, str, n) != 0)
            abort();
    }
    if (consul_json_scan_u64(text, len, path, 4, &fast) != 1)
        return;
    if (!parsed)
        abort();
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(d->root, "Results"))
        last = r;
    if (consul_json_u64(d, cJSON_GetObjectItemCaseSensitive(
                               cJSON_GetObjectItemCaseSensitive(last, "KV"), "ModifyIndex"),
                        &slow) != 0 || slow != fast)
        abort();
}

/* The values at a and b are the same: scalars raw-equal, tables with the same keys and
 * values (a record list's tables hold only scalars below the records). */
static int same(lua_State *S, int a, int b, int depth)
{
    a = lua_absindex(S, a);
    b = lua_absindex(S, b);
    if (lua_type(S, a) != lua_type(S, b))
        return 0;
    if (lua_type(S, a) != LUA_TTABLE)
        return lua_rawequal(S, a, b);
    if (depth > 3 || lua_rawlen(S, a) != lua_rawlen(S, b))
        return 0;
    lua_pushnil(S);
    while (lua_next(S, a) != 0) {
        lua_pushvalue(S, -2);
        lua_rawget(S, b);
        if (!same(S, -2, -1, depth + 1)) {
            lua_pop(S, 3);
            return 0;
        }
        lua_pop(S, 2);
    }
    lua_pushnil(S);
    while (lua_next(S, b) != 0) {  /* nothing in b that a lacks */
        lua_pushvalue(S, -2);
        lua_rawget(S, a);
        if (lua_isnil(S, -1)) {
            lua_pop(S, 3);
            return 0;
        }
        lua_pop(S, 2);
    }
    return 1;
}

/* records(text, len, doc or nil): pushes with the fast path; where it did, the tree must
 * push the same (abort otherwise). */
static int records(lua_State *S)
{
    const char *text = lua_touserdata(S, 1);
    size_t len = (size_t)lua_tointeger(S, 2);
    consul_json *d = lua_touserdata(S, 3);
    lua_settop(S, 0);
    if (consul_json_push_records(S, text, len, CONSUL_NEVER) != 1)
        return 0;
    if (d == NULL || consul_json_push(S, d, NULL, CONSUL_JSON_KVREC | CONSUL_JSON_B64VALUE,
                                      CONSUL_NEVER) != CONSUL_OK ||
        !same(S, 1, 2, 0))
        abort();
    return 0;
}

static int push(lua_State *S)
{
    consul_json *d = lua_touserdata(S, 1);
    int flags = (int)lua_tointeger(S, 2);
    consul_json_push(S, d, NULL, flags, CONSUL_NEVER);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    consul_json d;
    char *text;
    int flags, parsed;
    if (size < 1)
        return 0;
    if (L == NULL)
        L = fuzz_state();
    flags = data[0] & (CONSUL_JSON_B64VALUE | CONSUL_JSON_B64PAYLOAD | CONSUL_JSON_KVREC);
    text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    memset(&d, 0, sizeof d);
    parsed = consul_json_parse(&d, text, size - 1) == 0;
    check_scan(text, size - 1, parsed, &d);
    if (flags == (CONSUL_JSON_KVREC | CONSUL_JSON_B64VALUE)) {
        lua_pushcfunction(L, records);
        lua_pushlightuserdata(L, text);
        lua_pushinteger(L, (lua_Integer)(size - 1));
        if (parsed)
            lua_pushlightuserdata(L, &d);
        else
            lua_pushnil(L);
        lua_pcall(L, 3, 0, 0);  /* only memory can raise */
        lua_settop(L, 0);
    }
    if (parsed) {
        walk(&d, d.root);
        lua_pushcfunction(L, push);
        lua_pushlightuserdata(L, &d);
        lua_pushinteger(L, flags);
        lua_pcall(L, 2, 0, 0);  /* only memory can raise */
        lua_settop(L, 0);
    }
    consul_json_free(&d);
    free(text);
    if ((data[0] & 0x80) != 0)
        lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
