/*
 * kv.c: the KV methods. The three KV routes of routes.c, shaped as a Lua user wants them:
 * get returns the value with its record in meta, record and list decode the base64 values,
 * keys lists names, pairs iterates, put and delete return Consul's true or false.
 */
#include "consul.h"

#include <string.h>

/* Raises when opts names an option that would change the answer's shape. */
static void forbid(lua_State *L, int idx, const char *name, const char *use)
{
    if (lua_type(L, idx) != LUA_TTABLE)
        return;
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1)) {
        lua_pushfstring(L, "option '%s' is not for this method (use %s)", name, use);
        luaL_argerror(L, idx, lua_tostring(L, -1));
    }
    lua_pop(L, 1);
}

/* GET /v1/kv/<key> with opts at 3 and an extra flag; leaves meta on top, or returns the
 * number of values of an absent or failed answer already pushed (3). */
static int kv_read(lua_State *L, consul_client *c, const char *flag, consul_resp *rs)
{
    consul_call call;
    int n;
    if (lua_gettop(L) > 3)
        return luaL_error(L, "too many arguments (key and options expected)");
    lua_settop(L, 3);
    if (!lua_isnil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    forbid(L, 3, "recurse", "kv:list");
    forbid(L, 3, "keys", "kv:keys");
    memset(&call, 0, sizeof call);
    call.method = "GET";
    call.answer = CONSUL_ANS_NONE;
    call.json_flags = CONSUL_JSON_B64VALUE;
    consul_path_begin(L, c, "/v1/kv/");
    consul_path_add(L, c, 2, 1);
    consul_opts(L, 3, c, &call, 0);
    if (flag != NULL)
        consul_query_add(L, c, flag, NULL, 0);
    n = consul_client_call(L, c, &call, rs);
    if (n == 0 && !cJSON_IsArray(c->doc.root)) {
        lua_pop(L, 1);
        rs->code = CONSUL_EDECODE;
        return consul_push_failure(L, c, &call, rs);
    }
    return n;
}

/* value, nil, meta from the pushed value below meta */
static int result3(lua_State *L)
{
    lua_insert(L, -2);  /* value, meta */
    lua_pushnil(L);
    lua_insert(L, -2);  /* value, nil, meta */
    return 3;
}

static void meta_u64(lua_State *L, consul_json *d, cJSON *rec, const char *field,
                     const char *name)
{
    uint64_t v;
    if (consul_json_u64(d, cJSON_GetObjectItemCaseSensitive(rec, field), &v) == 0) {
        consul_push_u64(L, v);
        lua_setfield(L, -2, name);
    }
}

/* c.kv:get(key[, opts]) --> value | nil, err, meta (flags, session, *_index in meta) */
static int kv_get(lua_State *L)
{
    consul_client *c = consul_group_client(L);
    consul_resp rs;
    cJSON *rec, *v, *s;
    int n = kv_read(L, c, NULL, &rs);
    if (n != 0)
        return n;
    rec = c->doc.root->child;                                   /* meta */
    if (rec == NULL) {
        lua_pushnil(L);
        return result3(L);
    }
    meta_u64(L, &c->doc, rec, "Flags", "flags");
    meta_u64(L, &c->doc, rec, "LockIndex", "lock_index");
    meta_u64(L, &c->doc, rec, "CreateIndex", "create_index");
    meta_u64(L, &c->doc, rec, "ModifyIndex", "modify_index");
    s = cJSON_GetObjectItemCaseSensitive(rec, "Session");
    if (cJSON_IsString(s)) {
        lua_pushstring(L, s->valuestring);
        lua_setfield(L, -2, "session");
    }
    v = cJSON_GetObjectItemCaseSensitive(rec, "Value");
    if (cJSON_IsString(v)) {
        consul_json_push_b64(L, v);                             /* meta, value */
    } else {
        lua_pushliteral(L, "");  /* an empty value is null in Consul's JSON */
    }
    return result3(L);
}

/* c.kv:record(key[, opts]) --> { Key=, Value=, Flags=, ... } | nil */
static int kv_record(lua_State *L)
{
    consul_client *c = consul_group_client(L);
    consul_resp rs;
    int n = kv_read(L, c, NULL, &rs);
    if (n != 0)
        return n;
    if (c->doc.root->child == NULL)
        lua_pushnil(L);
    else
        consul_json_push(L, &c->doc, c->doc.root->child, CONSUL_JSON_B64VALUE);
    return result3(L);
}

/* The answer of list and keys: an absent prefix is an empty array, not nil. */
static int kv_array(lua_State *L, const char *flag)
{
    consul_client *c = consul_group_client(L);
    consul_resp rs;
    int n;
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 3);
        lua_pushliteral(L, "");
        lua_replace(L, 2);  /* the whole store */
    }
    if (strcmp(flag, "recurse") == 0)
        forbid(L, 3, "separator", "kv:keys");
    n = kv_read(L, c, flag, &rs);
    if (n == 3 && lua_isnil(L, -3) && lua_isnil(L, -2)) {
        lua_newtable(L);
        lua_replace(L, -4);
        return 3;
    }
    if (n != 0)
        return n;
    consul_json_push(L, &c->doc, c->doc.root, CONSUL_JSON_B64VALUE);
    return result3(L);
}

/* c.kv:list(prefix[, opts]) --> array of records */
static int kv_list(lua_State *L)
{
    return kv_array(L, "recurse");
}

/* c.kv:keys(prefix[, opts]) --> array of key strings */
static int kv_keys(lua_State *L)
{
    return kv_array(L, "keys");
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

/* for key, value in c.kv:pairs(prefix[, opts]) do ... end: raises when the list fails */
static int kv_pairs(lua_State *L)
{
    if (kv_list(L) != 3 || lua_isnil(L, -3))
        return luaL_error(L, "%s", lua_tostring(L, -2));
    lua_pop(L, 2);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, kv_next, 2);
    return 1;
}

/* c.kv:put(key, value[, opts]) --> true | false (opts: cas, flags, acquire, release) */
static int kv_put(lua_State *L)
{
    consul_client *c = consul_group_client(L);
    consul_call call;
    consul_resp rs;
    if (lua_gettop(L) > 4)
        return luaL_error(L, "too many arguments (key, value and options expected)");
    lua_settop(L, 4);
    memset(&call, 0, sizeof call);
    call.method = "PUT";
    consul_path_begin(L, c, "/v1/kv/");
    consul_path_add(L, c, 2, 1);
    if (lua_type(L, 3) == LUA_TSTRING)
        call.body = lua_tolstring(L, 3, &call.body_len);
    else if (!lua_isnil(L, 3))
        return luaL_argerror(L, 3, lua_pushfstring(L, "string expected, got %s",
                                                   luaL_typename(L, 3)));
    else
        call.body = "";
    if (!lua_isnil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    forbid(L, 4, "recurse", "kv:delete");
    consul_opts(L, 4, c, &call, 0);
    return consul_client_call(L, c, &call, &rs);
}

/* c.kv:delete(key[, opts]) --> true | false (opts: recurse, cas) */
static int kv_delete(lua_State *L)
{
    consul_client *c = consul_group_client(L);
    consul_call call;
    consul_resp rs;
    if (lua_gettop(L) > 3)
        return luaL_error(L, "too many arguments (key and options expected)");
    lua_settop(L, 3);
    memset(&call, 0, sizeof call);
    call.method = "DELETE";
    consul_path_begin(L, c, "/v1/kv/");
    consul_path_add(L, c, 2, 1);
    if (!lua_isnil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    consul_opts(L, 3, c, &call, 0);
    return consul_client_call(L, c, &call, &rs);
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
