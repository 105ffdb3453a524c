/*
 * routes.c: every route of the Consul 1.8 HTTP API in one table, and the one generic method
 * that serves them: path parameters first (in path order), then the body when the route has
 * one, then per-call options. consul.routes() reads the same table.
 *
 * A group's methods live in a metatable ("consul.group.kv", ...) that c.kv's objects share;
 * kv.c then replaces the KV entries with methods that shape their answers.
 */
#include "consul.h"

#include <string.h>

enum { B_NONE, B_OPT, B_REQ };  /* the route's body */

typedef struct route {
    const char *group, *name, *method, *path;
    int body;
    int answer;      /* enum consul_answer */
    int json_flags;  /* CONSUL_JSON_* */
    int flags;       /* CONSUL_CALL_* */
} route;

#define R(g, n, m, p) { g, n, m, p, B_NONE, CONSUL_ANS_AUTO, 0, 0 }
#define RB(g, n, m, p, b) { g, n, m, p, b, CONSUL_ANS_AUTO, 0, 0 }
#define RX(g, n, m, p, b, a, j, f) { g, n, m, p, b, a, j, f }

static const route routes[] = {
    /* acl: the system, then the legacy API (removed in Consul 1.11) */
    R("acl", "bootstrap", "PUT", "/v1/acl/bootstrap"),
    RB("acl", "create", "PUT", "/v1/acl/create", B_REQ),
    RB("acl", "update", "PUT", "/v1/acl/update", B_REQ),
    R("acl", "destroy", "PUT", "/v1/acl/destroy/:uuid"),
    R("acl", "info", "GET", "/v1/acl/info/:uuid"),
    R("acl", "clone", "PUT", "/v1/acl/clone/:uuid"),
    R("acl", "list", "GET", "/v1/acl/list"),
    RB("acl", "login", "POST", "/v1/acl/login", B_REQ),
    R("acl", "logout", "POST", "/v1/acl/logout"),
    R("acl", "replication", "GET", "/v1/acl/replication"),
    R("acl", "policy_list", "GET", "/v1/acl/policies"),
    RB("acl", "policy_create", "PUT", "/v1/acl/policy", B_REQ),
    R("acl", "policy_read", "GET", "/v1/acl/policy/:id"),
    RB("acl", "policy_update", "PUT", "/v1/acl/policy/:id", B_REQ),
    R("acl", "policy_delete", "DELETE", "/v1/acl/policy/:id"),
    R("acl", "policy_read_by_name", "GET", "/v1/acl/policy/name/:name"),
    R("acl", "role_list", "GET", "/v1/acl/roles"),
    RB("acl", "role_create", "PUT", "/v1/acl/role", B_REQ),
    R("acl", "role_read", "GET", "/v1/acl/role/:id"),
    RB("acl", "role_update", "PUT", "/v1/acl/role/:id", B_REQ),
    R("acl", "role_delete", "DELETE", "/v1/acl/role/:id"),
    R("acl", "role_read_by_name", "GET", "/v1/acl/role/name/:name"),
    R("acl", "binding_rule_list", "GET", "/v1/acl/binding-rules"),
    RB("acl", "binding_rule_create", "PUT", "/v1/acl/binding-rule", B_REQ),
    R("acl", "binding_rule_read", "GET", "/v1/acl/binding-rule/:id"),
    RB("acl", "binding_rule_update", "PUT", "/v1/acl/binding-rule/:id", B_REQ),
    R("acl", "binding_rule_delete", "DELETE", "/v1/acl/binding-rule/:id"),
    R("acl", "auth_method_list", "GET", "/v1/acl/auth-methods"),
    RB("acl", "auth_method_create", "PUT", "/v1/acl/auth-method", B_REQ),
    R("acl", "auth_method_read", "GET", "/v1/acl/auth-method/:name"),
    RB("acl", "auth_method_update", "PUT", "/v1/acl/auth-method/:name", B_REQ),
    R("acl", "auth_method_delete", "DELETE", "/v1/acl/auth-method/:name"),
    RX("acl", "rules_translate", "POST", "/v1/acl/rules/translate", B_REQ, CONSUL_ANS_TEXT, 0, 0),
    RX("acl", "rules_translate_token", "GET", "/v1/acl/rules/translate/:accessor_id", B_NONE,
       CONSUL_ANS_TEXT, 0, 0),
    R("acl", "token_list", "GET", "/v1/acl/tokens"),
    RB("acl", "token_create", "PUT", "/v1/acl/token", B_REQ),
    R("acl", "token_read_self", "GET", "/v1/acl/token/self"),
    R("acl", "token_read", "GET", "/v1/acl/token/:accessor_id"),
    RB("acl", "token_update", "PUT", "/v1/acl/token/:accessor_id", B_REQ),
    R("acl", "token_delete", "DELETE", "/v1/acl/token/:accessor_id"),
    RX("acl", "token_clone", "PUT", "/v1/acl/token/:accessor_id/clone", B_OPT, CONSUL_ANS_AUTO,
       0, CONSUL_CALL_EMPTY_BODY_OBJECT),

    /* agent */
    RB("agent", "update_token", "PUT", "/v1/agent/token/:type", B_REQ),
    R("agent", "self", "GET", "/v1/agent/self"),
    R("agent", "host", "GET", "/v1/agent/host"),
    R("agent", "maintenance", "PUT", "/v1/agent/maintenance"),
    R("agent", "reload", "PUT", "/v1/agent/reload"),
    R("agent", "monitor", "GET", "/v1/agent/monitor"),
    R("agent", "metrics", "GET", "/v1/agent/metrics"),
    R("agent", "services", "GET", "/v1/agent/services"),
    R("agent", "service", "GET", "/v1/agent/service/:service_id"),
    R("agent", "checks", "GET", "/v1/agent/checks"),
    R("agent", "members", "GET", "/v1/agent/members"),
    R("agent", "join", "PUT", "/v1/agent/join/:address"),
    R("agent", "leave", "PUT", "/v1/agent/leave"),
    R("agent", "force_leave", "PUT", "/v1/agent/force-leave/:node"),
    RX("agent", "health_service_by_id", "GET", "/v1/agent/health/service/id/:service_id", B_NONE,
       CONSUL_ANS_AUTO, 0, CONSUL_CALL_STATUS_DATA),
    RX("agent", "health_service_by_name", "GET", "/v1/agent/health/service/name/:service_name",
       B_NONE, CONSUL_ANS_AUTO, 0, CONSUL_CALL_STATUS_DATA),
    RB("agent", "check_register", "PUT", "/v1/agent/check/register", B_REQ),
    R("agent", "check_deregister", "PUT", "/v1/agent/check/deregister/:check_id"),
    R("agent", "check_pass", "PUT", "/v1/agent/check/pass/:check_id"),
    R("agent", "check_warn", "PUT", "/v1/agent/check/warn/:check_id"),
    R("agent", "check_fail", "PUT", "/v1/agent/check/fail/:check_id"),
    RB("agent", "check_update", "PUT", "/v1/agent/check/update/:check_id", B_REQ),
    RB("agent", "connect_authorize", "POST", "/v1/agent/connect/authorize", B_REQ),
    R("agent", "connect_ca_roots", "GET", "/v1/agent/connect/ca/roots"),
    R("agent", "connect_ca_leaf", "GET", "/v1/agent/connect/ca/leaf/:service"),
    RB("agent", "service_register", "PUT", "/v1/agent/service/register", B_REQ),
    R("agent", "service_deregister", "PUT", "/v1/agent/service/deregister/:service_id"),
    R("agent", "service_maintenance", "PUT", "/v1/agent/service/maintenance/:service_id"),

    /* catalog */
    RB("catalog", "register", "PUT", "/v1/catalog/register", B_REQ),
    RB("catalog", "deregister", "PUT", "/v1/catalog/deregister", B_REQ),
    R("catalog", "datacenters", "GET", "/v1/catalog/datacenters"),
    R("catalog", "nodes", "GET", "/v1/catalog/nodes"),
    R("catalog", "services", "GET", "/v1/catalog/services"),
    R("catalog", "service", "GET", "/v1/catalog/service/:service"),
    R("catalog", "connect", "GET", "/v1/catalog/connect/:service"),
    R("catalog", "node", "GET", "/v1/catalog/node/:node"),
    R("catalog", "node_services", "GET", "/v1/catalog/node-services/:node"),
    R("catalog", "gateway_services", "GET", "/v1/catalog/gateway-services/:gateway"),

    /* config entries */
    RB("config", "apply", "PUT", "/v1/config", B_REQ),
    R("config", "list", "GET", "/v1/config/:kind"),
    R("config", "get", "GET", "/v1/config/:kind/:name"),
    R("config", "delete", "DELETE", "/v1/config/:kind/:name"),

    /* connect */
    R("connect", "ca_get_config", "GET", "/v1/connect/ca/configuration"),
    RB("connect", "ca_set_config", "PUT", "/v1/connect/ca/configuration", B_REQ),
    R("connect", "ca_roots", "GET", "/v1/connect/ca/roots"),
    R("connect", "intentions", "GET", "/v1/connect/intentions"),
    RB("connect", "intention_create", "POST", "/v1/connect/intentions", B_REQ),
    R("connect", "intention_match", "GET", "/v1/connect/intentions/match"),
    R("connect", "intention_check", "GET", "/v1/connect/intentions/check"),
    R("connect", "intention_get", "GET", "/v1/connect/intentions/:uuid"),
    RB("connect", "intention_update", "PUT", "/v1/connect/intentions/:uuid", B_REQ),
    R("connect", "intention_delete", "DELETE", "/v1/connect/intentions/:uuid"),

    /* coordinate */
    R("coordinate", "datacenters", "GET", "/v1/coordinate/datacenters"),
    R("coordinate", "nodes", "GET", "/v1/coordinate/nodes"),
    R("coordinate", "node", "GET", "/v1/coordinate/node/:node"),
    RB("coordinate", "update", "PUT", "/v1/coordinate/update", B_REQ),

    /* discovery chain */
    R("discovery_chain", "get", "GET", "/v1/discovery-chain/:service"),
    RX("discovery_chain", "compile", "POST", "/v1/discovery-chain/:service", B_OPT,
       CONSUL_ANS_AUTO, 0, CONSUL_CALL_EMPTY_BODY_OBJECT),

    /* event */
    RX("event", "fire", "PUT", "/v1/event/fire/:name", B_OPT, CONSUL_ANS_AUTO,
       CONSUL_JSON_B64PAYLOAD, 0),
    RX("event", "list", "GET", "/v1/event/list", B_NONE, CONSUL_ANS_AUTO, CONSUL_JSON_B64PAYLOAD,
       CONSUL_CALL_HASH_INDEX),

    /* health */
    R("health", "node", "GET", "/v1/health/node/:node"),
    R("health", "checks", "GET", "/v1/health/checks/:service"),
    R("health", "state", "GET", "/v1/health/state/:state"),
    R("health", "service", "GET", "/v1/health/service/:service"),
    R("health", "connect", "GET", "/v1/health/connect/:service"),
    R("health", "ingress", "GET", "/v1/health/ingress/:service"),

    /* kv: kv.c shapes these three */
    R("kv", "get", "GET", "/v1/kv/:key"),
    RB("kv", "put", "PUT", "/v1/kv/:key", B_OPT),
    R("kv", "delete", "DELETE", "/v1/kv/:key"),

    /* operator */
    R("operator", "raft_get_configuration", "GET", "/v1/operator/raft/configuration"),
    R("operator", "raft_remove_peer", "DELETE", "/v1/operator/raft/peer"),
    R("operator", "keyring_list", "GET", "/v1/operator/keyring"),
    RB("operator", "keyring_install", "POST", "/v1/operator/keyring", B_REQ),
    RB("operator", "keyring_use", "PUT", "/v1/operator/keyring", B_REQ),
    RB("operator", "keyring_remove", "DELETE", "/v1/operator/keyring", B_REQ),
    R("operator", "autopilot_get_configuration", "GET", "/v1/operator/autopilot/configuration"),
    RB("operator", "autopilot_set_configuration", "PUT", "/v1/operator/autopilot/configuration",
       B_REQ),
    RX("operator", "autopilot_server_health", "GET", "/v1/operator/autopilot/health", B_NONE,
       CONSUL_ANS_AUTO, 0, CONSUL_CALL_STATUS_DATA),  /* 429: unhealthy, with the report */

    /* prepared queries */
    R("query", "list", "GET", "/v1/query"),
    RB("query", "create", "POST", "/v1/query", B_REQ),
    R("query", "get", "GET", "/v1/query/:uuid"),
    RB("query", "update", "PUT", "/v1/query/:uuid", B_REQ),
    R("query", "delete", "DELETE", "/v1/query/:uuid"),
    R("query", "execute", "GET", "/v1/query/:uuid/execute"),
    R("query", "explain", "GET", "/v1/query/:uuid/explain"),

    /* session */
    RX("session", "create", "PUT", "/v1/session/create", B_OPT, CONSUL_ANS_ID,
       CONSUL_JSON_DURATIONS, 0),
    RX("session", "destroy", "PUT", "/v1/session/destroy/:uuid", B_NONE, CONSUL_ANS_BOOL, 0, 0),
    RX("session", "renew", "PUT", "/v1/session/renew/:uuid", B_NONE, CONSUL_ANS_FIRST, 0,
       CONSUL_CALL_ABSENT_OK),
    RX("session", "info", "GET", "/v1/session/info/:uuid", B_NONE, CONSUL_ANS_FIRST, 0, 0),
    R("session", "node", "GET", "/v1/session/node/:node"),
    R("session", "list", "GET", "/v1/session/list"),

    /* snapshot */
    R("snapshot", "save", "GET", "/v1/snapshot"),
    RB("snapshot", "restore", "PUT", "/v1/snapshot", B_REQ),

    /* status */
    R("status", "leader", "GET", "/v1/status/leader"),
    R("status", "peers", "GET", "/v1/status/peers"),

    /* txn */
    RX("txn", "apply", "PUT", "/v1/txn", B_REQ, CONSUL_ANS_AUTO, CONSUL_JSON_B64VALUE, 0),
};

#define NROUTES (sizeof routes / sizeof routes[0])

static int nparams(const char *path)
{
    int n = 0;
    for (; *path; path++)
        n += *path == ':';
    return n;
}

/* The generic method: its upvalue is the route's index in the table. */
static int route_call(lua_State *L)
{
    const route *r = &routes[lua_tointeger(L, lua_upvalueindex(1))];
    int np = nparams(r->path), arg = 2, optarg, box;
    const char *p = r->path;
    consul_client *c;
    consul_op *op;

    optarg = 2 + np + (r->body != B_NONE);
    if (lua_gettop(L) > optarg)
        return consul_error(L, "too many arguments to '%s' (%d expected at most)", r->name,
                          optarg - 1);
    c = consul_group_client(L, optarg);            /* optarg + 1 */
    op = consul_op_new(L, c);                      /* optarg + 2 */
    box = lua_gettop(L);
    op->m.rq.method = r->method;
    op->answer = r->answer;
    op->json_flags = r->json_flags;
    op->flags = r->flags;

    while (*p) {
        const char *seg = strchr(p, ':');
        if (seg == NULL) {
            consul_op_path(L, op, p);
            break;
        }
        if (consul_buf_add(&op->m.path, p, (size_t)(seg - p)) != 0)
            return consul_error(L, "not enough memory");
        consul_op_path_arg(L, op, arg++, strcmp(seg, ":key") == 0);
        p = strchr(seg, '/');
        if (p == NULL)
            break;
    }

    if (r->body != B_NONE) {
        int t = lua_type(L, arg);
        if (t == LUA_TSTRING) {
            op->m.rq.body = lua_tolstring(L, arg, &op->m.rq.body_len);
            op->m.rq.content_type = "application/octet-stream";
            consul_op_keep(L, op, arg);
        } else if (t == LUA_TTABLE) {
            consul_json_encode(L, arg, arg, &op->m.body, r->json_flags);
            op->m.rq.body = op->m.body.data;
            op->m.rq.body_len = op->m.body.len;
            op->m.rq.content_type = "application/json";
        } else if (t == LUA_TNIL && (r->flags & CONSUL_CALL_EMPTY_BODY_OBJECT)) {
            op->m.rq.body = "{}";
            op->m.rq.body_len = 2;
            op->m.rq.content_type = "application/json";
        } else if (t != LUA_TNIL || r->body == B_REQ) {
            return consul_argerror(L, arg, lua_pushfstring(L, "table or string expected, got %s",
                                                         luaL_typename(L, arg)));
        }
    }
    if (!lua_isnil(L, optarg) && lua_type(L, optarg) != LUA_TTABLE)
        return consul_argerror(L, optarg, "options table expected");
    consul_op_opts(L, optarg, op, 0);
    return consul_op_call(L, c, op, box);
}

static int group_tostring(lua_State *L)
{
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__name");
    return 1;
}

/* consul.routes(): { {group=, name=, method=, path=, body="required"|"optional"|nil}, ... } */
static int consul_routes(lua_State *L)
{
    size_t i;
    lua_createtable(L, (int)NROUTES, 0);
    for (i = 0; i < NROUTES; i++) {
        lua_createtable(L, 0, 4);
        lua_pushstring(L, routes[i].group);
        lua_setfield(L, -2, "group");
        lua_pushstring(L, routes[i].name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, routes[i].method);
        lua_setfield(L, -2, "method");
        lua_pushstring(L, routes[i].path);
        lua_setfield(L, -2, "path");
        if (routes[i].body != B_NONE) {
            lua_pushstring(L, routes[i].body == B_REQ ? "required" : "optional");
            lua_setfield(L, -2, "body");
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

void consul_routes_open(lua_State *L)
{
    size_t i;
    lua_newtable(L);                                   /* module, groups */
    for (i = 0; i < NROUTES; i++) {
        const route *r = &routes[i];
        lua_getfield(L, -1, r->group);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushfstring(L, CONSUL_GROUP_MT_PREFIX "%s", r->group);
            luaL_newmetatable(L, lua_tostring(L, -1)); /* module, groups, name, mt */
            lua_insert(L, -2);
            lua_setfield(L, -2, "__name");
            lua_pushvalue(L, -1);
            lua_setfield(L, -2, "__index");
            lua_pushcfunction(L, group_tostring);
            lua_setfield(L, -2, "__tostring");
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, r->group);             /* module, groups, mt */
        }
        lua_pushinteger(L, (lua_Integer)i);
        lua_pushcclosure(L, route_call, 1);
        lua_setfield(L, -2, r->name);
        lua_pop(L, 1);
    }
    lua_getfield(L, -1, "kv");
    consul_kv_open(L);
    lua_pop(L, 1);
    consul_stream_open(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "_groups");                /* for the nginx driver (lua/consul/ngx.lua) */
    lua_setfield(L, LUA_REGISTRYINDEX, "consul.groups");
    lua_pushcfunction(L, consul_routes);
    lua_setfield(L, -2, "routes");
}
