rockspec_format = "3.0"
package = "consul"
version = "scm-1"
source = {
   url = "git+file://./",
}
description = {
   summary = "The whole Consul HTTP API for Lua, with distributed locks that cannot leak",
   detailed = [[
A C core (libcurl, cJSON) that speaks every Consul HTTP endpoint, and locks and semaphores
whose sessions follow Lua scopes and are renewed in the background. Interoperates with
Consul's own `consul lock`.]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1",
}
external_dependencies = {
   -- Debian keeps curl.h under a multiarch include dir that the compiler searches by itself.
   CURL = { library = "curl" },
   CJSON = { header = "cjson/cJSON.h", library = "cjson" },
}
build = {
   type = "builtin",
   modules = {
      consul = "lua/consul.lua",
      ["consul.ngx"] = "lua/consul/ngx.lua",
      ["consul.core"] = {
         sources = {
            "csrc/buf.c", "csrc/client.c", "csrc/http.c", "csrc/json.c", "csrc/kv.c",
            "csrc/lock.c", "csrc/mach.c", "csrc/module.c", "csrc/op.c", "csrc/renew.c",
            "csrc/routes.c", "csrc/semaphore.c", "csrc/session.c", "csrc/stream.c",
            "csrc/wire.c",
         },
         libraries = { "curl", "cjson", "pthread", "dl" },
         incdirs = { "$(CURL_INCDIR)", "$(CJSON_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)", "$(CJSON_LIBDIR)" },
      },
   },
}
