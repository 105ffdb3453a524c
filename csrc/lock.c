/*
 * lock.c: distributed locks, in the wire format of Consul's own `consul lock` and Go client
 * (api/lock.go): the key carries Flags 0x2ddccbc058a50c18 and the holder's session.
 *
 * Acquire (in the caller's thread, over the client's connection): read the key; other flags
 * is a conflict; our session means held; another session means wait for the key to change
 * with a blocking query; free means take it. Taking it is one transaction (lock + the entry
 * back), so the fence (the key's ModifyIndex with our session in it) costs no extra request.
 * A refused take with no holder is lock-delay: wait it out, do not spin. A session the lock
 * created is renewed while waiting, and destroyed when the attempt fails.
 *
 * Once held, renew.c's thread keeps the session alive and watches the key. Release is
 * PUT ?release=<session>&flags=<lock flags> with the value, as Go's Unlock does (a PUT
 * without flags would reset them to 0), then destroying a session the lock created.
 */
#include "consul.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


/* One transaction: lock the key with our session, flags and value; 1 taken (fence set),
 * 0 refused, or a failure code (negative). */
static int take(consul_lock *lk, attempt *a)
{
    cJSON *kv;
    uint64_t mi;
    consul_buf_reset(&a->body);
    if (consul_buf_adds(&a->body, "[{\"KV\":{\"Verb\":\"lock\",\"Key\":") != 0)
        return -CONSUL_ENOMEM;
    {
        /* the key as a JSON string: escape what JSON needs */
        const char *k;
        if (consul_buf_add(&a->body, "\"", 1) != 0)
            return -CONSUL_ENOMEM;
        for (k = lk->key; *k; k++) {
            unsigned char ch = (unsigned char)*k;
            int rc = ch == '"' || ch == '\\' ? consul_buf_addf(&a->body, "\\%c", ch)
                     : ch < 0x20            ? consul_buf_addf(&a->body, "\\u%04x", ch)
                                            : consul_buf_add(&a->body, k, 1);
            if (rc != 0)
                return -CONSUL_ENOMEM;
        }
    }
    if (consul_buf_addf(&a->body, "\",\"Flags\":%llu,\"Session\":\"%s\",\"Value\":\"",
                        (unsigned long long)lk->flags, lk->session) != 0 ||
        consul_buf_add_base64(&a->body, (const unsigned char *)lk->value, lk->value_len) != 0 ||
        consul_buf_adds(&a->body, "\"}}]") != 0)
        return -CONSUL_ENOMEM;
    consul_att_send(a, "PUT", "/v1/txn", NULL, a->body.data, a->body.len, 0);
    if (a->rs.status == 409)
        return 0;  /* refused: held, or lock-delay */
    if (a->rs.code != CONSUL_OK)
        return -consul_att_failed(a);
    if (consul_att_parse(a) != CONSUL_OK)
        return -a->rs.code;
    kv = cJSON_GetObjectItemCaseSensitive(a->doc.root, "Results");
    kv = cJSON_IsArray(kv) && kv->child ? cJSON_GetObjectItemCaseSensitive(kv->child, "KV") : NULL;
    if (consul_json_u64(&a->doc, cJSON_GetObjectItemCaseSensitive(kv, "ModifyIndex"), &mi) != 0) {
        a->rs.code = CONSUL_EDECODE;
        return -consul_att_failed(a);
    }
    lk->fence = mi;
    return 1;
}

/* Acquires lk over h, waiting wait_ms (-1: for ever, 0: one try). CONSUL_OK when held. */
static int acquire(consul_lock *lk, attempt *a, int64_t wait_ms)
{
    int64_t start = consul_now_ms(), now;
    int64_t deadline = wait_ms < 0 ? INT64_MAX : start + wait_ms;
    int64_t next_renew, holder_delay = -1, freed_at = 0, backoff = 250;
    uint64_t index = 0;
    char holder[64] = "";
    int tries = 0, retake = 0, rc;

    if (lk->session[0] == '\0' && (rc = consul_att_session_create(lk, a)) != CONSUL_OK)
        return rc;
    next_renew = LOAD(&lk->lease_ms) + LOAD(&lk->ttl_ms) / 2;

    for (;;) {
        char query[96] = "";
        long w = 0;
        cJSON *rec = NULL, *s, *f;
        uint64_t flags = 0;

        now = consul_now_ms();
        if (tries > 0 && now >= deadline)
            goto timeout;
        if ((rc = consul_att_keep_alive(lk, a, now, &next_renew)) != CONSUL_OK)
            return rc;
        tries++;
        if (!retake) {
            if (index > 0) {
                w = consul_att_wait_ms(lk, now, deadline, next_renew);
                snprintf(query, sizeof query, "index=%llu&wait=%ldms", (unsigned long long)index,
                         w);
            }
            consul_att_send(a, "GET", lk->path, query, NULL, 0, w);
            now = consul_now_ms();  /* a blocking read may have waited long */
            if (a->rs.code != CONSUL_OK && a->rs.status != 404)
                return consul_att_failed(a);
            if (a->rs.status == 200) {
                if (consul_att_parse(a) != CONSUL_OK)
                    return a->rs.code;
                rec = cJSON_IsArray(a->doc.root) ? a->doc.root->child : NULL;
            }
            if (rec != NULL) {
                f = cJSON_GetObjectItemCaseSensitive(rec, "Flags");
                if (consul_json_u64(&a->doc, f, &flags) != 0 || flags != lk->flags) {
                    snprintf(a->msg, sizeof a->msg,
                             "consul: lock %s: the key exists and is not a lock (flags %llu)",
                             lk->key, (unsigned long long)flags);
                    return CONSUL_ECONFLICT;
                }
                s = cJSON_GetObjectItemCaseSensitive(rec, "Session");
                if (cJSON_IsString(s) && strcmp(s->valuestring, lk->session) == 0) {
                    uint64_t mi;
                    if (consul_json_u64(&a->doc,
                                        cJSON_GetObjectItemCaseSensitive(rec, "ModifyIndex"),
                                        &mi) == 0)
                        lk->fence = mi;
                    return CONSUL_OK;  /* ours already */
                }
                if (cJSON_IsString(s) && s->valuestring[0] != '\0') {
                    /* Held by another: wait for the key to change. */
                    int new_holder = strcmp(holder, s->valuestring) != 0 &&
                                     strlen(s->valuestring) < sizeof holder;
                    if (new_holder)
                        strcpy(holder, s->valuestring);
                    if (wait_ms == 0)
                        goto timeout;
                    index = a->rs.has_index ? a->rs.index : 0;
                    if (new_holder)  /* its lock-delay: how long to wait once it is gone */
                        holder_delay = consul_att_lock_delay(a, holder);
                    freed_at = 0;
                    continue;
                }
            }
            /* Free. */
            if (holder[0] != '\0' && freed_at == 0)
                freed_at = now;
        }
        retake = 0;
        rc = take(lk, a);
        if (rc == 1)
            return CONSUL_OK;
        if (rc < 0)
            return -rc;
        if (wait_ms == 0)
            goto timeout;
        /* Refused. Held again by someone (the next read waits on it), or free but for the
         * last holder's lock-delay: then sleep until it ends (when we saw that holder), or
         * back off, and take again without reading first. */
        consul_att_send(a, "GET", lk->path, NULL, NULL, 0, 0);
        now = consul_now_ms();
        if (a->rs.code == CONSUL_OK && consul_att_parse(a) == CONSUL_OK &&
            cJSON_IsArray(a->doc.root) && a->doc.root->child != NULL &&
            cJSON_IsString(s = cJSON_GetObjectItemCaseSensitive(a->doc.root->child, "Session")) &&
            s->valuestring[0] != '\0') {
            index = 0;
            continue;
        }
        {
            int64_t until;
            if (holder_delay >= 0 && freed_at > 0 && freed_at + holder_delay + 10 > now) {
                until = freed_at + holder_delay + 10;
            } else {
                until = now + backoff;
                backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
            }
            if (until > deadline)
                until = deadline;
            if (lk->own_session && until > next_renew)
                until = next_renew;
            consul_millisleep(until - now);
            retake = consul_now_ms() < deadline;
            index = 0;
        }
    }

timeout:
    if (holder[0] != '\0')
        snprintf(a->msg, sizeof a->msg, "consul: lock %s: not acquired in %.3g s: held by session %s",
                 lk->key, (double)wait_ms / 1000, holder);
    else
        snprintf(a->msg, sizeof a->msg, "consul: lock %s: not acquired in %.3g s", lk->key,
                 (double)wait_ms / 1000);
    return CONSUL_ETIMEOUT;
}

int consul_lock_release_now(consul_lock *lk, attempt *base, consul_resp *rs, char *msg,
                            size_t n)
{
    attempt a;
    char query[160];
    int rc = CONSUL_OK;
    memset(&a, 0, sizeof a);
    a.h = base->h;
    a.requests = base->requests;
    a.connects = base->connects;
    STORE(&lk->held, 0);
    if (lk->session[0] != '\0' && lk->kind == CONSUL_KIND_SEMAPHORE) {
        rc = consul_sem_release(lk, &a);
    } else if (lk->session[0] != '\0') {
        snprintf(query, sizeof query, "release=%s&flags=%llu", lk->session,
                 (unsigned long long)lk->flags);
        if (consul_att_send(&a, "PUT", lk->path, query, lk->value ? lk->value : "",
                            lk->value_len, 0) != CONSUL_OK)
            rc = consul_att_failed(&a);
    }
    /* The session goes only once the key is released: else a retry needs it. */
    if (rc == CONSUL_OK)
        rc = consul_att_session_destroy(lk, &a);
    if (rc != CONSUL_OK)
        *rs = a.rs;
    lk->release_pending = rc != CONSUL_OK && lk->session[0] != '\0';
    snprintf(msg, n, "%s", rc == CONSUL_OK ? "" : a.msg);
    consul_att_release(&a);
    return rc;
}

/* ---- Lua ------------------------------------------------------------------- */

typedef struct lock_ud {
    consul_lock *lk;
} lock_ud;

static consul_lock *checklock(lua_State *L, int idx)
{
    lock_ud *u = luaL_checkudata(L, idx, CONSUL_LOCK_MT);
    if (u->lk == NULL)
        luaL_error(L, "consul lock is gone");
    return u->lk;
}

/* The handle to talk over: the client's while it is open (its c:stats() then counts the
 * requests), else the lock's own. */
static void lock_handle(lua_State *L, int idx, consul_lock *lk, attempt *a)
{
    consul_client *c;
    consul_getuservalue(L, idx);
    lua_rawgeti(L, -1, 1);
    c = consul_testudata(L, -1, CONSUL_CLIENT_MT);
    lua_pop(L, 2);
    if (c != NULL && !c->closed) {
        a->h = &c->http;
        a->requests = &c->requests;
        a->connects = &c->connects;
    } else {
        if (consul_lock_handle(lk, &lk->http) != 0)
            luaL_error(L, "cannot create a libcurl handle");
        a->h = &lk->http;
    }
}

static int64_t opt_seconds_ms(lua_State *L, int idx, const char *name, int64_t dflt)
{
    int64_t ms = dflt;
    lua_getfield(L, idx, name);
    if (lua_type(L, -1) == LUA_TNUMBER) {
        lua_Number s = lua_tonumber(L, -1);
        if (!(s >= 0 && s <= 86400 * 365))
            luaL_error(L, "bad option '%s' (seconds >= 0 expected)", name);
        ms = (int64_t)(s * 1000 + 0.5);
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        ms = consul_duration_ms(lua_tostring(L, -1));
        if (ms < 0)
            luaL_error(L, "bad option '%s' (a duration like \"15s\" expected)", name);
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "bad option '%s' (seconds or a duration expected)", name);
    }
    lua_pop(L, 1);
    return ms;
}

static const char *const lock_options[] = { "wait", "value", "session", "ttl", "lock_delay",
                                            "behavior", "name", NULL };
/* lock:acquire again: the lock's own definition stays; only how long to wait is new */
static const char *const acquire_options[] = { "wait", NULL };

static void check_names(lua_State *L, int idx, const char *const *names)
{
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        int i, known = 0;
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING)
            for (i = 0; names[i] != NULL && !known; i++)
                known = strcmp(names[i], lua_tostring(L, -1)) == 0;
        if (!known)
            luaL_error(L, "bad option '%s' (unknown option)",
                       lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    }
}

/* Reads the options at idx into lk (raises on bad ones); returns wait in ms (-1: for ever). */
static int64_t lock_configure(lua_State *L, int idx, consul_lock *lk, int first)
{
    int64_t wait_ms = -1;
    size_t n;
    const char *s;
    if (lua_isnoneornil(L, idx)) {
        if (first) {
            consul_set_str(L, &lk->name, "Lua lock", 8);
            lk->ttl_def_ms = 15000;
            lk->lock_delay_ms = 15000;
            lk->behavior_delete = lk->kind == CONSUL_KIND_SEMAPHORE;
        }
        return -1;
    }
    luaL_checktype(L, idx, LUA_TTABLE);
    check_names(L, idx, first ? lock_options : acquire_options);
    lua_getfield(L, idx, "wait");
    if (!lua_isnil(L, -1)) {
        lua_Number w = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || !(w >= 0))
            luaL_error(L, "bad option 'wait' (seconds >= 0 expected)");
        wait_ms = w >= 1e12 ? -1 : (int64_t)(w * 1000 + 0.5);  /* math.huge: for ever */
    }
    lua_pop(L, 1);
    if (!first)
        return wait_ms;

    lua_getfield(L, idx, "value");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad option 'value' (string expected)");
        s = lua_tolstring(L, -1, &n);
        consul_set_str(L, &lk->value, s, n);
        lk->value_len = n;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "session");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING || consul_rawlen(L, -1) == 0 ||
            consul_rawlen(L, -1) >= sizeof lk->session ||
            strspn(lua_tostring(L, -1), "0123456789abcdefABCDEF-") != consul_rawlen(L, -1))
            luaL_error(L, "bad option 'session' (a session ID expected)");
        strcpy(lk->session, lua_tostring(L, -1));
        lk->own_session = 0;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "name");
    s = lua_isnil(L, -1) ? "Lua lock" : lua_tostring(L, -1);
    if (s == NULL || lua_type(L, -1) == LUA_TNUMBER || strpbrk(s, "\"\\") != NULL ||
        strcspn(s, "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12"
                   "\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f") != strlen(s))
        luaL_error(L, "bad option 'name' (a string without quotes or backslashes expected)");
    consul_set_str(L, &lk->name, s, strlen(s));
    lua_pop(L, 1);
    lk->ttl_def_ms = opt_seconds_ms(L, idx, "ttl", 15000);
    lk->lock_delay_ms = opt_seconds_ms(L, idx, "lock_delay", 15000);
    lua_getfield(L, idx, "behavior");
    /* Go's semaphores use "delete": a dead holder's contender key goes with its session. */
    s = lua_isnil(L, -1) ? (lk->kind == CONSUL_KIND_SEMAPHORE ? "delete" : "release")
                         : lua_tostring(L, -1);
    if (s == NULL || (strcmp(s, "release") != 0 && strcmp(s, "delete") != 0))
        luaL_error(L, "bad option 'behavior' (\"release\" or \"delete\" expected)");
    lk->behavior_delete = strcmp(s, "delete") == 0;
    lua_pop(L, 1);
    return wait_ms;
}

/* nil, err, {code = "timeout"}: past the atexit wait, nothing more is done for a lock (its
 * session ends by its TTL); the lock's handles may still be the parked renewer's. */
static int exiting_failure(lua_State *L, consul_lock *lk)
{
    consul_resp rs;
    memset(&rs, 0, sizeof rs);
    rs.code = CONSUL_ETIMEOUT;
    lua_pushnil(L);
    lua_pushfstring(L, "consul: lock %s: the process is exiting", lk->key);
    consul_push_meta(L, &rs);
    lua_pushnil(L);
    lua_setfield(L, -2, "status");
    return 3;
}

/* Runs one acquire for the lock object at 1; returns lock | nil, err, meta. */
static int lock_run_acquire(lua_State *L, consul_lock *lk, int64_t wait_ms)
{
    attempt a;
    int rc;
    if (consul_renew_exiting())
        return exiting_failure(L, lk);  /* it could be taken, never renewed nor released */
    memset(&a, 0, sizeof a);
    lock_handle(L, 1, lk, &a);
    rc = lk->kind == CONSUL_KIND_SEMAPHORE ? consul_sem_acquire(lk, &a, wait_ms)
                                           : acquire(lk, &a, wait_ms);
    if (rc == CONSUL_OK && consul_renew_start(lk) != 0) {
        snprintf(a.msg, sizeof a.msg, "consul: lock %s: cannot start the renewer", lk->key);
        rc = CONSUL_ENOMEM;
    }
    if (rc != CONSUL_OK) {
        consul_resp keep = a.rs;
        char why[sizeof a.msg];
        memcpy(why, a.msg, sizeof why);
        if (lk->own_session && consul_att_session_destroy(lk, &a) != CONSUL_OK) {
            lk->session[0] = '\0';  /* unreachable: its TTL ends it; never reuse it */
            lk->own_session = 0;
        }  /* a failed attempt leaks nothing */
        consul_att_release(&a);
        consul_lock_free_handles(lk);
        lua_pushnil(L);
        lua_pushstring(L, why[0] ? why : "consul: lock failed");
        keep.code = rc;
        consul_push_meta(L, &keep);
        if (rc == CONSUL_ETIMEOUT || rc == CONSUL_ECONFLICT) {
            lua_pushnil(L);
            lua_setfield(L, -2, "status");  /* not an HTTP failure */
        }
        return 3;
    }
    consul_att_release(&a);
    STORE(&lk->held, 1);
    lua_settop(L, 1);
    return 1;
}

/* The lock object for c:lock and c:semaphore: key at 2, options at opts. */
static int new_lock(lua_State *L, int kind, int limit, int opts)
{
    consul_client *c = consul_checkclient(L, 1);
    lock_ud *u;
    consul_lock *lk;
    size_t n;
    const char *key;
    int64_t wait_ms;
    consul_buf path = CONSUL_BUF_INIT;

    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_argerror(L, 2, lua_pushfstring(L, "string expected, got %s",
                                                   luaL_typename(L, 2)));
    key = lua_tolstring(L, 2, &n);
    while (n > 0 && *key == '/')
        key++, n--;
    while (kind == CONSUL_KIND_SEMAPHORE && n > 0 && key[n - 1] == '/')
        n--;
    if (n == 0 || memchr(key, '\0', n) != NULL)
        return luaL_argerror(L, 2, "a non-empty key without NUL bytes expected");
    lua_settop(L, opts);

    u = consul_newuserdata(L, sizeof *u);
    u->lk = NULL;
    luaL_getmetatable(L, CONSUL_LOCK_MT);
    lua_setmetatable(L, -2);
    /* The lock keeps its client alive, in a table (Lua 5.1's environments are tables). */
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    consul_setuservalue(L, -2);
    u->lk = lk = consul_lock_new(c->conf);
    if (lk == NULL)
        return luaL_error(L, "not enough memory");
    lk->kind = kind;
    lk->limit = limit;
    lk->flags = kind == CONSUL_KIND_SEMAPHORE ? CONSUL_SEMAPHORE_FLAG : CONSUL_LOCK_FLAG;
    consul_set_str(L, &lk->key, key, n);
    if (consul_buf_adds(&path, "/v1/kv/") != 0 || consul_buf_add_escaped(&path, key, n, 1) != 0 ||
        (kind == CONSUL_KIND_SEMAPHORE && consul_buf_add(&path, "/", 1) != 0)) {
        consul_buf_free(&path);
        return luaL_error(L, "not enough memory");
    }
    lk->path = path.data;  /* ownership moves to the lock */
    if (path.len > CONSUL_MAX_LOCK_PATH)
        return luaL_argerror(L, 2, "key too long (over 1000 bytes once escaped)");
    wait_ms = lock_configure(L, opts, lk, 1);
    lua_replace(L, 1);
    lua_settop(L, 1);
    return lock_run_acquire(L, lk, wait_ms);
}

/* c:lock(key[, opts]) --> lock | nil, err, meta */
static int client_lock(lua_State *L)
{
    return new_lock(L, CONSUL_KIND_LOCK, 1, 3);
}

/* c:semaphore(prefix, limit[, opts]) --> semaphore | nil, err, meta */
static int client_semaphore(lua_State *L)
{
    lua_Number n = luaL_checknumber(L, 3);
    int limit = (int)n;
    /* not luaL_checkinteger: LuaJIT's truncates 2.5 to 2 */
    luaL_argcheck(L, n >= 1 && n <= 1000, 3, "a limit of 1..1000 expected");
    luaL_argcheck(L, (lua_Number)limit == n, 3, "number has no integer representation");
    lua_remove(L, 3);
    return new_lock(L, CONSUL_KIND_SEMAPHORE, (int)limit, 3);
}

/* lock:acquire([opts]): takes a released or lost lock again */
static int lock_acquire(lua_State *L)
{
    consul_lock *lk = checklock(L, 1);
    int64_t wait_ms = lock_configure(L, 2, lk, 0);
    if (consul_lock_held(lk))
        return lua_settop(L, 1), 1;
    if (consul_renew_stop(lk, 0) != 0)  /* a lost lock is still registered */
        return exiting_failure(L, lk);
    STORE(&lk->held, 0);
    if (lk->own_session && lk->session[0] != '\0') {
        /* Lost: its session may be gone (destroyed, expired) or still alive (the key was
         * deleted). Either way a new attempt starts with a new session. */
        attempt a;
        consul_resp rs;
        char msg[64];
        memset(&a, 0, sizeof a);
        lock_handle(L, 1, lk, &a);
        consul_lock_release_now(lk, &a, &rs, msg, sizeof msg);
    }
    lua_settop(L, 1);
    return lock_run_acquire(L, lk, wait_ms);
}

/* lock:release() --> true | nil, err, meta (idempotent) */
static int lock_release(lua_State *L)
{
    consul_lock *lk = checklock(L, 1);
    consul_resp rs;
    attempt a;
    char msg[1024];
    int rc;
    if (consul_renew_stop(lk, 0) != 0)
        return exiting_failure(L, lk);
    if (lk->session[0] == '\0' ||
        (!LOAD(&lk->held) && !lk->own_session && !lk->release_pending)) {
        STORE(&lk->held, 0);
        lua_pushboolean(L, 1);
        return 1;
    }
    memset(&a, 0, sizeof a);
    lock_handle(L, 1, lk, &a);
    rc = consul_lock_release_now(lk, &a, &rs, msg, sizeof msg);
    consul_lock_free_handles(lk);  /* its connections go now, not when Lua collects it */
    if (rc != CONSUL_OK) {
        lua_pushnil(L);
        lua_pushstring(L, msg);
        consul_push_meta(L, &rs);
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int lock_held(lua_State *L)
{
    lua_pushboolean(L, consul_lock_held(checklock(L, 1)));
    return 1;
}

/* __gc: hands a held lock to the renewer to release; never blocks, never raises. */
static int lock_gc(lua_State *L)
{
    lock_ud *u = luaL_checkudata(L, 1, CONSUL_LOCK_MT);
    if (u->lk != NULL) {
        (void)consul_renew_stop(u->lk, 1);
        consul_lock_unref(u->lk);
        u->lk = NULL;
    }
    return 0;
}

/* __close: releases at scope exit, and never raises (an error there would mask the
 * block's own). */
static int lock_close(lua_State *L)
{
    lock_ud *u = luaL_checkudata(L, 1, CONSUL_LOCK_MT);
    if (u->lk != NULL) {
        lua_settop(L, 1);
        lua_pushcfunction(L, lock_release);
        lua_insert(L, 1);
        lua_pcall(L, 1, 0, 0);  /* a failure to release stays unsaid here: see release() */
    }
    return 0;
}

static int lock_index(lua_State *L)
{
    consul_lock *lk = checklock(L, 1);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "key") == 0) {
        lua_pushstring(L, lk->key);
    } else if (strcmp(k, "session") == 0) {
        if (lk->session[0])
            lua_pushstring(L, lk->session);
        else
            lua_pushnil(L);
    } else if (strcmp(k, "fence") == 0) {
        if (lk->kind == CONSUL_KIND_LOCK)
            consul_push_u64(L, lk->fence);
        else
            lua_pushnil(L);  /* a semaphore has no single holder to fence */
    } else if (strcmp(k, "limit") == 0) {
        if (lk->kind == CONSUL_KIND_SEMAPHORE)
            lua_pushinteger(L, lk->limit);
        else
            lua_pushnil(L);
    } else {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(1));
    }
    return 1;
}

static int lock_tostring(lua_State *L)
{
    lock_ud *u = luaL_checkudata(L, 1, CONSUL_LOCK_MT);
    if (u->lk == NULL)
        lua_pushliteral(L, "consul.Lock (gone)");
    else
        lua_pushfstring(L, "consul.%s (%s, %s)",
                        u->lk->kind == CONSUL_KIND_SEMAPHORE ? "Semaphore" : "Lock", u->lk->key,
                        consul_lock_held(u->lk) ? "held" : "not held");
    return 1;
}

static const luaL_Reg lock_methods[] = {
    { "acquire", lock_acquire },
    { "release", lock_release },
    { "held", lock_held },
    { NULL, NULL }
};

void consul_lock_open(lua_State *L)
{
    /* module */
    consul_renew_atexit_once();
    luaL_newmetatable(L, CONSUL_LOCK_MT);          /* module, mt */
    consul_newlib(L, lock_methods);
    lua_pushcclosure(L, lock_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lock_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, lock_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, lock_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, CONSUL_LOCK_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_getfield(L, -1, "Client");                 /* module, client methods */
    lua_pushcfunction(L, client_lock);
    lua_setfield(L, -2, "lock");
    lua_pushcfunction(L, client_semaphore);
    lua_setfield(L, -2, "semaphore");
    lua_pop(L, 1);
}
