/*
 * compat.h: the Lua API as Lua 5.4 spells it, for Lua 5.1 and LuaJIT 2.1 too.
 * Included first by every C file. The shims are private (consul_ prefix) so that they never
 * clash with another module's copy inside one nginx worker.
 */
#ifndef CONSUL_COMPAT_H
#define CONSUL_COMPAT_H

#define _POSIX_C_SOURCE 200809L

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM == 501

#include <math.h>

#define consul_rawlen(L, i) lua_objlen((L), (i))
#define consul_setuservalue(L, i) lua_setfenv((L), (i))
#define consul_getuservalue(L, i) lua_getfenv((L), (i))
#define consul_newuserdata(L, sz) lua_newuserdata((L), (sz))

static inline int consul_absindex(lua_State *L, int i)
{
    return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}

static inline void *consul_testudata(lua_State *L, int ud, const char *tname)
{
    void *p = lua_touserdata(L, ud);
    if (p == NULL || !lua_getmetatable(L, ud))
        return NULL;
    lua_getfield(L, LUA_REGISTRYINDEX, tname);
    if (!lua_rawequal(L, -1, -2))
        p = NULL;
    lua_pop(L, 2);
    return p;
}

/* A number that is an integer value. Lua 5.1 numbers are doubles: integers are exact only
 * up to 2^53, and the module says so in its README. */
static inline int consul_isinteger(lua_State *L, int i)
{
    lua_Number n;
    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    n = lua_tonumber(L, i);
    return n == floor(n) && n >= -9223372036854775808.0 && n < 9223372036854775808.0;
}

static inline void consul_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

#define consul_newlib(L, l) (lua_newtable(L), consul_setfuncs((L), (l), 0))

#else

#define consul_rawlen(L, i) lua_rawlen((L), (i))
#define consul_setuservalue(L, i) lua_setuservalue((L), (i))
#define consul_getuservalue(L, i) lua_getuservalue((L), (i))
#define consul_absindex(L, i) lua_absindex((L), (i))
#define consul_testudata(L, i, t) luaL_testudata((L), (i), (t))
#define consul_isinteger(L, i) lua_isinteger((L), (i))
#define consul_setfuncs(L, l, n) luaL_setfuncs((L), (l), (n))
#define consul_newlib(L, l) luaL_newlib((L), (l))
#if LUA_VERSION_NUM >= 504
#define consul_newuserdata(L, sz) lua_newuserdatauv((L), (sz), 1)
#else
#define consul_newuserdata(L, sz) lua_newuserdata((L), (sz))
#endif

#endif

#endif
