/*
 * module.c: luaopen_consul_core, and only that. lua/consul.lua is the module users require;
 * it loads this and adds the little that reads better in Lua.
 */
#define _GNU_SOURCE  /* dladdr, RTLD_NODELETE */
#include "consul.h"

#include <dlfcn.h>

#pragma GCC visibility push(default)
int luaopen_consul_core(lua_State *L);
#pragma GCC visibility pop

/* The renewer thread may outlive the lua_State (a collected lock is released by it, and
 * atexit waits for them), but lua_close dlcloses C modules: keep this one mapped. */
static void pin_self(void)
{
    Dl_info info;
    if (dladdr((void *)pin_self, &info) != 0 && info.dli_fname != NULL)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

int luaopen_consul_core(lua_State *L)
{
    consul_http_global_init();
    pin_self();
    lua_newtable(L);
    lua_pushliteral(L, CONSUL_VERSION);
    lua_setfield(L, -2, "_VERSION");
    consul_json_open(L);
    consul_op_open(L);
    consul_routes_open(L);
    consul_client_open(L);
    consul_lock_open(L);
    return 1;
}
