/*
 * atexit_host.c: a Lua 5.4 host that closes its state from an atexit handler registered
 * before the script runs (so after the module's own atexit handler has run). Finalizers
 * then run past the module's exit wait: spec/lock_spec.lua checks they get a clear answer
 * and the process still exits 0. Built by the spec with `cc`.
 *
 *   atexit_host SCRIPT [ARGS...]   (arg[1..] as in lua5.4)
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

static lua_State *L;

static void close_state(void)
{
    lua_close(L);
}

int main(int argc, char **argv)
{
    int i;
    if (argc < 2) {
        fprintf(stderr, "usage: atexit_host SCRIPT [ARGS...]\n");
        return 2;
    }
    L = luaL_newstate();
    luaL_openlibs(L);
    atexit(close_state);
    lua_createtable(L, argc, 0);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");
    if (luaL_dofile(L, argv[1]) != LUA_OK) {
        fprintf(stderr, "atexit_host: %s\n", lua_tostring(L, -1));
        return 1;
    }
    return 0;
}
