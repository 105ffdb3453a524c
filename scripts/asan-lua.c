/*
 * asan-lua.c: a minimal Lua 5.4 interpreter for `make asan`. It is built with ASan/UBSan so
 * that the module under test runs instrumented, while the shells and tools the specs spawn
 * stay uninstrumented (LD_PRELOAD would instrument them all).
 * Usage: asan-lua script [args...] | asan-lua -e code
 */
#include <stdio.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int main(int argc, char **argv)
{
    lua_State *L;
    int i, status;
    if (argc < 2) {
        fprintf(stderr, "usage: %s script [args]\n", argv[0]);
        return 2;
    }
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_createtable(L, argc, 1);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);  /* arg[0] = the script */
    }
    lua_setglobal(L, "arg");
    if (strcmp(argv[1], "-e") == 0 && argc >= 3) {
        /* asan-lua -e 'code': what the specs' child processes use */
        status = luaL_loadstring(L, argv[2]);
        if (status == LUA_OK)
            status = lua_pcall(L, 0, 0, 0);
    } else {
        status = luaL_loadfile(L, argv[1]);
        if (status == LUA_OK) {
            for (i = 2; i < argc; i++)
                lua_pushstring(L, argv[i]);
            status = lua_pcall(L, argc - 2, 0, 0);
        }
    }
    if (status != LUA_OK)
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
