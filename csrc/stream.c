/*
 * stream.c: the routes whose answers stream. agent:monitor returns a consul.Stream that
 * yields log lines as the agent writes them (its own connection, driven step by step on a
 * multi handle, so a read waits for a line and no longer); snapshot:save writes the snapshot
 * to a file as it arrives, snapshot:restore sends one from a file or a string.
 *
 * Bounds: a monitor's answer must begin within the client's timeout; a read waits at most
 * its timeout (the client's by default) for a line; unread lines are held up to max_answer
 * bytes. A snapshot moving under 1 KiB a second for `timeout` seconds ends with "timeout";
 * saved to a string it is held up to max_answer bytes.
 */
#include "consul.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONSUL_STREAM_MT "consul.Stream"

typedef struct stream {
    consul_http http;
    CURLM *multi;
    consul_req rq;
    consul_resp rs;
    consul_buf out;     /* a refusal's body */
    char *path, *query, *token;
    consul_lines lines; /* received, not yet read */
    long timeout_ms;    /* the client's */
    int running, done, overflow;
} stream;

static int stream_sink(void *ud, const char *p, size_t n)
{
    stream *s = ud;
    if (consul_lines_add(&s->lines, p, n) != 0) {
        s->overflow = 1;  /* nobody reads: stop rather than hold without bound */
        return 1;
    }
    return 0;
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
    consul_lines_free(&s->lines);
    consul_buf_free(&s->out);
    free(s->path);
    free(s->query);
    if (s->token != NULL) {
        volatile char *p = s->token;
        while (*p)
            *p++ = 0;
        free(s->token);
    }
    s->path = s->query = s->token = NULL;
    s->done = 1;
}

/* Pushes the next complete line, if one is buffered. */
static int pop_line(lua_State *L, stream *s, int partial)
{
    const char *line;
    size_t n;
    if (!consul_lines_next(&s->lines, partial, &line, &n))
        return 0;
    lua_pushlstring(L, line, n);
    return 1;
}

static int push_timeout(lua_State *L, stream *s, const char *what, double secs)
{
    consul_resp t;
    consul_resp_reset(&t);
    t.code = CONSUL_ETIMEOUT;
    lua_pushnil(L);
    lua_pushfstring(L, "consul: GET %s: %s within %f s", s->path, what, secs);
    consul_push_meta(L, &t);
    return 3;
}

/* Reads a line within timeout_ms (< 0: for ever). */
static int read_line(lua_State *L, stream *s, int64_t timeout_ms)
{
    int64_t until = timeout_ms < 0 ? CONSUL_NEVER : consul_now_ms() + timeout_ms;
    if (s->path == NULL)
        return 0;  /* closed */
    for (;;) {
        int64_t left;
        if (pop_line(L, s, 0))
            return 1;
        if (!s->running) {
            char msg[1024];
            if (s->overflow) {
                consul_resp t;
                consul_resp_reset(&t);
                consul_resp_fail(&t, CONSUL_EDECODE, "over %zu bytes of lines unread "
                                                      "(max_answer)", s->lines.max);
                consul_format_failure(msg, sizeof msg, "GET", s->path, &t);
                s->overflow = 0;
                s->done = 1;
                consul_lines_free(&s->lines);  /* the stream ends here: nothing after it */
                return consul_push_failure(L, msg, &t);
            }
            if (pop_line(L, s, 1))
                return 1;
            if (s->rs.code == CONSUL_OK || s->done)
                return 0;
            consul_format_failure(msg, sizeof msg, "GET", s->path, &s->rs);
            s->done = 1;
            return consul_push_failure(L, msg, &s->rs);
        }
        left = until - consul_now_ms();
        if (left <= 0)
            return push_timeout(L, s, "no line", (double)timeout_ms / 1000);
        if (consul_http_step(&s->http, s->multi, left > 1000 ? 1000 : (int)left, &s->rs) == 0)
            s->running = 0;
    }
}

static stream *checkstream(lua_State *L)
{
    return luaL_checkudata(L, 1, CONSUL_STREAM_MT);
}

/* stream:read([timeout]) --> line | nil (the end) | nil, err, meta. timeout: seconds
 * (math.huge: for ever); the client's timeout by default. */
static int stream_read(lua_State *L)
{
    stream *s = checkstream(L);
    int64_t ms = s->timeout_ms;
    consul_checkargs(L, 2, "a timeout in seconds expected");
    if (!lua_isnoneornil(L, 2)) {
        lua_Number t = lua_tonumber(L, 2);
        if (lua_type(L, 2) != LUA_TNUMBER || !(t >= 0))
            return consul_argerror(L, 2, "a timeout of 0 or more seconds expected");
        ms = isinf(t) ? -1 : t >= 1e9 ? (int64_t)1e12 : (int64_t)(t * 1000);
    }
    return read_line(L, s, ms);
}

/* for line in stream do ... end: the for loop's own arguments are not a timeout; a failure
 * (no line within the client's timeout, say) raises, as a for loop has no place for nil,
 * err (read() returns them) */
static int stream_call(lua_State *L)
{
    stream *s = checkstream(L);
    int n = read_line(L, s, s->timeout_ms);
    if (n == 3)
        return consul_error(L, "%s", lua_tostring(L, -2));
    return n;
}

static int stream_close(lua_State *L)
{
    consul_checkargs(L, 1, "none expected");
    stream_release(checkstream(L));
    return 0;
}

/* __gc and __close: never raise */
static int stream_gc(lua_State *L)
{
    stream *s = consul_testudata(L, 1, CONSUL_STREAM_MT);
    if (s != NULL)
        stream_release(s);
    return 0;
}

static int stream_tostring(lua_State *L)
{
    stream *s = checkstream(L);
    lua_pushfstring(L, "consul.Stream (%s)", s->running ? "open" : "closed");
    return 1;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

/* The end of a monitor driven from Lua (nginx): its failure, or true when it just ended. */
static int monitor_finish(lua_State *L, consul_op *op)
{
    if (op->m.last.code != CONSUL_OK)
        return consul_push_op_failure(L, op);
    lua_pushboolean(L, 1);
    return 1;
}

/* c.agent:monitor([opts]) --> stream, nil, nil, stream | nil, err, meta
 * for line in c.agent:monitor({loglevel = "debug"}) do ... end  (break closes it on 5.4) */
static int agent_monitor(lua_State *L)
{
    consul_client *c;
    consul_op *op;
    stream *s;
    int64_t until;
    consul_checkargs(L, 2, "options expected");
    c = consul_group_client(L, 2);                 /* 3 */
    op = consul_op_new(L, c);                      /* 4: only for reading the options */
    op->m.rq.method = "GET";
    consul_op_path(L, op, "/v1/agent/monitor");
    consul_op_opts(L, 2, op, 0);
    if (consul_op_async(L)) {
        /* nginx: the op is the stream; lua/consul/ngx.lua reads its lines over a cosocket */
        op->m.rq.stream = 1;
        op->m.rq.sink = consul_op_lines_sink;
        op->m.rq.sink_ud = op;
        op->lines.max = c->conf->max_answer;
        op->answer = CONSUL_ANS_CUSTOM;
        op->finish = monitor_finish;
        return consul_op_call(L, c, op, 4);
    }
    s = consul_newuserdata(L, sizeof *s);          /* 5 */
    memset(s, 0, sizeof *s);
    s->done = 1;
    luaL_getmetatable(L, CONSUL_STREAM_MT);
    lua_setmetatable(L, -2);
    if (c->closed)
        return consul_error(L, "consul client is closed");  /* by Lua code run meanwhile */
    s->path = dup_str("/v1/agent/monitor");
    s->query = dup_str(op->m.query.data != NULL ? op->m.query.data : "");
    s->token = op->m.token != NULL ? dup_str(op->m.token) : NULL;
    s->lines.max = c->conf->max_answer;
    s->timeout_ms = c->conf->timeout_ms;
    if (s->path == NULL || s->query == NULL || (op->m.token != NULL && s->token == NULL) ||
        consul_http_init(&s->http, c->conf) != 0 || (s->multi = curl_multi_init()) == NULL)
        return luaL_error(L, "not enough memory");
    s->rq.method = "GET";
    s->rq.path = s->path;
    s->rq.query = s->query;
    s->rq.token = s->token;
    s->rq.stream = 1;          /* no end to wait for; the reads bound themselves */
    s->rq.sink = stream_sink;
    s->rq.sink_ud = s;
    if (consul_http_start(&s->http, s->multi, &s->rq, &s->rs, &s->out) != CONSUL_OK) {
        char msg[1024];
        consul_format_failure(msg, sizeof msg, "GET", s->path, &s->rs);
        return consul_push_failure(L, msg, &s->rs);
    }
    s->running = 1;
    s->done = 0;
    /* The answer's status within the timeout, so that a refusal is an error here, not an
     * empty loop; a refusal's whole answer, to say why. */
    until = consul_now_ms() + s->timeout_ms;
    while (s->running && (s->rs.status < 200 || s->rs.status > 299)) {
        int64_t left = until - consul_now_ms();
        if (left <= 0) {
            consul_http_abort(&s->http, s->multi, &s->rs);
            s->running = 0;
            s->done = 1;
            return push_timeout(L, s, "no answer", (double)s->timeout_ms / 1000);
        }
        if (consul_http_step(&s->http, s->multi, left > 1000 ? 1000 : (int)left, &s->rs) == 0)
            s->running = 0;
    }
    if (!s->running && s->rs.code != CONSUL_OK) {
        char msg[1024];
        consul_format_failure(msg, sizeof msg, "GET", s->path, &s->rs);
        return consul_push_failure(L, msg, &s->rs);
    }
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
        consul_argerror(L, idx, "attempt to use a closed file");
    return p != NULL ? p->f : NULL;
#else
    FILE **pf = consul_testudata(L, idx, "FILE*");
    if (pf != NULL && *pf == NULL)
        consul_argerror(L, idx, "attempt to use a closed file");
    return pf != NULL ? *pf : NULL;
#endif
}

static int snapshot_finish(lua_State *L, consul_op *op)
{
    if (op->file != NULL) {
        int bad = fflush(op->file) != 0 || ferror(op->file);
        bad |= fclose(op->file) != 0;
        op->file = NULL;
        if (bad) {
            consul_resp_fail(&op->m.last, CONSUL_ECLOSED, "writing the snapshot failed");
            return consul_push_op_failure(L, op);
        }
        lua_pushboolean(L, 1);
    } else {
        lua_pushlstring(L, op->m.last.body, op->m.last.body_len);
    }
    lua_pushnil(L);
    consul_push_meta(L, &op->m.last);
    return 3;
}

/* c.snapshot:save([file][, opts]) --> bytes | true (written to file: a path or a handle) */
static int snapshot_save(lua_State *L)
{
    consul_client *c;
    consul_op *op;
    FILE *lf = NULL;
    consul_checkargs(L, 3, "file and options expected");
    c = consul_group_client(L, 3);                 /* 4 */
    if (lua_type(L, 2) == LUA_TTABLE && lua_isnil(L, 3)) {
        lua_pushvalue(L, 2);
        lua_replace(L, 3);
        lua_pushnil(L);
        lua_replace(L, 2);  /* save(opts) */
    }
    if (lua_type(L, 2) == LUA_TSTRING) {
        size_t n;
        const char *path = lua_tolstring(L, 2, &n);
        consul_check_nul(L, path, n, 2, "the file name");
    } else if (!lua_isnil(L, 2) && (lf = tofile(L, 2)) == NULL) {
        return consul_argerror(L, 2, "a file name or an open file expected");
    }
    op = consul_op_new(L, c);                      /* 5 */
    op->m.rq.method = "GET";
    op->answer = CONSUL_ANS_CUSTOM;
    op->finish = snapshot_finish;
    consul_op_path(L, op, "/v1/snapshot");
    consul_op_opts(L, 3, op, 0);
    if (lua_type(L, 2) == LUA_TSTRING) {
        op->file = fopen(lua_tostring(L, 2), "wb");
        if (op->file == NULL)
            return consul_error(L, "cannot open '%s' for writing", lua_tostring(L, 2));
    } else if (lf != NULL) {
        /* A stream of our own on the same file (its position shared): Lua may close its
         * handle meanwhile (in nginx, from another request) without pulling ours away. */
        int fd;
        fflush(lf);
        if ((fd = dup(fileno(lf))) < 0 || (op->file = fdopen(fd, "w")) == NULL) {
            if (fd >= 0)
                close(fd);
            return consul_error(L, "cannot write to the file given");
        }
    }
    if (op->file != NULL) {
        op->m.rq.sink = file_sink;
        op->m.rq.sink_ud = op->file;
    }
    op->m.rq.stream = 1;  /* a large snapshot may take long: moving it is what counts */
    op->m.rq.idle_ms = c->conf->timeout_ms;
    return consul_op_call(L, c, op, 5);
}

/* c.snapshot:restore(data | file[, opts]) --> true: data is the snapshot's bytes, or an open
 * file (read to its end) */
static int snapshot_restore(lua_State *L)
{
    consul_client *c;
    consul_op *op;
    consul_checkargs(L, 3, "snapshot and options expected");
    c = consul_group_client(L, 3);                 /* 4 */
    if (tofile(L, 2) != NULL) {
        lua_getfield(L, 2, "read");
        lua_pushvalue(L, 2);
        lua_pushliteral(L, "*a");
        lua_call(L, 2, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return consul_argerror(L, 2, "cannot read the snapshot file");
        lua_replace(L, 2);
        lua_settop(L, 4);
    }
    if (lua_type(L, 2) != LUA_TSTRING)
        return consul_argerror(L, 2, "the snapshot's bytes (a string) or an open file expected");
    op = consul_op_new(L, c);                      /* 5 */
    op->m.rq.method = "PUT";
    op->m.rq.body = lua_tolstring(L, 2, &op->m.rq.body_len);
    op->m.rq.content_type = "application/octet-stream";
    consul_op_keep(L, op, 2);
    consul_op_path(L, op, "/v1/snapshot");
    consul_op_opts(L, 3, op, 0);
    return consul_op_call(L, c, op, 5);
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
    lua_pushcfunction(L, stream_call);
    lua_setfield(L, -2, "__call");
    lua_pushcfunction(L, stream_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, stream_gc);
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
