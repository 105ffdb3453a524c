-- spec/helpers/util.lua: what several specs need besides an agent: which interpreter runs
-- them (and so their child processes), how slow this run is, clocks, polling, small files.
local system = require("system")

local M = {}

M.IS_JIT = type(jit) == "table"
M.VALGRIND = (os.getenv("CONSUL_TEST_VALGRIND") or "") ~= ""
M.ASAN = (os.getenv("CONSUL_TEST_ASAN") or "") ~= ""
M.SLOW = M.VALGRIND or M.ASAN

-- The interpreter for child processes: the one running us. Under `make asan` the instrumented
-- module loads only into the instrumented front end (build/asan/lua).
local function child_lua()
  if M.ASAN then
    local f = io.open("build/asan/lua", "rb")
    if f then
      f:close()
      return "build/asan/lua"
    end
  end
  return M.IS_JIT and "luajit" or "lua5.4"
end
M.LUA = child_lua()

M.now = system.monotime
M.sleep = system.sleep

-- A note(...) function that prints under the spec's name.
function M.noter(name)
  return function(...)
    io.stderr:write("\n[" .. name .. " note] ", string.format(...), "\n")
  end
end

-- Bounds of timing assertions: widened when this process runs under valgrind or ASan.
function M.slack(normal, slow)
  return M.SLOW and slow or normal
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Writes path.tmp, then renames it to path: a reader never sees half of it.
function M.put_file(path, text)
  local tmp = path .. ".tmp"
  M.write_file(tmp, text)
  assert(os.rename(tmp, path))
end

-- Asserts that f raises an error matching pattern, positioned at f's own line in its file.
-- f must be a one-line function whose statement is the bad call (not `return`ed: a tail
-- call loses the caller's line).
function M.raises(pattern, f)
  local luassert = require("luassert")
  local ok, err = pcall(f)
  luassert.is_false(ok, "expected an error matching " .. pattern)
  err = tostring(err)
  local info = debug.getinfo(f, "S")
  local file = (info.short_src:match("([^/]*)$"):gsub("%p", "%%%0"))
  luassert.matches(file .. ":" .. info.linedefined .. ": ", err, 1, false,
    "error not at the caller's line " .. info.linedefined .. ": " .. err)
  luassert.matches(pattern, err)
  return err
end

-- Asserts the module's failure shape for an HTTP error answer: nil, a one-line err starting
-- "consul: METHOD PATH: STATUS" (and holding why, when given), meta.code "http" and
-- meta.status. The call goes last, so all its results arrive:
--   util.fails("GET", path, 403, "Permission denied", c.acl:x(...))
function M.fails(method, path, status, why, res, err, meta)
  local luassert = require("luassert")
  luassert.is_nil(res)
  luassert.is_string(err)
  luassert.is_table(meta)
  luassert.are.equal("http", meta.code)
  luassert.are.equal(status, meta.status)
  local head = "consul: " .. method .. " " .. path .. ": " .. status
  luassert.are.equal(head, err:sub(1, #head))
  if why then luassert.matches(why, err, 1, true) end
  luassert.is_nil(err:find("\n", 1, true))
  return err
end

-- Polls fn every `step` seconds until it returns a truthy value (returned) or `timeout` passes.
function M.wait_until(timeout, fn, step)
  local deadline = M.now() + timeout
  repeat
    local v = fn()
    if v then return v end
    M.sleep(step or 0.02)
  until M.now() > deadline
  return fn()
end

-- The element of list whose field equals value, or nil.
function M.find(list, field, value)
  for _, x in ipairs(list or {}) do
    if x[field] == value then return x end
  end
end

-- An eventually(what, fn) for a spec: polls fn every 50 ms until it returns a truthy value
-- (returned), and raises "timed out waiting for <what>" at its caller after `timeout` s.
function M.eventually_within(timeout)
  return function(what, fn)
    local deadline = M.now() + timeout
    while true do
      local v = fn()
      if v then return v end
      if M.now() > deadline then error("timed out waiting for " .. what, 2) end
      M.sleep(0.05)
    end
  end
end

-- Percent-encodes a key for agent.http, keeping "/".
function M.path_of(key)
  return (key:gsub("[^%w%-%._~/]", function(ch)
    return string.format("%%%02X", ch:byte())
  end))
end

-- busted's finally() keeps only the last function given in a test. defer(fn) keeps them all;
-- run_deferred (installed with after_each) runs them last-in first-out, each even if an
-- earlier one failed, then reports the first failure.
local deferred = {}

function M.defer(fn)
  deferred[#deferred + 1] = fn
end

function M.run_deferred()
  local list, first = deferred, nil
  deferred = {}
  for i = #list, 1, -1 do
    local ok, err = pcall(list[i])
    if not ok and first == nil then first = err end
  end
  if first ~= nil then error(first, 0) end
end

return M
