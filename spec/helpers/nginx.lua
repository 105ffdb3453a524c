-- Test helper: a real nginx (Debian's nginx with libnginx-mod-http-lua: LuaJIT 2.1,
-- lua-resty-core) running the module, for the specs of its life inside nginx.
--
--   local nginx = require("spec.helpers.nginx")
--   nginx.skip_reason()        -- nil when these specs can run here, else why not (printed)
--   local n = nginx.start({
--     workers = 1,             -- worker_processes (default 1)
--     http = "lua_shared_dict d 1m;",        -- more http-level directives
--     init = "C = require('consul').new({ addr = ... })",  -- init_by_lua_block
--     init_worker = "...",     -- init_worker_by_lua_block
--     locations = { ["/x"] = "ngx.say(1)" },  -- content_by_lua_block of each location
--     server = "...",          -- more server-level directives
--     env = { "CONSUL_HTTP_ADDR" },          -- env directives (the variables pass through)
--   })
--   n.port, n.prefix, n.url
--   n:get(path[, timeout])    -- status, body (curl)
--   n:get_async(path)         -- a background curl: :wait() --> status, body
--   n:reload()                -- SIGHUP, and waits until the new worker answers
--   n:stop()                  -- SIGQUIT to the master (from its pid file), waits; raises when
--                             -- error.log has an [alert], [crit] or a worker killed by a signal
--   n:log()                   -- error.log so far
--   n:errors()                -- its last 20 [error], [alert] and [crit] lines, for a message
--
-- The configuration follows what was measured here (shared NGINX.md): absolute load_module
-- paths with ndk first, `user root` when run as root (the prefix is a 0700 temp dir),
-- lua_package_path/cpath ending in ";;" (resty.core lives on the default path), temp paths
-- inside the prefix. Readiness is a request that answers, not `nginx -t`. The module comes
-- from the build tree: lua/ and build/jit/.

local agent = require("spec.helpers.agent")

local M = {}

local MODULES = "/usr/lib/nginx/modules/"
local NGINX = "/usr/sbin/nginx"

local function sh(cmd)
  return agent.sh(cmd)
end

local function q(s) return agent.quote(s) end

local function file_exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

local function read(p)
  local f = io.open(p, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

local ROOT = (function()
  local out = sh("pwd")
  return (out:gsub("%s+$", ""))
end)()
M.root = ROOT

-- Why a suite of nginx specs cannot run in this process, or nil: nginx runs LuaJIT (the 5.4
-- suite skips them), and loads the plain LuaJIT build (not the valgrind or ASan one).
function M.suite_skip()
  if type(jit) ~= "table" then return "nginx runs LuaJIT: these specs run in the LuaJIT suite" end
  if os.getenv("CONSUL_TEST_ASAN") or os.getenv("CONSUL_TEST_VALGRIND") then
    return "nginx loads the plain LuaJIT build, not this instrumented one"
  end
  return M.skip_reason()
end

function M.skip_reason()
  if not file_exists(NGINX) then return "no " .. NGINX .. " (Debian's nginx)" end
  if not file_exists(MODULES .. "ngx_http_lua_module.so") then
    return "no lua-nginx-module (Debian's libnginx-mod-http-lua)"
  end
  if not file_exists(ROOT .. "/build/jit/consul/core.so") then
    return "the LuaJIT build (build/jit/consul/core.so) is missing"
  end
  return nil
end

local Nginx = {}
Nginx.__index = Nginx

local function is_root()
  local out = sh("id -u")
  return out:match("^0") ~= nil
end

local function conf(self, opts)
  local t = {}
  local function add(s) t[#t + 1] = s end
  add("load_module " .. MODULES .. "ndk_http_module.so;")
  add("load_module " .. MODULES .. "ngx_http_lua_module.so;")
  add("daemon on;")
  add("master_process on;")
  add("worker_processes " .. tostring(opts.workers or 1) .. ";")
  if is_root() then add("user root;") end
  add("pid logs/nginx.pid;")
  add("error_log logs/error.log " .. (opts.log_level or "info") .. ";")
  for _, e in ipairs(opts.env or {}) do add("env " .. e .. ";") end
  add("events { worker_connections 1024; }")
  add("http {")
  add("  access_log off;")
  add("  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;")
  add("  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;")
  add(string.format('  lua_package_path "%s/lua/?.lua;%s/?.lua;$prefix/lua/?.lua;;";', ROOT, ROOT))
  add(string.format('  lua_package_cpath "%s/build/jit/?.so;;";', ROOT))
  if opts.http then add(opts.http) end
  if opts.init then add("  init_by_lua_block {\n" .. opts.init .. "\n  }") end
  if opts.init_worker then add("  init_worker_by_lua_block {\n" .. opts.init_worker .. "\n  }") end
  add("  server {")
  add("    listen 127.0.0.1:" .. self.port .. ";")
  add("    location = /health { content_by_lua_block { ngx.say('ok') } }")
  if opts.server then add(opts.server) end
  local paths = {}
  for path in pairs(opts.locations or {}) do paths[#paths + 1] = path end
  table.sort(paths)
  for _, path in ipairs(paths) do
    add("    location = " .. path .. " {\n      content_by_lua_block {\n" ..
      opts.locations[path] .. "\n      }\n    }")
  end
  add("  }")
  add("}")
  return table.concat(t, "\n") .. "\n"
end

function M.start(opts)
  opts = opts or {}
  local self = setmetatable({}, Nginx)
  self.prefix = agent.tmpdir()
  self.port = agent.free_port()
  self.url = "http://127.0.0.1:" .. self.port
  sh("mkdir -p " .. q(self.prefix .. "/conf") .. " " .. q(self.prefix .. "/logs") .. " " ..
    q(self.prefix .. "/tmp") .. " " .. q(self.prefix .. "/lua"))
  for name, code in pairs(opts.lua_files or {}) do
    write(self.prefix .. "/lua/" .. name, code)
  end
  write(self.prefix .. "/conf/nginx.conf", conf(self, opts))
  local envs = {}
  for k, v in pairs(opts.setenv or {}) do envs[#envs + 1] = k .. "=" .. q(v) end
  local out, rc = sh("cd " .. q(self.prefix) .. " && env " .. table.concat(envs, " ") .. " " ..
    NGINX .. " -p " .. q(self.prefix .. "/") .. " -c conf/nginx.conf >logs/stderr 2>&1; echo $?")
  local code = tonumber(out:match("(%d+)%s*$"))
  if rc ~= 0 or code ~= 0 then
    error("nginx did not start (exit " .. tostring(code) .. "):\n" .. (read(self.prefix .. "/logs/stderr") or "") ..
      (read(self.prefix .. "/logs/error.log") or ""), 2)
  end
  -- ready when it answers
  local deadline = os.time() + 10
  while true do
    local status = self:get("/health", 2)
    if status == 200 then break end
    if os.time() > deadline then
      local why = (read(self.prefix .. "/logs/stderr") or "") .. (read(self.prefix .. "/logs/error.log") or "")
      self:stop(true)
      error("nginx never answered on " .. self.url .. ":\n" .. why, 2)
    end
    sh("sleep 0.05")
  end
  self.pid = tonumber(read(self.prefix .. "/logs/nginx.pid"))
  return self
end

-- status, body of GET path (nil, why when no answer came)
function Nginx:get(path, timeout)
  local out = sh("curl -s -g --max-time " .. tostring(timeout or 30) ..
    " -o " .. q(self.prefix .. "/curl.out") .. " -w '%{http_code}' " .. q(self.url .. path))
  local status = tonumber(out:match("(%d+)%s*$"))
  if not status or status == 0 then return nil, out end
  return status, read(self.prefix .. "/curl.out") or ""
end

-- A request in the background: returns an object whose :wait() gives status, body.
function Nginx:get_async(path, timeout)
  local n = (self.async_n or 0) + 1
  self.async_n = n
  local body = self.prefix .. "/curl.async" .. n
  local p = assert(io.popen("curl -s -g --max-time " .. tostring(timeout or 30) .. " -o " .. q(body) ..
    " -w '%{http_code}' " .. q(self.url .. path), "r"))
  return {
    wait = function()
      local out = p:read("*a")
      p:close()
      local status = tonumber(out:match("(%d+)%s*$"))
      return status ~= 0 and status or nil, read(body) or ""
    end,
  }
end

function Nginx:log()
  return read(self.prefix .. "/logs/error.log") or ""
end

local function alive(pid)
  local _, rc = sh("kill -0 " .. tostring(pid) .. " 2>/dev/null")
  return rc == 0
end

function Nginx:worker_pids()
  local out = sh("ps -o pid= --ppid " .. tostring(self.pid))
  local pids = {}
  for p in out:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
  return pids
end

-- SIGHUP: a new configuration and new workers; returns once a new worker answers.
function Nginx:reload()
  local before = {}
  for _, p in ipairs(self:worker_pids()) do before[p] = true end
  sh("kill -HUP " .. tostring(self.pid))
  local deadline = os.time() + 10
  while os.time() <= deadline do
    for _, p in ipairs(self:worker_pids()) do
      if not before[p] and self:get("/health", 2) == 200 then return p end
    end
    sh("sleep 0.05")
  end
  error("nginx: no new worker after reload", 2)
end

-- The last lines of error.log that say something went wrong, for a failure's message.
function Nginx:errors()
  local t = {}
  for line in self:log():gmatch("[^\n]+") do
    if line:find("%[error%]") or line:find("%[alert%]") or line:find("%[crit%]") then
      t[#t + 1] = line
    end
  end
  return table.concat(t, "\n", math.max(1, #t - 20))
end

-- The lines of error.log that mean nginx itself went wrong.
function Nginx:bad_lines()
  local bad = {}
  for line in self:log():gmatch("[^\n]+") do
    if line:find("%[alert%]") or line:find("%[crit%]") or line:find("exited on signal") then
      bad[#bad + 1] = line
    end
  end
  return bad
end

function Nginx:stop(quiet)
  if self.stopped then return end
  self.stopped = true
  local pid = self.pid or tonumber(read(self.prefix .. "/logs/nginx.pid"))
  if pid then
    sh("kill -QUIT " .. tostring(pid) .. " 2>/dev/null")
    local deadline = os.time() + 15
    while alive(pid) and os.time() <= deadline do sh("sleep 0.05") end
    if alive(pid) then sh("kill -KILL " .. tostring(pid) .. " 2>/dev/null") end
  end
  if not quiet then
    local bad = self:bad_lines()
    if #bad > 0 then error("nginx error.log:\n" .. table.concat(bad, "\n"), 2) end
  end
end

return M
