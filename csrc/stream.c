/*
 * stream.c: the routes whose answers stream. agent:monitor returns a consul.Stream that
 * yields log lines as the agent writes them (its own connection, driven step by step on a
 * multi handle, so a read waits for a line and no longer); snapshot:save writes the snapshot
 * to a file as it arrives, snapshot:restore sends one from a file or a string.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONSUL_STREAM_MT "consul.Stream"

typedef struct stream {
    consul_http http;
    CURLM *multi;
    consul_req rq;
    consul_resp rs;
    char *path, *query;
    consul_buf lines;   /* received, not yet read */
    size_t pos;         /* first unread byte of lines */
    int running, done;
} stream;

static int stream_sink(void *ud, const char *p, size_t n)
{
    stream *s = ud;
    if (s->pos > 0 && s->pos == s->lines.len) {
        consul_buf_reset(&s->lines);
        s->pos = 0;
    }
    return consul_buf_add(&s->lines, p, n);
}

static void stream_release(stream *s)
{
    if (s->running) {
        consul_http_abort(&s->http, s->multi, &s->rs);
        s->running = 0;
    }
    consul_http_release(&s->http);
    if (s->multi != NULL) {
        curl_multi_cleanup(s->multi);
        s->multi = NULL;
    }
    consul_buf_free(&s->lines);
    s->pos = 0;
    free(s->path);
    free(s->query);
    s->path = s->query = NULL;
    s->done = 1;
}

static stream *checkstream(lua_State *L)
{
    return luaL_checkudata(L, 1, CONSUL_STREAM_MT);
}

/* Pushes the next complete line, if one is buffered. */
static int pop_line(lua_State *L, stream *s, int partial)
{
    const char *start = s->lines.data + s->pos;
    size_t avail = s->lines.len - s->pos, n;
    const char *nl = avail ? memchr(start, '\n', avail) : NULL;
    if (nl == NULL && !(partial && avail > 0))
        return 0;
    n = nl != NULL ? (size_t)(nl - start) : avail;
    s->pos += n + (nl != NULL);
    if (n > 0 && start[n - 1] == '\r')
        n--;
    lua_pushlstring(L, start, n);
    return 1;
}

/* stream:read([timeout]) --> line | nil (the end) | nil, err, meta */
static int stream_read(lua_State *L)
{
    stream *s = checkstream(L);
    /* read(timeout); called by a generic for, the 2nd argument is the for's control value
     * (nil, then the last line): no timeout then */
    double timeout = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : -1;
    int64_t until = timeout >= 0 && timeout < 1e9 ? consul_now_ms() + (int64_t)(timeout * 1000)
                                                  : INT64_MAX;
    for (;;) {
        int64_t left;
        if (pop_line(L, s, 0))
            return 1;
        if (!s->running) {
            char msg[1024];
            if (pop_line(L, s, 1))
                return 1;
            if (s->rs.code == CONSUL_OK || s->done)
                return 0;
            consul_format_failure(msg, sizeof msg, "GET", s->path ? s->path : "", &s->rs);
            s->done = 1;
            lua_pushnil(L);
            lua_pushstring(L, msg);
            consul_push_meta(L, &s->rs);
            return 3;
        }
        left = until - consul_now_ms();
        if (left <= 0) {
            consul_resp t;
            memset(&t, 0, sizeof t);
            t.code = CONSUL_ETIMEOUT;
            t.known_leader = -1;
            t.last_contact = -1;
            lua_pushnil(L);
            lua_pushfstring(L, "consul: GET %s: no line within %f s", s->path, timeout);
            consul_push_meta(L, &t);
            return 3;
        }
        if (consul_http_step(&s->http, s->multi, left > 1000 ? 1000 : (int)left, &s->rs) == 0)
            s->running = 0;
    }
}

static int stream_close(lua_State *L)
{
    stream_release(checkstream(L));
    return 0;
}

static int stream_tostring(lua_State *L)
{
    stream *s = checkstream(L);
    lua_pushfstring(L, "consul.Stream (%s)", s->running ? "open" : "closed");
    return 1;
}

/* c.agent:monitor([opts]) --> stream, nil, nil, stream | nil, err, meta
 * for line in c.agent:monitor({loglevel = "debug"}) do ... end  (break closes it on 5.4) */
static int agent_monitor(lua_State *L)
{
    consul_client *c = consul_group_client(L);
    consul_call call;
    stream *s;
    if (lua_gettop(L) > 2)
        return luaL_error(L, "too many arguments to 'monitor' (options expected)");
    lua_settop(L, 2);
    memset(&call, 0, sizeof call);
    call.method = "GET";
    consul_path_begin(L, c, "/v1/agent/monitor");
    consul_opts(L, 2, c, &call, 0);
    s = consul_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    s->done = 1;
    luaL_getmetatable(L, CONSUL_STREAM_MT);
    lua_setmetatable(L, -2);
    s->path = strdup("/v1/agent/monitor");
    s->query = strdup(c->query.data ? c->query.data : "");
    if (s->path == NULL || s->query == NULL || consul_http_init(&s->http, c->conf) != 0 ||
        (s->multi = curl_multi_init()) == NULL)
        return luaL_error(L, "not enough memory");
    s->rq.method = "GET";
    s->rq.path = s->path;
    s->rq.query = s->query;
    s->rq.token = call.token;  /* copied by libcurl into its header list at start */
    s->rq.timeout_ms = -1;     /* a stream has no end to wait for */
    s->rq.sink = stream_sink;
    s->rq.sink_ud = s;
    if (consul_http_start(&s->http, s->multi, &s->rq, &s->rs) != CONSUL_OK)
        return consul_push_failure(L, c, &call, &s->rs);
    s->rq.token = NULL;
    s->running = 1;
    s->done = 0;
    /* Wait for the answer's status, so that a refusal is an error here, not an empty loop. */
    while (s->running && s->rs.status == 0)
        if (consul_http_step(&s->http, s->multi, 1000, &s->rs) == 0)
            s->running = 0;
    while (s->running && (s->rs.status < 200 || s->rs.status > 299))
        if (consul_http_step(&s->http, s->multi, 1000, &s->rs) == 0)
            s->running = 0;  /* a refusal: read its whole answer to say why */
    if (!s->running && s->rs.code != CONSUL_OK)
        return consul_push_failure(L, c, &call, &s->rs);
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushvalue(L, -3);
    return 4;
}

/* ---- snapshots ------------------------------------------------------------- */

static int file_sink(void *ud, const char *p, size_t n)
{
    return fwrite(p, 1, n, (FILE *)ud) == n ? 0 : 1;
}

/* A Lua file handle's FILE* (Lua 5.4's luaL_Stream and LuaJIT's file userdata both begin
 * with it), or NULL; raises for a closed one (its FILE* is freed). */
static FILE *tofile(lua_State *L, int idx)
{
#if LUA_VERSION_NUM >= 502
    luaL_Stream *p = consul_testudata(L, idx, LUA_FILEHANDLE);
    if (p != NULL && p->closef == NULL)
        luaL_argerror(L, idx, "attempt to use a closed file");
    return p != NULL ? p->f : NULL;
#else
    FILE **pf = consul_testudata(L, idx, "FILE*");
    if (pf != NULL && *pf == NULL)
        luaL_argerror(L, idx, "attempt to use a closed file");
    return pf != NULL ? *pf : NULL;
#endif
}

/* c.snapshot:save([file][, opts]) --> bytes | true (written to file: a path or a handle) */
static int snapshot_save(lua_State *L)
{
    consul_client *c = consul_group_client(L);
    consul_call call;
    consul_resp rs;
    FILE *f = NULL;
    int own = 0;
    if (lua_gettop(L) > 3)
        return luaL_error(L, "too many arguments to 'save' (file and options expected)");
    lua_settop(L, 3);
    if (lua_type(L, 2) == LUA_TTABLE && lua_isnil(L, 3)) {
        lua_pushvalue(L, 2);
        lua_replace(L, 3);
        lua_pushnil(L);
        lua_replace(L, 2);  /* save(opts) */
    }
    memset(&call, 0, sizeof call);
    call.method = "GET";
    consul_path_begin(L, c, "/v1/snapshot");
    consul_opts(L, 3, c, &call, 0);
    if (lua_type(L, 2) == LUA_TSTRING) {
        f = fopen(lua_tostring(L, 2), "wb");
        if (f == NULL)
            return luaL_error(L, "cannot open '%s' for writing", lua_tostring(L, 2));
        own = 1;
    } else if (!lua_isnil(L, 2) && (f = tofile(L, 2)) == NULL) {
        return luaL_argerror(L, 2, "a file name or an open file expected");
    }
    call.answer = CONSUL_ANS_TEXT;
    if (f != NULL) {
        call.sink = file_sink;
        call.sink_ud = f;
    }
    /* No Lua call can raise between here and fclose: the sink only writes. */
    memset(&rs, 0, sizeof rs);
    {
        consul_req rq;
        memset(&rq, 0, sizeof rq);
        rq.method = "GET";
        rq.path = c->path.data;
        rq.query = c->query.data;
        rq.token = call.token;
        rq.sink = call.sink;
        rq.sink_ud = call.sink_ud;
        rq.timeout_ms = -1;  /* a large snapshot may take long; the connect timeout holds */
        consul_http_perform(&c->http, &rq, &rs);
        c->requests++;
        c->connects += rs.connects;
    }
    if (f != NULL && (fflush(f) != 0 || ferror(f)) && rs.code == CONSUL_OK) {
        rs.code = CONSUL_ECLOSED;
        snprintf(rs.error, sizeof rs.error, "writing the snapshot failed");
    }
    if (own)
        fclose(f);
    if (rs.code != CONSUL_OK)
        return consul_push_failure(L, c, &call, &rs);
    if (f != NULL)
        lua_pushboolean(L, 1);
    else
        lua_pushlstring(L, rs.body, rs.body_len);
    lua_pushnil(L);
    consul_push_meta(L, &rs);
    return 3;
}

/* c.snapshot:restore(data | file[, opts]) --> true: data is the snapshot's bytes, or an open
 * file (read to its end) */
static int snapshot_restore(lua_State *L)
{
    consul_client *c = consul_group_client(L);
    consul_call call;
    consul_resp rs;
    if (lua_gettop(L) > 3)
        return luaL_error(L, "too many arguments to 'restore' (snapshot and options expected)");
    lua_settop(L, 3);
    if (tofile(L, 2) != NULL) {
        lua_getfield(L, 2, "read");
        lua_pushvalue(L, 2);
        lua_pushliteral(L, "*a");
        lua_call(L, 2, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_argerror(L, 2, "cannot read the snapshot file");
        lua_replace(L, 2);
    }
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_argerror(L, 2, "the snapshot's bytes (a string) or an open file expected");
    memset(&call, 0, sizeof call);
    call.method = "PUT";
    call.body = lua_tolstring(L, 2, &call.body_len);
    consul_path_begin(L, c, "/v1/snapshot");
    consul_opts(L, 3, c, &call, 0);
    return consul_client_call(L, c, &call, &rs);
}

static const luaL_Reg stream_methods[] = {
    { "read", stream_read },
    { "close", stream_close },
    { NULL, NULL }
};

void consul_stream_open(lua_State *L)
{
    /* groups (the registry's consul.groups) at -1 */
    luaL_newmetatable(L, CONSUL_STREAM_MT);
    consul_newlib(L, stream_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, stream_read);
    lua_setfield(L, -2, "__call");
    lua_pushcfunction(L, stream_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, stream_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, stream_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, CONSUL_STREAM_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_getfield(L, -1, "agent");
    lua_pushcfunction(L, agent_monitor);
    lua_setfield(L, -2, "monitor");
    lua_pop(L, 1);
    lua_getfield(L, -1, "snapshot");
    lua_pushcfunction(L, snapshot_save);
    lua_setfield(L, -2, "save");
    lua_pushcfunction(L, snapshot_restore);
    lua_setfield(L, -2, "restore");
    lua_pop(L, 1);
}
