/*
 * fuzz_json.c: JSON text to Lua values. The first byte picks the decoding flags (base64
 * Values and Payloads, KV record checks); the rest is the text. Every number node is also
 * read as an exact integer, and every string as its bytes.
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
    int flags;
    if (size < 1)
        return 0;
    if (L == NULL)
        L = fuzz_state();
    flags = data[0] & (CONSUL_JSON_B64VALUE | CONSUL_JSON_B64PAYLOAD | CONSUL_JSON_KVREC);
    text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    memset(&d, 0, sizeof d);
    if (consul_json_parse(&d, text, size - 1) == 0) {
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
