/*
 * module.c: luaopen_consul_core, and only that. lua/consul.lua is the module users require;
 * it loads this and adds the little that reads better in Lua.
 */
#include "consul.h"

#pragma GCC visibility push(default)
int luaopen_consul_core(lua_State *L);
#pragma GCC visibility pop

int luaopen_consul_core(lua_State *L)
{
    consul_http_global_init();
    lua_newtable(L);
    lua_pushliteral(L, CONSUL_VERSION);
    lua_setfield(L, -2, "_VERSION");
    consul_json_open(L);
    consul_routes_open(L);
    consul_client_open(L);
    return 1;
}
