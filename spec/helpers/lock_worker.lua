-- Child process for spec/lock_spec.lua: one lock holder or contender, started in the
-- background by the spec with the same interpreter, LUA_PATH and LUA_CPATH as the spec run.
--
--   lock_worker.lua ADDR counter KEY COUNTER_KEY N OUT
--       N times: with_lock(KEY), read COUNTER_KEY, sleep 0-5 ms, write it + 1.
--       Writes "done N" to OUT at the end ("error ..." and exit 1 on a failure).
--   lock_worker.lua ADDR hold KEY TTL LOCK_DELAY OUT
--       takes KEY (ttl, lock_delay in seconds), writes "SESSION FENCE" to OUT, then holds it
--       (sleeping) until killed; gives up after 120 s so that nothing outlives a broken run.
--   lock_worker.lua ADDR exit KEY OUT
--       takes KEY, writes "SESSION FENCE" to OUT and ends the script without releasing.
--   lock_worker.lua ADDR osexit KEY OUT
--       the same, but leaves through os.exit(0) (no lua_close: only the atexit path).
--   lock_worker.lua ADDR stalled-exit|stalled-osexit KEY OUT GO
--       takes KEY, writes "SESSION FENCE" to OUT, waits (60 s at most) for the file GO, then
--       leaves like exit or osexit. The spec stops the agent (SIGSTOP) before creating GO.
--   lock_worker.lua ADDR late-finalizer KEY OUT GO RESULT   (run by spec/helpers/atexit_host)
--       like stalled-exit, and leaves a finalizer that calls lock:release() when the host
--       closes the state from its own atexit handler, after the module's exit wait: it writes
--       "OK ERR CODE" of that call to RESULT.
--   lock_worker.lua ADDR wait KEY WAIT OUT
--       waits up to WAIT seconds for KEY; writes "acquired TIME FENCE SESSION" (TIME: the
--       wall clock, system.gettime(), right after acquiring) or "error ..." to OUT, releases.
--
-- OUT is written to OUT.tmp and renamed, so the spec never reads half a line.
-- Works on Lua 5.4 and LuaJIT 2.1.

local consul = require("consul")
local system = require("system")

local addr, mode = arg[1], arg[2]

local put_file = require("spec.helpers.util").put_file

local function fail(out, msg)
  pcall(put_file, out, "error " .. tostring(msg) .. "\n")
  io.stderr:write("lock_worker: ", tostring(msg), "\n")
  os.exit(1)
end

local c = consul.new({ addr = addr })

if mode == "counter" then
  local key, counter, n, out = arg[3], arg[4], tonumber(arg[5]), arg[6]
  math.randomseed(os.time() + math.floor(system.gettime() * 1000) % 100000)
  for i = 1, n do
    local ok, err = c:with_lock(key, { wait = 60, ttl = 15, lock_delay = 0 }, function(lock)
      assert(lock:held(), "lock not held inside with_lock")
      local v, gerr = c.kv:get(counter)
      if gerr then error(gerr) end
      local cur = tonumber(v or "0")
      system.sleep(math.random(0, 5) / 1000)
      assert(c.kv:put(counter, tostring(cur + 1)))
    end)
    if not ok then fail(out, "iteration " .. i .. ": " .. tostring(err)) end
  end
  put_file(out, "done " .. n .. "\n")
  c:close()
elseif mode == "hold" then
  local key, ttl, delay, out = arg[3], tonumber(arg[4]), tonumber(arg[5]), arg[6]
  local lock, err = c:lock(key, { wait = 30, ttl = ttl, lock_delay = delay })
  if not lock then fail(out, err) end
  put_file(out, lock.session .. " " .. tostring(lock.fence) .. "\n")
  local deadline = system.monotime() + 120
  while system.monotime() < deadline do
    system.sleep(0.2)
  end
  io.stderr:write("lock_worker: hold: not killed within 120 s, leaving\n")
  lock:release()
elseif mode == "exit" or mode == "osexit" then
  local key, out = arg[3], arg[4]
  HELD_LOCK = c:lock(key, { wait = 30, ttl = 15, lock_delay = 0 })  -- a global: live to the end
  if not HELD_LOCK then fail(out, "not acquired") end
  put_file(out, HELD_LOCK.session .. " " .. tostring(HELD_LOCK.fence) .. "\n")
  if mode == "osexit" then
    os.exit(0)
  end
  -- the end of the script: lua_close collects the lock (and the client) and exits
elseif mode == "stalled-exit" or mode == "stalled-osexit" or mode == "late-finalizer" then
  local key, out, go, result = arg[3], arg[4], arg[5], arg[6]
  HELD_LOCK = c:lock(key, { wait = 30, ttl = 15, lock_delay = 0 })
  if not HELD_LOCK then fail(out, "not acquired") end
  put_file(out, HELD_LOCK.session .. " " .. tostring(HELD_LOCK.fence) .. "\n")
  local deadline = system.monotime() + 60
  while not io.open(go, "rb") and system.monotime() < deadline do
    system.sleep(0.02)
  end
  if mode == "late-finalizer" then
    -- made after HELD_LOCK: finalized before it (Lua 5.4 calls finalizers in reverse order)
    LATE = setmetatable({}, { __gc = function()
      local ok, err, meta = HELD_LOCK:release()
      put_file(result, ("%s %s %s\n"):format(tostring(ok), tostring(err), tostring(meta and meta.code)))
    end })
  end
  io.stderr:write(string.format("lock_worker: leaving at %.3f\n", system.monotime()))
  if mode == "stalled-osexit" then
    os.exit(0)
  end
elseif mode == "wait" then
  local key, wait, out = arg[3], tonumber(arg[4]), arg[5]
  local lock, err, meta = c:lock(key, { wait = wait, ttl = 10, lock_delay = 0 })
  local t = system.gettime()
  if not lock then fail(out, tostring(err) .. " (code " .. tostring(meta and meta.code) .. ")") end
  put_file(out, string.format("acquired %.3f %s %s\n", t, tostring(lock.fence), lock.session))
  lock:release()
  c:close()
else
  io.stderr:write("lock_worker: unknown mode ", tostring(mode), "\n")
  os.exit(2)
end
