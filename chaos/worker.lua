-- One contender of the chaos run (chaos/run.lua starts K of them): takes the lock (or a
-- semaphore slot) through its client agent, in a loop, and logs what it saw, one event a line,
-- with CLOCK_MONOTONIC times (comparable across the processes of one machine):
--
--   call T0 T1 ok|fail CODE FENCE SESSION   c:lock / c:semaphore, from call to return
--   grabbed T                               this hold is a long one (the nemesis asked)
--   in T HELD                               held() before a round of work (one, or many in a
--                                           long hold)
--   read T V IDX ok|fail CODE               the counter (consistent read)
--   write T0 T1 ok|refused|unknown|fail V   the counter set to V (V-1 read): see OUTCOME
--   out T HELD                              held() after the round's write
--   rel T0 T1 ok|fail CODE PENDING          release()
--
-- usage: lua5.4 chaos/worker.lua ADDR KEY COUNTER MODE LOG STOPFILE NAME WAIT TTL LOCK_DELAY LIMIT
--   MODE: "plain" (c.kv:put), "guarded" (lock:put), "sem" (a semaphore of LIMIT, no counter)
local consul = require("consul")
local system = require("system")

local addr, key, counter, mode, logpath, stopfile, name = arg[1], arg[2], arg[3], arg[4], arg[5],
  arg[6], arg[7]
local wait, ttl, lock_delay, limit = tonumber(arg[8]), tonumber(arg[9]), tonumber(arg[10]),
  tonumber(arg[11])

local grabfile = logpath:match("^(.*)/[^/]*$") .. "/grab"
local log = assert(io.open(logpath, "a"))
log:setvbuf("line")
local now = system.monotime
local function emit(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  log:write(table.concat(t, " ", 1, t.n), "\n")
end
local function word(s) return (tostring(s):gsub("%s+", "_")) end

local function stopped()
  local f = io.open(stopfile, "rb")
  if f then f:close() return true end
  return false
end

-- The client's timeout bounds each request (a frozen agent): a write's outcome may then be
-- unknown, and may land later, when the agent thaws.
local c = consul.new({ addr = addr, timeout = 3 })
local opts = { wait = wait, ttl = ttl, lock_delay = lock_delay, name = name }
math.randomseed(os.time() + (tonumber(name:match("%d+")) or 0) * 7919)

-- What a failed write means: "refused" (Consul said no: the lock not held, a stale cas),
-- "fail" (it did not happen: no connection), "unknown" (it may have: timeout, 5xx, closed).
local function outcome(ok, meta)
  if ok == true then return "ok" end
  if ok == false then return "refused" end
  local code = meta and meta.code
  if code == "lost" then return "refused" end
  if code == "connect" then return "fail" end
  if code == "http" and meta.status and meta.status < 500 then return "refused" end
  return "unknown"
end

emit("start", now(), name, mode)
while not stopped() do
  local t0 = now()
  local l, err, meta
  if mode == "sem" then
    l, err, meta = c:semaphore(key, limit, opts)
  else
    l, err, meta = c:lock(key, opts)
  end
  local t1 = now()
  if not l then
    emit("call", t0, t1, "fail", meta and meta.code or "?", "-", "-", word(err))
    system.sleep(0.02)
  else
    emit("call", t0, t1, "ok", "-", tostring(l.fence or "-"), l.session)
    -- the nemesis asks for a long hold by leaving the file GRAB: the worker that renames it
    -- to its own name holds on (a leader at work) until held() is false, for 30 s at most
    local long = os.rename(grabfile, grabfile .. "." .. name) and true or false
    if long then emit("grabbed", now()) end
    local until_t = now() + 30
    repeat
      local h = l:held()
      emit("in", now(), h)
      if not h then break end
      if mode ~= "sem" then
        local v, gerr, gmeta = c.kv:get(counter, { consistent = true })
        if gerr then
          emit("read", now(), "-", "-", "fail", gmeta and gmeta.code or "?")
        else
          local cur = tonumber(v or "0")
          emit("read", now(), cur, gmeta.index or "-", "ok", "-")
          system.sleep(math.random(0, 10) / 1000)  -- the work the lock protects
          local w0 = now()
          local ok, _, pmeta
          if mode == "guarded" then
            ok, _, pmeta = l:put(counter, tostring(cur + 1))
          else
            ok, _, pmeta = c.kv:put(counter, tostring(cur + 1))
          end
          emit("write", w0, now(), outcome(ok, pmeta), cur + 1)
        end
      else
        system.sleep(math.random(0, 20) / 1000)
      end
      emit("out", now(), l:held())
      if long then system.sleep(0.05) end
    until not long or now() > until_t or stopped()
    local r0 = now()
    local ok, rerr, rmeta = l:release()
    emit("rel", r0, now(), ok and "ok" or "fail", ok and "-" or (rmeta and rmeta.code or "?"),
      tostring(rmeta and rmeta.pending or false), ok and "" or word(rerr))
    system.sleep(math.random(0, 5) / 1000)
  end
end
emit("stop", now())
c:close()
log:close()
