-- consul: the module users require. The C core (consul.core) does the work; this file holds
-- the little that reads better in Lua.
local core = require("consul.core")

local error, pcall, type = error, pcall, type

-- Argument errors raised by the C core name the user's line: they skip this file's frames.
core._op.module_source(debug.getinfo(1, "S").source)

local _M = core
local Client = core.Client   -- the client's method table

-- Releases lock, then passes fn's results on (true, ...) or raises fn's error again.
local function finish(lock, ok, ...)
  lock:release()
  if not ok then
    error((...), 0)   -- the same error value, not wrapped
  end
  return true, ...
end

-- c:with_lock(key, opts, fn, ...): fn(lock, ...) under the lock; true, fn's results; or
-- nil, err, meta when the lock could not be had (fn is not called).
function Client.with_lock(c, key, opts, fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #3 to 'with_lock' (function expected, got " .. type(fn) .. ")", 2)
  end
  local lock, err, meta = c:lock(key, opts)
  if not lock then
    return nil, err, meta
  end
  return finish(lock, pcall(fn, lock, ...))
end

-- c:with_semaphore(prefix, limit, opts, fn, ...): the same for one of limit holders.
function Client.with_semaphore(c, prefix, limit, opts, fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #4 to 'with_semaphore' (function expected, got " .. type(fn) .. ")", 2)
  end
  local sem, err, meta = c:semaphore(prefix, limit, opts)
  if not sem then
    return nil, err, meta
  end
  return finish(sem, pcall(fn, sem, ...))
end


-- Inside nginx (lua-nginx-module's http subsystem) calls go over cosockets where they may.
if type(ngx) == "table" and type(ngx.config) == "table" and ngx.config.subsystem == "http" and
   type(ngx.socket) == "table" and ngx.socket.tcp then
  require("consul.ngx").install()
end

return _M
