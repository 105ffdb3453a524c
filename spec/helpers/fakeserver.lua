-- Test helper: a misbehaving HTTP server on 127.0.0.1, for the error specs a real Consul
-- agent cannot provoke (stalled answers, broken framing, broken JSON, answers of the wrong
-- shape, connections closed mid-answer). The server is spec/helpers/fakeserver.c, compiled
-- here with `cc` into a temp dir; it needs nothing beyond gcc. Works on Lua 5.1 / LuaJIT 2.1
-- and Lua 5.4.
--
--   local fakeserver = require("spec.helpers.fakeserver")
--   local fs = fakeserver.start()   -- once per describe (setup), compiles on first use
--   fakeserver.start({ mode = "stall", lifetime = 300, connection = 60 })
--                                   -- every request behaves as "stall"; a connection lasts
--                                   -- `connection` seconds at most (then the server drops it)
--   fs.addr, fs.port, fs.pid, fs.dir
--   fs:raw(name, bytes)             -- a path containing "/raw/NAME" gets exactly these bytes
--   fs:script(name, { a1, a2, ... }) -- consecutive requests to "/raw/NAME" get a1, a2, ...
--   fs:requests()                   -- every request received: { {line=, head=, body=}, ... }
--   fs:forget_requests()
--   fakeserver.answer(body[, { status =, type =, headers = { "X-A: b" } }])  -- HTTP bytes
--   fs:stop()                       -- kills it by PID; idempotent (teardown)
--
-- The answer depends on the request path (or on opts.mode, for every request): a path
-- containing "/raw/NAME", "endlessline", "endless", "drip", "continue", "headstall",
-- "/big/N", "stall", "badjson", "truncated", "close", "notbase64" or "nothing" gets that
-- behaviour (see fakeserver.c), anything else gets 200 with the JSON body [].

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

-- A fresh directory for one server's scripted answers and its request log.
local function make_dir()
  local base = os.getenv("CONSUL_TEST_TMP")
  if not base or base == "" then base = os.getenv("TMPDIR") or "/tmp" end
  local out, rc = sh("mktemp -d " .. quote(base .. "/fakeserver-dir.XXXXXX"))
  if rc ~= 0 then error("fakeserver: mktemp failed: " .. out, 3) end
  return (out:gsub("%s+$", ""))
end

-- fakeserver.start([lifetime_seconds | { lifetime =, mode =, connection = }]) --> server;
-- errors when it does not come up in 5 s. With mode, every request is answered as if its
-- path were mode (e.g. "stall", "/raw/NAME", "/big/1000"): for calls whose path cannot be
-- chosen. connection: the seconds a connection lives at most (60): a stall that a client
-- under test fails to end ends there, and the spec fails instead of hanging.
function M.start(opts)
  if type(opts) ~= "table" then opts = { lifetime = opts } end
  local bin = M.build()
  local dir = make_dir()
  local portfile = dir .. "/port"
  local out, rc = sh(quote(bin) .. " " .. quote(portfile) .. " " .. tostring(opts.lifetime or 300) ..
    " " .. quote(dir) .. " " .. quote(opts.mode or "-") .. " " .. tostring(opts.connection or 60) ..
    " </dev/null >/dev/null 2>&1 & echo \"pid=$!\"")
  local pid = tonumber(out:match("pid=(%d+)"))
  if rc ~= 0 or not pid then error("fakeserver: start failed: " .. out, 2) end
  local s = setmetatable({ pid = pid, portfile = portfile, dir = dir, mode = opts.mode }, Server)
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

local function check_name(name)
  if type(name) ~= "string" or not name:match("^[%w_%-%.]+$") then
    error("fakeserver: a raw answer's name is letters, digits, '_', '-' or '.': " .. tostring(name), 3)
  end
end

local function write(path, bytes)
  local tmp = path .. ".tmp"
  local f = assert(io.open(tmp, "wb"))
  f:write(bytes)
  f:close()
  assert(os.rename(tmp, path))
end

-- fs:raw(name, bytes): a request whose path contains "/raw/NAME" gets exactly bytes, and
-- then the connection is closed.
function Server:raw(name, bytes)
  check_name(name)
  os.remove(self.dir .. "/" .. name .. ".count")
  write(self.dir .. "/" .. name, bytes)
end

-- fs:script(name, answers): consecutive requests to "/raw/NAME" get answers[1], answers[2],
-- ...; past the last one the connection is closed without a byte. The count goes across
-- connections (the server keeps a connection open after each answer, for a client that
-- keeps it alive; answer()'s "Connection: close" has the client open a new one). Starts the
-- count afresh.
function Server:script(name, answers)
  check_name(name)
  os.remove(self.dir .. "/" .. name)
  os.remove(self.dir .. "/" .. name .. ".count")
  local i = 1
  while os.remove(self.dir .. "/" .. name .. "." .. i) do i = i + 1 end
  for k, bytes in ipairs(answers) do
    write(self.dir .. "/" .. name .. "." .. k, bytes)
  end
end

-- Every request received so far, in order: { line = "GET /v1/... HTTP/1.1", head = the
-- whole head, body = the body, raw = head and body }.
function Server:requests()
  local log = read_file(self.dir .. "/requests.log") or ""
  local list, pos = {}, 1
  while pos <= #log do
    local n, after = log:match("^REQUEST (%d+)\n()", pos)
    if not n then break end
    local raw = log:sub(after, after + tonumber(n) - 1)
    local head, body = raw:match("^(.-\r\n\r\n)(.*)$")
    list[#list + 1] = { raw = raw, head = head or raw, body = body or "",
      line = raw:match("^([^\r\n]*)") }
    pos = after + tonumber(n) + 1
  end
  return list
end

function Server:forget_requests()
  os.remove(self.dir .. "/requests.log")
end

-- The bytes of an HTTP/1.1 answer: fakeserver.answer('[1]') is a 200 application/json with
-- a right Content-Length. opts: status ("200 OK"), type ("application/json"; false: none),
-- headers (a list of extra header lines), length (a Content-Length to claim instead; false:
-- none), close (false: no "Connection: close"; it is there by default, as the server closes
-- the connection after a raw answer; a script counts its steps across connections anyway).
function M.answer(body, opts)
  opts = opts or {}
  local lines = { "HTTP/1.1 " .. (opts.status or "200 OK") }
  if opts.type ~= false then lines[#lines + 1] = "Content-Type: " .. (opts.type or "application/json") end
  if opts.length ~= false then lines[#lines + 1] = "Content-Length: " .. tostring(opts.length or #body) end
  lines[#lines + 1] = "X-Consul-Index: 7"
  for _, h in ipairs(opts.headers or {}) do lines[#lines + 1] = h end
  if opts.close ~= false then lines[#lines + 1] = "Connection: close" end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  -- only our own process, by its PID; its connection children die with it (PDEATHSIG)
  sh("kill -TERM " .. self.pid .. " 2>/dev/null; " ..
     "for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 " .. self.pid .. " 2>/dev/null || break; sleep 0.05; done")
  os.remove(self.portfile)
  if self.dir and self.dir:match("/fakeserver%-dir%.[%w]+$") then
    sh("rm -rf " .. quote(self.dir))
  end
end

return M
