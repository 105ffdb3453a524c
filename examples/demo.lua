-- make demo: a tour against a throwaway Consul dev agent (scripts/with-agent.sh starts it and
-- sets CONSUL_TEST_ADDR). KV, a session, then two processes handing a lock over.
--   lua5.4 examples/demo.lua          the tour (the first process)
--   lua5.4 examples/demo.lua waiter   the second process: waits for the lock
local consul = require("consul")

local addr = os.getenv("CONSUL_TEST_ADDR") or os.getenv("CONSUL_HTTP_ADDR") or "127.0.0.1:8500"
local c = consul.new({ addr = addr })
local KEY = "demo/leader"

local function say(who, fmt, ...)
  io.stdout:write(string.format("[%s] " .. fmt .. "\n", who, ...))
  io.stdout:flush()
end

if arg[1] == "waiter" then
  -- The second process: wait (at most 20 s) for the lock the first one holds.
  say("waiter", "waiting for %s ...", KEY)
  local t0 = os.time()
  local ok, err = c:with_lock(KEY, { wait = 20, value = "waiter", name = "demo waiter" },
    function(lock)
      say("waiter", "got %s after ~%d s (session %s, fence %s)", KEY, os.time() - t0,
        lock.session, tostring(lock.fence))
      assert(c.kv:put("demo/handed-over", "yes, fence " .. tostring(lock.fence)))
    end)
  if not ok then
    say("waiter", "no lock: %s", err)
    os.exit(1)
  end
  say("waiter", "released %s and exiting", KEY)
  os.exit(0)
end

say("demo", "consul module %s, agent at %s, leader %s", consul._VERSION, addr,
  assert(c.status:leader()))

-- 1. KV: binary-safe values, 64-bit flags, the record, listing, deleting.
assert(c.kv:put("demo/greeting", "hello\0world", { flags = 42 }))
local value, err, meta = c.kv:get("demo/greeting")
assert(value, err)
local rec = assert(c.kv:record("demo/greeting"))
say("kv", "get demo/greeting -> %q (index %d; its record: flags %d, modify_index %d)", value,
  meta.index, rec.Flags, rec.ModifyIndex)
assert(c.kv:put("demo/colors/red", "#f00"))
assert(c.kv:put("demo/colors/green", "#0f0"))
for k, v in c.kv:pairs("demo/colors/") do
  say("kv", "  %s = %s", k, v)
end
local missing, err2 = c.kv:get("demo/nothing")
say("kv", "an absent key is nil, with no error: %s, %s", tostring(missing), tostring(err2))

-- 2. A session: create, see it, destroy.
local id = assert(c.session:create({ Name = "demo session", TTL = "15s", Behavior = "release" }))
local info = assert(c.session:info(id))
say("session", "created %s (TTL %s, behavior %s)", id, info.TTL, info.Behavior)
assert(c.session:destroy(id))
say("session", "destroyed; info now -> %s", tostring((c.session:info(id))))

-- 3. Two processes hand a lock over.
assert(c.kv:delete("demo/handed-over"))
local lock = assert(c:lock(KEY, { value = "demo", name = "demo holder" }))
say("demo", "holding %s (session %s, fence %s)", KEY, lock.session, tostring(lock.fence))

local interp = arg[-1] or "lua5.4"
local script = arg[0]
assert(os.execute(string.format("%q %q waiter &", interp, script)))

-- Wait until the waiter is queued (its session shows up), then show both sessions.
local sessions
for _ = 1, 100 do
  sessions = assert(c.session:list())
  if #sessions >= 2 then break end
  os.execute("sleep 0.1")
end
say("demo", "c.session:list() shows %d sessions:", #sessions)
for _, s in ipairs(sessions) do
  say("demo", "  %s  %-12s TTL %s", s.ID, s.Name, s.TTL)
end

say("demo", "releasing %s", KEY)
assert(lock:release())

-- A blocking query waits for the waiter's note instead of polling.
local note, _, m = c.kv:get("demo/handed-over")
local deadline = os.time() + 20
while not note and os.time() < deadline do
  note, _, m = c.kv:get("demo/handed-over", { index = m.index, wait = "5s" })
end
assert(note, "the waiter did not take the lock")
say("demo", "the waiter says: %s", note)

-- Wait for the waiter to release, then tidy up.
for _ = 1, 100 do
  local rec = c.kv:record(KEY)
  if rec and (rec.Session or "") == "" then break end
  os.execute("sleep 0.1")
end
assert(c.kv:delete("demo/", { recurse = true }))
say("demo", "done: every session gone (%d left)", #assert(c.session:list()))
c:close()
