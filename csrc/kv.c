/*
 * kv.c: the KV methods. The three KV routes of routes.c, shaped as a Lua user wants them:
 * get reads ?raw (the value's bytes, straight into one Lua string), record and list decode
 * the JSON records (base64 values, exact flags and indexes, every field checked), keys lists
 * names, pairs iterates, put and delete return Consul's true or false. An answer of another
 * shape is nil, err, {code = "decode"}.
 */
#include "consul.h"

#include <string.h>

/* Raises when opts names an option that would change the answer's shape. */
static void forbid(lua_State *L, int idx, const char *name, const char *use)
{
    if (lua_type(L, idx) != LUA_TTABLE)
        return;
    lua_pushstring(L, name);
    lua_rawget(L, idx);
    if (!lua_isnil(L, -1)) {
        lua_pushfstring(L, "option '%s' is not for this method (use %s)", name, use);
        consul_argerror(L, idx, lua_tostring(L, -1));
    }
    lua_pop(L, 1);
}

/* GET /v1/kv/<key>[?flag] with opts at 3: the op, its box at 5 (the client at 4). */
static int kv_read(lua_State *L, const char *flag, int answer, int key_optional)
{
    consul_client *c;
    consul_op *op;
    consul_checkargs(L, 3, "key and options expected");
    c = consul_group_client(L, 3);                 /* 4 */
    if (key_optional && lua_isnil(L, 2)) {
        lua_pushliteral(L, "");
        lua_replace(L, 2);  /* the whole store */
    }
    if (!lua_isnil(L, 3))
        consul_checktype(L, 3, LUA_TTABLE);
    if (answer != CONSUL_ANS_RECORDS && answer != CONSUL_ANS_PAIRS)
        forbid(L, 3, "recurse", "kv:list");
    if (answer != CONSUL_ANS_KEYS)
        forbid(L, 3, "keys", "kv:keys");
    if (answer != CONSUL_ANS_KEYS)
        forbid(L, 3, "separator", "kv:keys");
    op = consul_op_new(L, c);                      /* 5 */
    op->m.rq.method = "GET";
    op->answer = answer;
    consul_op_path(L, op, "/v1/kv/");
    consul_op_path_arg(L, op, 2, 1);
    if (flag != NULL)
        consul_op_query(L, op, flag, NULL, 0);
    consul_op_opts(L, 3, op, 0);
    return consul_op_call(L, c, op, 5);
}

/* c.kv:get(key[, opts]) --> value | nil (absent), nil, meta */
static int kv_get(lua_State *L)
{
    return kv_read(L, "raw", CONSUL_ANS_RAW, 0);
}

/* c.kv:record(key[, opts]) --> { Key=, Value=, Flags=, ... } | nil */
static int kv_record(lua_State *L)
{
    return kv_read(L, NULL, CONSUL_ANS_RECORD, 0);
}

/* c.kv:list(prefix[, opts]) --> array of records ({} when nothing is there) */
static int kv_list(lua_State *L)
{
    return kv_read(L, "recurse", CONSUL_ANS_RECORDS, 1);
}

/* c.kv:keys(prefix[, opts]) --> array of key strings ({} when nothing is there) */
static int kv_keys(lua_State *L)
{
    return kv_read(L, "keys", CONSUL_ANS_KEYS, 1);
}

static int kv_next(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2)) + 1;
    lua_rawgeti(L, lua_upvalueindex(1), (int)i);                /* rec */
    if (lua_isnil(L, -1))
        return 0;
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    lua_getfield(L, -1, "Key");
    lua_getfield(L, -2, "Value");
    return 2;
}

void consul_kv_pairs_iter(lua_State *L)
{
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, kv_next, 2);
}

/* for key, value in c.kv:pairs(prefix[, opts]) do ... end: raises when the list fails (a
 * for loop has no place for nil, err) */
static int kv_pairs(lua_State *L)
{
    return kv_read(L, "recurse", CONSUL_ANS_PAIRS, 1);
}

/* c.kv:put(key, value[, opts]) --> true | false (opts: cas, flags, acquire, release) */
static int kv_put(lua_State *L)
{
    consul_client *c;
    consul_op *op;
    consul_checkargs(L, 4, "key, value and options expected");
    c = consul_group_client(L, 4);                 /* 5 */
    if (lua_type(L, 3) != LUA_TSTRING && !lua_isnil(L, 3))
        return consul_argerror(L, 3, lua_pushfstring(L, "string expected, got %s",
                                                     luaL_typename(L, 3)));
    if (!lua_isnil(L, 4))
        consul_checktype(L, 4, LUA_TTABLE);
    forbid(L, 4, "recurse", "kv:delete");
    op = consul_op_new(L, c);                      /* 6 */
    op->m.rq.method = "PUT";
    op->answer = CONSUL_ANS_BOOL;
    consul_op_path(L, op, "/v1/kv/");
    consul_op_path_arg(L, op, 2, 1);
    op->m.rq.content_type = "application/octet-stream";
    if (lua_isnil(L, 3)) {
        op->m.rq.body = "";
    } else {
        /* the Lua string's bytes go out as they are: no copy */
        op->m.rq.body = lua_tolstring(L, 3, &op->m.rq.body_len);
        consul_op_keep(L, op, 3);
    }
    consul_op_opts(L, 4, op, 0);
    return consul_op_call(L, c, op, 6);
}

/* c.kv:delete(key[, opts]) --> true | false (opts: recurse, cas) */
static int kv_delete(lua_State *L)
{
    consul_client *c;
    consul_op *op;
    consul_checkargs(L, 3, "key and options expected");
    c = consul_group_client(L, 3);                 /* 4 */
    if (!lua_isnil(L, 3))
        consul_checktype(L, 3, LUA_TTABLE);
    op = consul_op_new(L, c);                      /* 5 */
    op->m.rq.method = "DELETE";
    op->answer = CONSUL_ANS_BOOL;
    consul_op_path(L, op, "/v1/kv/");
    consul_op_path_arg(L, op, 2, 1);
    consul_op_opts(L, 3, op, 0);
    return consul_op_call(L, c, op, 5);
}

static const luaL_Reg kv_methods[] = {
    { "get", kv_get },
    { "record", kv_record },
    { "list", kv_list },
    { "keys", kv_keys },
    { "pairs", kv_pairs },
    { "put", kv_put },
    { "delete", kv_delete },
    { NULL, NULL }
};

void consul_kv_open(lua_State *L)
{
    consul_setfuncs(L, kv_methods, 0);
}
