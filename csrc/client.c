/*
 * client.c: the consul.Client userdata: consul.new() and its options and environment
 * variables, c:request, c:stats, c:close, and the group objects (c.kv, c.agent, ...).
 *
 * A client owns a configuration (shared by reference count with its calls in flight and
 * its locks), its connection, and (in the configuration) the memory of its last call, kept
 * for the next one. The calls themselves are ops (op.c): closing a client while one of its
 * calls is in flight (from a finalizer, or in nginx from another request) frees nothing a
 * call still uses.
 */
#include "consul.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the userdata ------------------------------------------------------- */

static void client_release(lua_State *L, consul_client *c)
{
    consul_http_release(&c->http);
    if (c->conf != NULL) {
        consul_op_drop_spare(L, c->conf);
        consul_conf_release(c->conf);
        c->conf = NULL;
    }
    c->closed = 1;
}

consul_client *consul_checkclient(lua_State *L, int idx)
{
    consul_client *c = luaL_checkudata(L, idx, CONSUL_CLIENT_MT);
    if (c->closed)
        consul_error(L, "consul client is closed");  /* does not return */
    return c;
}

consul_client *consul_group_client(lua_State *L, int n)
{
    consul_client *c;
    consul_checktype(L, 1, LUA_TTABLE);  /* c.kv:get(...), not c.kv.get(...) */
    lua_settop(L, n);
    lua_rawgeti(L, 1, 1);              /* kept on the stack: the client stays alive */
    c = consul_testudata(L, -1, CONSUL_CLIENT_MT);
    if (c == NULL)
        consul_argerror(L, 1, "expected a consul group object (call it with ':')");
    if (c->closed)
        consul_error(L, "consul client is closed");
    return c;
}

/* __gc and __close: never raise */
static int client_gc(lua_State *L)
{
    consul_client *c = consul_testudata(L, 1, CONSUL_CLIENT_MT);
    if (c != NULL)
        client_release(L, c);
    return 0;
}

/* c:close(): idempotent */
static int client_close(lua_State *L)
{
    consul_client *c = luaL_checkudata(L, 1, CONSUL_CLIENT_MT);
    if (lua_gettop(L) > 1)
        return consul_error(L, "too many arguments to 'close' (none expected)");
    client_release(L, c);
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
    if (lua_gettop(L) > 1)
        return consul_error(L, "too many arguments to 'stats' (none expected)");
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)LOAD(&c->conf->requests));
    lua_setfield(L, -2, "requests");
    lua_pushinteger(L, (lua_Integer)LOAD(&c->conf->connects));
    lua_setfield(L, -2, "connects");
    return 1;
}

/* ---- consul.new ---------------------------------------------------------- */

static void consul_set_str(lua_State *L, char **field, const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p == NULL)
        consul_error(L, "not enough memory");
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
            consul_error(L, "bad option '%s' to 'new' (string expected, got %s)", name,
                       luaL_typename(L, -1));
        v = lua_tolstring(L, -1, len);
        if (memchr(v, '\0', *len) != NULL)
            consul_error(L, "bad option '%s' to 'new' (NUL bytes are not allowed)", name);
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
            consul_error(L, "bad token from %s: control characters are not allowed", from);
}

static void read_token_file(lua_State *L, consul_conf *cf, const char *path)
{
    char buf[4096];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        consul_error(L, "cannot read token file '%s'", path);
    n = fread(buf, 1, sizeof buf - 1, f);
    if (n == sizeof buf - 1 && fgetc(f) != EOF) {
        fclose(f);
        memset(buf, 0, sizeof buf);
        consul_error(L, "token file '%s' is too large for a token", path);
    }
    fclose(f);
    if (memchr(buf, '\0', n) != NULL) {
        memset(buf, 0, sizeof buf);
        consul_error(L, "bad token from token file: NUL bytes are not allowed");
    }
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
    "max_answer", NULL
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
                consul_error(L, "bad argument #1 to 'new' (unknown option '%s')",
                           lua_tostring(L, -1));
            consul_error(L, "bad argument #1 to 'new' (option names are strings)");
        }
    }
}

static void set_host_line(lua_State *L, consul_conf *cf, const char *host)
{
    lua_pushfstring(L, " HTTP/1.1\r\nHost: %s\r\n", host);
    cf->host_line_len = consul_rawlen(L, -1);
    consul_set_str(L, &cf->host_line, lua_tostring(L, -1), cf->host_line_len);
    lua_pop(L, 1);
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
            consul_error(L, "bad option 'addr' to 'new' (empty unix socket path)");
        consul_set_str(L, &cf->unix_path, addr + 7, strlen(addr + 7));
        consul_set_str(L, &cf->hostport, addr, strlen(addr));
        consul_set_str(L, &cf->base_url, "http://localhost", 16);
        set_host_line(L, cf, "localhost");
        return;
    }
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (close == NULL)
            consul_error(L, "bad option 'addr' to 'new' (unterminated '[')");
        colon = close[1] == ':' ? close + 1 : NULL;
        if (close[1] != '\0' && close[1] != ':')
            consul_error(L, "bad option 'addr' to 'new' ('%s')", addr);
    } else {
        colon = strrchr(host, ':');
    }
    if (colon != NULL) {
        port = colon + 1;
        hostlen = (size_t)(colon - host);
        if (*port == '\0' || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) ||
            atol(port) > 65535 || atol(port) == 0)
            consul_error(L, "bad option 'addr' to 'new' (bad port in '%s')", addr);
    } else {
        port = "8500";
        hostlen = strlen(host);
    }
    if (hostlen == 0)
        consul_error(L, "bad option 'addr' to 'new' (no host in '%s')", addr);
    if (strpbrk(addr, "/?#@ \t\r\n") != NULL)
        consul_error(L, "bad option 'addr' to 'new' ('%s' is not host:port)", addr);

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
    /* what a driver of its own needs: where to connect, what to say in Host */
    consul_set_str(L, &cf->host, host, hostlen);
    cf->port = atoi(port);
    cf->https = https;
    if (server_name != NULL)
        consul_set_str(L, &cf->server_name, server_name, strlen(server_name));
    lua_pushfstring(L, "%s:%s", server_name != NULL ? server_name : cf->host, port);
    set_host_line(L, cf, lua_tostring(L, -1));
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
        consul_error(L, "bad argument #1 to 'new' (give either addr or host/port, not both)");
    lua_pop(L, 3);
    s = opt_str(L, "scheme", NULL, &n);
    if (s != NULL && strcmp(s, "http") != 0 && strcmp(s, "https") != 0)
        consul_error(L, "bad option 'scheme' to 'new' (\"http\" or \"https\" expected)");
    https = s != NULL ? strcmp(s, "https") == 0 : env_true("CONSUL_HTTP_SSL");

    lua_getfield(L, 1, "host");
    if (!lua_isnil(L, -1)) {
        const char *host;
        if (lua_type(L, -1) != LUA_TSTRING)
            consul_error(L, "bad option 'host' to 'new' (string expected, got %s)",
                       luaL_typename(L, -1));
        lua_Integer port;
        size_t hl;
        host = lua_tolstring(L, -1, &hl);
        if (memchr(host, '\0', hl) != NULL || hl == 0)
            consul_error(L, "bad option 'host' to 'new' (a host name without NUL bytes expected)");
        lua_getfield(L, 1, "port");
        if (!lua_isnil(L, -1) && !consul_isinteger(L, -1) && lua_type(L, -1) != LUA_TSTRING)
            consul_error(L, "bad option 'port' to 'new' (number expected)");
        port = lua_isnil(L, -1) ? 8500 : lua_tointeger(L, -1);
        if (port <= 0 || port > 65535)
            consul_error(L, "bad option 'port' to 'new' (1..65535 expected)");
        lua_pop(L, 1);
        if (strchr(host, ':') != NULL && host[0] != '[')
            lua_pushfstring(L, "[%s]:%d", host, (int)port);
        else
            lua_pushfstring(L, "%s:%d", host, (int)port);
        lua_setfield(L, 1, "addr");  /* the caller's table: it is ours for this call only */
    } else {
        lua_getfield(L, 1, "port");
        if (!lua_isnil(L, -1))
            consul_error(L, "bad argument #1 to 'new' (port needs host)");
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
        consul_error(L, "bad option 'tls_server_name' to 'new' (a host name expected)");
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
        consul_error(L, "bad argument #1 to 'new' (dc and datacenter are the same option)");
    lua_pop(L, 2);
    if ((s = opt_str(L, "dc", NULL, &n)) != NULL || (s = opt_str(L, "datacenter", NULL, &n)) != NULL)
        consul_set_str(L, &cf->dc, s, n);

    lua_getfield(L, 1, "timeout");
    if (!lua_isnil(L, -1)) {
        lua_Number t;
        if (lua_type(L, -1) != LUA_TNUMBER)
            consul_error(L, "bad option 'timeout' to 'new' (seconds expected)");
        t = lua_tonumber(L, -1);
        if (!(t > 0 && t <= 86400))
            consul_error(L, "bad option 'timeout' to 'new' (0 < seconds <= 86400 expected)");
        cf->timeout_ms = (long)(t * 1000 + 0.5);
        if (cf->timeout_ms < 1)
            cf->timeout_ms = 1;
    }
    lua_pop(L, 1);

    lua_getfield(L, 1, "max_answer");
    if (!lua_isnil(L, -1)) {
        lua_Number m;
        if (lua_type(L, -1) != LUA_TNUMBER)
            consul_error(L, "bad option 'max_answer' to 'new' (bytes expected)");
        m = lua_tonumber(L, -1);
        if (!(m >= 1024))
            consul_error(L, "bad option 'max_answer' to 'new' (at least 1024 bytes expected)");
        cf->max_answer = m >= 1e15 ? (size_t)-1 / 2 : (size_t)m;  /* math.huge: no limit */
    }
    lua_pop(L, 1);

    lua_getfield(L, 1, "verify");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TBOOLEAN)
            consul_error(L, "bad option 'verify' to 'new' (boolean expected)");
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
            consul_error(L, "bad option 'consistency' to 'new' (\"default\", \"consistent\" or "
                          "\"stale\" expected)");
    }
    /* nginx's driver shares a pooled connection only between confs that agree on all this,
     * and takes what the name stands for from the first conf it meets with it: so each
     * piece that may hold a ':' goes with its length, and no two confs share a name but
     * by being the same on all of it */
    {
        const char *sn = cf->server_name != NULL ? cf->server_name : "";
        const char *cert = cf->cert_file != NULL ? cf->cert_file : "";
        const char *key = cf->key_file != NULL ? cf->key_file : "";
        lua_pushfstring(L, "consul:%s:%d:%d:%s:%d:%s:%d:%s:%d:%s", cf->https ? "https" : "http",
                        cf->verify, (int)strlen(cf->hostport), cf->hostport, (int)strlen(sn), sn,
                        (int)strlen(cert), cert, (int)strlen(key), key);
    }
    consul_set_str(L, &cf->pool, lua_tostring(L, -1), consul_rawlen(L, -1));
    lua_pop(L, 3);  /* the pool name, the two addr strings */
}

static int consul_new(lua_State *L)
{
    consul_client *c;
    if (lua_gettop(L) > 1)
        return consul_error(L, "too many arguments to 'new' (an options table expected)");
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        consul_checktype(L, 1, LUA_TTABLE);
        /* configure() may write the combined host/port into it: work on a raw copy (its
         * metamethods, if any, never run) */
        lua_newtable(L);
        lua_pushnil(L);
        while (lua_next(L, 1) != 0) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, 2);
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
        return consul_error(L, "not enough memory");
    configure(L, c->conf);
    if (consul_http_init(&c->http, c->conf) != 0)
        return consul_error(L, "cannot create a libcurl handle");
    c->closed = 0;
    return 1;
}

/* ---- c:request(method, path[, opts]) ----------------------------------------- */

/* A header name: a token of RFC 9110 */
static int header_name(const char *s, size_t n)
{
    size_t i;
    if (n == 0)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch) != NULL)
            return 0;
    }
    return 1;
}

static void build_headers(lua_State *L, consul_op *op, int idx)
{
    if (lua_isnil(L, idx))
        return;
    if (lua_type(L, idx) != LUA_TTABLE)
        consul_argerror(L, 4, "option 'headers' must be a table");
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t kn, vn, i;
        const char *k, *v;
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            consul_argerror(L, 4, "option 'headers' must map strings to strings");
        k = lua_tolstring(L, -2, &kn);
        v = lua_tolstring(L, -1, &vn);
        if (!header_name(k, kn))
            consul_argerror(L, 4, "option 'headers' has a bad header name");
        for (i = 0; i < vn; i++)
            if (((unsigned char)v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
                consul_argerror(L, 4, "option 'headers' has a bad header value (control bytes)");
        if (consul_buf_add(&op->m.hdrs, k, kn) != 0 || consul_buf_addlit(&op->m.hdrs, ": ") != 0 ||
            consul_buf_add(&op->m.hdrs, v, vn) != 0 || consul_buf_addlit(&op->m.hdrs, "\n") != 0)
            consul_error(L, "not enough memory");
        lua_pop(L, 1);
    }
}

static int client_request(lua_State *L)
{
    consul_client *c = consul_checkclient(L, 1);
    size_t mlen, plen, i;
    const char *method, *path;
    consul_op *op;
    int box;

    if (lua_gettop(L) > 4)
        return consul_error(L, "too many arguments to 'request' (method, path, opts expected)");
    method = consul_checkstring(L, 2, &mlen);
    path = consul_checkstring(L, 3, &plen);
    if (mlen == 0 || mlen > 32)
        consul_argerror(L, 2, "an HTTP method in capitals expected");
    for (i = 0; i < mlen; i++)
        if (method[i] < 'A' || method[i] > 'Z')
            consul_argerror(L, 2, "an HTTP method in capitals expected");
    consul_check_nul(L, path, plen, 3, "path");
    if (path[0] != '/' || strpbrk(path, " \t\r\n#?") != NULL)
        consul_argerror(L, 3, "an escaped path starting with '/' expected (query goes in opts)");
    for (i = 0; i < plen; i++)
        if ((unsigned char)path[i] < 0x20 || path[i] == 0x7f)
            consul_argerror(L, 3, "an escaped path expected (control bytes)");
    if (!lua_isnoneornil(L, 4))
        consul_checktype(L, 4, LUA_TTABLE);
    lua_settop(L, 4);

    op = consul_op_new(L, c);                      /* 5: the op's box */
    box = lua_gettop(L);
    op->m.rq.method = method;
    consul_op_keep(L, op, 2);
    consul_op_path(L, op, path);
    consul_op_opts(L, 4, op, 1);
    if (!lua_isnil(L, 4)) {
        /* raw reads, as every option is read: no metamethod of the caller's runs meanwhile */
        lua_pushliteral(L, "query");
        lua_rawget(L, 4);
        if (!lua_isnil(L, -1)) {
            int q = lua_gettop(L);
            if (lua_type(L, q) != LUA_TTABLE)
                consul_argerror(L, 4, "option 'query' must be a table");
            lua_pushnil(L);
            while (lua_next(L, q) != 0) {
                size_t kn;
                const char *k;
                if (lua_type(L, -2) != LUA_TSTRING)
                    consul_argerror(L, 4, "option 'query' keys must be strings");
                k = lua_tolstring(L, -2, &kn);
                if (kn == 0 || strcspn(k, "&=#? \t\r\n") != kn || memchr(k, '\0', kn) != NULL)
                    consul_argerror(L, 4, "option 'query' has a bad parameter name");
                if (lua_type(L, -1) == LUA_TBOOLEAN) {
                    if (lua_toboolean(L, -1))
                        consul_op_query(L, op, k, NULL, 0);
                } else if (lua_type(L, -1) == LUA_TSTRING) {
                    size_t n;
                    const char *v = lua_tolstring(L, -1, &n);
                    consul_op_query(L, op, k, v, n);
                } else {
                    consul_argerror(L, 4, "option 'query' values must be strings or booleans");
                }
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
        lua_pushliteral(L, "headers");
        lua_rawget(L, 4);
        build_headers(L, op, lua_gettop(L));
        lua_pop(L, 1);
        lua_pushliteral(L, "body");
        lua_rawget(L, 4);                              /* box + 1 */
        if (lua_type(L, -1) == LUA_TSTRING) {
            op->m.rq.body = lua_tolstring(L, -1, &op->m.rq.body_len);
            op->m.rq.content_type = "application/octet-stream";
            lua_replace(L, 4);  /* kept on the stack (the options table itself may change) */
            consul_op_keep(L, op, 4);
        } else if (!lua_isnil(L, -1)) {
            consul_json_encode(L, lua_gettop(L), 4, &op->m.body, 0);
            op->m.rq.body = op->m.body.data;
            op->m.rq.body_len = op->m.body.len;
            op->m.rq.content_type = "application/json";
        }
        lua_settop(L, box);
    }
    op->answer = CONSUL_ANS_AUTO;
    return consul_op_call(L, c, op, box);
}

/* ---- the group objects: c.kv, c.agent, ... ----------------------------------- */

/* __index(c, key): a method, else a group object made once per client. */
static int client_index(lua_State *L)
{
    luaL_checkudata(L, 1, CONSUL_CLIENT_MT);       /* (a metamethod can be called by hand) */
    consul_getuservalue(L, 1);                     /* cache */
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);                             /* cache, obj? : the group made before */
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));            /* methods[key] */
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(2));            /* cache, groups[key]: its metatable */
    if (lua_isnil(L, -1))
        return 1;
    lua_insert(L, -2);                             /* mt, cache */
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
    { "close", client_close },
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
