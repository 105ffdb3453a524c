-- Test helper: throwaway Consul agents for specs.
--
-- Works on Lua 5.1 / LuaJIT 2.1 and Lua 5.2-5.4 (no goto, //, <close>, bit
-- ops).  Everything is done by shelling out to scripts/*.sh and curl, so it
-- is independent of the module under test.
--
--   local agent = require("spec.helpers.agent")
--   agent.shared()             -- the wrapper's shared agent (from env)
--   local a = agent.start({ acl = true, tls = true, tls_verify_incoming = true,
--                           unix = true, encrypt = true, name = "x" })
--   agent.start({ acl = true, bootstrap = false })  -- ACLs on, not bootstrapped (no a.token)
--   a.addr, a.http_port, a.https_addr, a.https_port, a.ca_file,
--   a.client_cert, a.client_key, a.token, a.unix_path, a.encrypt_key,
--   a.node, a.dc, a.dir, a.pid, a.log, a.serf_lan_port, a.serf_wan_port, a.server_port
--   a:stop()                   -- idempotent
--   a:http(method, path, body, token, opts)  -- same as agent.http(a, ...)
--   agent.bin()                -- path of the consul binary
--   agent.run(...)             -- ok, output, code
--   agent.http(a, method, path, body, token, opts) -- status, body
--   agent.free_port()          -- a free loopback TCP port
--   agent.urlencode(s)         -- percent-encode a path segment
--   agent.tmpdir()             -- a fresh dir under CONSUL_TEST_TMP (or /tmp)
--   agent.stop_all()           -- stop every agent started by this module
--
-- Run specs through scripts/with-agent.sh (e.g. `scripts/with-agent.sh
-- busted`) so the shared agent exists and every agent is stopped at the end.

local M = {}

----------------------------------------------------------------------------
-- paths

local function script_dir()
  local src = debug.getinfo(1, "S").source or ""
  if src:sub(1, 1) == "@" then
    local file = src:sub(2)
    local dir = file:match("^(.*)[/\\]spec[/\\]helpers[/\\][^/\\]*$")
    if dir then
      return (dir == "" and "." or dir) .. "/scripts"
    end
    if file:match("^spec[/\\]helpers[/\\]") then
      return "scripts"
    end
  end
  return "scripts"
end

local SCRIPTS = script_dir()
M.scripts_dir = SCRIPTS

----------------------------------------------------------------------------
-- shell helpers

local function quote(s)
  s = tostring(s)
  if s:match("^[%w_./:=@%%+,-]+$") then
    return s
  end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
M.quote = quote

-- Run a shell command; returns output (stdout, plus stderr if merged by the
-- caller) and the exit code.  Portable: the exit code is echoed by the shell
-- because io.popen():close() does not report it on Lua 5.1 / LuaJIT.
local RC_MARK = "__AGENT_LUA_RC="
local function sh(cmd)
  local p = assert(io.popen("{ " .. cmd .. "\n}; echo " .. RC_MARK .. "$?", "r"))
  local out = p:read("*a") or ""
  p:close()
  local body, rc = out:match("^(.*)" .. RC_MARK .. "(%d+)%s*$")
  if not body then
    return out, -1
  end
  return body, tonumber(rc)
end
M.sh = sh

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

----------------------------------------------------------------------------
-- basic utilities

function M.tmpdir()
  local base = os.getenv("CONSUL_TEST_TMP")
  if not base or base == "" then
    base = os.getenv("TMPDIR")
    if not base or base == "" then base = "/tmp" end
  end
  local out, rc = sh("mkdir -p " .. quote(base) .. " && mktemp -d " ..
    quote(base .. "/agent.XXXXXX") .. " 2>&1")
  if rc ~= 0 then
    error("agent.tmpdir: mktemp failed: " .. out, 2)
  end
  return trim(out)
end

function M.free_port()
  local out, rc = sh(quote(SCRIPTS .. "/agent.sh") .. " free-port 2>&1")
  local port = tonumber(trim(out))
  if rc ~= 0 or not port then
    error("agent.free_port: failed: " .. out, 2)
  end
  return port
end

local bin_cache
function M.bin()
  local b = os.getenv("CONSUL_BIN")
  if b and b ~= "" then return b end
  if bin_cache then return bin_cache end
  local errf = os.tmpname()
  local out, rc = sh(quote(SCRIPTS .. "/fetch-consul.sh") .. " 2>" .. quote(errf))
  local err = read_file(errf) or ""
  os.remove(errf)
  out = trim(out)
  if rc ~= 0 or out == "" then
    error("agent.bin: scripts/fetch-consul.sh failed (exit " .. tostring(rc) .. "):\n" .. err, 2)
  end
  bin_cache = out:match("([^\n]+)$")
  return bin_cache
end

-- agent.run("kv", "get", "-http-addr=" .. a.addr, "x") --> ok, output, code
-- Inherited CONSUL_HTTP_* variables still apply; pass -http-addr etc.
function M.run(...)
  local args = { ... }
  local parts = { quote(M.bin()) }
  for i = 1, select("#", ...) do
    parts[#parts + 1] = quote(args[i])
  end
  local out, rc = sh(table.concat(parts, " ") .. " </dev/null 2>&1")
  return rc == 0, out, rc
end

----------------------------------------------------------------------------
-- HTTP (curl)

-- percent-encode one path segment / query value
function M.urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

local curl_checked = false
local function ensure_curl()
  if curl_checked then return end
  local _, rc = sh("command -v curl >/dev/null 2>&1")
  if rc ~= 0 then
    local uid = trim((sh("id -u")))
    if uid ~= "0" then
      error("agent.http: curl is not installed (apt-get install curl)", 3)
    end
    local out, rc2 = sh("{ apt-get -q update && DEBIAN_FRONTEND=noninteractive " ..
      "apt-get -q -y install curl; } </dev/null 2>&1")
    if rc2 ~= 0 then
      error("agent.http: installing curl failed:\n" .. out, 3)
    end
  end
  curl_checked = true
end

-- agent.http(a, method, path, body, token, opts) --> status, body
--   a      an agent table (uses a.addr) or an "host:port" string
--   path   sent as given: percent-encode it yourself (agent.urlencode)
--   body   string or nil
--   token  X-Consul-Token or nil
--   opts   { https = true }  use a.https_addr with a.ca_file (and the client
--                            cert when a has one)
--          { unix = true }   use a.unix_path
--          { headers = { ["X-Foo"] = "bar" } }
--          { timeout = seconds }  (default 30)
-- Returns the numeric status and the body; on a transport error returns nil
-- and curl's error message.
function M.http(a, method, path, body, token, opts)
  ensure_curl()
  opts = opts or {}
  local addr = type(a) == "table" and a.addr or a
  assert(addr, "agent.http: no address")
  path = path or "/"
  if path:sub(1, 1) ~= "/" then path = "/" .. path end

  local cmd = { "curl", "-sS", "-g", "--max-time", tostring(opts.timeout or 30),
    "-X", quote(method or "GET") }
  local url
  if opts.https then
    assert(type(a) == "table" and a.https_addr, "agent.http: agent has no https_addr")
    url = "https://" .. a.https_addr .. path
    cmd[#cmd + 1] = "--cacert " .. quote(a.ca_file)
    if a.client_cert and opts.client_cert ~= false then
      cmd[#cmd + 1] = "--cert " .. quote(a.client_cert) .. " --key " .. quote(a.client_key)
    end
  elseif opts.unix then
    assert(type(a) == "table" and a.unix_path, "agent.http: agent has no unix_path")
    cmd[#cmd + 1] = "--unix-socket " .. quote(a.unix_path)
    url = "http://127.0.0.1" .. path
  else
    url = "http://" .. addr .. path
  end
  if token and token ~= "" then
    cmd[#cmd + 1] = "-H " .. quote("X-Consul-Token: " .. token)
  end
  if opts.headers then
    for k, v in pairs(opts.headers) do
      cmd[#cmd + 1] = "-H " .. quote(k .. ": " .. v)
    end
  end
  local bodyf
  if body ~= nil then
    bodyf = os.tmpname()
    local f = assert(io.open(bodyf, "wb"))
    f:write(body)
    f:close()
    cmd[#cmd + 1] = "--data-binary @" .. quote(bodyf)
  end
  local errf = os.tmpname()
  cmd[#cmd + 1] = "-w " .. quote("\n%{http_code}")
  cmd[#cmd + 1] = quote(url)
  cmd[#cmd + 1] = "</dev/null 2>" .. quote(errf)
  local out, rc = sh(table.concat(cmd, " "))
  local err = read_file(errf) or ""
  os.remove(errf)
  if bodyf then os.remove(bodyf) end
  if rc ~= 0 then
    return nil, trim(err ~= "" and err or ("curl exit " .. tostring(rc)))
  end
  local resp, status = out:match("^(.*)\n(%d%d%d)$")
  if not status then
    return nil, "unexpected curl output: " .. out
  end
  return tonumber(status), resp
end

-- GET path, decoded from JSON (dkjson, independent of the module); nil for a 404. Fails on
-- any other status.
-- M.http that raises when the request could not be made: status, body.
function M.raw(a, method, path, body, token)
  local status, out = M.http(a, method, path, body, token)
  assert(status, out)
  return status, out
end

-- The KV record of key as Consul's JSON has it (decoded by dkjson, independent of the module)
-- and its raw text; nil when absent.
function M.kv_record(a, key)
  local status, body = M.raw(a, "GET", "/v1/kv/" .. require("spec.helpers.util").path_of(key))
  if status == 404 then return nil end
  assert(status == 200, key .. ": " .. tostring(status) .. " " .. tostring(body))
  return assert(require("dkjson").decode(body))[1], body
end

function M.get_json(a, path)
  local status, body = M.http(a, "GET", path)
  assert(status, body)
  if status == 404 then return nil end
  assert(status == 200, path .. ": " .. tostring(status) .. " " .. tostring(body))
  return require("dkjson").decode(body)
end

----------------------------------------------------------------------------
-- agents

local Agent = {}
Agent.__index = Agent

local started = {}

local NUMERIC = { http_port = true, https_port = true, pid = true,
  serf_lan_port = true, serf_wan_port = true, server_port = true }

-- parse KEY=value / KEY='value' lines printed by scripts/agent.sh
local function parse_kv(out)
  local t = {}
  for line in out:gmatch("[^\n]+") do
    local k, v = line:match("^([A-Z][A-Z0-9_]*)=(.*)$")
    if k then
      if v:sub(1, 1) == "'" then
        -- shell single quotes; '\'' is an escaped quote
        v = v:sub(2, -2):gsub("'\\''", "'")
      end
      local key = k:lower()
      if NUMERIC[key] then v = tonumber(v) end
      if key == "tls_verify_incoming" then v = (v == "1") end
      t[key] = v
    end
  end
  return t
end
M._parse_kv = parse_kv

local FLAGS = {
  acl = "--acl",
  tls = "--tls",
  tls_verify_incoming = "--tls-verify-incoming",
  unix = "--unix",
  encrypt = "--encrypt",
}

-- agent.start(opts) --> agent table; errors (with the agent log tail) on failure
--   opts: acl, tls, tls_verify_incoming, unix, encrypt (booleans),
--         bootstrap (default true; false with acl: nobody bootstraps the ACLs),
--         name (node name), dir (directory; default agent.tmpdir()),
--         kv_max_value_size (bytes: the largest KV value, and txn request, it takes)
function M.start(opts)
  opts = opts or {}
  local args = {}
  for k, v in pairs(opts) do
    if FLAGS[k] then
      if v then args[#args + 1] = FLAGS[k] end
    elseif k == "bootstrap" then
      if v == false then
        if not opts.acl then
          error("agent.start: bootstrap = false needs acl = true", 2)
        end
        args[#args + 1] = "--acl-no-bootstrap"
      end
    elseif k == "name" then
      args[#args + 1] = "--name " .. quote(v)
    elseif k == "kv_max_value_size" then
      args[#args + 1] = "--kv-max-value-size " .. quote(v)
    elseif k ~= "dir" then
      error("agent.start: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  table.sort(args)
  local dir = opts.dir or M.tmpdir()
  sh("mkdir -p " .. quote(dir))
  local errf = dir .. "/start.stderr"
  local cmd = quote(SCRIPTS .. "/agent.sh") .. " start " .. quote(dir) .. " " ..
    table.concat(args, " ") .. " </dev/null 2>" .. quote(errf)
  local out, rc = sh(cmd)
  if rc ~= 0 then
    local err = read_file(errf) or ""
    error("agent.start: scripts/agent.sh start failed (exit " .. tostring(rc) .. "):\n" ..
      err .. out, 2)
  end
  local a = parse_kv(out)
  if not a.addr or not a.pid then
    error("agent.start: could not parse agent.sh output:\n" .. out, 2)
  end
  a.options = opts
  setmetatable(a, Agent)
  started[#started + 1] = a
  return a
end

function Agent:stop()
  if self.stopped or not self.dir then return true end
  local out, rc = sh(quote(SCRIPTS .. "/agent.sh") .. " stop " .. quote(self.dir) ..
    " </dev/null 2>&1")
  if rc ~= 0 then
    error("agent:stop: failed: " .. out, 2)
  end
  self.stopped = true
  return true
end

function Agent:http(method, path, body, token, opts)
  return M.http(self, method, path, body, token, opts)
end

-- base URL for the agent: "http://127.0.0.1:port" (or https with opts.https)
function Agent:url(https)
  if https then return "https://" .. self.https_addr end
  return "http://" .. self.addr
end

function M.stop_all()
  for i = #started, 1, -1 do
    local ok, err = pcall(Agent.stop, started[i])
    if not ok then io.stderr:write(tostring(err), "\n") end
    started[i] = nil
  end
end

-- The shared plain agent started by scripts/with-agent.sh.
function M.shared()
  local addr = os.getenv("CONSUL_TEST_ADDR")
  if not addr or addr == "" then
    error("agent.shared: CONSUL_TEST_ADDR is not set; run the specs through " ..
      "scripts/with-agent.sh (e.g. `scripts/with-agent.sh busted`)", 2)
  end
  local tmp = os.getenv("CONSUL_TEST_TMP")
  local a = {
    addr = addr,
    http_port = tonumber(os.getenv("CONSUL_TEST_HTTP_PORT") or addr:match(":(%d+)$")),
    node = os.getenv("CONSUL_TEST_NODE"),
    dc = os.getenv("CONSUL_TEST_DC") or "dc1",
    dir = tmp and (tmp .. "/shared") or nil,
    shared = true,
  }
  if a.dir then
    local pid = read_file(a.dir .. "/pid")
    a.pid = pid and tonumber(trim(pid)) or nil
    a.log = a.dir .. "/agent.log"
  end
  return setmetatable(a, {
    __index = function(_, k)
      if k == "stop" then
        return function() error("agent.shared(): the shared agent is stopped by scripts/with-agent.sh", 2) end
      end
      return Agent[k]
    end,
  })
end

return M
