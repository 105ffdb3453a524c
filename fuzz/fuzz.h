/*
 * fuzz.h: what the libFuzzer targets share (`make fuzz`). Each target feeds bytes to one
 * part of the C core the way an answer from a hostile server would reach it, under
 * ASan/UBSan; a crash, a leak or undefined behaviour is a finding.
 */
#ifndef CONSUL_FUZZ_H
#define CONSUL_FUZZ_H

#include "../csrc/consul.h"

#include <lualib.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int luaopen_consul_core(lua_State *L);

/* A Lua 5.4 state with the module loaded (as package.loaded["consul.core"]). */
static inline lua_State *fuzz_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "consul.core", luaopen_consul_core, 0);
    lua_pop(L, 1);
    return L;
}

/* A conf as consul.new() would make it, without Lua. */
static inline consul_conf *fuzz_conf(void)
{
    consul_conf *cf = consul_conf_new();
    cf->base_url = strdup("http://127.0.0.1:1");
    cf->hostport = strdup("127.0.0.1:1");
    cf->host = strdup("127.0.0.1");
    cf->port = 1;
    cf->host_line = strdup(" HTTP/1.1\r\nHost: 127.0.0.1:1\r\n");
    cf->host_line_len = strlen(cf->host_line);
    cf->max_answer = 1 << 20;
    return cf;
}

#endif
