-- Test helper: a misbehaving HTTP server on 127.0.0.1, for the few error specs a real
-- Consul agent cannot provoke (stalled answers, broken JSON, connections closed mid-answer).
-- The server is spec/helpers/fakeserver.c, compiled here with `cc` into a temp dir; it needs
-- nothing beyond gcc. Works on Lua 5.1 / LuaJIT 2.1 and Lua 5.4.
--
--   local fakeserver = require("spec.helpers.fakeserver")
--   local fs = fakeserver.start()   -- once per describe (setup), compiles on first use
--   fs.addr, fs.port, fs.pid
--   fs:stop()                       -- kills it by PID; idempotent (teardown)
--
-- The answer depends on the request path: a path containing "stall", "badjson",
-- "truncated", "close" or "nothing" gets that behaviour (see fakeserver.c), anything else
-- gets 200 with the JSON body [].

local M = {}

local function here()
  local src = debug.getinfo(1, "S").source or ""
  local dir = src:sub(1, 1) == "@" and src:sub(2):match("^(.*)/[^/]*$")
  return dir or "spec/helpers"
end

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function sh(cmd)
  local p = assert(io.popen("{ " .. cmd .. "\n} 2>&1; echo \"rc=$?\"", "r"))
  local out = p:read("*a") or ""
  p:close()
  local body, rc = out:match("^(.*)rc=(%d+)%s*$")
  return body or out, tonumber(rc or -1)
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local bin_path

-- Compiles fakeserver.c once per process; returns the binary's path.
function M.build()
  if bin_path then return bin_path end
  local base = os.getenv("CONSUL_TEST_TMP")
  if not base or base == "" then base = os.getenv("TMPDIR") or "/tmp" end
  local out, rc = sh("mktemp -d " .. quote(base .. "/fakeserver.XXXXXX"))
  if rc ~= 0 then error("fakeserver: mktemp failed: " .. out, 2) end
  local dir = out:gsub("%s+$", "")
  local bin = dir .. "/fakeserver"
  out, rc = sh("cc -std=c99 -O1 -Wall -o " .. quote(bin) .. " " .. quote(here() .. "/fakeserver.c"))
  if rc ~= 0 then error("fakeserver: compiling fakeserver.c failed:\n" .. out, 2) end
  bin_path = bin
  return bin
end

local Server = {}
Server.__index = Server

-- fakeserver.start([lifetime_seconds]) --> server; errors when it does not come up in 5 s.
function M.start(lifetime)
  local bin = M.build()
  local portfile = bin .. "." .. tostring(os.time()) .. "." .. tostring(math.random(1e9)) .. ".port"
  local out, rc = sh(quote(bin) .. " " .. quote(portfile) .. " " .. tostring(lifetime or 300) ..
    " </dev/null >/dev/null 2>&1 & echo \"pid=$!\"")
  local pid = tonumber(out:match("pid=(%d+)"))
  if rc ~= 0 or not pid then error("fakeserver: start failed: " .. out, 2) end
  local s = setmetatable({ pid = pid, portfile = portfile }, Server)
  for _ = 1, 100 do
    local p = read_file(portfile)
    if p and tonumber(p:match("%d+")) then
      s.port = tonumber(p:match("%d+"))
      s.addr = "127.0.0.1:" .. s.port
      return s
    end
    sh("sleep 0.05")
  end
  s:stop()
  error("fakeserver: no port after 5 s", 2)
end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  -- only our own process, by its PID; its connection children die with it (PDEATHSIG)
  sh("kill -TERM " .. self.pid .. " 2>/dev/null; " ..
     "for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 " .. self.pid .. " 2>/dev/null || break; sleep 0.05; done")
  os.remove(self.portfile)
end

return M
