-- Semaphores (c:semaphore, sem:*, c:with_semaphore) against a real Consul 1.8.7 dev agent
-- (scripts/with-agent.sh), on Lua 5.4 and LuaJIT.
--
-- The layout is the Go client's (api/semaphore.go), so `consul lock -n N` interoperates:
-- a contender key prefix/<session> held by its session, and prefix/.lock with
-- {"Limit":N,"Holders":{...}}, both with Flags 0xe0f69a2baa414de0. What the module did is
-- checked independently of it: keys, values and sessions with agent.http (curl) and dkjson,
-- Consul's own `consul lock -n 2`, and child processes (spec/helpers/sem_worker.lua, same
-- interpreter, LUA_PATH and LUA_CPATH) for contention, crashes and process exit. Children run
-- in the background with a pid file and are stopped by PID; every wait is a bounded poll.
--
-- Time: the crash scenario waits for Consul to invalidate a killed holder's session (TTL 10 s,
-- up to 2 x TTL). Its holder is killed and its waiter (a child) started by the FIRST test, and
-- the waiter's result is checked by the LAST one, so that wait overlaps the rest of the file.
--
-- Under CONSUL_TEST_VALGRIND / CONSUL_TEST_ASAN this process is slower, so the bounds of
-- timing assertions are widened (SLOW). Children are not under valgrind; under ASan they
-- run the ASan interpreter (build/asan/lua), which can load the instrumented core.so.
--
-- Three specs here began as reports of bugs since fixed (each explained where it is): wait = 0
-- timing out on a lost check-and-set race, a semaphore's own session being Behavior
-- "release" rather than Go's "delete", and LuaJIT taking a limit of 2.5 as 2.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")
local system = require("system")

local util = require("spec.helpers.util")
local IS_JIT, VALGRIND, ASAN, SLOW = util.IS_JIT, util.VALGRIND, util.ASAN, util.SLOW
local LUA, now, sleep, slack = util.LUA, util.now, util.sleep, util.slack
local read_file, wait_until, path_of = util.read_file, util.wait_until, util.path_of
local children = require("spec.helpers.children")
local sessions = require("spec.helpers.sessions")
local exit_code, wait_exit, log_of = children.exit_code, children.wait_exit, children.log_of
local kill, out_of = children.kill, children.out_of
local note = util.noter("semaphore_spec")
local P = "spec/semaphore/"
local FLAGS_DIGITS = "16210313421097356768"  -- 0xe0f69a2baa414de0, as Consul's JSON has it
local SPEC_DIR = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "spec"
local WORKER = SPEC_DIR .. "/helpers/sem_worker.lua"

-- the keys of a set-like table, sorted
local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function sorted(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  table.sort(out)
  return out
end

describe("consul semaphores", function()
  local A, c, c2, c3
  local TMP

  local function raw(method, path, body) return agent.raw(A, method, path, body) end

  -- the key's record (decoded by dkjson, independent of the module) and its text, or nil
  local function raw_record(key) return agent.kv_record(A, key) end

  -- prefix/.lock decoded: { Limit =, Holders = {...} }, its raw value, its raw record text;
  -- nil when absent
  local function lock_state(prefix)
    local status, body = raw("GET", "/v1/kv/" .. path_of(prefix .. "/.lock") .. "?raw")
    if status == 404 then return nil end
    assert.are.equal(200, status)
    local t = json.decode(body)
    assert(type(t) == "table", "prefix/.lock is no JSON object: " .. body)
    local _, text = raw_record(prefix .. "/.lock")
    return t, body, text
  end

  -- the sorted session IDs in prefix/.lock's Holders (nil when there is no .lock)
  local function holders(prefix)
    local t = lock_state(prefix)
    if not t then return nil end
    for id, v in pairs(t.Holders or {}) do
      assert.are.equal(true, v, "Holders[" .. id .. "]")
    end
    return sorted_keys(t.Holders or {})
  end

  -- the sorted keys under prefix/ ({} when none)
  local function keys_under(prefix)
    local status, body = raw("GET", "/v1/kv/" .. path_of(prefix .. "/") .. "?keys")
    if status == 404 then return {} end
    assert.are.equal(200, status)
    return sorted(assert(json.decode(body)))
  end

  local function raw_session(id) return sessions.raw(A, id) end

  local function sessions_named(name) return sessions.named(c, name) end
  local function sessions_left(name) return sessions.left(c, name) end

  local function session_ids() return sessions.ids(c) end

  -- The number of sessions, leaving out those that may end on their own meanwhile: the crash
  -- scenario's (it runs across the whole file) and those of `consul lock` (Go leaves a
  -- session behind when its process ends before its renew goroutine destroyed it).
  local function session_count()
    local n = 0
    for _, s in ipairs(assert(c.session:list())) do
      local name = s.Name or ""
      if not name:match("^spec sem crash") and not name:match("^Consul lock") then n = n + 1 end
    end
    return n
  end

  local function assert_no_new_session(before) return sessions.assert_no_new(c, before) end

  -- Checks the Go layout for exactly these holders: .lock has Limit = limit and Holders =
  -- the sessions; each holder's contender key prefix/<session> is held by its session; all
  -- carry the semaphore flags (exact digits: dkjson would round the 64-bit number).
  local function assert_layout(prefix, limit, sessions)
    local t, _, text = lock_state(prefix)
    assert(t, "no " .. prefix .. "/.lock")
    assert.are.equal(limit, t.Limit)
    assert.are.same(sorted(sessions), holders(prefix))
    assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', text)
    for _, id in ipairs(sessions) do
      local rec, rtext = raw_record(prefix .. "/" .. id)
      assert(rec, "no contender key for " .. id)
      assert.are.equal(id, rec.Session)
      assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', rtext)
    end
  end

  -- child processes (spec/helpers/children.lua), made in setup
  local spawner
  local function spawn(name, cmd) return spawner:spawn(name, cmd) end
  local function worker(name, mode, ...) return spawner:worker(name, mode, ...) end

  local function wipe()
    raw("DELETE", "/v1/kv/" .. P .. "?recurse")
  end

  -- crash scenario state, shared by the first and the last test
  local crash = {}

  -- Cleanups of the running test, run after it in reverse order, each protected. (busted's
  -- finally() keeps only the last function given to it.)
  local cleanups = {}
  local function defer(fn)
    cleanups[#cleanups + 1] = fn
  end

  after_each(function()
    for i = #cleanups, 1, -1 do
      local ok, err = pcall(cleanups[i])
      if not ok then io.stderr:write("[semaphore_spec] cleanup failed: ", tostring(err), "\n") end
      cleanups[i] = nil
    end
  end)

  setup(function()
    A = agent.shared().addr
    c = consul.new({ addr = A })
    c2 = consul.new({ addr = A })
    c3 = consul.new({ addr = A })
    TMP = agent.tmpdir()
    spawner = children.new(TMP, WORKER, A)
    wipe()
  end)

  teardown(function()
    if spawner then spawner:kill_all() end
    if crash.mine then crash.mine:release() end
    wipe()
    if c then c:close() end
    if c2 then c2:close() end
    if c3 then c3:close() end
  end)

  ---------------------------------------------------------------------------
  describe("crash of a holder (SIGKILL)", function()
    -- A child (ttl = 10, lock_delay = 0) and we hold the 2 slots; the child is killed here
    -- and a waiter child starts at once. Its result is checked by the last test of the file.
    it("starts: a holder child and we fill limit 2, the child is SIGKILLed, a waiter waits",
      function()
        local prefix = P .. "crash"
        local hold_out = TMP .. "/crash-holder.out"
        crash.prefix = prefix
        crash.holder = worker("crash-holder", "hold", prefix, 2, 10, 0, "spec sem crash holder",
          hold_out)
        local line = out_of(hold_out, 15)
        assert(line, "the holder did not report: " .. log_of(crash.holder))
        crash.session = assert(line:match("^(%S+)"), line)
        crash.mine = assert(c3:semaphore(prefix, 2, { wait = 5, ttl = 10, lock_delay = 0,
          name = "spec sem crash mine" }))
        assert_layout(prefix, 2, { crash.session, crash.mine.session })

        kill(crash.holder, "KILL")
        crash.killed_at = system.gettime()   -- wall clock: the waiter reports in it too
        crash.killed_mono = now()
        assert.is_truthy(wait_exit(crash.holder, 5))
        assert.are.equal(137, exit_code(crash.holder))  -- 128 + SIGKILL

        crash.out = TMP .. "/crash-waiter.out"
        crash.waiter = worker("crash-waiter", "wait", prefix, 2, 40, "spec sem crash waiter",
          crash.out)
        -- the dead holder's session still has its slot for now
        sleep(0.5)
        assert.is_nil(read_file(crash.out))
        assert.are.same(sorted({ crash.session, crash.mine.session }), holders(prefix))
        assert.is_true(crash.mine:held())
      end)
  end)

  ---------------------------------------------------------------------------
  describe("limit 2", function()
    it("two clients hold at once; a third: wait = 0 times out at once, wait = 1 after ~1 s",
      function()
        local prefix = P .. "two"
        local s1 = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
        defer(function() s1:release() end)
        local s2 = assert(c2:semaphore(prefix .. "/", 2, { wait = 5, lock_delay = 0 }))
        defer(function() s2:release() end)
        assert.is_true(s1:held())
        assert.is_true(s2:held())
        assert.are.equal(prefix, s1.key)
        assert.are.equal(prefix, s2.key)  -- the trailing "/" is not part of it
        assert.are.equal(2, s1.limit)
        assert.is_nil(s1.fence)
        assert.is_string(s1.session)
        assert.are_not.equal(s1.session, s2.session)
        assert.matches("Semaphore", tostring(s1))
        assert.matches("held", tostring(s1))
        assert_layout(prefix, 2, { s1.session, s2.session })

        local before = session_ids()
        local t0 = now()
        local s3, err, meta = c3:semaphore(prefix, 2, { wait = 0, name = "spec sem third" })
        local elapsed = now() - t0
        assert.is_nil(s3)
        assert.is_string(err)
        assert.matches("^consul: semaphore " .. P .. "two: not acquired", err)
        assert.is_table(meta)
        assert.are.equal("timeout", meta.code)
        assert.is_nil(meta.status)
        assert.is_true(elapsed < slack(0.5, 3), "wait = 0 took " .. elapsed .. " s")

        t0 = now()
        s3, err, meta = c3:semaphore(prefix, 2, { wait = 1, name = "spec sem third" })
        elapsed = now() - t0
        assert.is_nil(s3)
        assert.is_string(err)
        assert.are.equal("timeout", meta.code)
        assert.is_true(elapsed >= 0.95 and elapsed < slack(2.5, 8),
          "wait = 1 took " .. elapsed .. " s")

        -- a failed attempt leaves neither its session nor its contender key behind
        assert.are.equal(0, sessions_left("spec sem third"))
        assert_no_new_session(before)
        assert.are.same(sorted({ prefix .. "/.lock", prefix .. "/" .. s1.session,
          prefix .. "/" .. s2.session }), keys_under(prefix))
        assert_layout(prefix, 2, { s1.session, s2.session })
        assert.is_true(s1:held())
        assert.is_true(s2:held())
      end)

    it("a waiting third process gets the slot as soon as one holder releases", function()
      local prefix = P .. "handover"
      local s1 = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      defer(function() s1:release() end)
      local s2 = assert(c2:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      defer(function() s2:release() end)
      local out = TMP .. "/handover.out"
      local w = worker("handover", "wait", prefix, 2, 15, "spec sem handover", out)
      defer(function() kill(w, "KILL") end)
      -- the waiter's contender key shows it is waiting; it gets no slot meanwhile
      assert.is_truthy(wait_until(10, function() return #keys_under(prefix) == 4 end),
        "the waiter did not start: " .. log_of(w))
      sleep(0.5)
      assert.is_nil(read_file(out))
      assert.are.same(sorted({ s1.session, s2.session }), holders(prefix))

      local released_at = system.gettime()
      assert.is_true(s1:release())
      local line = out_of(out, 10)
      assert(line, "the waiter has no slot 10 s after a release: " .. log_of(w))
      local t, session = line:match("^acquired (%S+) (%S+)")
      assert(t, line)
      local after = tonumber(t) - released_at
      note("limit 2: the waiting process got the slot %.2f s after a release", after)
      assert.is_true(after >= 0 and after < slack(1.5, 5), "got it " .. after .. " s after")
      assert.are_not.equal(s1.session, session)
      assert.are_not.equal(s2.session, session)
      assert.is_truthy(wait_exit(w, 10))
      assert.are.equal(0, exit_code(w), log_of(w))
      -- the waiter released in turn
      assert_layout(prefix, 2, { s2.session })
      assert.is_true(s2:held())
    end)

    it("raw layout: values, Limit, Holders = the live sessions, flags; all gone after release",
      function()
        local prefix = P .. "layout"
        local count0, before = session_count(), session_ids()
        local v1, v2 = "first \0 value", "second"
        local s1 = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0, value = v1,
          name = "spec sem layout" }))
        defer(function() s1:release() end)
        local s2 = assert(c2:semaphore(prefix, 2, { wait = 5, lock_delay = 0, value = v2 }))
        defer(function() s2:release() end)
        assert.are.equal(count0 + 2, session_count())
        assert_layout(prefix, 2, { s1.session, s2.session })
        local t, value = lock_state(prefix)
        assert.are.same({ "Holders", "Limit" }, sorted_keys(t))
        assert.matches('^{"Limit":2,"Holders":{', value)
        -- each contender key holds its semaphore's value
        local status, body = raw("GET", "/v1/kv/" .. path_of(prefix .. "/" .. s1.session) .. "?raw")
        assert.are.equal(200, status)
        assert.are.equal(v1, body)
        status, body = raw("GET", "/v1/kv/" .. path_of(prefix .. "/" .. s2.session) .. "?raw")
        assert.are.equal(v2, body)
        local info = assert(raw_session(s1.session))
        assert.are.equal("spec sem layout", info.Name)
        assert.are.equal(0, info.LockDelay)

        local id1, id2 = s1.session, s2.session
        assert.is_true(s1:release())
        assert_layout(prefix, 2, { id2 })
        assert.is_nil(raw_record(prefix .. "/" .. id1))
        assert.is_nil(raw_session(id1))
        assert.is_true(s2:release())
        t = lock_state(prefix)
        assert(t, "the .lock went away")   -- the Go client keeps it too
        assert.are.equal(2, t.Limit)
        assert.are.same({}, holders(prefix))
        assert.are.same({ prefix .. "/.lock" }, keys_under(prefix))
        assert.is_nil(raw_session(id2))
        assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', select(3, lock_state(prefix)))
        assert.are.equal(count0, session_count())
        assert_no_new_session(before)
      end)
  end)

  ---------------------------------------------------------------------------
  describe("interop with consul lock -n 2", function()
    local function consul_lock(...)
      local t0 = now()
      local ok, out, code = agent.run("lock", "-http-addr=" .. A, "-n", "2", ...)
      return ok, out, code, now() - t0
    end

    it("(a) we hold both slots: consul lock -n 2 gets none", function()
      local prefix = P .. "interop-a"
      local s1 = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      defer(function() s1:release() end)
      local s2 = assert(c2:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      defer(function() s2:release() end)
      local marker = TMP .. "/interop-a.ran"
      local ok, out, code, elapsed = consul_lock("-timeout=2s", prefix, "touch " .. marker)
      assert.is_false(ok, out)
      assert.are.equal(1, code)
      assert.matches("Shutdown triggered or timeout during lock acquisition", out, 1, true)
      assert.is_true(elapsed >= 1.9, "consul lock gave up after " .. elapsed .. " s")
      assert.is_nil(read_file(marker), "consul lock ran its command")
      assert.is_true(s1:held())
      assert.is_true(s2:held())
      assert_layout(prefix, 2, { s1.session, s2.session })
    end)

    it("(b) we hold one slot: consul lock -n 2 takes the other and runs its command", function()
      local prefix = P .. "interop-b"
      local s1 = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      defer(function() s1:release() end)
      local seen = TMP .. "/interop-b.lock"
      -- consul lock joins its arguments into one `sh -c` script
      local ok, out, code = consul_lock("-timeout=10s", prefix, "curl -sS -o " ..
        agent.quote(seen) .. " " .. agent.quote("http://" .. A .. "/v1/kv/" .. prefix ..
        "/.lock?raw"))
      assert.is_true(ok, "consul lock exit " .. tostring(code) .. ": " .. out)
      -- what .lock said while consul lock ran its command: both of us hold a slot
      local during = json.decode((assert(read_file(seen), "the command did not run")))
      assert.are.equal(2, during.Limit)
      local ids = sorted_keys(during.Holders)
      assert.are.equal(2, #ids)
      local other = ids[1] == s1.session and ids[2] or ids[1]
      assert.is_truthy(during.Holders[s1.session])
      assert.are_not.equal(s1.session, other)
      -- consul lock left its slot; ours is untouched
      assert.is_true(s1:held())
      assert_layout(prefix, 2, { s1.session })
      assert.is_nil(raw_record(prefix .. "/" .. other))
    end)

    it("(c) consul lock holds one slot, we the other: a third times out; it gets in after",
      function()
        local prefix = P .. "interop-c"
        local s1 = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
        defer(function() s1:release() end)
        local child = spawn("consul-lock-n2", agent.quote(agent.bin()) .. " lock -http-addr=" ..
          A .. " -n 2 " .. prefix .. " sleep 5")
        defer(function() kill(child, "KILL") end)
        local ids = wait_until(10, function()
          local h = holders(prefix)
          return h and #h == 2 and h
        end)
        assert(ids, "consul lock took no slot: " .. log_of(child))
        local other = ids[1] == s1.session and ids[2] or ids[1]
        assert_layout(prefix, 2, { s1.session, other })  -- its contender key: our flags

        local t0 = now()
        local s3, err, meta = c3:semaphore(prefix, 2, { wait = 1 })
        local elapsed = now() - t0
        assert.is_nil(s3)
        assert.is_string(err)
        assert.are.equal("timeout", meta.code)
        assert.is_true(elapsed >= 0.95 and elapsed < slack(3, 8), "timed out after " .. elapsed)
        assert.is_nil(exit_code(child))  -- consul lock still running

        s3, err = c3:semaphore(prefix, 2, { wait = slack(15, 25) })
        assert(s3, err)
        defer(function() s3:release() end)
        assert.is_truthy(wait_exit(child, 10))
        assert.are.equal(0, exit_code(child), log_of(child))
        assert.is_true(s3:held())
        assert.is_true(s1:held())
        assert_layout(prefix, 2, { s1.session, s3.session })
      end)

    it("(d) limit mismatch: our limit 3 where .lock says 2 is a conflict, and the reverse",
      function()
        local prefix = P .. "interop-d"
        local s1 = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
        defer(function() s1:release() end)
        local t0 = now()
        -- a conflict is not something to wait out
        local s3, err, meta = c2:semaphore(prefix, 3, { wait = 2, name = "spec sem limit3" })
        assert.is_nil(s3)
        assert.is_string(err)
        assert.matches("limit conflict", err, 1, true)
        assert.are.equal("conflict", meta.code)
        assert.is_nil(meta.status)
        assert.is_true(now() - t0 < slack(1, 4), "took " .. (now() - t0) .. " s")
        assert.are.equal(0, sessions_left("spec sem limit3"))
        assert.are.same(sorted({ prefix .. "/.lock", prefix .. "/" .. s1.session }),
          keys_under(prefix))
        assert_layout(prefix, 2, { s1.session })

        -- consul lock -n 3 says the same of our limit 2
        local ok, out, code = agent.run("lock", "-http-addr=" .. A, "-n", "3", "-timeout=5s",
          prefix, "true")
        assert.is_false(ok)
        assert.are.equal(1, code)
        assert.matches("semaphore limit conflict (lock: 2, local: 3)", out, 1, true)
        assert.is_true(s1:held())
        assert.are.same({ s1.session }, holders(prefix))
      end)

    it("a .lock that is no semaphore's: conflict, the key untouched", function()
      -- a lock (`consul lock` without -n) at prefix/.lock
      local prefix = P .. "interop-lock"
      local lock = assert(c:lock(prefix .. "/.lock", { wait = 5, lock_delay = 0 }))
      defer(function() lock:release() end)
      local before = raw_record(prefix .. "/.lock")
      local sem, err, meta = c2:semaphore(prefix, 2, { wait = 2, name = "spec sem notsem" })
      assert.is_nil(sem)
      assert.matches("not a semaphore", err, 1, true)
      assert.are.equal("conflict", meta.code)
      local after = raw_record(prefix .. "/.lock")
      assert.are.equal(before.ModifyIndex, after.ModifyIndex)
      assert.are.equal(lock.session, after.Session)
      assert.are.same({ prefix .. "/.lock" }, keys_under(prefix))
      -- a plain key with other flags
      local prefix2 = P .. "interop-plain"
      assert.is_true((c.kv:put(prefix2 .. "/.lock", "plain", { flags = 42 })))
      sem, err, meta = c2:semaphore(prefix2, 2, { wait = 0, name = "spec sem notsem" })
      assert.is_nil(sem)
      assert.are.equal("conflict", meta.code)
      assert.are.equal("plain", (c.kv:get(prefix2 .. "/.lock")))
      assert.are.same({ prefix2 .. "/.lock" }, keys_under(prefix2))
      assert.are.equal(0, sessions_left("spec sem notsem"))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("mutual exclusion", function()
    it("3 processes x 20 rounds under limit 2: never more than 2 inside at once", function()
      local prefix = P .. "mutex"
      local current, total = P .. "mutex-current", P .. "mutex-total"
      local procs, rounds = 3, 20
      local kids = {}
      for i = 1, procs do
        kids[i] = worker("counter" .. i, "counter", prefix, 2, current, total, rounds,
          TMP .. "/counter" .. i .. ".out")
      end
      local t0 = now()
      local max = 0
      for i = 1, procs do
        local done = wait_exit(kids[i], 90)
        assert(done, "counter child " .. i .. " did not finish in time: " .. log_of(kids[i]))
        assert.are.equal(0, exit_code(kids[i]), log_of(kids[i]))
        local line = read_file(TMP .. "/counter" .. i .. ".out") or ""
        local n, m = line:match("^done (%d+) (%d+)")
        assert(n, "child " .. i .. ": " .. line .. log_of(kids[i]))
        assert.are.equal(rounds, tonumber(n))
        m = tonumber(m)
        assert.is_true(m <= 2, "child " .. i .. " saw " .. m .. " holders at once")
        if m > max then max = m end
      end
      note("mutual exclusion: %d x %d rounds under limit 2 in %.1f s, at most %d inside",
        procs, rounds, now() - t0, max)
      -- a semaphore of 2, not a mutex: two were inside together at some point
      assert.are.equal(2, max)
      assert.are.equal("0", (c.kv:get(current)))
      assert.are.equal(tostring(procs * rounds), (c.kv:get(total)))
      assert.are.same({}, holders(prefix))
      assert.are.same({ prefix .. "/.lock" }, keys_under(prefix))
    end)

    -- Known bug: semaphore.c consul_sem_acquire counts a lost check-and-set of prefix/.lock
    -- (another contender updated it between our read and our write; :253 "lost the race")
    -- as an attempt, and with wait = 0 the deadline check (:172) then ends it as a timeout
    -- ("not acquired in 0 s: 1 of 3 slots taken") although slots are free. Go's Acquire
    -- reads again and retries. Fix: after a lost race, skip the deadline check once (bounded,
    -- e.g. 64 races in a row), so the next read decides.
    it("wait = 0 with a slot free for everyone: never a timeout, also when contenders race",
      function()
        local prefix = P .. "race"
        local procs, rounds = 3, 40
        local start = TMP .. "/try.start"
        local kids = {}
        for i = 1, procs do
          kids[i] = worker("try" .. i, "try", prefix, procs, rounds, start,
            TMP .. "/try" .. i .. ".out")
        end
        sleep(0.3)  -- the children load the module, then all start at once
        assert(io.open(start, "wb")):close()
        local timeouts, first = 0, nil
        for i = 1, procs do
          assert(wait_exit(kids[i], 60), "try child " .. i .. " did not finish: " .. log_of(kids[i]))
          assert.are.equal(0, exit_code(kids[i]), log_of(kids[i]))
          local line = read_file(TMP .. "/try" .. i .. ".out") or ""
          local n, t, msg = line:match("^done (%d+) (%d+)\t([^\n]*)")
          assert(n, "child " .. i .. ": " .. line .. log_of(kids[i]))
          timeouts = timeouts + tonumber(t)
          if msg ~= "" then first = first or msg end
        end
        assert.are.same({}, holders(prefix))
        assert.are.equal(0, timeouts, timeouts .. " of " .. procs * rounds .. " tries with " ..
          "wait = 0 timed out with a slot free for each of " .. procs .. " contenders, e.g.: " ..
          tostring(first))
      end)
  end)

  ---------------------------------------------------------------------------
  describe("external loss", function()
    it("our session destroyed: held() false within 2 s, a next holder gets in, acquire() again",
      function()
        local prefix = P .. "loss-session"
        local s1 = assert(c:semaphore(prefix, 2, { ttl = 10, lock_delay = 0 }))
        defer(function() s1:release() end)
        local s2 = assert(c2:semaphore(prefix, 2, { ttl = 10, lock_delay = 0 }))
        defer(function() s2:release() end)
        local id1 = s1.session
        sleep(0.3)  -- past the watch's start
        assert.is_true(c3.session:destroy(id1))
        local t0 = now()
        assert.is_truthy(wait_until(slack(2, 6), function() return not s1:held() end),
          "still held 2 s after its session was destroyed")
        note("session destroyed: held() false after %.2f s", now() - t0)
        assert.is_true(s2:held())
        assert.matches("not held", tostring(s1))

        t0 = now()
        local s3, err = c3:semaphore(prefix, 2, { wait = 5, lock_delay = 0 })
        assert(s3, err)
        defer(function() s3:release() end)
        assert.is_true(now() - t0 < slack(1.5, 5), "the next holder waited " .. (now() - t0))
        -- the dead holder was pruned by the next holder's update
        assert_layout(prefix, 2, { s2.session, s3.session })

        -- the lost semaphore: full for now; takes a slot (a new session) once one is free
        local again, _, meta = s1:acquire({ wait = 0 })
        assert.is_nil(again)
        assert.are.equal("timeout", meta.code)
        assert.is_true(s3:release())
        again, err = s1:acquire({ wait = 5 })
        assert(again, err)
        assert.are.equal(s1, again)
        assert.is_true(s1:held())
        assert.are_not.equal(id1, s1.session)
        assert_layout(prefix, 2, { s1.session, s2.session })
        assert.is_nil(raw_record(prefix .. "/" .. id1), "the lost contender key is still there")
      end)

    it("a dead holder's slot goes to a taker only its lock_delay after it saw it dead", function()
      -- Consul keeps a lock from a new holder for the lock-delay after its session ended; a
      -- semaphore's slot has no such guard in Consul, so the taker gives the dead holder as
      -- long (the dead holder's own held() lease is no longer: see the lock lease specs)
      local prefix = P .. "prune-delay"
      local s1 = assert(c:semaphore(prefix, 1, { ttl = 10, lock_delay = 2 }))
      defer(function() s1:release() end)
      assert.is_true(c3.session:destroy(s1.session))
      local t0 = now()
      local s2, err = c2:semaphore(prefix, 1, { wait = 10, lock_delay = 2 })
      local took = now() - t0
      assert(s2, err)
      defer(function() s2:release() end)
      note("dead holder pruned after %.2f s (lock_delay 2 s)", took)
      assert.is_true(took >= 1.9, "the slot was given on after " .. took .. " s")
      assert.is_true(took < slack(3.5, 6), "the slot was given on after " .. took .. " s")
      assert_layout(prefix, 1, { s2.session })
      -- wait = 0 meanwhile: a timeout, not the dead holder's slot
      local s3, _, meta = c3:semaphore(prefix .. "-0", 1, { ttl = 10 })
      assert(s3)
      assert.is_true(c3.session:destroy(s3.session))
      local s4
      s4, _, meta = c2:semaphore(prefix .. "-0", 1, { wait = 0, lock_delay = 2 })
      assert.is_nil(s4)
      assert.are.equal("timeout", meta.code)
      s3:release()
    end)

    it("prefix/.lock deleted: held() false within 2 s; acquire() makes a new one", function()
      local prefix = P .. "loss-lock"
      local s1 = assert(c:semaphore(prefix, 2, { ttl = 10, lock_delay = 0 }))
      defer(function() s1:release() end)
      sleep(0.3)  -- past the watch's start
      raw("DELETE", "/v1/kv/" .. path_of(prefix .. "/.lock"))
      assert.is_truthy(wait_until(slack(2, 6), function() return not s1:held() end),
        "still held 2 s after prefix/.lock was deleted")
      local again, err = s1:acquire({ wait = 5 })
      assert(again, err)
      assert.is_true(s1:held())
      assert_layout(prefix, 2, { s1.session })
      -- and it is watched again
      raw("DELETE", "/v1/kv/" .. path_of(prefix .. "/.lock"))
      assert.is_truthy(wait_until(slack(2, 6), function() return not s1:held() end))
    end)

    it("our contender key deleted (the session alive): held() false within 2 s", function()
      local prefix = P .. "loss-contender"
      local s1 = assert(c:semaphore(prefix, 2, { ttl = 10, lock_delay = 0 }))
      defer(function() s1:release() end)
      local s2 = assert(c2:semaphore(prefix, 2, { ttl = 10, lock_delay = 0 }))
      defer(function() s2:release() end)
      sleep(0.3)
      raw("DELETE", "/v1/kv/" .. path_of(prefix .. "/" .. s1.session))
      assert.is_truthy(wait_until(slack(2, 6), function() return not s1:held() end),
        "still held 2 s after its contender key was deleted")
      assert.is_truthy(raw_session(s1.session))
      assert.is_true(s2:held())
      local id1 = s1.session
      assert.is_true(s1:release())
      assert.is_nil(raw_session(id1))
      assert.are.same({ s2.session }, holders(prefix))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("scopes", function()
    local prefix = P .. "scope"

    -- the slot of session is free: not in Holders, no contender key, no session
    local function assert_free(session, within)
      local ok = wait_until(within or 0, function()
        local h = holders(prefix) or {}
        for _, id in ipairs(h) do
          if id == session then return false end
        end
        return raw_record(prefix .. "/" .. session) == nil and raw_session(session) == nil
      end, 0.05)
      assert.is_truthy(ok, "the slot of " .. session .. " is not free: holders " ..
        table.concat(holders(prefix) or {}, ", "))
    end

    if IS_JIT then
      it("<close> (Lua 5.4 only)", function()
        note("<close> specs skipped: LuaJIT has no to-be-closed variables (local x <close>)")
      end)
    else
      it("<close> releases at the end of the block, also when it raises", function()
        local chunk = assert(load([[
          local c, prefix = ...
          local session
          do
            local sem <close> = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
            session = sem.session
            assert(sem:held())
          end
          return session
        ]], "=close_normal"))
        assert_free(chunk(c, prefix))

        local e = { "my error" }
        chunk = assert(load([[
          local c, prefix, e, out = ...
          local sem <close> = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
          out.session = sem.session
          error(e)
        ]], "=close_error"))
        local out = {}
        local ok, got = pcall(chunk, c, prefix, e, out)
        assert.is_false(ok)
        assert.are.equal(e, got)
        assert_free(out.session)
      end)
    end

    it("with_semaphore: true and fn's results; fn gets the semaphore and the arguments",
      function()
        local seen
        local res = { c:with_semaphore(prefix, 2, { wait = 5, lock_delay = 0 },
          function(sem, a, b)
            assert.is_true(sem:held())
            assert.are.equal(2, sem.limit)
            seen = sem.session
            assert.are.same({ seen }, holders(prefix))
            return a + b, "two", nil
          end, 40, 2) }
        assert.are.same({ true, 42, "two" }, res)
        assert.is_string(seen)
        assert_free(seen)
      end)

    it("with_semaphore releases when fn raises and raises the same error value", function()
      local e = setmetatable({ "my error" }, { __tostring = function() return "my error" end })
      local seen
      local ok, got = pcall(c.with_semaphore, c, prefix, 2, { wait = 5, lock_delay = 0 },
        function(sem)
          seen = sem.session
          error(e)
        end)
      assert.is_false(ok)
      assert.are.equal(e, got)  -- the same table
      assert_free(seen)
      ok, got = pcall(c.with_semaphore, c, prefix, 2, { wait = 5 }, function(sem)
        seen = sem.session
        error("plain string", 0)
      end)
      assert.is_false(ok)
      assert.are.equal("plain string", got)
      assert_free(seen)
    end)

    it("with_semaphore does not call fn when no slot can be had", function()
      local h1 = assert(c2:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      defer(function() h1:release() end)
      local h2 = assert(c3:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      defer(function() h2:release() end)
      local called = false
      local ok, err, meta = c:with_semaphore(prefix, 2, { wait = 0 }, function() called = true end)
      assert.is_nil(ok)
      assert.is_string(err)
      assert.are.equal("timeout", meta.code)
      assert.is_false(called)
    end)

    it("a semaphore that became garbage gives its slot back after collectgarbage()", function()
      local function take()
        local sem = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
        return sem.session
      end
      local session = take()
      assert.are.same({ session }, holders(prefix))
      local t0 = now()
      collectgarbage()
      collectgarbage()
      local took = now() - t0
      -- the finalizer hands the release to the semaphore's thread: it does not block
      assert.is_true(took < slack(0.2, 2), "collectgarbage() took " .. took .. " s")
      assert_free(session, slack(2, 8))
      note("collected semaphore: slot free %.2f s after collectgarbage()", now() - t0)
    end)

    it("release after the client was closed still works", function()
      local c4 = consul.new({ addr = A })
      local sem = assert(c4:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
      local session = sem.session
      c4:close()
      assert.is_true(sem:held())
      assert.is_true(sem:release())
      assert.is_false(sem:held())
      assert_free(session)
    end)

    it("release twice: true both times; acquire() takes a slot again, with a new session",
      function()
        local sem = assert(c:semaphore(prefix, 2, { wait = 5, lock_delay = 0 }))
        defer(function() sem:release() end)
        local session = sem.session
        assert.is_true(sem:release())
        assert.is_true(sem:release())
        assert.is_false(sem:held())
        assert_free(session)

        local again, err = sem:acquire({ wait = 5 })
        assert(again, err)
        assert.are.equal(sem, again)
        assert.is_true(sem:held())
        assert.are_not.equal(session, sem.session)
        assert.are.same({ sem.session }, holders(prefix))
        -- acquire() of a held semaphore returns it as is
        local id = sem.session
        assert.are.equal(sem, sem:acquire({ wait = 0 }))
        assert.are.equal(id, sem.session)
        assert.is_true(sem:release())
        assert_free(id)
      end)

    it("session: an existing session is used, and neither destroyed nor kept in Holders",
      function()
        local id = assert(c.session:create({ Name = "spec sem own session", LockDelay = 0 }))
        defer(function() c.session:destroy(id) end)
        local sem = assert(c:semaphore(prefix, 2, { wait = 5, session = id }))
        defer(function() sem:release() end)
        assert.are.equal(id, sem.session)
        assert_layout(prefix, 2, { id })
        assert.is_true(sem:release())
        assert.are.same({}, holders(prefix))
        assert.is_nil(raw_record(prefix .. "/" .. id))
        assert.is_truthy(raw_session(id), "the semaphore destroyed a session it did not create")
      end)
  end)

  ---------------------------------------------------------------------------
  describe("process exit", function()
    for _, mode in ipairs({ "exit", "osexit" }) do
      local how = mode == "exit" and "the end of its script" or "os.exit(0)"
      it("a child leaving through " .. how .. " without releasing frees its slot within 3 s",
        function()
          local prefix = P .. "exit-" .. mode
          local out = TMP .. "/" .. mode .. ".out"
          local child = worker(mode, mode, prefix, 2, out)
          local rc = wait_exit(child, 20)
          assert(rc, "the child did not exit: " .. log_of(child))
          local t0 = now()
          assert.are.equal(0, rc, log_of(child))
          local session = (read_file(out) or ""):match("^(%S+)")
          assert(session, "the child did not report: " .. tostring(read_file(out)) .. log_of(child))
          local free = wait_until(3, function()
            local h = holders(prefix)
            return h and #h == 0 and raw_session(session) == nil
          end, 0.05)
          assert.is_truthy(free, "slot or session still there 3 s after exit: " ..
            table.concat(holders(prefix) or {}, ", "))
          assert.are.same({ prefix .. "/.lock" }, keys_under(prefix))
        end)
    end
  end)

  ---------------------------------------------------------------------------
  describe("bad arguments", function()
    it("a prefix too long to name its keys raises, and no neighbouring key is touched", function()
      -- a prefix whose escaped path nearly fills the module's buffers: a contender path cut
      -- short would name another key (here: "victim", its first bytes)
      local base = P .. "long/" .. ("\226\130\172"):rep(400)
      local victim = base:sub(1, #P + 5 + 390)
      assert(c.kv:put(victim, "precious", { flags = 7 }))
      local ok, err = pcall(function() return c:semaphore(base .. "/x", 1, { wait = 0 }) end)
      assert.is_false(ok)
      assert.matches("key too long", tostring(err))
      local rec = c.kv:record(victim)
      assert.are.equal("precious", rec.Value)
      assert.are.equal(7, rec.Flags)
      assert(c.kv:delete(victim))
    end)

    it("raise: limit 0 or out of range, limit not a number, prefix not a string, options",
      function()
        local prefix = P .. "bad"
        local function raises(pattern, f)
          local ok, err = pcall(f)
          assert.is_false(ok, "did not raise: " .. pattern)
          assert.matches(pattern, tostring(err))
          if not IS_JIT then  -- LuaJIT's luaL_error has no position for a C function
            local line = debug.getinfo(f, "S").linedefined
            assert.matches("semaphore_spec%.lua:" .. line .. ": ", err)
          end
        end
        raises("a limit of 1%.%.1000 expected", function() c:semaphore(prefix, 0) end)
        raises("a limit of 1%.%.1000 expected", function() c:semaphore(prefix, -2) end)
        raises("a limit of 1%.%.1000 expected", function() c:semaphore(prefix, 1001) end)
        raises("number expected, got string", function() c:semaphore(prefix, "two") end)
        raises("number expected, got table", function() c:semaphore(prefix, {}) end)
        raises("number expected, got no value", function() c:semaphore(prefix) end)
        raises("string expected, got number", function() c:semaphore(42, 2) end)
        raises("string expected, got nil", function() c:semaphore(nil, 2) end)
        raises("non%-empty key", function() c:semaphore("", 2) end)
        raises("non%-empty key", function() c:semaphore("/", 2) end)
        raises("bad argument #3 to 'semaphore' %(unknown option 'bogus'%)", function() c:semaphore(prefix, 2, { bogus = 1 }) end)
        raises("bad argument #3 to 'semaphore' %(unknown option 'fence'%)", function() c:semaphore(prefix, 2, { fence = 1 }) end)
        raises("bad argument #3 to 'semaphore' %(option 'wait' must be", function() c:semaphore(prefix, 2, { wait = -1 }) end)
        raises("bad argument #3 to 'semaphore' %(option 'behavior' must be", function() c:semaphore(prefix, 2, { behavior = "x" }) end)
        raises("table expected", function() c:semaphore(prefix, 2, "x") end)
        raises("function expected", function() c:with_semaphore(prefix, 2, {}, nil) end)
        assert.are.same({}, keys_under(prefix))
      end)

    -- Known bug on LuaJIT (Lua 5.4 raises "number has no integer representation"): lock.c:477
    -- client_semaphore reads the limit with luaL_checkinteger, which on LuaJIT (the 5.1 API)
    -- truncates, so c:semaphore(p, 2.5) is a semaphore of 2 there. Fix: luaL_checknumber,
    -- the range check, then (lua_Number)(int)n == n or "number has no integer representation".
    it("a limit that is not an integer raises", function()
      local prefix = P .. "bad-float"
      local ok, res = pcall(c.semaphore, c, prefix, 2.5, { wait = 0 })
      if ok and type(res) ~= "nil" and res.release then res:release() end
      assert.is_false(ok, "c:semaphore(prefix, 2.5) was accepted (as limit " ..
        tostring(ok and res and res.limit) .. ")")
      assert.matches("integer", tostring(res))
      assert.are.same({}, holders(prefix) or {})
    end)
  end)

  ---------------------------------------------------------------------------
  describe("session behavior", function()
    -- Known bug: Consul's Go client (api/semaphore.go createSession) makes its semaphore
    -- sessions with Behavior "delete", so the contender key of a holder whose session ends
    -- (crash, TTL, destroy) goes with the session. The module makes them with the lock
    -- default "release" (lock.c lock_configure: :375, and :324-330 without opts), so every
    -- such holder leaves its contender key prefix/<session> behind for ever, without a
    -- session. Fix: default to "delete" when lk->kind == CONSUL_KIND_SEMAPHORE.
    it("a semaphore's own session is Behavior delete, as Go's: no contender key outlives it",
      function()
        local prefix = P .. "behavior"
        local s1 = assert(c:semaphore(prefix, 2, { wait = 5, ttl = 10, lock_delay = 0 }))
        defer(function() s1:release() end)
        local id = s1.session
        local info = assert(raw_session(id))
        local behavior = info.Behavior
        assert.is_true(c2.session:destroy(id))
        assert.is_truthy(wait_until(slack(2, 6), function() return not s1:held() end))
        local rec = raw_record(prefix .. "/" .. id)
        assert.is_nil(rec, "the contender key " .. prefix .. "/" .. id .. " outlived its session" ..
          " (session Behavior " .. tostring(behavior) .. ", key Session " ..
          tostring(rec and rec.Session) .. ")")
        assert.are.equal("delete", behavior)
      end)
  end)

  ---------------------------------------------------------------------------
  describe("crash of a holder (SIGKILL)", function()
    it("ends: the waiter got the slot after the TTL ran out, never before, within 25 s",
      function()
        assert(crash.waiter, "the crash scenario was not started (see the first test)")
        local left = 32 - (now() - crash.killed_mono)
        local line = out_of(crash.out, math.max(left, 1))
        assert(line, "the waiter has no slot " .. (now() - crash.killed_mono) ..
          " s after the kill: " .. log_of(crash.waiter))
        local t, session = line:match("^acquired (%S+) (%S+)")
        assert(t, line)
        local elapsed = tonumber(t) - crash.killed_at
        note("crash: the waiter got the slot %.1f s after the SIGKILL (TTL 10 s)", elapsed)
        assert.is_true(elapsed >= 9.5, "acquired " .. elapsed .. " s after the kill: before the TTL")
        assert.is_true(elapsed <= slack(25, 28), "acquired " .. elapsed .. " s after the kill")
        assert.are_not.equal(crash.session, session)
        assert.is_nil(raw_session(crash.session), "the killed holder's session still exists")
        assert.is_truthy(wait_exit(crash.waiter, 5))
        assert.are.equal(0, exit_code(crash.waiter), log_of(crash.waiter))
        -- the dead holder was pruned; the waiter released; we kept ours all along
        assert.is_true(crash.mine:held())
        assert.are.same({ crash.mine.session }, holders(crash.prefix))
        assert.is_true(crash.mine:release())
        crash.mine = nil
        assert.are.same({}, holders(crash.prefix))
      end)
  end)
end)
