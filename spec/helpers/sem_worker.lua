-- Child process for spec/semaphore_spec.lua: one semaphore holder or contender, started in the
-- background by the spec with the same interpreter, LUA_PATH and LUA_CPATH as the spec run.
--
--   sem_worker.lua ADDR hold PREFIX LIMIT TTL LOCK_DELAY NAME OUT
--       takes a slot (wait 30 s; ttl, lock_delay in seconds; NAME: the session's name),
--       writes "SESSION" to OUT, then holds it (sleeping) until killed; gives up after 120 s
--       so that nothing outlives a broken run.
--   sem_worker.lua ADDR wait PREFIX LIMIT WAIT NAME OUT
--       waits up to WAIT seconds for a slot (ttl 10, lock_delay 0); writes
--       "acquired TIME SESSION" (TIME: the wall clock, system.gettime(), right after
--       acquiring) or "error MSG (code CODE)" to OUT, then releases.
--   sem_worker.lua ADDR counter PREFIX LIMIT CURRENT_KEY TOTAL_KEY ROUNDS OUT
--       ROUNDS times: with_semaphore(PREFIX, LIMIT); inside, increments CURRENT_KEY by
--       check-and-set (retried), notes the value it set (the holders at that moment), sleeps
--       10-40 ms, increments TOTAL_KEY and decrements CURRENT_KEY by check-and-set.
--       Writes "done ROUNDS MAX" to OUT (MAX: the largest value it set), or "error ...".
--   sem_worker.lua ADDR try PREFIX LIMIT ROUNDS START OUT
--       waits (10 s at most) for the file START to exist, so that all tries start together; then
--       ROUNDS times: c:semaphore(PREFIX, LIMIT, {wait = 0}), released at once when had.
--       Writes "done ROUNDS TIMEOUTS" and, after a tab, the first error message, to OUT.
--   sem_worker.lua ADDR exit PREFIX LIMIT OUT
--       takes a slot, writes "SESSION" to OUT, ends the script without releasing.
--   sem_worker.lua ADDR osexit PREFIX LIMIT OUT
--       the same, but leaves through os.exit(0) (no lua_close: only the atexit path).
--
-- OUT is written to OUT.tmp and renamed, so the spec never reads half a line.
-- Works on Lua 5.4 and LuaJIT 2.1.

local consul = require("consul")
local system = require("system")

local addr, mode = arg[1], arg[2]

local put_file = require("spec.helpers.util").put_file

local function fail(out, msg)
  pcall(put_file, out, "error " .. tostring(msg) .. "\n")
  io.stderr:write("sem_worker: ", tostring(msg), "\n")
  os.exit(1)
end

local c = consul.new({ addr = addr })

-- adds d to the integer in key by check-and-set, retried; returns the value set
local function cas_add(key, d)
  for _ = 1, 1000 do
    local rec, err = c.kv:record(key)
    if err then error("record " .. key .. ": " .. tostring(err)) end
    local new = tonumber(rec and rec.Value or "0") + d
    local ok, perr = c.kv:put(key, tostring(new), { cas = rec and rec.ModifyIndex or 0 })
    if perr then error("put " .. key .. ": " .. tostring(perr)) end
    if ok then return new end
  end
  error("cas on " .. key .. " lost 1000 times")
end

if mode == "hold" then
  local prefix, limit, ttl, delay, name, out = arg[3], tonumber(arg[4]), tonumber(arg[5]),
    tonumber(arg[6]), arg[7], arg[8]
  local sem, err = c:semaphore(prefix, limit, { wait = 30, ttl = ttl, lock_delay = delay,
    name = name })
  if not sem then fail(out, err) end
  put_file(out, sem.session .. "\n")
  local deadline = system.monotime() + 120
  while system.monotime() < deadline do
    system.sleep(0.2)
  end
  io.stderr:write("sem_worker: hold: not killed within 120 s, leaving\n")
  sem:release()
elseif mode == "wait" then
  local prefix, limit, wait, name, out = arg[3], tonumber(arg[4]), tonumber(arg[5]), arg[6],
    arg[7]
  local sem, err, meta = c:semaphore(prefix, limit, { wait = wait, ttl = 10, lock_delay = 0,
    name = name })
  local t = system.gettime()
  if not sem then fail(out, tostring(err) .. " (code " .. tostring(meta and meta.code) .. ")") end
  put_file(out, string.format("acquired %.3f %s\n", t, sem.session))
  sem:release()
  c:close()
elseif mode == "counter" then
  local prefix, limit, current, total, rounds, out = arg[3], tonumber(arg[4]), arg[5], arg[6],
    tonumber(arg[7]), arg[8]
  math.randomseed(os.time() + math.floor(system.gettime() * 1000) % 100000)
  local max = 0
  for i = 1, rounds do
    local pok, ok, err = pcall(c.with_semaphore, c, prefix, limit,
      { wait = 60, ttl = 15, lock_delay = 0 },
      function(sem)
        assert(sem:held(), "semaphore not held inside with_semaphore")
        local n = cas_add(current, 1)
        if n > max then max = n end
        system.sleep(math.random(10, 40) / 1000)
        assert(sem:held(), "semaphore lost inside with_semaphore")
        cas_add(total, 1)
        cas_add(current, -1)
      end)
    if not pok then fail(out, "round " .. i .. ": raised: " .. tostring(ok)) end
    if not ok then fail(out, "round " .. i .. ": " .. tostring(err)) end
  end
  put_file(out, "done " .. rounds .. " " .. max .. "\n")
  c:close()
elseif mode == "try" then
  local prefix, limit, rounds, start, out = arg[3], tonumber(arg[4]), tonumber(arg[5]), arg[6],
    arg[7]
  local deadline = system.monotime() + 10
  while not io.open(start, "rb") and system.monotime() < deadline do
    system.sleep(0.005)
  end
  local timeouts, first = 0, ""
  for i = 1, rounds do
    local sem, err, meta = c:semaphore(prefix, limit, { wait = 0, ttl = 15, lock_delay = 0 })
    if sem then
      local ok, rerr = sem:release()
      if not ok then fail(out, "round " .. i .. ": release: " .. tostring(rerr)) end
    elseif meta and meta.code == "timeout" then
      timeouts = timeouts + 1
      if first == "" then first = tostring(err) end
    else
      fail(out, "round " .. i .. ": " .. tostring(err))
    end
  end
  put_file(out, "done " .. rounds .. " " .. timeouts .. "\t" .. first .. "\n")
  c:close()
elseif mode == "exit" or mode == "osexit" then
  local prefix, limit, out = arg[3], tonumber(arg[4]), arg[5]
  -- a global: live to the end of the script
  HELD_SEM = c:semaphore(prefix, limit, { wait = 30, ttl = 15, lock_delay = 0 })
  if not HELD_SEM then fail(out, "not acquired") end
  put_file(out, HELD_SEM.session .. "\n")
  if mode == "osexit" then
    os.exit(0)
  end
  -- the end of the script: lua_close collects the semaphore (and the client) and exits
else
  io.stderr:write("sem_worker: unknown mode ", tostring(mode), "\n")
  os.exit(2)
end
