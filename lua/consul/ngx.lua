-- consul.ngx: the module inside nginx (lua-nginx-module). lua/consul.lua loads it when it
-- finds itself in nginx's http subsystem.
--
-- The C core describes every request a call needs as data and takes its answer back as
-- bytes (csrc/op.c, csrc/wire.c); here the bytes travel over cosockets, so a call yields the
-- worker while it waits on the agent. Where nginx does not let a handler yield (init,
-- init_worker outside a timer, set, header/body filters, log, balancer) the C core makes the
-- call itself with libcurl, blocking the worker meanwhile (csrc/op.c: consul_op_call asks
-- lua_isyieldable). Nothing of the algorithms is here: a lock's acquire is the same C machine,
-- stepped from this loop.
local core = require("consul.core")

local ngx = ngx
local pairs, type, error, select, setmetatable, tostring = pairs, type, error, select,
  setmetatable, tostring
local sub, format = string.sub, string.format
local io_open = io.open

local op = core._op
local PENDING = op.PENDING
local op_next, op_feed, op_fail, op_conn, op_finish = op.next, op.feed, op.fail, op.conn, op.finish
local op_status, op_line, op_connected = op.status, op.line, op.connected
local tcp, sleep, now = ngx.socket.tcp, ngx.sleep, ngx.now

local KEEPALIVE_MS = 60000  -- how long a pooled connection may idle
local POOL_SIZE = 64        -- connections kept per agent and worker

local _M = {}

-- ---- client certificates: read and parsed once per pair of files ----------------------------

local certs = {}

local function read_file(path)
  local f = io_open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function client_cert(cert_file, key_file)
  local k = cert_file .. "\0" .. (key_file or "")
  local c = certs[k]
  if c then return c[1], c[2] end
  local ssl = require("ngx.ssl")
  local pem = read_file(cert_file)
  if not pem then return nil, "cannot read the client certificate " .. cert_file end
  local key_pem = read_file(key_file or cert_file)
  if not key_pem then return nil, "cannot read the client key " .. (key_file or cert_file) end
  local cert, err = ssl.parse_pem_cert(pem)
  if not cert then return nil, "the client certificate " .. cert_file .. ": " .. tostring(err) end
  local key, kerr = ssl.parse_pem_priv_key(key_pem)
  if not key then return nil, "the client key " .. (key_file or cert_file) .. ": " .. tostring(kerr) end
  certs[k] = { cert, key }
  return cert, key
end

-- ---- one request over a cosocket ---------------------------------------------------------

-- What a pool name stands for (csrc/client.c names a pool after all a connection depends
-- on): where to connect, the connect options, TLS. Asked of C once per name.
local conns, nconns = {}, 0

local function conn_of(o, pool)
  local host, port, https, server_name, verify, cert_file, key_file = op_conn(o, true)
  -- a cosocket resolves names only with nginx's `resolver`: localhost needs none
  if host == "localhost" then host = "127.0.0.1" end
  if nconns >= 256 then conns, nconns = {}, 0 end  -- a program of many agents: start over
  local cn = { host = host, port = port, opts = { pool = pool, pool_size = POOL_SIZE },
    https = https, server_name = server_name, verify = verify, cert_file = cert_file,
    key_file = key_file }
  conns[pool], nconns = cn, nconns + 1
  return cn
end

-- A connection to the op's agent, from the worker's pool: sock, reused, or nil, what, why.
local function connect(o, ms)
  local pool, timeout = op_conn(o)
  local cn = conns[pool] or conn_of(o, pool)
  local sock = tcp()
  sock:settimeouts(ms < timeout and ms or timeout, ms, ms)
  local ok, err
  if cn.port then
    ok, err = sock:connect(cn.host, cn.port, cn.opts)
  else
    ok, err = sock:connect(cn.host, cn.opts)
  end
  if not ok then
    return nil, err == "timeout" and "timeout" or "connect", err
  end
  local reused = sock:getreusedtimes()
  if reused == 0 then op_connected(o) end
  if cn.https and reused == 0 then
    if cn.cert_file then
      local cert, key = client_cert(cn.cert_file, cn.key_file)
      if not cert then
        sock:close()
        return nil, "tls", key
      end
      ok, err = sock:setclientcert(cert, key)
      if not ok then
        sock:close()
        return nil, "tls", err
      end
    end
    -- (reused_session nil, so that a handshake done at once still has its verification
    -- result looked at. When the handshake completes without yielding and the verification
    -- failed, lua-resty-core 0.1.25 asserts instead of returning nginx's reason: the
    -- certificate did not verify, and why is lost. Which of the two happens is timing.)
    local verify = cn.verify
    local pok, sess, herr = pcall(sock.sslhandshake, sock, nil, cn.server_name, verify)
    if not pok or not sess then
      sock:close()
      if not pok then
        herr = verify and "the agent's certificate did not verify (lua-resty-core lost " ..
          "nginx's reason: " .. tostring(sess) .. ")" or "the handshake failed (" ..
          tostring(sess) .. ")"
      end
      return nil, herr == "timeout" and "timeout" or "tls", herr
    end
  end
  return sock, reused
end

-- Reads an answer into the op until it is whole: its feed result (1 reusable, 2 close, -1
-- failed), or 0 when the connection died before a byte came (worth another connection).
-- set: the socket's read timeout already ends at the deadline (a first attempt on a pooled
-- connection, and no yield since the deadline was set, as far as ngx.now()'s milliseconds
-- tell), so the first read need not set it again.
local function read_answer(o, sock, deadline, set)
  local first = true
  while true do
    if not set then
      local left = (deadline - now()) * 1000
      sock:settimeout(left > 1 and left or 1)
    end
    set = false
    local data, err = sock:receiveany(65536)
    if not data then
      -- closed or reset before a byte: a pooled connection the agent had dropped
      if first and err ~= "timeout" then return 0, err end
      if err == "closed" then
        return op_feed(o, nil)
      end
      op_fail(o, err == "timeout" and "timeout" or "closed", err)
      return -1
    end
    first = false
    local st = op_feed(o, data)
    if st ~= 0 then return st end
  end
end

-- Sends the op's request and reads its answer into it (or tells it how the transfer failed).
local function transfer(o, head, body, ms)
  local t0 = now()
  local deadline = t0 + ms / 1000
  -- a pooled connection the agent closed meanwhile: another one, as libcurl does
  for attempt = 1, 3 do
    local left = attempt == 1 and ms or (deadline - now()) * 1000
    local sock, reused, why = connect(o, left > 1 and left or 1)
    if not sock then
      return op_fail(o, reused, why)
    end
    local ok, err = sock:send(body and { head, body } or head)
    local st
    if not ok and err ~= "timeout" then
      -- the agent may have answered before it stopped reading (413 to a value over its
      -- kv_max_value_size): that answer is the request's, if it came
      st, why = read_answer(o, sock, deadline)
      if st == 1 then st = 2 end  -- the rest of the body is still owed on it
      if st == 0 then why = err end  -- nothing came: the send's failure says it best
    elseif not ok then
      sock:close()
      return op_fail(o, "timeout", err)
    else
      st, why = read_answer(o, sock, deadline, attempt == 1 and reused > 0 and now() == t0)
    end
    if st == 1 then
      sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
      return
    end
    sock:close()
    if st ~= 0 then return end
    if reused == 0 then
      return op_fail(o, "closed", why)  -- a new connection closed at once: no retry
    end
  end
  return op_fail(o, "closed", "the agent keeps closing connections")
end

-- Runs an op to its end and returns its results.
local function drive(o)
  local act, a, b, c = op_next(o)
  while act ~= 3 do
    if act == 1 then
      transfer(o, a, b, c)
    else
      sleep(a)
    end
    act, a, b, c = op_next(o)
  end
  return op_finish(o)
end
_M.drive = drive

local function results(r1, ...)
  if r1 == PENDING then return drive((...)) end
  return r1, ...
end

-- The C method f, driven here whenever it hands an op over.
local function wrap(f)
  return function(...) return results(f(...)) end
end

-- ---- agent:monitor: a stream of log lines over a cosocket ----------------------------------

local Stream = {}
Stream.__index = Stream
Stream.__name = "consul.Stream"

local function timeout_failure(self, secs)
  return nil, format("consul: GET /v1/agent/monitor: no line within %f s", secs),
    { code = "timeout" }
end

function Stream:read(timeout, ...)
  if select("#", ...) > 0 then error("too many arguments (a timeout in seconds expected)", 2) end
  local secs = self.timeout
  if timeout ~= nil then
    if type(timeout) ~= "number" or not (timeout >= 0) then
      error("bad argument #1 to 'read' (a timeout of 0 or more seconds expected)", 2)
    end
    secs = timeout
  end
  local o = self.op
  if not o then return nil end
  local deadline = secs ~= math.huge and now() + secs or nil
  while true do
    local line, err, meta = op_line(o)
    if line or err then return line, err, meta end
    if self.done then
      self.op = nil
      return op_line(o, true)
    end
    local left = deadline and (deadline - now()) * 1000
    if left and left <= 0 then return timeout_failure(self, secs) end
    self.sock:settimeout(left and (left > 1 and left or 1) or 2147483647)
    local data, rerr = self.sock:receiveany(65536)
    if not data then
      if rerr == "timeout" and left then return timeout_failure(self, secs) end
      if rerr ~= "timeout" then
        op_feed(o, nil)
        self.sock:close()
        self.done = true
      end
    elseif op_feed(o, data) ~= 0 then
      self.sock:close()
      self.done = true
    end
  end
end

function Stream:close(...)
  if select("#", ...) > 0 then error("too many arguments (none expected)", 2) end
  if self.sock then self.sock:close() end
  self.op, self.sock, self.done = nil, nil, true
end

function Stream:__call()
  local line, err = self:read()
  if line == nil and err then error(err, 2) end
  return line
end

Stream.__close = Stream.close
Stream.__tostring = function(self) return "consul.Stream (" .. (self.op and "open" or "closed") .. ")" end

local function monitor(f)
  return function(...)
    local r1, o = f(...)
    if r1 ~= PENDING then return r1, o, select(3, ...) end
    local act, head, body, ms = op_next(o)
    if act ~= 1 then return drive(o) end
    local sock, reused, why = connect(o, ms)
    if not sock then
      op_fail(o, reused, why)
      return drive(o)
    end
    local ok, err = sock:send(head)
    if not ok then
      sock:close()
      op_fail(o, "closed", err)
      return drive(o)
    end
    local deadline = now() + ms / 1000
    -- the answer's head: a refusal is an error from monitor() itself
    while not op_status(o) do
      local left = (deadline - now()) * 1000
      if left <= 0 then
        sock:close()
        op_fail(o, "timeout", "no answer")
        return drive(o)
      end
      sock:settimeout(left > 1 and left or 1)
      local data, rerr = sock:receiveany(65536)
      local st
      if not data then
        if rerr == "closed" then
          st = op_feed(o, nil)
        else
          op_fail(o, "timeout", rerr)
          st = -1
        end
      else
        st = op_feed(o, data)
      end
      if st ~= 0 then
        sock:close()
        local r1, r2, r3 = drive(o)
        if r1 == true then  -- a monitor that ended at once: an empty stream
          local s = setmetatable({ done = true }, Stream)
          return s, nil, nil, s
        end
        return r1, r2, r3
      end
    end
    if op_status(o) >= 300 then
      -- read the refusal's whole answer to say why
      local st = read_answer(o, sock, deadline)
      sock:close()
      if st == 0 then op_fail(o, "closed", "closed") end
      return drive(o)
    end
    local s = setmetatable({ op = o, sock = sock, timeout = select(2, op_conn(o)) / 1000 }, Stream)
    return s, nil, nil, s
  end
end

-- ---- locks of requests that end without letting go ---------------------------------------
--
-- A handler may leave a lock without releasing it in ways no Lua code sees: ngx.exit (inside
-- with_lock too: the request's coroutine is dropped, pcall never returns), a client that goes
-- away mid-wait (lua_check_client_abort). The lock object is garbage then, and its finalizer
-- releases it -- but only once the garbage collector runs, which an idle worker may never do.
-- So the locks taken (or waited for) in requests are watched: once such a request is over
-- (lua-resty-core keeps each request's ngx.ctx in registry.ngx_lua_ctx_tables, and drops it
-- when the request ends) while its lock is still held or its acquire never returned, one full
-- collection runs. A lock the handler kept on purpose (in a module table) is not garbage, and
-- stays held.

local registry = debug.getregistry()
local watched, janitor_on = {}, false
local JANITOR_S = 0.5

local function request_over(ctx)
  local ctxs = registry.ngx_lua_ctx_tables
  if type(ctxs) ~= "table" then return false end  -- unknown here: the GC will tell, in time
  for _, t in pairs(ctxs) do
    if t == ctx then return false end
  end
  return true
end

local function janitor(premature)
  if premature then
    janitor_on = false
    return
  end
  local collect = false
  for i = #watched, 1, -1 do
    local e = watched[i]
    local lock = e.lock[1]
    if e.done and (lock == nil or not lock:held()) then
      table.remove(watched, i)
    elseif request_over(e.ctx) then
      collect = true  -- its lock is held, or its acquire never came back
      table.remove(watched, i)
    end
  end
  if collect then collectgarbage() end
  if #watched > 0 then
    janitor_on = ngx.timer.at(JANITOR_S, janitor) ~= nil
  else
    janitor_on = false
  end
end

local REQUEST_PHASES = { rewrite = true, server_rewrite = true, access = true, content = true }

local function watch()
  if not REQUEST_PHASES[ngx.get_phase()] then return nil end
  local e = { ctx = ngx.ctx, lock = setmetatable({}, { __mode = "v" }) }
  watched[#watched + 1] = e
  if not janitor_on then janitor_on = ngx.timer.at(JANITOR_S, janitor) ~= nil end
  return e
end

local function watched_results(e, r1, ...)
  if e then
    e.done = true
    e.lock[1] = r1 or nil
  end
  return r1, ...
end

-- ---- every method that talks to the agent ---------------------------------------------------

-- A method taking a lock: not in the master, and watched when taken in a request.
local function locking(name)
  return function(f)
    return function(...)
      if ngx.get_phase() == "init" then
        error("consul: " .. name .. " cannot run in init_by_lua* (nginx's master process, " ..
          "before the fork): take locks in a worker (handlers, timers)", 2)
      end
      local e = watch()
      return watched_results(e, results(f(...)))
    end
  end
end

function _M.install()
  for _, mt in pairs(core._groups) do
    for k, f in pairs(mt) do
      if type(f) == "function" and sub(k, 1, 2) ~= "__" then
        mt[k] = k == "monitor" and monitor(f) or wrap(f)
      end
    end
  end
  local Client, Lock = core.Client, core.Lock
  Client.request = wrap(Client.request)
  Client.lock = locking("c:lock")(Client.lock)
  Client.semaphore = locking("c:semaphore")(Client.semaphore)
  Lock.acquire = locking("lock:acquire")(Lock.acquire)
  Lock.release = wrap(Lock.release)
  Lock.put, Lock.delete, Lock.txn = wrap(Lock.put), wrap(Lock.delete), wrap(Lock.txn)
  op.enable(true)
end

return _M
