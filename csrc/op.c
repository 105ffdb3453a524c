/*
 * op.c: one call in flight, and the generic call path every method takes.
 *
 *   1. The method reads its arguments and per-call options into a consul_op: copies, or Lua
 *      values anchored for the op's life. The op is boxed in a userdata (consul.Op) from the
 *      start, so an error raised while reading frees it with the box.
 *   2. consul_op_call runs the op's machine: here with libcurl over the client's connection
 *      (the client is checked open again first: reading options may have run Lua code that
 *      closed it), or, in nginx where the caller may yield, not at all: the op goes back to
 *      lua/consul.lua, which steps the same machine over cosockets (the _op functions below).
 *   3. The answer is shaped into result, err, meta from the op's own memory only: Lua code
 *      run meanwhile (a finalizer during an allocation) cannot pull it away.
 * A finished op's memory is kept by its client for the next call.
 */
#include "consul.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONSUL_OP_MT "consul.Op"

typedef struct op_box {
    consul_op *op;
} op_box;

/* Inside nginx (lua/consul.lua says so), calls that may yield go to the cosocket driver. */
static int ngx_mode;
static const char pending_key = 0;
#define PENDING ((void *)&pending_key)

/* The async driver's bookkeeping of an op (nginx). */
typedef struct op_async {
    consul_wire wire;
    consul_resp rs;          /* the answer being read */
    consul_buf head;         /* the request head sent */
    int started, pending;    /* stepped once; a request is out, its answer expected */
} op_async;

static void async_free(void *p)
{
    op_async *a = p;
    consul_wire_free(&a->wire);
    consul_buf_free(&a->head);
    free(a);
}

static void op_free(consul_op *op)
{
    if (op->drv != NULL) {
        async_free(op->drv);
        op->drv = NULL;
    }
    consul_lines_free(&op->lines);
    if (op->file != NULL)
        fclose(op->file);
    op->file = NULL;
    consul_mach_release(&op->m);
    free(op);
}

static int op_gc(lua_State *L)
{
    op_box *b = consul_testudata(L, 1, CONSUL_OP_MT);
    if (b != NULL && b->op != NULL) {
        op_free(b->op);
        b->op = NULL;
    }
    return 0;
}

/* consul_op_new's two clears leave out exactly m.last and m.msg */
typedef char op_layout_check[offsetof(consul_mach, state) ==
                             offsetof(consul_mach, last) + sizeof(consul_resp) + 1024 ? 1 : -1];

/* The box a blocking call takes: the last one's, if it is there (its slot is false while a
 * call has it: one that raises leaves it to the collector, and its op with it), else new. */
static op_box *new_box(lua_State *L, consul_conf *cf)
{
    op_box *b;
    if (cf->box_ref > 0 && !consul_op_async(L)) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, cf->box_ref);
        b = lua_touserdata(L, -1);
        if (b != NULL && b->op == NULL) {
            lua_pushboolean(L, 0);
            lua_rawseti(L, LUA_REGISTRYINDEX, cf->box_ref);
            return b;
        }
        lua_pop(L, 1);
    }
    b = consul_newuserdata(L, sizeof *b);
    b->op = NULL;
    luaL_getmetatable(L, CONSUL_OP_MT);
    lua_setmetatable(L, -2);
    return b;
}

/* A blocking call is over and its op recycled: its box (at box, a user value of nil, as
 * nothing but an nginx call sets one) is kept for the next. */
static void keep_box(lua_State *L, consul_conf *cf, int box)
{
    if (cf == NULL)
        return;
    lua_pushvalue(L, box);
    if (cf->box_ref > 0)
        lua_rawseti(L, LUA_REGISTRYINDEX, cf->box_ref);
    else
        cf->box_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

consul_op *consul_op_new(lua_State *L, consul_client *c)
{
    consul_conf *cf = c->conf;
    op_box *b = new_box(L, cf);
    consul_op *op;
    if (cf->spare != NULL) {
        /* the last call's memory: its buffers (and in nginx its driver's) keep their
         * capacity */
        consul_buf keep[5];
        op_async *drv;
        op = cf->spare;
        cf->spare = NULL;
        keep[0] = op->m.path, keep[1] = op->m.query, keep[2] = op->m.body,
        keep[3] = op->m.hdrs, keep[4] = op->m.out;
        drv = op->drv;
        /* all but the answer and the message (1.5 of 2 KiB, strings): consul_mach_init
         * resets those as far as they are read */
        memset(op, 0, offsetof(consul_op, m.last));
        memset((char *)op + offsetof(consul_op, m.state), 0,
               sizeof *op - offsetof(consul_op, m.state));
        op->m.path = keep[0], op->m.query = keep[1], op->m.body = keep[2],
        op->m.hdrs = keep[3], op->m.out = keep[4];
        consul_buf_reset(&op->m.path);
        consul_buf_reset(&op->m.query);
        consul_buf_reset(&op->m.body);
        consul_buf_reset(&op->m.hdrs);
        if (drv != NULL) {
            drv->started = drv->pending = 0;  /* the rest is reset by the next request */
            op->drv = drv;
        }
    } else if ((op = calloc(1, sizeof *op)) == NULL) {
        luaL_error(L, "not enough memory");  /* does not return */
    }
    consul_mach_init(&op->m, cf);
    op->m.step = consul_step_single;
    op->deadline = CONSUL_NEVER;
    b->op = op;
    return op;
}

/* Gives a finished op's memory back to its conf, for the client's next call (or frees it). */
static void op_recycle(op_box *b)
{
    consul_op *op = b->op;
    consul_conf *cf;
    b->op = NULL;
    if (op == NULL)
        return;
    cf = op->m.conf;
    if (cf != NULL && !cf->closed && cf->spare == NULL && op->m.ext == NULL &&
        op->m.out.cap <= ((size_t)2 << 20) + 4096) {
        /* what the next call must not inherit goes now; the buffers stay */
        consul_json_free(&op->m.doc);
        if (op->m.token != NULL) {
            volatile char *p = op->m.token;
            while (*p)
                *p++ = 0;
            free(op->m.token);
            op->m.token = NULL;
        }
        if (op->m.lk != NULL) {
            consul_lock_unref(op->m.lk);
            op->m.lk = NULL;
        }
        if (op->file != NULL)
            fclose(op->file);
        op->file = NULL;
        consul_lines_free(&op->lines);
        op->m.conf = NULL;
        cf->spare = op;
        consul_conf_release(cf);  /* not the last reference: the client holds one */
    } else {
        op_free(op);
    }
}

void consul_op_drop_spare(lua_State *L, consul_conf *cf)
{
    cf->closed = 1;
    if (cf->box_ref > 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, cf->box_ref);  /* the box goes to the collector */
        cf->box_ref = 0;
    }
    if (cf->spare != NULL) {
        op_free(cf->spare);
        cf->spare = NULL;
    }
}

/* ---- argument errors at the user's line ------------------------------------------ */

/* The chunk name of lua/consul.lua, which calls into us on the user's behalf. */
static char module_source[512];

/* The level of the user's frame: the first above ours that is not the module's Lua half. */
static int user_level(lua_State *L)
{
    lua_Debug ar;
    int lvl = 1;
    while (module_source[0] != '\0' && lua_getstack(L, lvl, &ar) &&
           lua_getinfo(L, "S", &ar) && ar.source != NULL &&
           strcmp(ar.source, module_source) == 0)
        lvl++;
    return lvl;
}

int consul_error(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    luaL_where(L, user_level(L));
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 2);
    return lua_error(L);
}

int consul_argerror(lua_State *L, int arg, const char *msg)
{
    lua_Debug ar;
    int lvl = user_level(L);
    const char *name = "?";
    if (lua_getstack(L, lvl - 1, &ar) && lua_getinfo(L, "n", &ar)) {
        if (ar.name != NULL)
            name = ar.name;
        if (ar.namewhat != NULL && strcmp(ar.namewhat, "method") == 0) {
            arg--;  /* self does not count */
            if (arg == 0)
                return consul_error(L, "calling '%s' on bad self (%s)", name, msg);
        }
    }
    return consul_error(L, "bad argument #%d to '%s' (%s)", arg, name, msg);
}

void consul_checktype(lua_State *L, int arg, int t)
{
    if (lua_type(L, arg) != t) {
        lua_pushfstring(L, "%s expected, got %s", lua_typename(L, t), luaL_typename(L, arg));
        consul_argerror(L, arg, lua_tostring(L, -1));
    }
}

const char *consul_checkstring(lua_State *L, int arg, size_t *len)
{
    consul_checktype(L, arg, LUA_TSTRING);
    return lua_tolstring(L, arg, len);
}

void consul_checkargs(lua_State *L, int max, const char *what)
{
    if (lua_gettop(L) > max)
        consul_error(L, "too many arguments (%s)", what);
}

void consul_check_nul(lua_State *L, const char *s, size_t n, int arg, const char *what)
{
    if (memchr(s, '\0', n) != NULL) {
        lua_pushfstring(L, "%s must not hold NUL bytes", what);
        consul_argerror(L, arg, lua_tostring(L, -1));
    }
}

/* ---- per-call options --------------------------------------------------------- */

enum qkind { Q_STR, Q_UINT, Q_FLAGS, Q_INDEX, Q_BOOL, Q_BOOLV, Q_DUR, Q_TOKEN, Q_META, Q_LIST };

typedef struct qopt {
    const char *lua;   /* the option's name in Lua */
    const char *wire;  /* the query parameter */
    int kind;
} qopt;

/* Every query parameter of the Consul 1.8 HTTP API. */
static const qopt qopts[] = {
    { "dc", "dc", Q_STR },
    { "index", "index", Q_INDEX },
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
    { "flags", "flags", Q_FLAGS },
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

void consul_op_query(lua_State *L, consul_op *op, const char *name, const char *v, size_t n)
{
    consul_buf *q = &op->m.query;
    if ((q->len > 0 && consul_buf_addlit(q, "&") != 0) || consul_buf_adds(q, name) != 0 ||
        (v != NULL && (consul_buf_addlit(q, "=") != 0 ||
                       consul_buf_add_escaped(q, v, n, 0) != 0)))
        luaL_error(L, "not enough memory");
}

static void opt_error(lua_State *L, int arg, const char *name, const char *what)
{
    lua_pushfstring(L, "option '%s' %s", name, what);
    consul_argerror(L, arg, lua_tostring(L, -1));  /* does not return */
}

static const char *q_string(lua_State *L, int arg, int vi, const char *name, size_t *n)
{
    if (lua_type(L, vi) != LUA_TSTRING)
        opt_error(L, arg, name, "must be a string");
    return lua_tolstring(L, vi, n);
}

static int64_t q_wait(lua_State *L, int arg, int vi, consul_op *op)
{
    int64_t ms;
    char num[32];
    if (lua_type(L, vi) == LUA_TNUMBER) {
        lua_Number s = lua_tonumber(L, vi);
        if (!(s >= 0 && s <= 86400))
            opt_error(L, arg, "wait", "must be 0..86400 seconds or a duration");
        ms = (int64_t)(s * 1000 + 0.5);
        snprintf(num, sizeof num, "%lldms", (long long)ms);
        consul_op_query(L, op, "wait", num, strlen(num));
        return ms;
    }
    if (lua_type(L, vi) == LUA_TSTRING && consul_rawlen(L, vi) < 64 &&
        (ms = consul_duration_ms(lua_tostring(L, vi))) >= 0 && ms <= 86400000 &&
        strlen(lua_tostring(L, vi)) == consul_rawlen(L, vi)) {
        consul_op_query(L, op, "wait", lua_tostring(L, vi), consul_rawlen(L, vi));
        return ms;
    }
    opt_error(L, arg, "wait", "must be seconds or a duration like \"30s\"");
    return 0;
}

static void q_value(lua_State *L, int arg, int vi, const qopt *o, consul_op *op)
{
    size_t n;
    const char *s;
    char num[32];
    uint64_t u;
    switch (o->kind) {
    case Q_STR:
        s = q_string(L, arg, vi, o->lua, &n);
        consul_op_query(L, op, o->wire, s, n);
        break;
    case Q_UINT:
    case Q_FLAGS:
    case Q_INDEX:
        /* flags are uint64 (two's complement on 5.4 above 2^63); so is an event list's
         * index (a hash); every other number here is a Raft index or a count: never < 0 */
        if (consul_to_u64(L, vi, &u, o->kind == Q_FLAGS ||
                                         (o->kind == Q_INDEX &&
                                          (op->flags & CONSUL_CALL_HASH_INDEX))) != 0)
            opt_error(L, arg, o->lua, o->kind == Q_FLAGS
                                          ? "must be an integer (or a decimal string)"
                                          : "must be a non-negative integer (or a decimal string)");
        snprintf(num, sizeof num, "%llu", (unsigned long long)u);
        consul_op_query(L, op, o->wire, num, strlen(num));
        break;
    case Q_BOOL:
    case Q_BOOLV:
        if (lua_type(L, vi) != LUA_TBOOLEAN)
            opt_error(L, arg, o->lua, "must be a boolean");
        if (o->kind == Q_BOOLV)
            consul_op_query(L, op, o->wire, lua_toboolean(L, vi) ? "true" : "false",
                            lua_toboolean(L, vi) ? 4 : 5);
        else if (lua_toboolean(L, vi))
            consul_op_query(L, op, o->wire, "true", 4);  /* 1.8 ignores a bare ?wan, ?connect */
        break;
    case Q_DUR:
        op->m.rq.wait_ms = (long)q_wait(L, arg, vi, op);
        break;
    case Q_TOKEN:
        s = q_string(L, arg, vi, "token", &n);
        {
            size_t i;
            for (i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                    opt_error(L, arg, "token", "has control characters");
        }
        free(op->m.token);
        op->m.token = NULL;
        if ((op->m.token = malloc(n + 1)) == NULL)
            luaL_error(L, "not enough memory");
        memcpy(op->m.token, s, n + 1);
        break;
    case Q_META:
    case Q_LIST:
        if (lua_type(L, vi) == LUA_TTABLE) {
            lua_pushnil(L);
            while (lua_next(L, vi) != 0) {
                if (o->kind == Q_META) {
                    size_t kn;
                    const char *k;
                    if (lua_type(L, -2) != LUA_TSTRING)
                        opt_error(L, arg, "node_meta", "keys must be strings");
                    k = lua_tolstring(L, -2, &kn);
                    consul_check_nul(L, k, kn, arg, "option 'node_meta' keys");
                    if (memchr(k, ':', kn) != NULL)
                        opt_error(L, arg, "node_meta", "keys must not hold ':'");
                    s = q_string(L, arg, lua_gettop(L), o->lua, &n);
                    lua_pushvalue(L, -2);
                    lua_pushliteral(L, ":");
                    lua_pushvalue(L, -3);
                    lua_concat(L, 3);  /* the key may hold any byte but NUL: by length */
                    s = lua_tolstring(L, -1, &n);
                    consul_op_query(L, op, o->wire, s, n);
                    lua_pop(L, 1);
                } else {
                    if (!consul_isinteger(L, -2))
                        opt_error(L, arg, o->lua, "must be a string or an array of strings");
                    s = q_string(L, arg, lua_gettop(L), o->lua, &n);
                    consul_op_query(L, op, o->wire, s, n);
                }
                lua_pop(L, 1);
            }
        } else {
            s = q_string(L, arg, vi, o->lua, &n);
            consul_op_query(L, op, o->wire, s, n);
        }
        break;
    }
}

void consul_op_opts(lua_State *L, int idx, consul_op *op, int for_request)
{
    int saw_dc = 0, saw_consistency = 0, saw_index = 0;
    consul_conf *cf = op->m.conf;
    if (idx != 0 && !lua_isnoneornil(L, idx)) {
        idx = consul_absindex(L, idx);
        consul_checktype(L, idx, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            const qopt *o = qopts;
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            if (k == NULL)
                consul_argerror(L, idx, "option names must be strings");
            if (for_request && (strcmp(k, "query") == 0 || strcmp(k, "body") == 0 ||
                                strcmp(k, "headers") == 0)) {
                lua_pop(L, 1);
                continue;
            }
            while (o->lua != NULL && strcmp(o->lua, k) != 0)
                o++;
            if (o->lua == NULL) {
                lua_pushfstring(L, "unknown option '%s'", k);
                consul_argerror(L, idx, lua_tostring(L, -1));
            }
            saw_dc |= strcmp(k, "dc") == 0;
            saw_consistency |= strcmp(k, "consistent") == 0 || strcmp(k, "stale") == 0;
            saw_index |= strcmp(k, "index") == 0;
            q_value(L, idx, lua_gettop(L), o, op);
            lua_pop(L, 1);
        }
    }
    /* A blocking query without a wait waits Consul's default 5 minutes: so may we. */
    if (saw_index && op->m.rq.wait_ms == 0)
        op->m.rq.wait_ms = CONSUL_MAX_WAIT_MS;
    if (!saw_dc && cf->dc != NULL)
        consul_op_query(L, op, "dc", cf->dc, strlen(cf->dc));
    if (!saw_consistency && cf->consistency != 0 && strcmp(op->m.rq.method, "GET") == 0)
        consul_op_query(L, op, cf->consistency == 1 ? "consistent" : "stale", NULL, 0);
}

void consul_op_path(lua_State *L, consul_op *op, const char *s)
{
    if (consul_buf_adds(&op->m.path, s) != 0)
        luaL_error(L, "not enough memory");
}

void consul_op_path_arg(lua_State *L, consul_op *op, int arg, int keep_slash)
{
    size_t n;
    const char *s;
    s = consul_checkstring(L, arg, &n);
    if (keep_slash)
        while (n > 0 && *s == '/')
            s++, n--;  /* "/a" is "a", as Consul's Go client has it */
    else if (n == 0)
        consul_argerror(L, arg, "must not be empty");
    if (consul_buf_add_escaped(&op->m.path, s, n, keep_slash) != 0)
        luaL_error(L, "not enough memory");
}

void consul_op_keep(lua_State *L, consul_op *op, int idx)
{
    if (op->nkeep == (int)(sizeof op->keep / sizeof op->keep[0]))
        luaL_error(L, "consul: too many values kept by one call");  /* a bug of ours */
    op->keep[op->nkeep++] = consul_absindex(L, idx);
}

void consul_op_kept(lua_State *L, consul_op *op, int i)
{
    if (!op->async) {
        lua_pushvalue(L, op->keep[i]);
        return;
    }
    consul_getuservalue(L, op->box);
    lua_rawgeti(L, -1, i + 1);
    lua_remove(L, -2);
}

/* The box's user value: a table of the Lua values the op points into (Lua 5.1 wants a
 * table there), for as long as the op lives. */
static void anchor_kept(lua_State *L, consul_op *op, int box)
{
    int i;
    if (op->nkeep == 0)
        return;
    lua_createtable(L, op->nkeep, 0);
    for (i = 0; i < op->nkeep; i++) {
        lua_pushvalue(L, op->keep[i]);
        lua_rawseti(L, -2, i + 1);
    }
    consul_setuservalue(L, box);
}

/* ---- meta and failures ------------------------------------------------------- */

void consul_push_meta(lua_State *L, const consul_resp *rs)
{
    const char *code = consul_code_name(rs->code);
    /* sized to what it gets: 4 fields on a success, not a hash part of 8 */
    lua_createtable(L, 0, (rs->status > 0) + rs->has_index + (rs->known_leader >= 0) +
                              (rs->last_contact >= 0) + (code != NULL));
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

int consul_push_failure(lua_State *L, const char *msg, const consul_resp *rs)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    consul_push_meta(L, rs);
    return 3;
}

int consul_push_op_failure(lua_State *L, consul_op *op)
{
    char msg[1024];
    consul_mach_message(&op->m, msg, sizeof msg);
    return consul_push_failure(L, msg, &op->m.last);
}

void consul_gc_hint(lua_State *L, size_t bytes)
{
    size_t kib = (bytes + 1023) >> 10;
    if (lua_gc(L, LUA_GCISRUNNING, 0))
        lua_gc(L, LUA_GCSTEP, kib > INT_MAX ? INT_MAX : (int)kib);
}

/* An answer's body as the call's string. A big one is first told to the collector (a step for
 * that many KiB, unless the user stopped it): the answer's buffer is memory Lua does not see, and
 * without the step a loop of 1 MiB reads held its last value, garbage, as each new one was made
 * (measured in make bench: about 1 MiB more peak RSS). A step may run finalizers; nothing here
 * is borrowed from Lua. */
#define BIG_BODY ((size_t)256 << 10)

static void push_body(lua_State *L, const char *p, size_t n)
{
    if (n >= BIG_BODY)
        consul_gc_hint(L, n);
    lua_pushlstring(L, p, n);
}

/* The op's answer is not of the shape its call expects (-code: why is in the error). */
static int decode_failure(lua_State *L, consul_op *op, int code)
{
    consul_resp *rs = &op->m.last;
    if (code < 0) {
        rs->code = -code;
        op->m.msg[0] = '\0';
        return consul_push_op_failure(L, op);
    }
    rs->code = code;
    if (code == CONSUL_ETIMEOUT)
        snprintf(rs->error, sizeof rs->error, "decoding the answer ran past the timeout");
    else if (op->m.doc.root == NULL)
        snprintf(rs->error, sizeof rs->error, "malformed JSON answer");
    else
        snprintf(rs->error, sizeof rs->error, "an answer of the wrong shape");
    op->m.msg[0] = '\0';
    return consul_push_op_failure(L, op);
}

/* ---- results ----------------------------------------------------------------- */

/* Values in a JSON text, at most (an over-count: every comma, bracket and brace): a large
 * answer may hold at most one value per 32 bytes of max_answer, so that its parse (cJSON:
 * a node per value, without a clock to look at) is bounded in memory and time too. */
static size_t json_values(const char *p, size_t n)
{
    size_t i, count = 1;
    for (i = 0; i < n; i++)
        count += p[i] == ',' || p[i] == '[' || p[i] == '{';
    return count;
}

/* What is looked at before a JSON answer is read: the time, and how many values it holds. */
static int parse_check(consul_op *op)
{
    consul_resp *rs = &op->m.last;
    size_t cap = op->m.conf->max_answer / 32;
    if (consul_now_ms() > op->deadline)
        return CONSUL_ETIMEOUT;
    if (rs->body_len > ((size_t)1 << 20) && json_values(rs->body, rs->body_len) > cap) {
        snprintf(rs->error, sizeof rs->error, "an answer of over %zu values (max_answer / 32)",
                 cap);
        return -CONSUL_EDECODE;
    }
    return CONSUL_OK;
}

/* The answer's tree, once parse_check has passed. */
static int parse(consul_op *op)
{
    consul_resp *rs = &op->m.last;
    if (consul_json_parse(&op->m.doc, rs->body, rs->body_len) != 0)
        return CONSUL_EDECODE;
    return consul_now_ms() > op->deadline ? CONSUL_ETIMEOUT : CONSUL_OK;
}

/* An answer that is only true or false (and JSON white space): 1, 0; else -1. */
static int bool_text(const char *b, size_t n)
{
    while (n > 0 && (b[n - 1] == ' ' || b[n - 1] == '\n' || b[n - 1] == '\r' || b[n - 1] == '\t'))
        n--;
    while (n > 0 && (*b == ' ' || *b == '\n' || *b == '\r' || *b == '\t'))
        b++, n--;
    if (n == 4 && memcmp(b, "true", 4) == 0)
        return 1;
    if (n == 5 && memcmp(b, "false", 5) == 0)
        return 0;
    return -1;
}

/* result, nil, meta with the result at -1 */
static int ok3(lua_State *L, consul_op *op)
{
    lua_pushnil(L);
    consul_push_meta(L, &op->m.last);
    return 3;
}

static int push_keys(lua_State *L, consul_op *op)
{
    cJSON *root = op->m.doc.root, *k;
    int i = 0;
    if (!cJSON_IsArray(root))
        return CONSUL_EDECODE;
    lua_createtable(L, cJSON_GetArraySize(root), 0);
    cJSON_ArrayForEach(k, root) {
        size_t n;
        const char *s = consul_json_str(&op->m.doc, k, &n);
        if (s == NULL) {
            lua_pop(L, 1);
            return CONSUL_EDECODE;
        }
        lua_pushlstring(L, s, n);
        lua_rawseti(L, -2, ++i);
    }
    return CONSUL_OK;
}

static int results(lua_State *L, consul_op *op);

int consul_op_results(lua_State *L, consul_op *op)
{
    int n = results(L, op);
    if (op->answer == CONSUL_ANS_PAIRS && n == 3 && lua_isnil(L, -3))
        return consul_error(L, "%s", lua_tostring(L, -2));  /* a for loop has no nil, err */
    return n;
}

static int results(lua_State *L, consul_op *op)
{
    consul_resp *rs = &op->m.last;
    int absent_ok, status_data, rc;
    const char *method = op->m.rq.method;
    cJSON *root;

    if (op->answer == CONSUL_ANS_CUSTOM &&
        (op->m.step != consul_step_single || (op->flags & CONSUL_CALL_FINISH_ALL)))
        return op->finish(L, op);  /* a machine's, or a call's own: it says what its end means */
    if (op->m.rc != CONSUL_OK && op->m.msg[0] != '\0')
        return consul_push_op_failure(L, op);  /* the machine's own failure */
    absent_ok = rs->status == 404 &&
                (strcmp(method, "GET") == 0 || (op->flags & CONSUL_CALL_ABSENT_OK));
    status_data = (op->flags & CONSUL_CALL_STATUS_DATA) && (rs->status == 429 || rs->status == 503);
    if (rs->code == CONSUL_EHTTP && (absent_ok || status_data))
        rs->code = CONSUL_OK;
    if (status_data && !rs->json && rs->body_len > 0 && (rs->body[0] == '{' || rs->body[0] == '['))
        rs->json = 1;  /* Consul sends those answers without their Content-Type */
    if (rs->code != CONSUL_OK)
        return consul_push_op_failure(L, op);
    if (absent_ok) {
        if (op->answer == CONSUL_ANS_RECORDS || op->answer == CONSUL_ANS_KEYS ||
            op->answer == CONSUL_ANS_PAIRS) {
            lua_newtable(L);  /* an absent prefix lists nothing */
            if (op->answer == CONSUL_ANS_PAIRS) {
                consul_kv_pairs_iter(L);
                return 1;
            }
            return ok3(L, op);
        }
        lua_pushnil(L);
        return ok3(L, op);
    }

    switch (op->answer) {
    case CONSUL_ANS_TEXT:
    case CONSUL_ANS_RAW:
        push_body(L, rs->body, rs->body_len);
        return ok3(L, op);
    case CONSUL_ANS_SNAPSHOT:
        if (op->file != NULL)
            lua_pushboolean(L, 1);
        else
            push_body(L, rs->body, rs->body_len);
        return ok3(L, op);
    case CONSUL_ANS_CUSTOM:
        return op->finish(L, op);
    case CONSUL_ANS_AUTO:
        if (rs->body_len == 0) {
            lua_pushboolean(L, 1);
            return ok3(L, op);
        }
        if (!rs->json) {
            push_body(L, rs->body, rs->body_len);
            return ok3(L, op);
        }
        break;
    }

    /* the rest is JSON; a record list, a bool or an ID as Consul writes them need no tree */
    if ((rc = parse_check(op)) != CONSUL_OK)
        return decode_failure(L, op, rc);
    if (op->answer == CONSUL_ANS_BOOL || op->answer == CONSUL_ANS_ID) {
        static const char *const id_path[] = { "ID" };
        const char *id;
        size_t n;
        if (op->answer == CONSUL_ANS_ID) {
            if (consul_json_scan_str(rs->body, rs->body_len, id_path, 1, &id, &n) &&
                consul_valid_id(id, n)) {
                lua_pushlstring(L, id, n);
                return ok3(L, op);
            }
        } else if ((rc = bool_text(rs->body, rs->body_len)) >= 0) {
            lua_pushboolean(L, rc);
            return ok3(L, op);
        }
    }
    if ((op->answer == CONSUL_ANS_RECORDS || op->answer == CONSUL_ANS_PAIRS) &&
        consul_json_push_records(L, rs->body, rs->body_len, op->deadline)) {
        if (op->answer == CONSUL_ANS_PAIRS) {
            consul_kv_pairs_iter(L);
            return 1;
        }
        return ok3(L, op);
    }
    if ((rc = parse(op)) != CONSUL_OK)
        return decode_failure(L, op, rc);
    root = op->m.doc.root;
    switch (op->answer) {
    case CONSUL_ANS_AUTO:
        if (cJSON_IsNull(root)) {
            lua_pushnil(L);  /* a null answer: absent */
            return ok3(L, op);
        }
        rc = consul_json_push(L, &op->m.doc, root, op->json_flags, op->deadline);
        break;
    case CONSUL_ANS_BOOL:
        if (!cJSON_IsBool(root))
            return decode_failure(L, op, CONSUL_EDECODE);
        lua_pushboolean(L, cJSON_IsTrue(root));
        return ok3(L, op);
    case CONSUL_ANS_ID: {
        size_t n;
        const char *id = consul_json_field_str(&op->m.doc, root, "ID", &n);
        if (!cJSON_IsObject(root) || id == NULL || !consul_valid_id(id, n))
            return decode_failure(L, op, CONSUL_EDECODE);
        lua_pushlstring(L, id, n);
        return ok3(L, op);
    }
    case CONSUL_ANS_FIRST:
        if (cJSON_IsNull(root) || (cJSON_IsArray(root) && root->child == NULL)) {
            lua_pushnil(L);
            return ok3(L, op);
        }
        if (!cJSON_IsArray(root) || !cJSON_IsObject(root->child))
            return decode_failure(L, op, CONSUL_EDECODE);
        rc = consul_json_push(L, &op->m.doc, root->child, op->json_flags, op->deadline);
        break;
    case CONSUL_ANS_RECORD:
        if (!cJSON_IsArray(root))
            return decode_failure(L, op, CONSUL_EDECODE);
        if (root->child == NULL) {
            lua_pushnil(L);
            return ok3(L, op);
        }
        if (root->child->next != NULL)
            return decode_failure(L, op, CONSUL_EDECODE);  /* one key, one record */
        rc = consul_json_push(L, &op->m.doc, root->child,
                              CONSUL_JSON_KVREC | CONSUL_JSON_B64VALUE, op->deadline);
        break;
    case CONSUL_ANS_RECORDS:
    case CONSUL_ANS_PAIRS:
        if (!cJSON_IsArray(root))
            return decode_failure(L, op, CONSUL_EDECODE);
        rc = consul_json_push(L, &op->m.doc, root, CONSUL_JSON_KVREC | CONSUL_JSON_B64VALUE,
                              op->deadline);
        if (rc == CONSUL_OK && op->answer == CONSUL_ANS_PAIRS) {
            consul_kv_pairs_iter(L);
            return 1;
        }
        break;
    case CONSUL_ANS_KEYS:
        rc = push_keys(L, op);
        break;
    default:
        rc = CONSUL_EDECODE;
    }
    if (rc != CONSUL_OK)
        return decode_failure(L, op, rc);
    return ok3(L, op);
}

/* ---- running ------------------------------------------------------------------- */

int consul_op_async(lua_State *L)
{
    return ngx_mode && lua_isyieldable(L);
}

int consul_op_lines_sink(void *ud, const char *p, size_t n)
{
    consul_op *op = ud;
    if (consul_lines_add(&op->lines, p, n) != 0) {
        op->overflow = 1;  /* nobody reads: stop rather than hold without bound */
        return 1;
    }
    return 0;
}

int consul_op_call(lua_State *L, consul_client *c, consul_op *op, int box)
{
    if (c->closed)
        return consul_error(L, "consul client is closed");  /* by Lua code run meanwhile */
    return consul_op_call_on(L, c, &c->http, op, box);
}

int consul_op_call_on(lua_State *L, consul_client *c, consul_http *h, consul_op *op, int box)
{
    op_box *b;
    int n;
    lua_settop(L, box);
    b = lua_touserdata(L, box);
    if (op->m.path.len + op->m.query.len > CONSUL_MAX_URL)
        return consul_error(L, "request too large: its URL would be over %d bytes (Consul reads "
                             "at most 1 MiB of a request's head)", CONSUL_MAX_URL);
    if (consul_buf_reserve(&op->m.path, 0) != 0 || consul_buf_reserve(&op->m.query, 0) != 0)
        return luaL_error(L, "not enough memory");
    if (op->m.step == consul_step_single) {
        op->m.rq.path = op->m.path.data;
        op->m.rq.query = op->m.query.len > 0 ? op->m.query.data : NULL;
        op->m.rq.token = op->m.token;
        op->m.rq.headers = op->m.hdrs.len > 0 ? op->m.hdrs.data : NULL;
        if (op->deadline == CONSUL_NEVER && !op->m.rq.stream)
            op->deadline = consul_now_ms() + op->m.conf->timeout_ms + op->m.rq.wait_ms +
                           op->m.rq.wait_ms / 16;
        op->m.hard = op->deadline;
    }
    if (ngx_mode && lua_isyieldable(L)) {
        /* nginx: the driver in lua/consul.lua takes it from here */
        anchor_kept(L, op, box);
        lua_pushlightuserdata(L, PENDING);
        lua_pushvalue(L, box);
        return 2;
    }
    consul_mach_run(&op->m, h, c != NULL);
    op->box = box;
    n = consul_op_results(L, op);
    {
        /* (an open conf is the client's, which outlives the recycle; a closed one may not) */
        consul_conf *cf = op->m.conf != NULL && !op->m.conf->closed ? op->m.conf : NULL;
        op_recycle(b);
        keep_box(L, cf, box);
    }
    return n;
}

/* ---- the driver's side in Lua (nginx) ---------------------------------------------- */

static consul_op *checkop(lua_State *L)
{
    op_box *b = luaL_checkudata(L, 1, CONSUL_OP_MT);
    if (b->op == NULL)
        luaL_error(L, "consul: this call is over");
    return b->op;
}

static op_async *async_of(lua_State *L, consul_op *op)
{
    if (op->drv == NULL && (op->drv = calloc(1, sizeof(op_async))) == NULL)
        luaL_error(L, "not enough memory");
    return op->drv;
}

/* _op.next(op) --> 1, head, body, ms (send) | 2, seconds (sleep) | 3 (done) */
static int aop_next(lua_State *L)
{
    consul_op *op = checkop(L);
    op_async *a = async_of(L, op);
    int act;
    if (a->pending) {
        a->pending = 0;
        act = op->m.step(&op->m, &a->rs);
    } else {
        a->started = 1;
        act = op->m.step(&op->m, NULL);
    }
    if (act == CONSUL_SEND) {
        consul_req *rq = &op->m.rq;
        if (consul_wire_head(&a->head, op->m.conf, rq) != 0)
            return luaL_error(L, "not enough memory");
        consul_wire_begin(&a->wire, &a->rs, &op->m.out);
        a->pending = 1;
        __atomic_add_fetch(&op->m.conf->requests, 1, __ATOMIC_RELAXED);
        lua_pushinteger(L, 1);
        lua_pushlstring(L, a->head.data, a->head.len);
        if (rq->body == NULL || rq->body_len == 0) {
            lua_pushnil(L);
        } else {
            /* an anchored Lua string sent as it is, else the machine's own bytes */
            int i, found = 0;
            consul_getuservalue(L, 1);
            for (i = 1; !found && lua_type(L, -1) == LUA_TTABLE; i++) {
                lua_rawgeti(L, -1, i);
                if (lua_isnil(L, -1)) {
                    lua_pop(L, 1);
                    break;
                }
                found = lua_type(L, -1) == LUA_TSTRING && lua_tostring(L, -1) == rq->body &&
                        consul_rawlen(L, -1) == rq->body_len;
                if (!found)
                    lua_pop(L, 1);
            }
            if (found) {
                lua_remove(L, -2);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, rq->body, rq->body_len);
            }
        }
        lua_pushinteger(L, rq->timeout_ms);
        return 4;
    }
    if (act == CONSUL_SLEEP) {
        lua_pushinteger(L, 2);
        lua_pushnumber(L, (lua_Number)op->m.sleep_ms / 1000);
        return 2;
    }
    lua_pushinteger(L, 3);
    return 1;
}

/* _op.feed(op, bytes | nil) --> 0 more, ms left | 1 done, reuse | 2 done, close | -1 failed */
static int aop_feed(lua_State *L)
{
    consul_op *op = checkop(L);
    op_async *a = async_of(L, op);
    size_t n = 0;
    const char *p = lua_isnil(L, 2) ? NULL : luaL_checklstring(L, 2, &n);
    int r;
    if (!a->pending)
        return luaL_error(L, "consul: no request is waiting for an answer");
    r = consul_wire_feed(&a->wire, &op->m.rq, &a->rs, &op->m.out, op->m.conf->max_answer, p, n);
    if (r == CONSUL_WIRE_MORE) {
        lua_pushinteger(L, 0);
        return 1;
    }
    lua_pushinteger(L, r == CONSUL_WIRE_DONE ? (a->wire.keepalive ? 1 : 2) : -1);
    return 1;
}

/* _op.fail(op, what, why): the transfer failed before a whole answer came */
static int aop_fail(lua_State *L)
{
    static const char *const whats[] = { "connect", "timeout", "closed", "tls", NULL };
    static const int codes[] = { CONSUL_ECONNECT, CONSUL_ETIMEOUT, CONSUL_ECLOSED, CONSUL_ETLS };
    consul_op *op = checkop(L);
    op_async *a = async_of(L, op);
    int w = luaL_checkoption(L, 2, NULL, whats);
    const char *why = luaL_optstring(L, 3, "");
    if (!a->pending)
        return luaL_error(L, "consul: no request is waiting for an answer");
    {
        long status = a->rs.status >= 200 ? a->rs.status : 0;  /* an interim 1xx is no answer */
        consul_resp_reset(&a->rs);
        a->rs.status = status;
    }
    if (w == 3)
        consul_resp_fail(&a->rs, CONSUL_ETLS, "TLS with %s: %s", op->m.conf->hostport, why);
    else if (w == 0)
        consul_resp_fail(&a->rs, CONSUL_ECONNECT, "connect to %s failed: %s",
                         op->m.conf->hostport, why);
    else
        consul_resp_fail(&a->rs, codes[w], "%s: %s", op->m.conf->hostport, why);
    return 0;
}

/* _op.conn(op) --> pool name, timeout ms (every request);
 * _op.conn(op, true) --> host (or "unix:/path"), port, https, server name, verify, cert file,
 * key file (what a pool name stands for: asked once per name) */
static int aop_conn(lua_State *L)
{
    consul_op *op = checkop(L);
    consul_conf *cf = op->m.conf;
    if (!lua_toboolean(L, 2)) {
        lua_pushstring(L, cf->pool);
        lua_pushinteger(L, cf->timeout_ms);
        return 2;
    }
    if (cf->unix_path != NULL) {
        lua_pushfstring(L, "unix:%s", cf->unix_path);
        lua_pushnil(L);
    } else {
        lua_pushstring(L, cf->host);
        lua_pushinteger(L, cf->port);
    }
    lua_pushboolean(L, cf->https);
    if (cf->server_name != NULL)
        lua_pushstring(L, cf->server_name);
    else if (cf->host != NULL)
        lua_pushstring(L, cf->host);
    else
        lua_pushnil(L);
    lua_pushboolean(L, cf->verify);
    if (cf->cert_file != NULL)
        lua_pushstring(L, cf->cert_file);
    else
        lua_pushnil(L);
    if (cf->key_file != NULL)
        lua_pushstring(L, cf->key_file);
    else
        lua_pushnil(L);
    return 7;
}

/* _op.finish(op) --> the call's results */
static int aop_finish(lua_State *L)
{
    op_box *b = luaL_checkudata(L, 1, CONSUL_OP_MT);
    consul_op *op = b->op;
    int n;
    if (op == NULL)
        return luaL_error(L, "consul: this call is over");
    lua_settop(L, 1);
    op->box = 1;
    op->async = 1;
    n = consul_op_results(L, op);
    op_recycle(b);  /* the results are Lua's own copies */
    return n;
}

/* _op.status(op) --> the status of the answer being read, once its head is in (else nil) */
static int aop_status(lua_State *L)
{
    consul_op *op = checkop(L);
    op_async *a = async_of(L, op);
    if (!a->pending || !consul_wire_head_done(&a->wire) || a->rs.status < 200)
        return 0;
    lua_pushinteger(L, a->rs.status);
    return 1;
}

/* _op.line(op, partial) --> the next line of a stream, or nil (none yet; with partial, the
 * rest); nil, err, meta when lines came faster than they were read, over max_answer */
static int aop_line(lua_State *L)
{
    consul_op *op = checkop(L);
    const char *line;
    size_t n;
    if (consul_lines_next(&op->lines, lua_toboolean(L, 2), &line, &n)) {
        lua_pushlstring(L, line, n);
        return 1;
    }
    if (op->overflow) {
        consul_resp t;
        char msg[512];
        consul_resp_reset(&t);
        consul_resp_fail(&t, CONSUL_EDECODE, "over %zu bytes of lines unread (max_answer)",
                         op->lines.max);
        consul_format_failure(msg, sizeof msg, "GET", op->m.rq.path, &t);
        op->overflow = 0;
        consul_lines_free(&op->lines);  /* the stream ends here: no partial line after it */
        op->lines.max = 0;
        return consul_push_failure(L, msg, &t);
    }
    return 0;
}

/* _op.connected(op): the driver opened a new connection for it */
static int aop_connected(lua_State *L)
{
    consul_op *op = checkop(L);
    __atomic_add_fetch(&op->m.conf->connects, 1, __ATOMIC_RELAXED);
    return 0;
}

static int aop_enable(lua_State *L)
{
    ngx_mode = lua_toboolean(L, 1);
    return 0;
}

/* _op.module_source(src): lua/consul.lua's chunk name, whose frames argument errors skip */
static int aop_module_source(lua_State *L)
{
    size_t n;
    const char *src = luaL_checklstring(L, 1, &n);
    if (n < sizeof module_source)
        memcpy(module_source, src, n + 1);
    return 0;
}

static const luaL_Reg aop_funcs[] = {
    { "next", aop_next },
    { "feed", aop_feed },
    { "fail", aop_fail },
    { "conn", aop_conn },
    { "finish", aop_finish },
    { "enable", aop_enable },
    { "status", aop_status },
    { "connected", aop_connected },
    { "line", aop_line },
    { "module_source", aop_module_source },
    { NULL, NULL }
};

void consul_op_open(lua_State *L)
{
    /* module */
    luaL_newmetatable(L, CONSUL_OP_MT);
    lua_pushcfunction(L, op_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, CONSUL_OP_MT);
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "consul.Op");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    consul_newlib(L, aop_funcs);
    lua_pushlightuserdata(L, PENDING);
    lua_setfield(L, -2, "PENDING");
    lua_setfield(L, -2, "_op");
}
