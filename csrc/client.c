/*
 * client.c: the consul.Client userdata. consul.new() and its options and environment
 * variables, the per-call options every method takes, and consul_client_call: the one path
 * by which every method sends its request and turns the answer into result, err, meta.
 *
 * The client owns all scratch memory a call needs (path, query, body, parsed answer, extra
 * headers), so an error raised while Lua values are pushed leaks nothing: the next call or
 * close() frees it.
 */
#include "consul.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the userdata ------------------------------------------------------- */

static void client_release(consul_client *c)
{
    consul_http_release(&c->http);
    consul_buf_free(&c->path);
    consul_buf_free(&c->query);
    consul_buf_free(&c->enc);
    consul_json_free(&c->doc);
    if (c->headers != NULL) {
        curl_slist_free_all(c->headers);
        c->headers = NULL;
    }
    if (c->conf != NULL) {
        consul_conf_release(c->conf);
        c->conf = NULL;
    }
    c->closed = 1;
}

consul_client *consul_checkclient(lua_State *L, int idx)
{
    consul_client *c = luaL_checkudata(L, idx, CONSUL_CLIENT_MT);
    if (c->closed)
        luaL_error(L, "consul client is closed");  /* does not return */
    return c;
}

consul_client *consul_group_client(lua_State *L)
{
    consul_client *c;
    luaL_checktype(L, 1, LUA_TTABLE);  /* c.kv:get(...), not c.kv.get(...) */
    lua_rawgeti(L, 1, 1);
    c = consul_testudata(L, -1, CONSUL_CLIENT_MT);
    if (c == NULL)
        luaL_argerror(L, 1, "expected a consul group object (call it with ':')");
    lua_pop(L, 1);  /* the group object keeps the client alive */
    if (c->closed)
        luaL_error(L, "consul client is closed");
    return c;
}

static int client_gc(lua_State *L)
{
    consul_client *c = luaL_checkudata(L, 1, CONSUL_CLIENT_MT);
    client_release(c);
    return 0;
}

static int client_tostring(lua_State *L)
{
    consul_client *c = luaL_checkudata(L, 1, CONSUL_CLIENT_MT);
    if (c->closed)
        lua_pushliteral(L, "consul.Client (closed)");
    else
        lua_pushfstring(L, "consul.Client (%s)",
                        c->conf->unix_path != NULL ? c->conf->hostport : c->conf->base_url);
    return 1;
}

static int client_stats(lua_State *L)
{
    consul_client *c = consul_checkclient(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)c->requests);
    lua_setfield(L, -2, "requests");
    lua_pushinteger(L, (lua_Integer)c->connects);
    lua_setfield(L, -2, "connects");
    return 1;
}

/* ---- consul.new ---------------------------------------------------------- */

void consul_set_str(lua_State *L, char **field, const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p == NULL)
        luaL_error(L, "not enough memory");
    memcpy(p, s, n);
    p[n] = '\0';
    free(*field);
    *field = p;
}

/* The option's string, else the environment variable's, else NULL. */
static const char *opt_str(lua_State *L, const char *name, const char *env, size_t *len)
{
    const char *v;
    lua_getfield(L, 1, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad option '%s' to 'new' (string expected, got %s)", name,
                       luaL_typename(L, -1));
        v = lua_tolstring(L, -1, len);
        lua_pop(L, 1);  /* still referenced by the options table */
        return v;
    }
    lua_pop(L, 1);
    v = env != NULL ? getenv(env) : NULL;
    if (v != NULL && v[0] == '\0')
        v = NULL;
    if (v != NULL)
        *len = strlen(v);
    return v;
}

static int env_false(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && (strcmp(v, "0") == 0 || strcasecmp(v, "false") == 0 ||
                         strcasecmp(v, "f") == 0 || strcasecmp(v, "no") == 0);
}

static int env_true(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 ||
                         strcasecmp(v, "t") == 0 || strcasecmp(v, "yes") == 0);
}

static void check_token(lua_State *L, const char *t, size_t n, const char *from)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f)
            luaL_error(L, "bad token from %s: control characters are not allowed", from);
}

static void read_token_file(lua_State *L, consul_conf *cf, const char *path)
{
    char buf[4096];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        luaL_error(L, "cannot read token file '%s'", path);
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        n--;
    buf[n] = '\0';
    {
        const char *t = buf;
        while (*t && isspace((unsigned char)*t))
            t++;
        n = strlen(t);
        check_token(L, t, n, "token file");
        consul_set_str(L, &cf->token, t, n);
    }
    memset(buf, 0, sizeof buf);
}

static const char *const new_options[] = {
    "addr", "host", "port", "scheme", "token", "token_file", "dc", "datacenter", "timeout",
    "verify", "ca_file", "ca_path", "cert_file", "key_file", "tls_server_name", "consistency",
    NULL
};

static void check_option_names(lua_State *L)
{
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
        int i, known = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (i = 0; new_options[i] != NULL && !known; i++)
                known = strcmp(new_options[i], lua_tostring(L, -1)) == 0;
        if (!known) {
            if (lua_type(L, -1) == LUA_TSTRING)
                luaL_error(L, "bad argument #1 to 'new' (unknown option '%s')",
                           lua_tostring(L, -1));
            luaL_error(L, "bad argument #1 to 'new' (option names are strings)");
        }
    }
}

/* Splits "host:port" / "[v6]:port" / "host" into the pieces the URL and CONNECT_TO need. */
static void parse_addr(lua_State *L, consul_conf *cf, const char *addr, int https,
                       const char *server_name)
{
    const char *host = addr, *colon, *port = NULL;
    size_t hostlen;
    luaL_Buffer b;

    if (strncmp(addr, "unix://", 7) == 0) {
        if (addr[7] == '\0')
            luaL_error(L, "bad option 'addr' to 'new' (empty unix socket path)");
        consul_set_str(L, &cf->unix_path, addr + 7, strlen(addr + 7));
        consul_set_str(L, &cf->hostport, addr, strlen(addr));
        consul_set_str(L, &cf->base_url, "http://localhost", 16);
        return;
    }
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (close == NULL)
            luaL_error(L, "bad option 'addr' to 'new' (unterminated '[')");
        colon = close[1] == ':' ? close + 1 : NULL;
        if (close[1] != '\0' && close[1] != ':')
            luaL_error(L, "bad option 'addr' to 'new' ('%s')", addr);
    } else {
        colon = strrchr(host, ':');
    }
    if (colon != NULL) {
        port = colon + 1;
        hostlen = (size_t)(colon - host);
        if (*port == '\0' || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) ||
            atol(port) > 65535 || atol(port) == 0)
            luaL_error(L, "bad option 'addr' to 'new' (bad port in '%s')", addr);
    } else {
        port = "8500";
        hostlen = strlen(host);
    }
    if (hostlen == 0)
        luaL_error(L, "bad option 'addr' to 'new' (no host in '%s')", addr);
    if (strpbrk(addr, "/?#@ \t\r\n") != NULL)
        luaL_error(L, "bad option 'addr' to 'new' ('%s' is not host:port)", addr);

    luaL_buffinit(L, &b);
    luaL_addlstring(&b, host, hostlen);
    luaL_addchar(&b, ':');
    luaL_addstring(&b, port);
    luaL_pushresult(&b);
    consul_set_str(L, &cf->hostport, lua_tostring(L, -1), consul_rawlen(L, -1));
    lua_pop(L, 1);

    luaL_buffinit(L, &b);
    luaL_addstring(&b, https ? "https://" : "http://");
    if (server_name != NULL)
        luaL_addstring(&b, server_name);
    else
        luaL_addlstring(&b, host, hostlen);
    luaL_addchar(&b, ':');
    luaL_addstring(&b, port);
    luaL_pushresult(&b);
    consul_set_str(L, &cf->base_url, lua_tostring(L, -1), consul_rawlen(L, -1));
    lua_pop(L, 1);

    if (server_name != NULL) {
        /* Connect to the address given, but verify (and send SNI for) server_name. */
        lua_pushfstring(L, "%s:%s:", server_name, port);
        lua_pushlstring(L, host, hostlen);
        lua_pushfstring(L, ":%s", port);
        lua_concat(L, 3);
        consul_set_str(L, &cf->connect_to, lua_tostring(L, -1), consul_rawlen(L, -1));
        lua_pop(L, 1);
    }
}

static void configure(lua_State *L, consul_conf *cf)
{
    const char *s, *addr, *server_name;
    size_t n;
    int https = 0, from_env, explicit_scheme;

    check_option_names(L);

    /* Where: addr, else host/port/scheme, else CONSUL_HTTP_ADDR, else the local agent. */
    lua_getfield(L, 1, "addr");
    lua_getfield(L, 1, "host");
    lua_getfield(L, 1, "port");
    if (!lua_isnil(L, -3) && (!lua_isnil(L, -2) || !lua_isnil(L, -1)))
        luaL_error(L, "bad argument #1 to 'new' (give either addr or host/port, not both)");
    lua_pop(L, 3);
    s = opt_str(L, "scheme", NULL, &n);
    if (s != NULL && strcmp(s, "http") != 0 && strcmp(s, "https") != 0)
        luaL_error(L, "bad option 'scheme' to 'new' (\"http\" or \"https\" expected)");
    https = s != NULL ? strcmp(s, "https") == 0 : env_true("CONSUL_HTTP_SSL");

    lua_getfield(L, 1, "host");
    if (!lua_isnil(L, -1)) {
        const char *host;
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad option 'host' to 'new' (string expected, got %s)",
                       luaL_typename(L, -1));
        host = lua_tostring(L, -1);
        lua_Integer port;
        lua_getfield(L, 1, "port");
        if (!lua_isnil(L, -1) && !consul_isinteger(L, -1) && lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad option 'port' to 'new' (number expected)");
        port = lua_isnil(L, -1) ? 8500 : lua_tointeger(L, -1);
        if (port <= 0 || port > 65535)
            luaL_error(L, "bad option 'port' to 'new' (1..65535 expected)");
        lua_pop(L, 1);
        if (strchr(host, ':') != NULL && host[0] != '[')
            lua_pushfstring(L, "[%s]:%d", host, (int)port);
        else
            lua_pushfstring(L, "%s:%d", host, (int)port);
        lua_setfield(L, 1, "addr");  /* the caller's table: it is ours for this call only */
    } else {
        lua_getfield(L, 1, "port");
        if (!lua_isnil(L, -1))
            luaL_error(L, "bad argument #1 to 'new' (port needs host)");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "addr");
    from_env = lua_isnil(L, -1);
    lua_pop(L, 1);
    addr = opt_str(L, "addr", "CONSUL_HTTP_ADDR", &n);
    if (addr == NULL)
        addr = "127.0.0.1:8500";
    lua_getfield(L, 1, "scheme");
    explicit_scheme = !lua_isnil(L, -1);
    lua_pop(L, 1);
    /* The address's own scheme, unless it came from the environment and the caller named
     * one: an explicit option always wins over the environment. */
    if (strncmp(addr, "https://", 8) == 0) {
        if (!(from_env && explicit_scheme))
            https = 1;
        addr += 8;
    } else if (strncmp(addr, "http://", 7) == 0) {
        if (!(from_env && explicit_scheme))
            https = 0;
        addr += 7;
    }
    lua_pushstring(L, addr);
    n = strlen(addr);
    while (n > 0 && addr[n - 1] == '/' && strncmp(addr, "unix://", 7) != 0)
        n--;
    lua_pushlstring(L, addr, n);
    addr = lua_tostring(L, -1);  /* kept on the stack until configure returns */
    server_name = opt_str(L, "tls_server_name", "CONSUL_TLS_SERVER_NAME", &n);
    if (server_name != NULL && strpbrk(server_name, ":/[] ") != NULL)
        luaL_error(L, "bad option 'tls_server_name' to 'new' (a host name expected)");
    parse_addr(L, cf, addr, https, https ? server_name : NULL);

    /* Who: token, token_file, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE. */
    lua_getfield(L, 1, "token");
    lua_getfield(L, 1, "token_file");
    if (!lua_isnil(L, -2)) {
        s = opt_str(L, "token", NULL, &n);
        check_token(L, s, n, "option 'token'");
        consul_set_str(L, &cf->token, s, n);
    } else if (!lua_isnil(L, -1)) {
        read_token_file(L, cf, opt_str(L, "token_file", NULL, &n));
    } else if ((s = getenv("CONSUL_HTTP_TOKEN")) != NULL && s[0] != '\0') {
        check_token(L, s, strlen(s), "CONSUL_HTTP_TOKEN");
        consul_set_str(L, &cf->token, s, strlen(s));
    } else if ((s = getenv("CONSUL_HTTP_TOKEN_FILE")) != NULL && s[0] != '\0') {
        read_token_file(L, cf, s);
    }
    lua_pop(L, 2);

    lua_getfield(L, 1, "dc");
    lua_getfield(L, 1, "datacenter");
    if (!lua_isnil(L, -2) && !lua_isnil(L, -1))
        luaL_error(L, "bad argument #1 to 'new' (dc and datacenter are the same option)");
    lua_pop(L, 2);
    if ((s = opt_str(L, "dc", NULL, &n)) != NULL || (s = opt_str(L, "datacenter", NULL, &n)) != NULL)
        consul_set_str(L, &cf->dc, s, n);

    lua_getfield(L, 1, "timeout");
    if (!lua_isnil(L, -1)) {
        lua_Number t;
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "bad option 'timeout' to 'new' (seconds expected)");
        t = lua_tonumber(L, -1);
        if (!(t > 0 && t <= 86400))
            luaL_error(L, "bad option 'timeout' to 'new' (0 < seconds <= 86400 expected)");
        cf->timeout_ms = (long)(t * 1000 + 0.5);
        if (cf->timeout_ms < 1)
            cf->timeout_ms = 1;
    }
    lua_pop(L, 1);

    lua_getfield(L, 1, "verify");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TBOOLEAN)
            luaL_error(L, "bad option 'verify' to 'new' (boolean expected)");
        cf->verify = lua_toboolean(L, -1);
    } else {
        cf->verify = !env_false("CONSUL_HTTP_SSL_VERIFY");
    }
    lua_pop(L, 1);

    if ((s = opt_str(L, "ca_file", "CONSUL_CACERT", &n)) != NULL)
        consul_set_str(L, &cf->ca_file, s, n);
    if ((s = opt_str(L, "ca_path", "CONSUL_CAPATH", &n)) != NULL)
        consul_set_str(L, &cf->ca_path, s, n);
    if ((s = opt_str(L, "cert_file", "CONSUL_CLIENT_CERT", &n)) != NULL)
        consul_set_str(L, &cf->cert_file, s, n);
    if ((s = opt_str(L, "key_file", "CONSUL_CLIENT_KEY", &n)) != NULL)
        consul_set_str(L, &cf->key_file, s, n);

    if ((s = opt_str(L, "consistency", NULL, &n)) != NULL) {
        if (strcmp(s, "default") == 0)
            cf->consistency = 0;
        else if (strcmp(s, "consistent") == 0)
            cf->consistency = 1;
        else if (strcmp(s, "stale") == 0)
            cf->consistency = 2;
        else
            luaL_error(L, "bad option 'consistency' to 'new' (\"default\", \"consistent\" or "
                          "\"stale\" expected)");
    }
    lua_pop(L, 2);  /* the two addr strings */
}

static int consul_new(lua_State *L)
{
    consul_client *c;
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
        /* configure() may write the combined host/port into it: work on a copy. */
        lua_newtable(L);
        lua_pushnil(L);
        while (lua_next(L, 1) != 0) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_settable(L, 2);
        }
        lua_replace(L, 1);
    }
    /* The userdata exists (and owns the conf) before anything can raise. */
    c = consul_newuserdata(L, sizeof *c);          /* opts, ud */
    memset(c, 0, sizeof *c);
    c->closed = 1;
    luaL_getmetatable(L, CONSUL_CLIENT_MT);
    lua_setmetatable(L, -2);
    lua_newtable(L);                               /* opts, ud, groups */
    consul_setuservalue(L, -2);
    c->conf = consul_conf_new();
    if (c->conf == NULL)
        return luaL_error(L, "not enough memory");
    configure(L, c->conf);
    if (consul_http_init(&c->http, c->conf) != 0)
        return luaL_error(L, "cannot create a libcurl handle");
    c->closed = 0;
    return 1;
}

/* ---- per-call options ------------------------------------------------------ */

enum qkind { Q_STR, Q_UINT, Q_BOOL, Q_BOOLV, Q_DUR, Q_TOKEN, Q_META, Q_LIST };

typedef struct qopt {
    const char *lua;   /* the option's name in Lua */
    const char *wire;  /* the query parameter */
    int kind;
} qopt;

/* Every query parameter of the Consul 1.8 HTTP API. */
static const qopt qopts[] = {
    { "dc", "dc", Q_STR },
    { "index", "index", Q_UINT },
    { "wait", "wait", Q_DUR },
    { "consistent", "consistent", Q_BOOL },
    { "stale", "stale", Q_BOOL },
    { "cached", "cached", Q_BOOL },
    { "token", NULL, Q_TOKEN },
    { "filter", "filter", Q_STR },
    { "near", "near", Q_STR },
    { "node_meta", "node-meta", Q_META },
    { "tag", "tag", Q_LIST },
    { "passing", "passing", Q_BOOL },
    { "recurse", "recurse", Q_BOOL },
    { "keys", "keys", Q_BOOL },
    { "separator", "separator", Q_STR },
    { "cas", "cas", Q_UINT },
    { "flags", "flags", Q_UINT },
    { "acquire", "acquire", Q_STR },
    { "release", "release", Q_STR },
    { "ns", "ns", Q_STR },
    { "replace_existing_checks", "replace-existing-checks", Q_BOOL },
    { "enable", "enable", Q_BOOLV },
    { "reason", "reason", Q_STR },
    { "note", "note", Q_STR },
    { "loglevel", "loglevel", Q_STR },
    { "logjson", "logjson", Q_BOOL },
    { "wan", "wan", Q_BOOL },
    { "segment", "segment", Q_STR },
    { "format", "format", Q_STR },
    { "prune", "prune", Q_BOOL },
    { "policy", "policy", Q_STR },
    { "role", "role", Q_STR },
    { "authmethod", "authmethod", Q_STR },
    { "name", "name", Q_LIST },
    { "by", "by", Q_STR },
    { "source", "source", Q_STR },
    { "destination", "destination", Q_STR },
    { "node", "node", Q_STR },
    { "service", "service", Q_STR },
    { "id", "id", Q_STR },
    { "address", "address", Q_STR },
    { "relay_factor", "relay-factor", Q_UINT },
    { "local_only", "local-only", Q_BOOL },
    { "limit", "limit", Q_UINT },
    { "connect", "connect", Q_BOOL },
    { "compile_dc", "compile-dc", Q_STR },
    { NULL, NULL, 0 }
};

void consul_query_add(lua_State *L, consul_client *c, const char *name, const char *v, size_t n)
{
    consul_buf *q = &c->query;
    if ((q->len > 0 && consul_buf_add(q, "&", 1) != 0) || consul_buf_adds(q, name) != 0 ||
        (v != NULL && (consul_buf_add(q, "=", 1) != 0 ||
                       consul_buf_add_escaped(q, v, n, 0) != 0)))
        luaL_error(L, "not enough memory");
}

static const char *q_string(lua_State *L, int arg, int vi, const char *name, size_t *n)
{
    if (lua_type(L, vi) != LUA_TSTRING && lua_type(L, vi) != LUA_TNUMBER) {
        lua_pushfstring(L, "option '%s' must be a string", name);
        luaL_argerror(L, arg, lua_tostring(L, -1));
    }
    return lua_tolstring(L, vi, n);
}

static int64_t q_wait(lua_State *L, int arg, int vi, consul_client *c)
{
    int64_t ms;
    char num[32];
    if (lua_type(L, vi) == LUA_TNUMBER) {
        lua_Number s = lua_tonumber(L, vi);
        if (!(s >= 0 && s <= 86400))
            luaL_argerror(L, arg, "option 'wait' must be 0..86400 seconds or a duration");
        ms = (int64_t)(s * 1000 + 0.5);
        snprintf(num, sizeof num, "%lldms", (long long)ms);
        consul_query_add(L, c, "wait", num, strlen(num));
        return ms;
    }
    if (lua_type(L, vi) == LUA_TSTRING && (ms = consul_duration_ms(lua_tostring(L, vi))) >= 0) {
        consul_query_add(L, c, "wait", lua_tostring(L, vi), consul_rawlen(L, vi));
        return ms;
    }
    return luaL_argerror(L, arg, "option 'wait' must be seconds or a duration like \"30s\"");
}

static void q_value(lua_State *L, int arg, int vi, const qopt *o, consul_client *c,
                    consul_call *call)
{
    size_t n;
    const char *s;
    char num[32];
    uint64_t u;
    switch (o->kind) {
    case Q_STR:
        s = q_string(L, arg, vi, o->lua, &n);
        consul_query_add(L, c, o->wire, s, n);
        break;
    case Q_UINT:
        if (consul_to_u64(L, vi, &u) != 0) {
            lua_pushfstring(L, "option '%s' must be an integer", o->lua);
            luaL_argerror(L, arg, lua_tostring(L, -1));
        }
        snprintf(num, sizeof num, "%llu", (unsigned long long)u);
        consul_query_add(L, c, o->wire, num, strlen(num));
        break;
    case Q_BOOL:
    case Q_BOOLV:
        if (lua_type(L, vi) != LUA_TBOOLEAN) {
            lua_pushfstring(L, "option '%s' must be a boolean", o->lua);
            luaL_argerror(L, arg, lua_tostring(L, -1));
        }
        if (o->kind == Q_BOOLV)
            consul_query_add(L, c, o->wire, lua_toboolean(L, vi) ? "true" : "false",
                  lua_toboolean(L, vi) ? 4 : 5);
        else if (lua_toboolean(L, vi))
            consul_query_add(L, c, o->wire, "true", 4);  /* 1.8 ignores a bare ?wan, ?connect */
        break;
    case Q_DUR:
        call->wait_ms = (long)q_wait(L, arg, vi, c);
        break;
    case Q_TOKEN:
        if (lua_type(L, vi) != LUA_TSTRING)
            luaL_argerror(L, arg, "option 'token' must be a string");
        s = lua_tolstring(L, vi, &n);
        if (strlen(s) != n || strpbrk(s, "\r\n") != NULL)
            luaL_argerror(L, arg, "option 'token' has control characters");
        call->token = s;  /* the options table keeps it alive for the call */
        break;
    case Q_META:
    case Q_LIST:
        if (lua_type(L, vi) == LUA_TTABLE) {
            lua_pushnil(L);
            while (lua_next(L, vi) != 0) {
                if (o->kind == Q_META) {
                    const char *k;
                    if (lua_type(L, -2) != LUA_TSTRING)
                        luaL_argerror(L, arg, "option 'node_meta' keys must be strings");
                    k = lua_tostring(L, -2);
                    s = q_string(L, arg, lua_gettop(L), o->lua, &n);
                    lua_pushfstring(L, "%s:%s", k, s);
                    consul_query_add(L, c, o->wire, lua_tostring(L, -1), consul_rawlen(L, -1));
                    lua_pop(L, 1);
                } else {
                    s = q_string(L, arg, lua_gettop(L), o->lua, &n);
                    consul_query_add(L, c, o->wire, s, n);
                }
                lua_pop(L, 1);
            }
        } else {
            s = q_string(L, arg, vi, o->lua, &n);
            consul_query_add(L, c, o->wire, s, n);
        }
        break;
    }
}

void consul_opts(lua_State *L, int idx, consul_client *c, consul_call *call, int for_request)
{
    int saw_dc = 0, saw_consistency = 0, saw_index = 0;
    consul_buf_reset(&c->query);
    if (idx != 0 && !lua_isnoneornil(L, idx)) {
        idx = consul_absindex(L, idx);
        luaL_checktype(L, idx, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            const qopt *o = qopts;
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            if (k == NULL)
                luaL_argerror(L, idx, "option names must be strings");
            if (for_request && (strcmp(k, "query") == 0 || strcmp(k, "body") == 0 ||
                                strcmp(k, "headers") == 0)) {
                lua_pop(L, 1);
                continue;
            }
            while (o->lua != NULL && strcmp(o->lua, k) != 0)
                o++;
            if (o->lua == NULL) {
                lua_pushfstring(L, "unknown option '%s'", k);
                luaL_argerror(L, idx, lua_tostring(L, -1));
            }
            saw_dc |= o->kind == Q_STR && strcmp(k, "dc") == 0;
            saw_consistency |= strcmp(k, "consistent") == 0 || strcmp(k, "stale") == 0;
            saw_index |= strcmp(k, "index") == 0;
            q_value(L, idx, lua_gettop(L), o, c, call);
            lua_pop(L, 1);
        }
    }
    /* A blocking query without a wait waits Consul's default 5 minutes: so may we. */
    if (saw_index && call->wait_ms == 0)
        call->wait_ms = CONSUL_MAX_WAIT_MS;
    if (!saw_dc && c->conf->dc != NULL)
        consul_query_add(L, c, "dc", c->conf->dc, strlen(c->conf->dc));
    if (!saw_consistency && c->conf->consistency != 0 && strcmp(call->method, "GET") == 0)
        consul_query_add(L, c, c->conf->consistency == 1 ? "consistent" : "stale", NULL, 0);
}

void consul_path_begin(lua_State *L, consul_client *c, const char *prefix)
{
    consul_buf_reset(&c->path);
    if (consul_buf_adds(&c->path, prefix) != 0)
        luaL_error(L, "not enough memory");
}

void consul_path_add(lua_State *L, consul_client *c, int arg, int keep_slash)
{
    size_t n;
    const char *s;
    if (lua_type(L, arg) != LUA_TSTRING)
        luaL_argerror(L, arg, lua_pushfstring(L, "string expected, got %s",
                                              luaL_typename(L, arg)));
    s = lua_tolstring(L, arg, &n);
    if (keep_slash)
        while (n > 0 && *s == '/')
            s++, n--;  /* "/a" is "a", as Consul's Go client has it */
    else if (n == 0)
        luaL_argerror(L, arg, "must not be empty");
    if (consul_buf_add_escaped(&c->path, s, n, keep_slash) != 0)
        luaL_error(L, "not enough memory");
}

/* ---- the call ------------------------------------------------------------- */

void consul_push_meta(lua_State *L, const consul_resp *rs)
{
    const char *code = consul_code_name(rs->code);
    lua_createtable(L, 0, 6);
    if (rs->status > 0) {
        lua_pushinteger(L, (lua_Integer)rs->status);
        lua_setfield(L, -2, "status");
    }
    if (rs->has_index) {
        consul_push_index(L, rs->index);
        lua_setfield(L, -2, "index");
    }
    if (rs->known_leader >= 0) {
        lua_pushboolean(L, rs->known_leader);
        lua_setfield(L, -2, "known_leader");
    }
    if (rs->last_contact >= 0) {
        lua_pushinteger(L, (lua_Integer)rs->last_contact);
        lua_setfield(L, -2, "last_contact");
    }
    if (code != NULL) {
        lua_pushstring(L, code);
        lua_setfield(L, -2, "code");
    }
}

/* nil, "consul: METHOD /path: why", meta */
int consul_push_failure(lua_State *L, consul_client *c, const consul_call *call,
                        const consul_resp *rs)
{
    char msg[1024];
    consul_format_failure(msg, sizeof msg, call->method, c->path.data, rs);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    consul_push_meta(L, rs);
    return 3;
}

int consul_client_call(lua_State *L, consul_client *c, consul_call *call, consul_resp *rs)
{
    consul_req rq;
    int absent_ok, status_data;

    memset(&rq, 0, sizeof rq);
    rq.method = call->method;
    rq.path = c->path.data;
    rq.query = c->query.data;
    rq.token = call->token;
    rq.body = call->body;
    rq.body_len = call->body_len;
    rq.content_type = call->content_type;
    rq.headers = call->headers;
    rq.wait_ms = call->wait_ms;
    rq.sink = call->sink;
    rq.sink_ud = call->sink_ud;

    consul_json_free(&c->doc);
    consul_http_perform(&c->http, &rq, rs);
    c->requests++;
    c->connects += rs->connects;

    absent_ok = rs->status == 404 &&
                (strcmp(call->method, "GET") == 0 || (call->flags & CONSUL_CALL_ABSENT_OK));
    status_data = (call->flags & CONSUL_CALL_STATUS_DATA) &&
                  (rs->status == 429 || rs->status == 503);
    if (rs->code == CONSUL_EHTTP && (absent_ok || status_data))
        rs->code = CONSUL_OK;
    if (status_data && !rs->json && rs->body_len > 0 && (rs->body[0] == '{' || rs->body[0] == '['))
        rs->json = 1;  /* Consul sends those answers without their Content-Type */
    if (rs->code != CONSUL_OK)
        return consul_push_failure(L, c, call, rs);
    if (absent_ok) {
        lua_pushnil(L);
        lua_pushnil(L);
        consul_push_meta(L, rs);
        return 3;
    }
    if (rs->json && call->sink == NULL && call->answer != CONSUL_ANS_TEXT &&
        consul_json_parse(&c->doc, rs->body, rs->body_len) != 0) {
        rs->code = CONSUL_EDECODE;
        return consul_push_failure(L, c, call, rs);
    }
    if (call->answer == CONSUL_ANS_NONE) {
        consul_push_meta(L, rs);
        return 0;
    }

    if (call->sink != NULL || (rs->body_len == 0 && call->answer != CONSUL_ANS_TEXT)) {
        lua_pushboolean(L, 1);
    } else if (!rs->json || call->answer == CONSUL_ANS_TEXT) {
        lua_pushlstring(L, rs->body, rs->body_len);
    } else if (cJSON_IsNull(c->doc.root)) {
        lua_pushnil(L);  /* a null answer: absent */
    } else if (call->answer == CONSUL_ANS_ID) {
        cJSON *id = cJSON_GetObjectItemCaseSensitive(c->doc.root, "ID");
        if (!cJSON_IsString(id)) {
            rs->code = CONSUL_EDECODE;
            return consul_push_failure(L, c, call, rs);
        }
        lua_pushstring(L, id->valuestring);
    } else if (call->answer == CONSUL_ANS_FIRST) {
        cJSON *first = cJSON_IsArray(c->doc.root) ? c->doc.root->child : NULL;
        if (first == NULL)
            lua_pushnil(L);
        else
            consul_json_push(L, &c->doc, first, call->json_flags);
    } else {
        consul_json_push(L, &c->doc, c->doc.root, call->json_flags);
    }
    lua_pushnil(L);
    consul_push_meta(L, rs);
    return 3;
}

/* ---- c:request(method, path[, opts]) ----------------------------------------- */

static void build_headers(lua_State *L, consul_client *c, int idx)
{
    if (c->headers != NULL) {
        curl_slist_free_all(c->headers);
        c->headers = NULL;
    }
    if (lua_isnil(L, idx))
        return;
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_argerror(L, 4, "option 'headers' must be a table");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        struct curl_slist *s;
        const char *k, *v;
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, 4, "option 'headers' must map strings to strings");
        k = lua_tostring(L, -2);
        v = lua_tostring(L, -1);
        if (strpbrk(k, ":\r\n") != NULL || strpbrk(v, "\r\n") != NULL || k[0] == '\0')
            luaL_argerror(L, 4, "option 'headers' has a bad header name or value");
        lua_pushfstring(L, "%s: %s", k, v);
        s = curl_slist_append(c->headers, lua_tostring(L, -1));
        if (s == NULL)
            luaL_error(L, "not enough memory");
        c->headers = s;
        lua_pop(L, 2);
    }
}

static int client_request(lua_State *L)
{
    consul_client *c = consul_checkclient(L, 1);
    const char *method = luaL_checkstring(L, 2);
    const char *path = luaL_checkstring(L, 3);
    consul_call call;
    consul_resp rs;
    const char *m;

    for (m = method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            luaL_argerror(L, 2, "an HTTP method in capitals expected");
    if (path[0] != '/' || strpbrk(path, " \t\r\n#?") != NULL)
        luaL_argerror(L, 3, "an escaped path starting with '/' expected (query goes in opts)");
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    if (lua_gettop(L) > 4)
        return luaL_error(L, "too many arguments to 'request' (method, path, opts expected)");
    lua_settop(L, 4);

    memset(&call, 0, sizeof call);
    call.method = method;
    consul_opts(L, 4, c, &call, 1);
    consul_path_begin(L, c, path);
    if (!lua_isnil(L, 4)) {
        lua_getfield(L, 4, "query");                   /* 5 */
        if (!lua_isnil(L, 5)) {
            if (lua_type(L, 5) != LUA_TTABLE)
                luaL_argerror(L, 4, "option 'query' must be a table");
            lua_pushnil(L);
            while (lua_next(L, 5) != 0) {
                if (lua_type(L, -2) != LUA_TSTRING)
                    luaL_argerror(L, 4, "option 'query' keys must be strings");
                if (lua_type(L, -1) == LUA_TBOOLEAN) {
                    if (lua_toboolean(L, -1))
                        consul_query_add(L, c, lua_tostring(L, -2), NULL, 0);
                } else {
                    size_t n;
                    const char *v = q_string(L, 4, lua_gettop(L), lua_tostring(L, -2), &n);
                    consul_query_add(L, c, lua_tostring(L, -2), v, n);
                }
                lua_pop(L, 1);
            }
        }
        lua_getfield(L, 4, "headers");                 /* 6 */
        build_headers(L, c, 6);
        call.headers = c->headers;
        lua_getfield(L, 4, "body");                    /* 7 */
        if (lua_type(L, 7) == LUA_TSTRING) {
            call.body = lua_tolstring(L, 7, &call.body_len);
        } else if (!lua_isnil(L, 7)) {
            consul_buf_reset(&c->enc);
            consul_json_encode(L, 7, 4, &c->enc, 0);
            call.body = c->enc.data;
            call.body_len = c->enc.len;
            call.content_type = "application/json";
        }
    }
    return consul_client_call(L, c, &call, &rs);
}

/* ---- the group objects: c.kv, c.agent, ... ----------------------------------- */

/* __index(c, key): a method, else a group object made once per client. */
static int client_index(lua_State *L)
{
    luaL_checkudata(L, 1, CONSUL_CLIENT_MT);
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));            /* methods[key] */
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(2));            /* groups[key]: the group's metatable */
    if (lua_isnil(L, -1))
        return 1;
    consul_getuservalue(L, 1);                     /* mt, cache */
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);                             /* mt, cache, obj? */
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    lua_createtable(L, 1, 0);                      /* mt, cache, obj */
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);                         /* obj[1] = client */
    lua_pushvalue(L, -3);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);                          /* mt, cache, obj, key, obj */
    lua_rawset(L, -4);
    return 1;
}

static const luaL_Reg client_methods[] = {
    { "close", client_gc },
    { "request", client_request },
    { "stats", client_stats },
    { NULL, NULL }
};

void consul_client_open(lua_State *L)
{
    /* module */
    luaL_newmetatable(L, CONSUL_CLIENT_MT);        /* module, mt */
    consul_newlib(L, client_methods);              /* module, mt, methods */
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "Client");                 /* consul.Client: for extension, like luv */
    lua_getfield(L, LUA_REGISTRYINDEX, "consul.groups");
    lua_pushcclosure(L, client_index, 2);          /* module, mt, __index */
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, client_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, client_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, client_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, CONSUL_CLIENT_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);                                 /* module */
    lua_pushcfunction(L, consul_new);
    lua_setfield(L, -2, "new");
}
