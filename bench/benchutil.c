/*
 * benchutil.c: the two clocks bench.lua needs and plain Lua lacks, measured exactly as
 * rawbench.c measures them, so both sides of a comparison use the same clocks; and a sleep.
 *
 *   local u = require("benchutil")
 *   u.now()      --> seconds, CLOCK_MONOTONIC (system-wide: comparable across processes)
 *   u.rusage()   --> user, sys: seconds of CPU of this process, getrusage(RUSAGE_SELF)
 *   u.sleep(s)   sleeps s seconds (nanosleep)
 *   u.maxrss()   --> this process's peak resident memory, kB (ru_maxrss)
 *   u.clk_tck()  --> clock ticks per second (for /proc/PID/stat)
 *
 * Built by `make bench` into build/bench/benchutil.so (Lua 5.4).
 */
#define _POSIX_C_SOURCE 200809L

#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <lua.h>
#include <lauxlib.h>

int luaopen_benchutil(lua_State *L);

static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static int l_rusage(lua_State *L)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    lua_pushnumber(L, (lua_Number)r.ru_utime.tv_sec + (lua_Number)r.ru_utime.tv_usec / 1e6);
    lua_pushnumber(L, (lua_Number)r.ru_stime.tv_sec + (lua_Number)r.ru_stime.tv_usec / 1e6);
    return 2;
}

static int l_maxrss(lua_State *L)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    lua_pushinteger(L, (lua_Integer)r.ru_maxrss);  /* kB */
    return 1;
}

static int l_clk_tck(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)sysconf(_SC_CLK_TCK));
    return 1;
}

static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    struct timespec ts;
    if (s <= 0)
        return 0;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0)
        ;
    return 0;
}

int luaopen_benchutil(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "now", l_now },
        { "rusage", l_rusage },
        { "sleep", l_sleep },
        { "maxrss", l_maxrss },
        { "clk_tck", l_clk_tck },
        { NULL, NULL }
    };
    luaL_newlib(L, fns);
    return 1;
}
