-- Distributed locks (c:lock, lock:*, c:with_lock) against a real Consul 1.8.7 dev agent
-- (scripts/with-agent.sh), on Lua 5.4 and LuaJIT.
--
-- What the module did is checked independently of it wherever it matters: keys and sessions
-- with agent.http (curl), Consul's own `consul lock` for the wire format, and child processes
-- (spec/helpers/lock_worker.lua, same interpreter, LUA_PATH and LUA_CPATH) for contention,
-- crashes and process exit. Children run in the background with a pid file and are stopped by
-- PID; every wait is a bounded poll of a file or a key.
--
-- Time: the crash scenario needs Consul's session invalidation (up to 2 x TTL = 20 s). Its
-- holder is killed and its waiter (a child) started by the FIRST test, and the waiter's result
-- is checked by the LAST one, so that wait overlaps the rest of the file. The renewal test
-- (#slow) holds a lock for 12 s; the lease test waits out a 10 s TTL.
--
-- Under CONSUL_TEST_VALGRIND / CONSUL_TEST_ASAN this process is slower, so the bounds of
-- timing assertions are widened (SLOW). Children are not under valgrind; under ASan they
-- must run the ASan interpreter (build/asan/lua), because the instrumented core.so on
-- LUA_CPATH cannot be loaded into a plain lua5.4.
--

local consul = require("consul")
local agent = require("spec.helpers.agent")
local defer = require("spec.helpers.util").defer  -- every cleanup, not only the last
local system = require("system")

local util = require("spec.helpers.util")
local IS_JIT, VALGRIND, ASAN, SLOW = util.IS_JIT, util.VALGRIND, util.ASAN, util.SLOW
local LUA, now, sleep, slack = util.LUA, util.now, util.sleep, util.slack
local read_file, wait_until, path_of = util.read_file, util.wait_until, util.path_of
local children = require("spec.helpers.children")
local sessions = require("spec.helpers.sessions")
local exit_code, wait_exit, log_of = children.exit_code, children.wait_exit, children.log_of
local kill, out_of = children.kill, children.out_of
local note = util.noter("lock_spec")
local P = "spec/lock/"
local FLAGS_DIGITS = "3304740253564472344"  -- 0x2ddccbc058a50c18, as Consul's JSON has it
local SPEC_DIR = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "spec"
local WORKER = SPEC_DIR .. "/helpers/lock_worker.lua"

describe("consul locks", function()
  after_each(function() require("spec.helpers.util").run_deferred() end)
  local A, c, c2
  local TMP

  local function raw(method, path, body) return agent.raw(A, method, path, body) end

  -- the key's record (decoded by dkjson, independent of the module) and its text, or nil
  local function raw_record(key) return agent.kv_record(A, key) end

  local function raw_session(id) return sessions.raw(A, id) end

  -- the key's holder ("" when free), or nil when the key is absent
  local function holder(key)
    local rec = raw_record(key)
    if not rec then return nil end
    return rec.Session or ""
  end

  local function sessions_named(name) return sessions.named(c, name) end
  local function sessions_left(name) return sessions.left(c, name) end

  local function session_ids() return sessions.ids(c) end

  local function assert_no_new_session(before) return sessions.assert_no_new(c, before) end

  -- child processes (spec/helpers/children.lua), made in setup
  local spawner
  local function spawn(name, cmd) return spawner:spawn(name, cmd) end
  local function worker(name, mode, ...) return spawner:worker(name, mode, ...) end

  local function wipe()
    raw("DELETE", "/v1/kv/" .. P .. "?recurse")
  end

  -- crash scenario state, shared by the first and the last test
  local crash = {}

  setup(function()
    A = agent.shared().addr
    c = consul.new({ addr = A })
    c2 = consul.new({ addr = A })
    TMP = agent.tmpdir()
    spawner = children.new(TMP, WORKER, A)
    wipe()
  end)

  teardown(function()
    if spawner then spawner:kill_all() end
    wipe()
    if c then c:close() end
    if c2 then c2:close() end
  end)

  ---------------------------------------------------------------------------
  describe("crash of a holder (SIGKILL)", function()
    -- The holder (ttl = 10, lock_delay = 1) is killed here; a waiter child starts at once.
    -- Its result is checked by the last test of the file, when Consul has let the session go.
    it("starts: a holder child takes the key, is SIGKILLed, a waiter child waits", function()
      local key = P .. "crash/.lock"
      local hold_out = TMP .. "/crash-holder.out"
      crash.holder = worker("crash-holder", "hold", key, 10, 1, hold_out)
      local line = out_of(hold_out, 15)
      assert(line, "the holder did not report: " .. log_of(crash.holder))
      local session, fence = line:match("^(%S+) (%d+)")
      assert(session, line)
      crash.session, crash.fence = session, tonumber(fence)
      assert.are.equal(session, holder(key))

      kill(crash.holder, "KILL")
      crash.killed_at = system.gettime()   -- wall clock: the waiter reports in it too
      crash.killed_mono = now()
      assert.is_truthy(wait_exit(crash.holder, 5))
      assert.are.equal(137, exit_code(crash.holder))  -- 128 + SIGKILL

      crash.out = TMP .. "/crash-waiter.out"
      crash.waiter = worker("crash-waiter", "wait", key, 40, crash.out)
      -- the dead holder's session still holds the key for now
      sleep(0.5)
      assert.are.equal(session, holder(key))
      assert.is_nil(read_file(crash.out))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("interop with consul lock", function()
    it("consul lock cannot take the key while we hold it; can once we released it, flags intact",
      function()
        local prefix = P .. "interop1"
        local key = prefix .. "/.lock"
        local lock = assert(c:lock(key, { wait = 5 }))
        defer(function() lock:release() end)
        assert.are.equal(lock.session, holder(key))

        local t0 = now()
        local ok, out, code = agent.run("lock", "-http-addr=" .. A, "-timeout=2s", prefix, "true")
        local elapsed = now() - t0
        assert.is_false(ok, out)
        assert.are.equal(1, code)
        assert.matches("Shutdown triggered or timeout during lock acquisition", out, 1, true)
        assert.is_true(elapsed >= 1.9, "consul lock gave up after " .. elapsed .. " s")
        assert.is_true(lock:held())
        assert.are.equal(lock.session, holder(key))

        assert.is_true(lock:release())
        local rec, text = raw_record(key)
        assert.is_truthy(rec, "the key is gone after release")
        assert.is_nil(rec.Session)
        -- exact digits: dkjson would round the 64-bit number to a double
        assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', text)

        ok, out, code = agent.run("lock", "-http-addr=" .. A, "-timeout=10s", prefix, "true")
        assert.is_true(ok, "consul lock exit " .. tostring(code) .. ": " .. out)
      end)

    it("we cannot take the key while consul lock holds it; we get it when it ends", function()
      local prefix = P .. "interop2"
      local key = prefix .. "/.lock"
      local child = spawn("consul-lock",
        agent.quote(agent.bin()) .. " lock -http-addr=" .. A .. " " .. prefix .. " sleep 5")
      defer(function() kill(child, "KILL") end)
      local rec = wait_until(10, function()
        local r = raw_record(key)
        return r and r.Session and r
      end)
      assert(rec, "consul lock did not take the key: " .. log_of(child))
      assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', select(2, raw_record(key)))

      local t0 = now()
      local lock, err, meta = c:lock(key, { wait = 1 })
      local elapsed = now() - t0
      assert.is_nil(lock)
      assert.is_string(err)
      assert.matches("^consul: lock ", err)
      assert.are.equal("timeout", meta.code)
      assert.is_true(elapsed >= 0.95 and elapsed < slack(3, 8), "timed out after " .. elapsed .. " s")
      assert.is_nil(exit_code(child))  -- consul lock still running

      lock, err = c:lock(key, { wait = 20 })
      assert(lock, err)
      defer(function() lock:release() end)
      assert.is_true(lock:held())
      assert.is_truthy(wait_exit(child, 10))
      assert.are.equal(0, exit_code(child), log_of(child))
      assert.are.equal(lock.session, holder(key))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("options", function()
    it("value: its bytes are in the key while held, and stay with the flags after release",
      function()
        local key = P .. "opts/value/.lock"
        local value = "bin\0ary \255 value"
        local lock = assert(c:lock(key, { wait = 5, lock_delay = 0, value = value }))
        local status, body = raw("GET", "/v1/kv/" .. path_of(key) .. "?raw")
        assert.are.equal(200, status)
        assert.are.equal(value, body)
        assert.is_true(lock:release())
        status, body = raw("GET", "/v1/kv/" .. path_of(key) .. "?raw")
        assert.are.equal(value, body)
        local rec, text = raw_record(key)
        assert.is_nil(rec.Session)
        assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', text)
      end)

    it("session: an existing session is used, and never destroyed by the lock", function()
      local key = P .. "opts/session/.lock"
      local id = assert(c.session:create({ Name = "spec own session", LockDelay = 0 }))
      defer(function() c.session:destroy(id) end)
      local lock = assert(c:lock(key, { wait = 5, session = id }))
      assert.are.equal(id, lock.session)
      assert.are.equal(id, holder(key))
      assert.is_true(lock:held())
      assert.is_true(lock:release())
      assert.are.equal("", holder(key))
      assert.is_false(lock:held())
      assert.is_truthy(raw_session(id), "the lock destroyed a session it did not create")
    end)

    it("session: acquire() after release takes the key with the same session",
      function()
        local key = P .. "opts/session2/.lock"
        local id = assert(c.session:create({ Name = "spec own session 2", LockDelay = 0 }))
        defer(function() c.session:destroy(id) end)
        local lock = assert(c:lock(key, { wait = 5, session = id }))
        defer(function() lock:release() end)
        assert.is_true(lock:release())
        assert(lock:acquire({ wait = 5 }))
        assert.are.equal(id, holder(key))
        assert.are.equal(id, lock.session)
        assert.is_true(lock:release())
        assert.is_truthy(raw_session(id))
      end)

    it("name, ttl, lock_delay, behavior go into the new session", function()
      local key = P .. "opts/def/.lock"
      local lock = assert(c:lock(key, { wait = 5, name = "spec named", ttl = "20s",
        lock_delay = 2, behavior = "delete" }))
      defer(function() lock:release() end)
      local s = assert(raw_session(lock.session))
      assert.are.equal("spec named", s.Name)
      assert.are.equal(2000000000, s.LockDelay)
      assert.are.equal("delete", s.Behavior)
      assert.is_truthy(s.TTL == "20s" or s.TTL == "20000ms", s.TTL)
      local d = assert(c:lock(P .. "opts/def2/.lock", { wait = 5 }))  -- the defaults
      defer(function() d:release() end)
      local s2 = assert(raw_session(d.session))
      assert.are.equal("Lua lock", s2.Name)
      assert.are.equal(15000000000, s2.LockDelay)
      assert.are.equal("release", s2.Behavior)
      assert.is_truthy(s2.TTL == "15s" or s2.TTL == "15000ms", s2.TTL)
    end)

    it("unknown or bad options raise at the caller's line", function()
      local key = P .. "opts/bad/.lock"
      local raises = util.raises
      raises("bad argument #2 to 'lock' %(unknown option 'bogus'%)", function() c:lock(key, { bogus = 1 }) end)
      raises("bad argument #2 to 'lock' %(option 'wait' must be", function() c:lock(key, { wait = -1 }) end)
      raises("bad argument #2 to 'lock' %(option 'behavior' must be", function() c:lock(key, { behavior = "x" }) end)
      raises("bad argument #2 to 'lock' %(option 'ttl' must be", function() c:lock(key, { ttl = {} }) end)
      raises("string expected", function() c:lock(42) end)
      assert.is_nil(holder(key))
    end)

    it("acquire() of a lock still held returns it as is", function()
      local lock = assert(c:lock(P .. "opts/again/.lock", { wait = 5, lock_delay = 0 }))
      defer(function() lock:release() end)
      local session, fence = lock.session, lock.fence
      assert.are.equal(lock, lock:acquire({ wait = 0 }))
      assert.are.equal(session, lock.session)
      assert.are.equal(fence, lock.fence)
      assert.matches("held", tostring(lock))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("mutual exclusion", function()
    -- The children are never under valgrind and take well under 2 s (ASan: the same), so the
    -- full 4 x 50 runs in every mode.
    it("4 processes x 50 increments of a KV counter under the lock give exactly 200", function()
      local key, counter = P .. "mutex/.lock", P .. "mutex/counter"
      local procs, n = 4, 50
      local kids = {}
      for i = 1, procs do
        kids[i] = worker("counter" .. i, "counter", key, counter, n, TMP .. "/counter" .. i .. ".out")
      end
      local t0 = now()
      for i = 1, procs do
        local done = wait_exit(kids[i], 90)
        assert(done, "counter child " .. i .. " did not finish in time: " .. log_of(kids[i]))
        assert.are.equal(0, exit_code(kids[i]), log_of(kids[i]))
        assert.are.equal("done " .. n .. "\n", read_file(TMP .. "/counter" .. i .. ".out"))
      end
      note("mutual exclusion: %d x %d increments in %.1f s", procs, n, now() - t0)
      assert.are.equal(tostring(procs * n), (c.kv:get(counter)))
      assert.are.equal("", holder(key))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("external loss", function()
    it("the session destroyed from outside: held() false within 2 s; acquire() takes it again",
      function()
        local key = P .. "loss/session/.lock"
        local lock = assert(c:lock(key, { ttl = 10, lock_delay = 0 }))
        defer(function() lock:release() end)
        local fence1, session1 = lock.fence, lock.session
        assert.is_true(lock:held())
        assert.is_true(c2.session:destroy(session1))
        assert.is_truthy(wait_until(slack(2, 6), function() return not lock:held() end),
          "still held 2 s after its session was destroyed")

        local t0 = now()
        local again, err, meta = lock:acquire({ wait = 5 })
        local elapsed = now() - t0
        assert(again, tostring(err) .. " (code " .. tostring(meta and meta.code) .. ", after " ..
          string.format("%.1f", elapsed) .. " s)")
        assert.are.equal(lock, again)
        assert.is_true(lock:held())
        assert.are_not.equal(session1, lock.session)
        assert.is_true(lock.fence > fence1)
        assert.are.equal(lock.session, holder(key))
      end)

    it("the key deleted from outside: held() false within 2 s; acquire() gives a larger fence",
      function()
        local key = P .. "loss/key/.lock"
        local lock = assert(c:lock(key, { ttl = 10, lock_delay = 0 }))
        defer(function() lock:release() end)
        local fence1 = lock.fence
        sleep(0.3)  -- past the watch's start
        raw("DELETE", "/v1/kv/" .. path_of(key))
        assert.is_truthy(wait_until(slack(2, 6), function() return not lock:held() end),
          "still held 2 s after its key was deleted")
        local again, err = lock:acquire({ wait = 5 })
        assert(again, err)
        assert.are.equal(lock, again)
        assert.is_true(lock:held())
        assert.is_true(lock.fence > fence1)
        assert.are.equal(lock.session, holder(key))
        -- and it is watched again: a second delete is noticed too
        raw("DELETE", "/v1/kv/" .. path_of(key))
        assert.is_truthy(wait_until(slack(2, 6), function() return not lock:held() end))
      end)
  end)

  ---------------------------------------------------------------------------
  describe("fence", function()
    it("is the key's ModifyIndex, grows with every new holder and across a delete of the key",
      function()
        local key = P .. "fence/.lock"
        local fences = {}
        local function take(client)
          local lock = assert(client:lock(key, { wait = 5, lock_delay = 0 }))
          local rec = raw_record(key)
          assert.are.equal(rec.ModifyIndex, lock.fence)
          if not IS_JIT then assert.are.equal("integer", math.type(lock.fence)) end
          fences[#fences + 1] = lock.fence
          local li = rec.LockIndex
          assert.is_true(lock:release())
          return li
        end
        local li1 = take(c)
        local li2 = take(c2)
        local li3 = take(c)
        assert.are.equal(li1 + 1, li2)
        assert.are.equal(li2 + 1, li3)
        raw("DELETE", "/v1/kv/" .. path_of(key))
        local li4 = take(c2)
        assert.are.equal(1, li4)  -- LockIndex restarts with the key ...
        for i = 2, #fences do      -- ... the fence does not
          assert.is_true(fences[i] > fences[i - 1],
            "fence " .. i .. " (" .. fences[i] .. ") <= " .. fences[i - 1])
        end
      end)
  end)

  ---------------------------------------------------------------------------
  describe("wait", function()
    local key = P .. "wait/.lock"
    local held

    before_each(function()
      held = assert(c:lock(key, { wait = 5, lock_delay = 0 }))
    end)
    after_each(function()
      held:release()
    end)

    it("0 on a held key: nil, err, {code = 'timeout'} at once, no session left behind", function()
      local before = session_ids()
      local t0 = now()
      local lock, err, meta = c2:lock(key, { wait = 0, name = "spec wait0" })
      local elapsed = now() - t0
      assert.is_nil(lock)
      assert.is_string(err)
      assert.matches("^consul: lock " .. P .. "wait/%.lock: not acquired", err)
      assert.is_table(meta)
      assert.are.equal("timeout", meta.code)
      assert.is_true(elapsed < slack(0.5, 3), "wait = 0 took " .. elapsed .. " s")
      assert.are.equal(0, sessions_left("spec wait0"))
      assert_no_new_session(before)
      assert.are.equal(held.session, holder(key))
      assert.is_true(held:held())
    end)

    it("1 on a held key: timeout after ~1 s, no session left behind", function()
      local before = session_ids()
      local t0 = now()
      local lock, err, meta = c2:lock(key, { wait = 1, name = "spec wait1" })
      local elapsed = now() - t0
      assert.is_nil(lock)
      assert.is_string(err)
      assert.are.equal("timeout", meta.code)
      assert.is_true(elapsed >= 0.95 and elapsed < slack(2.5, 8), "wait = 1 took " .. elapsed .. " s")
      assert.are.equal(0, sessions_left("spec wait1"))
      assert_no_new_session(before)
      assert.is_true(held:held())
    end)

    it("acquire() of a released lock honours wait too", function()
      local other = assert(c2:lock(P .. "wait/other", { wait = 0, lock_delay = 0 }))
      assert.is_true(other:release())
      held:release()
      local third = assert(c:lock(P .. "wait/other", { wait = 0, lock_delay = 0 }))
      defer(function() third:release() end)
      local t0 = now()
      local lock, err, meta = other:acquire({ wait = 0 })
      assert.is_nil(lock)
      assert.is_string(err)
      assert.are.equal("timeout", meta.code)
      assert.is_true(now() - t0 < slack(0.5, 3))
      assert.is_false(other:held())
      assert.is_true(third:release())
      assert(other:acquire({ wait = 5 }))
      assert.is_true(other:held())
      assert.is_true(other:release())
    end)
  end)

  ---------------------------------------------------------------------------
  describe("a frozen agent (SIGSTOP)", function()
    -- A private agent, stopped and continued by its PID: requests sent to it meanwhile get no
    -- answer at all (the kernel still accepts the connections).
    local a, ca
    before_each(function()
      a = agent.start()
      ca = consul.new({ addr = a.addr, timeout = 10 })
    end)
    after_each(function()
      os.execute("kill -CONT " .. a.pid)
      ca:close()
      a:stop()
    end)

    local function freeze() assert(os.execute("kill -STOP " .. a.pid)) end
    local function thaw() assert(os.execute("kill -CONT " .. a.pid)) end

    it("wait is a deadline: c:lock, lock:acquire, c:semaphore, with_lock and with_semaphore " ..
       "with wait = 2 return within 3 s (the client's timeout is 10 s)", function()
      local old = assert(ca:lock(P .. "frozen/old/.lock", { wait = 5 }))
      assert.is_true(old:release())
      freeze()
      local calls = {
        { "c:lock", function() return ca:lock(P .. "frozen/a/.lock", { wait = 2 }) end },
        { "lock:acquire", function() return old:acquire({ wait = 2 }) end },
        { "c:semaphore", function() return ca:semaphore(P .. "frozen/s", 2, { wait = 2 }) end },
        { "with_lock", function()
          return ca:with_lock(P .. "frozen/b/.lock", { wait = 2 }, function() error("called") end)
        end },
        { "with_semaphore", function()
          return ca:with_semaphore(P .. "frozen/t", 2, { wait = 2 }, function() error("called") end)
        end },
      }
      for _, call in ipairs(calls) do
        local t0 = now()
        local r, err, meta = call[2]()
        local took = now() - t0
        note("frozen agent: %s with wait = 2 returned after %.2f s: %s", call[1], took, tostring(err))
        assert.is_nil(r, call[1])
        assert.is_string(err, call[1])
        assert.are.equal("timeout", meta.code, call[1] .. ": " .. err)
        assert.is_true(took >= 1.9, call[1] .. " returned after " .. took .. " s")
        assert.is_true(took <= slack(3, 4), call[1] .. " returned after " .. took .. " s")
      end
      thaw()
      -- nothing is held once it thaws; what the agent made of the requests it got meanwhile
      -- (a session create answered too late) holds no key and ends with its TTL
      assert.is_truthy(wait_until(5, function()
        local rec = agent.kv_record(a, P .. "frozen/a/.lock")
        return rec == nil or (rec.Session or "") == ""
      end, 0.1), "a key is held after the thaw")
    end)

    it("release(): returns within the client's timeout with meta.pending; the background " ..
       "thread frees the key within a second or two of the thaw", function()
      local cb = consul.new({ addr = a.addr, timeout = 1 })
      defer(function() cb:close() end)
      local key = P .. "frozen/rel/.lock"
      local lock = assert(cb:lock(key, { wait = 5 }))
      local id = lock.session
      freeze()
      local t0 = now()
      local ok, err, meta = lock:release()
      local took = now() - t0
      assert.is_nil(ok)
      assert.is_string(err)
      assert.are.equal("timeout", meta.code)
      assert.is_true(meta.pending)
      assert.is_true(took <= slack(1.5, 3), "release() took " .. took .. " s")
      assert.is_false(lock:held())
      sleep(2)  -- the retries meanwhile time out too
      thaw()
      local t1 = now()
      assert.is_truthy(wait_until(slack(3, 8), function()
        local rec = agent.kv_record(a, key)
        return rec ~= nil and (rec.Session or "") == "" and sessions.raw(a.addr, id) == nil
      end, 0.05), "the key is still held, or its session alive, after the thaw")
      note("frozen agent: key free and session gone %.2f s after the thaw", now() - t1)
      assert.is_true(lock:release())  -- idempotent: nothing more to do
    end)
  end)

  ---------------------------------------------------------------------------
  describe("conflict", function()
    it("a plain KV key: meta.code 'conflict', value and flags untouched", function()
      local key = P .. "conflict/plain"
      assert.is_true((c.kv:put(key, "plain value", { flags = 42 })))
      local before = raw_record(key)
      local lock, err, meta = c:lock(key, { wait = 0, name = "spec conflict" })
      assert.is_nil(lock)
      assert.is_string(err)
      assert.matches("not a lock", err, 1, true)
      assert.are.equal("conflict", meta.code)
      -- also when asked to wait: a conflict is not something to wait out
      local t0 = now()
      lock, err, meta = c:lock(key, { wait = 2, name = "spec conflict" })
      assert.is_nil(lock)
      assert.are.equal("conflict", meta.code)
      assert.is_true(now() - t0 < slack(1, 4))

      local after, text = raw_record(key)
      assert.are.equal(before.ModifyIndex, after.ModifyIndex)
      assert.are.equal(42, after.Flags)
      assert.matches('"Flags":%s*42[,}%s]', text)
      assert.is_nil(after.Session)
      assert.are.equal("plain value", (c.kv:get(key)))
      assert.are.equal(0, sessions_left("spec conflict"))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("lock_delay", function()
    -- counts the agent's "Request finished" debug lines between two marker requests
    local function count_requests(fn)
      local mon = spawn("monitor", "curl -sN " .. agent.quote("http://" .. A ..
        "/v1/agent/monitor?loglevel=debug"))
      local file = mon.base .. ".log"
      local function marker(name)
        local path = "/v1/kv/" .. P .. "marker/" .. name
        return wait_until(5, function()
          raw("GET", path)
          return (read_file(file) or ""):find("url=" .. path, 1, true)
        end, 0.1)
      end
      local id = mon.seq
      local ok, res = pcall(function()
        assert(marker("begin" .. id), "the agent's monitor stream did not start")
        local r = fn()
        assert(marker("end" .. id), "the agent's monitor stream stopped")
        return r
      end)
      kill(mon, "TERM")
      assert(ok, res)
      local log = read_file(file)
      local from = select(2, log:find("url=/v1/kv/" .. P .. "marker/begin" .. id, 1, true))
      local to = log:find("url=/v1/kv/" .. P .. "marker/end" .. id, 1, true)
      local n, lines = 0, {}
      for line in log:sub(from, to):gmatch("[^\n]+") do
        if line:find("Request finished", 1, true) and not line:find("/marker/", 1, true) then
          -- background renewals (every lease/2) are not the acquire's requests: they are
          -- listed, not counted
          local renew = line:find("/v1/session/renew/", 1, true)
          if not renew then n = n + 1 end
          lines[#lines + 1] = line:match("T([%d:.]+)") .. " " .. line:match("method=.*")
            .. (renew and " (renewal, not counted)" or "")
        end
      end
      return n, lines, res
    end

    -- (fixed in 0b0db53: freed_at used to be the time read before the blocking GET that saw
    -- the key freed, so the rest of the delay was polled every 250 ms)
    it("an acquire waiting on the holder waits out its lock-delay once it is destroyed",
      function()
        local key = P .. "delay/seen/.lock"
        local c3 = consul.new({ addr = A })
        defer(function() c3:close() end)
        local h = assert(c:lock(key, { ttl = 10, lock_delay = 1 }))
        defer(function() h:release() end)
        local n, lines, r = count_requests(function()
          -- destroyed from outside 0.5 s from now, while c3 waits on the key
          local killer = spawn("destroy", "sh -c " .. agent.quote("sleep 0.5; curl -sS " ..
            "-o /dev/null -X PUT http://" .. A .. "/v1/session/destroy/" .. h.session))
          local t0 = now()
          local l, e = c3:lock(key, { wait = 5 })
          local elapsed = now() - t0
          wait_exit(killer, 5)
          return { lock = l, err = e, elapsed = elapsed }
        end)
        local lock, err, elapsed = r.lock, r.err, r.elapsed
        assert(lock, err)
        defer(function() lock:release() end)
        note("lock-delay 1 s, holder seen: acquired after %.2f s (destroy at ~0.5 s), %d requests:\n  %s",
          elapsed, n, table.concat(lines, "\n  "))
        assert.is_true(elapsed >= 1.4, "acquired after " .. elapsed .. " s: lock-delay not honoured")
        assert.is_true(elapsed < slack(3, 6), "acquired after " .. elapsed .. " s")
        -- session create, read, blocking read(s), the holder's session info, take; plus the
        -- destroy itself and the holder's watch
        assert.is_true(n <= 12, n .. " requests: it spins")
        assert.is_true(lock:held())
      end)

    it("an acquire started after the holder's session was destroyed waits out the lock-delay",
      function()
        local key = P .. "delay/unseen/.lock"
        local c3 = consul.new({ addr = A })
        defer(function() c3:close() end)
        local h = assert(c:lock(key, { ttl = 10, lock_delay = 1 }))
        defer(function() h:release() end)
        sleep(0.3)  -- let the holder's watch settle
        local n, lines, r = count_requests(function()
          assert.is_true(c2.session:destroy(h.session))
          local t0 = now()
          local l, e = c3:lock(key, { wait = 5 })
          return { lock = l, err = e, elapsed = now() - t0 }
        end)
        local lock, err, elapsed = r.lock, r.err, r.elapsed
        assert(lock, err)
        defer(function() lock:release() end)
        note("lock-delay 1 s, holder unseen: acquired after %.2f s with %d requests:\n  %s",
          elapsed, n, table.concat(lines, "\n  "))
        assert.is_true(elapsed >= 0.8, "acquired after " .. elapsed .. " s: lock-delay not honoured")
        assert.is_true(elapsed < slack(2.5, 5), "acquired after " .. elapsed .. " s")
        -- The delay's length is unknown here (the holder's session is gone), so the module
        -- backs off (250 ms, doubling up to 2 s): a bounded poll, not a busy loop.
        assert.is_true(n <= 30, n .. " requests in " .. elapsed .. " s: it spins")
        assert.is_true(lock:held())
      end)

    -- Known bug on LuaJIT (Lua 5.4 passes since 0b0db53 counts the attempt's requests): lock.c
    -- client_lock stores the client userdata with consul_setuservalue, which is lua_setfenv
    -- on 5.1/LuaJIT and takes a table only; lock_handle's consul_getuservalue then gives a
    -- table-tagged value that is no userdata, so every lock talks over its own connection
    -- and the client's counters never move.
    it("c:stats().requests counts the requests a lock makes over the client", function()
      local key = P .. "delay/stats/.lock"
      assert.is_nil(select(2, c.kv:get(key .. "-warm")))  -- the client's connection is open
      local r0, k0 = c:stats().requests, c:stats().connects
      local lock = assert(c:lock(key, { wait = 5, lock_delay = 0 }))
      local r1, k1 = c:stats().requests, c:stats().connects
      assert.is_true(lock:release())
      local r2 = c:stats().requests
      -- at least: session create, read the key, take it; release, session destroy
      assert.is_true(r1 - r0 >= 3, "c:lock made " .. (r1 - r0) .. " requests by c:stats()")
      assert.is_true(r2 - r1 >= 2, "lock:release made " .. (r2 - r1) .. " requests by c:stats()")
      assert.are.equal(k0, k1)  -- over the client's kept-alive connection
    end)

    it("lock_delay = 0: an acquire right after the holder's session is destroyed succeeds at once",
      function()
        local key = P .. "delay/0/.lock"
        local h = assert(c:lock(key, { ttl = 10, lock_delay = 0 }))
        defer(function() h:release() end)
        assert.is_true(c2.session:destroy(h.session))
        local t0 = now()
        local lock, err = c2:lock(key, { wait = 5 })
        local elapsed = now() - t0
        assert(lock, err)
        defer(function() lock:release() end)
        assert.is_true(elapsed < slack(0.5, 3), "acquired after " .. elapsed .. " s")
      end)
  end)

  ---------------------------------------------------------------------------
  describe("renewal #slow", function()
    it("a ttl = 10 lock held for 12 s stays held, its session alive", function()
      local key = P .. "renew/.lock"
      local lock = assert(c:lock(key, { ttl = 10, lock_delay = 0 }))
      defer(function() lock:release() end)
      local s0 = raw_session(lock.session)
      assert.is_truthy(s0)
      assert.matches("^10", s0.TTL)
      local t0 = now()
      while now() - t0 < 12 do
        assert.is_true(lock:held(), string.format("lost after %.1f s", now() - t0))
        sleep(0.5)
      end
      assert.is_true(lock:held())
      assert.is_truthy(raw_session(lock.session), "the session expired: it was not renewed")
      assert.are.equal(lock.session, holder(key))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("lease", function()
    it("lock_delay shorter than the TTL: renewed every lock_delay/2, held all along", function()
      local lock = assert(c:lock(P .. "lease-short/.lock", { ttl = 10, lock_delay = 2 }))
      defer(function() lock:release() end)
      local t0 = now()
      while now() - t0 < 5 do
        assert.is_true(lock:held(), string.format("not held after %.1f s", now() - t0))
        sleep(0.1)
      end
    end)

    it("lock_delay shorter than the TTL: agent frozen, held() false within lock_delay", function()
      -- the session may end for its node at any moment without a word to us; the key is then
      -- kept from others for the lock-delay, counted from after our last renewal was sent
      local a = agent.start()
      defer(function() a:stop() end)
      local ca = consul.new({ addr = a.addr, timeout = 5 })
      defer(function() ca:close() end)
      local lock = assert(ca:lock(P .. "lease-delay/.lock", { ttl = 10, lock_delay = 2, wait = 10 }))
      sleep(1.2)  -- past a renewal (every 1 s)
      assert.is_true(lock:held())
      local t0 = now()
      assert(os.execute("kill -STOP " .. a.pid))
      defer(function() os.execute("kill -CONT " .. a.pid) end)
      local lost = wait_until(slack(3, 5), function() return not lock:held() end, 0.02)
      local elapsed = now() - t0
      note("lock_delay 2 s, agent frozen: held() false after %.2f s", elapsed)
      assert.is_truthy(lost, "still held " .. elapsed .. " s after the agent froze")
      assert.is_true(elapsed > 0.8, "held() false after " .. elapsed .. " s: before the lease")
      assert.is_true(elapsed <= 2.05, "held() true " .. elapsed .. " s after the agent froze")
      os.execute("kill -CONT " .. a.pid)
      -- the agent back: a renewal proves the session alive again (it did not end)
      assert.is_truthy(wait_until(slack(4, 8), function() return lock:held() end, 0.05),
        "not held again after the agent came back")
      assert.is_true(lock:release())
    end)


    it("agent gone: held() false once the TTL passed without renewal; release() nil, err",
      function()
        local a = agent.start()
        defer(function() a:stop() end)
        local ca = consul.new({ addr = a.addr })
        defer(function() ca:close() end)
        local lock = assert(ca:lock(P .. "lease/.lock", { ttl = 10, lock_delay = 0, wait = 10 }))
        local t0 = now()  -- the lease started (session created) just before this
        a:stop()
        assert.is_true(lock:held())
        local lost = wait_until(14, function() return not lock:held() end, 0.1)
        local elapsed = now() - t0
        assert.is_truthy(lost, "still held " .. elapsed .. " s after the agent went away")
        assert.is_true(elapsed >= 8.5, "lost after " .. elapsed .. " s, before the TTL")
        assert.is_true(elapsed < slack(11.5, 13), "lost after " .. elapsed .. " s")
        local ok, err, meta = lock:release()
        assert.is_nil(ok)
        assert.is_string(err)
        assert.matches("^consul: ", err)
        assert.is_table(meta)
        assert.are.equal("connect", meta.code)
        -- worth retrying: the renewer goes on with it in the background, until the session
        -- has ended by itself; the lock is no longer ours to release
        assert.is_true(meta.pending)
        assert.is_false(lock:held())
        assert.is_nil(lock.session)
        assert.is_true(lock:release())
      end)
  end)

  ---------------------------------------------------------------------------
  describe("options checked before anything is sent", function()
    it("a name with control characters, acquire() options other than wait, a key too long",
      function()
        local key = P .. "checked/.lock"
        assert.has_error(function() c:lock(key, { name = "job\0" }) end,
          "bad argument #2 to 'lock' (option 'name' must be a string without NUL bytes (1 KiB at most))")
        assert.has_error(function() c:lock(key, { name = 5 }) end,
          "bad argument #2 to 'lock' (option 'name' must be a string)")
        local lock = assert(c:lock(key, { wait = math.huge }))  -- math.huge: wait for ever
        defer(function() lock:release() end)
        assert.is_true(lock:release())
        assert.has_error(function() lock:acquire({ ttl = 20 }) end, "bad argument #1 to 'acquire' (unknown option 'ttl')")
        assert(lock:acquire({ wait = 1 }))
        assert.is_true(lock:release())
        local long = P .. "checked/" .. ("\226\130\172"):rep(120)  -- 360 bytes, 1080 escaped
        assert.has_error(function() c:lock(long) end)
      end)
  end)

  ---------------------------------------------------------------------------
  describe("scopes", function()
    local key = P .. "scope/.lock"

    local function assert_free(k, session, within)
      local free = wait_until(within or 0, function() return holder(k) == "" end)
      assert.is_truthy(free, "still held by " .. tostring(holder(k)))
      if session then
        local gone = wait_until(within or 0, function() return raw_session(session) == nil end)
        assert.is_truthy(gone, "session " .. session .. " still exists")
      end
    end

    if IS_JIT then
      it("<close> (Lua 5.4 only)", function()
        note("<close> specs skipped: LuaJIT has no to-be-closed variables")
      end)
    else
      it("<close> releases at the end of the block", function()
        local chunk = assert(load([[
          local c, key = ...
          local session
          do
            local lock <close> = assert(c:lock(key, { wait = 5, lock_delay = 0 }))
            session = lock.session
            assert(lock:held())
          end
          return session
        ]], "=close_normal"))
        local session = chunk(c, key)
        assert_free(key, session)
      end)

      it("<close> releases when the block raises, and the error goes through unchanged", function()
        local e = { "my error" }
        local chunk = assert(load([[
          local c, key, e, out = ...
          local lock <close> = assert(c:lock(key, { wait = 5, lock_delay = 0 }))
          out.session = lock.session
          error(e)
        ]], "=close_error"))
        local out = {}
        local ok, got = pcall(chunk, c, key, e, out)
        assert.is_false(ok)
        assert.are.equal(e, got)
        assert_free(key, out.session)
      end)
    end

    it("a lock that became garbage is released after collectgarbage()", function()
      local function take()
        local lock = assert(c:lock(key, { wait = 5, lock_delay = 0 }))
        return lock.session
      end
      local session = take()
      assert.are.equal(session, holder(key))
      local t0 = now()
      collectgarbage()
      collectgarbage()
      local took = now() - t0
      -- the finalizer hands the release to the lock's thread: it does not block
      assert.is_true(took < slack(0.2, 2), "collectgarbage() took " .. took .. " s")
      assert_free(key, session, slack(2, 8))
    end)

    it("a lock and its client that became garbage together: the lock is released", function()
      local function take()
        local cc = consul.new({ addr = A })
        local lock = assert(cc:lock(key, { wait = 5, lock_delay = 0 }))
        return lock.session
      end
      local session = take()
      collectgarbage()
      collectgarbage()
      assert_free(key, session, slack(2, 8))
    end)

    it("dead locks do not pile up between collections (the collector is told of each one's C state); a stopped collector stays stopped",
      function()
      -- In a child of its own (its heap is the loop's alone) and in incremental mode on Lua
      -- 5.4. A lock's C state (about 3 KiB) is freed when Lua collects the lock; Lua sees only
      -- a small userdata, so without the hint c:lock gives the collector, 300 lock cycles left
      -- 121-169 of their locks uncollected on Lua 5.4 and all 300 on LuaJIT (measured), each C
      -- state fresh memory. With it: 17 and 8. Weak values: a lock leaves them when found dead.
      local k = key .. "-gc"
      local code = string.format([[
        local c = require("consul").new({ addr = %q })
        if not jit then collectgarbage("incremental") end
        collectgarbage(); collectgarbage()
        local function cycles(n)
          local alive = setmetatable({}, { __mode = "v" })
          for i = 1, n do
            local l = assert(c:lock(%q, { wait = 5, lock_delay = 0 }))
            assert(l:release())
            alive[i] = l
          end
          local left = 0
          for _ in pairs(alive) do left = left + 1 end
          return left
        end
        local running = cycles(300)
        collectgarbage(); collectgarbage()
        collectgarbage("stop")
        local stopped = cycles(50)
        print(string.format("alive=%%d stopped=%%d running=%%s", running, stopped,
          tostring(collectgarbage("isrunning"))))
        collectgarbage("restart")
        c:close()
      ]], A, k)
      local p = assert(io.popen(LUA .. " -e " .. agent.quote(code) .. " 2>&1", "r"))
      local out = p:read("a")
      p:close()
      local alive, stopped, running = out:match("alive=(%d+) stopped=(%d+) running=(%a+)")
      assert(alive, out)
      assert.is_true(tonumber(alive) < 60, alive .. " of 300 dead locks not collected")
      -- stopped: nothing collected behind the user's back, and it is still stopped
      assert.are.equal("50", stopped)
      assert.are.equal("false", running)
      assert_free(k)
    end)

    it("with_lock returns true and fn's results, fn gets the lock and the arguments", function()
      local seen
      local res = { c:with_lock(key, { wait = 5, lock_delay = 0 }, function(lock, a, b)
        assert.is_true(lock:held())
        seen = lock.session
        assert.are.equal(seen, holder(key))
        return a + b, "two", nil
      end, 40, 2) }
      assert.are.same({ true, 42, "two" }, res)
      assert.is_string(seen)
      assert_free(key, seen)
    end)

    it("with_lock releases when fn raises and re-raises the same error value", function()
      local e = setmetatable({ "my error" }, { __tostring = function() return "my error" end })
      local seen
      local ok, got = pcall(c.with_lock, c, key, { wait = 5, lock_delay = 0 }, function(lock)
        seen = lock.session
        error(e)
      end)
      assert.is_false(ok)
      assert.are.equal(e, got)  -- the same table
      assert_free(key, seen)

      ok, got = pcall(c.with_lock, c, key, { wait = 5, lock_delay = 0 }, function()
        error("plain string", 0)
      end)
      assert.is_false(ok)
      assert.are.equal("plain string", got)
      assert.are.equal("", holder(key))
    end)

    it("with_lock does not call fn when the lock cannot be had", function()
      local h = assert(c2:lock(key, { wait = 5, lock_delay = 0 }))
      defer(function() h:release() end)
      local called = false
      local ok, err, meta = c:with_lock(key, { wait = 0 }, function() called = true end)
      assert.is_nil(ok)
      assert.is_string(err)
      assert.are.equal("timeout", meta.code)
      assert.is_false(called)
    end)

    it("release twice: true both times", function()
      local lock = assert(c:lock(key, { wait = 5, lock_delay = 0 }))
      local session = lock.session
      assert.is_true(lock:release())
      assert.is_true(lock:release())
      assert.is_false(lock:held())
      assert_free(key, session)
    end)

    it("release after the client was closed still works (the lock's own connection)", function()
      local c4 = consul.new({ addr = A })
      local lock = assert(c4:lock(key, { wait = 5, lock_delay = 0 }))
      local session = lock.session
      c4:close()
      assert.has_error(function() c4.kv:get(key) end)
      assert.is_true(lock:held())
      assert.is_true(lock:release())
      assert_free(key, session)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("process exit", function()
    for _, mode in ipairs({ "exit", "osexit" }) do
      local how = mode == "exit" and "the end of its script" or "os.exit(0)"
      it("a child leaving through " .. how .. " without releasing frees the key within 3 s",
        function()
          local key = P .. "exit/" .. mode .. "/.lock"
          local out = TMP .. "/" .. mode .. ".out"
          local child = worker(mode, mode, key, out)
          local rc = wait_exit(child, 20)
          assert(rc, "the child did not exit: " .. log_of(child))
          local t0 = now()
          assert.are.equal(0, rc, log_of(child))
          local session = (read_file(out) or ""):match("^(%S+) %d+")
          assert(session, "the child did not report: " .. tostring(read_file(out)) .. log_of(child))
          local free = wait_until(3, function() return holder(key) == "" end, 0.05)
          assert.is_truthy(free, "still held by " .. tostring(holder(key)) .. " 3 s after exit")
          assert.is_truthy(wait_until(3 - (now() - t0), function()
            return raw_session(session) == nil
          end, 0.05), "the session outlived the process by 3 s")
          note("%s: key free and session gone %.2f s after the child's exit", how, now() - t0)
        end)
    end

    -- A child holding a lock on an agent of its own, which is stopped (SIGSTOP) before the
    -- child is told to leave (the file GO): the release at exit cannot be answered. start
    -- runs the child (kids, key, out, go). Returns the key and how long the child took to
    -- exit, once it exited with status 0.
    local function stalled_child(name, start)
      local a = agent.start()
      defer(function() a:stop() end)
      defer(function() os.execute("kill -CONT " .. a.pid .. " 2>/dev/null") end)
      local key = P .. "exit/" .. name .. "/.lock"
      local out, go = TMP .. "/" .. name .. ".out", TMP .. "/" .. name .. ".go"
      local kids = children.new(TMP, WORKER, a.addr)
      defer(function() kids:kill_all() end)
      local child = start(kids, key, out, go)
      assert(out_of(out, 30), "the child did not report: " .. log_of(child))
      assert.matches("^%S+ %d+", read_file(out))
      local stopped = os.execute("kill -STOP " .. a.pid)
      assert(stopped == true or stopped == 0, "kill -STOP " .. a.pid .. " failed")
      util.write_file(go, "")
      local t0 = now()
      local rc = wait_exit(child, 20)
      local elapsed = now() - t0
      assert(rc, "the child did not exit within 20 s: " .. log_of(child))
      assert.are.equal(0, rc, log_of(child))
      return key, elapsed
    end

    for _, mode in ipairs({ "stalled-exit", "stalled-osexit" }) do
      local how = mode == "stalled-exit" and "the end of its script" or "os.exit(0)"
      it("a child leaving through " .. how .. " while its agent hangs (SIGSTOP) exits 0 within ~3 s",
        function()
          -- the process waits 3 s for the release, no more, and leaves cleanly (the renewer,
          -- still inside its request, is parked)
          local _, elapsed = stalled_child(mode, function(kids, key, out, go)
            return kids:worker(mode, mode, key, out, go)
          end)
          assert.is_true(elapsed >= 2.5, "left after " .. elapsed .. " s: did it wait for the release?")
          assert.is_true(elapsed < slack(6, 10), "left after " .. elapsed .. " s")
          note("%s with the agent stopped: the child left after %.2f s, status 0", how, elapsed)
        end)
    end

    if IS_JIT then
      pending("a finalizer run after the exit wait: the host (spec/helpers/atexit_host.c) embeds Lua 5.4")
    else
      it("a finalizer run after the exit wait (a host closing its state at exit) gets an error, not a crash",
        function()
          -- The host closes the state from its own atexit handler, which runs after the
          -- module's: the lock's release at exit could not finish (agent stopped), so the
          -- renewer is parked with the lock's handles; a late lock:release() must not touch them.
          local host = TMP .. "/atexit_host"
          local cc = "cc -std=c99 -O1 -g " .. (ASAN and "-fsanitize=address,undefined " or "") ..
            "-I/usr/include/lua5.4 -o " .. host .. " " .. SPEC_DIR .. "/helpers/atexit_host.c -llua5.4 2>&1"
          local p = assert(io.popen(cc))
          local ccout = p:read("*a")
          p:close()
          assert(io.open(host, "rb"), "building atexit_host failed: " .. ccout)
          local result = TMP .. "/late-finalizer.result"
          local key = stalled_child("late-finalizer", function(kids, k, out, go)
            local args = { host, WORKER, kids.addr, "late-finalizer", k, out, go, result }
            for i, x in ipairs(args) do args[i] = agent.quote(x) end
            return kids:spawn("late-finalizer", table.concat(args, " "))
          end)
          local r = read_file(result)
          assert(r, "the late finalizer did not run")
          assert.matches("^nil consul: lock " .. key:gsub("%p", "%%%0") .. ": the process is exiting timeout\n$", r)
          note("late finalizer: release() said %q; the host exited 0", r:gsub("\n$", ""))
        end)
    end
  end)

  ---------------------------------------------------------------------------
  describe("crash of a holder (SIGKILL)", function()
    it("ends: the waiter got the lock after the TTL ran out, never before, within 25 s", function()
      assert(crash.waiter, "the crash scenario was not started (see the first test)")
      local left = 32 - (now() - crash.killed_mono)
      local line = out_of(crash.out, math.max(left, 1))
      assert(line, "the waiter has no lock " .. (now() - crash.killed_mono) ..
        " s after the kill: " .. log_of(crash.waiter))
      local t, fence, session = line:match("^acquired (%S+) (%d+) (%S+)")
      assert(t, line)
      local elapsed = tonumber(t) - crash.killed_at
      note("crash: the waiter got the lock %.1f s after the SIGKILL (TTL 10 s, lock-delay 1 s)",
        elapsed)
      assert.is_true(elapsed >= 9.5, "acquired " .. elapsed .. " s after the kill: before the TTL")
      assert.is_true(elapsed <= slack(25, 28), "acquired " .. elapsed .. " s after the kill")
      assert.is_true(tonumber(fence) > crash.fence)
      assert.are_not.equal(crash.session, session)
      assert.is_nil(raw_session(crash.session), "the killed holder's session still exists")
      assert.is_truthy(wait_exit(crash.waiter, 5))
      assert.are.equal(0, exit_code(crash.waiter), log_of(crash.waiter))
    end)
  end)
end)
