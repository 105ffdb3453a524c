-- Locks and semaphores inside real nginx instances (Debian's nginx + lua-nginx-module, LuaJIT
-- 2.1), where c:lock waits by yielding the worker over cosockets (lua/consul/ngx.lua), against
-- the shared agent: interop with Consul's own `consul lock`; mutual exclusion across two nginx
-- (2 workers each: their timers and their requests) and a Lua 5.4 process on one counter; a
-- semaphore of 2 across handlers of two workers and a Lua 5.4 process; the hand-over between two
-- handlers of one worker (printed, not asserted beyond a sanity bound); and a refused c:lock on
-- an ACL agent (403, no session left behind). What handlers saw comes back whole
-- (spec/helpers/ngx_wire.lua); the agent's state is read over raw HTTP (curl).
-- These run in the LuaJIT suite (nginx's own Lua is LuaJIT).

local consul = require("consul")
local agent = require("spec.helpers.agent")
local nginx = require("spec.helpers.nginx")
local util = require("spec.helpers.util")
local children = require("spec.helpers.children")
local W = require("spec.helpers.ngx_wire")
local json = require("dkjson")

local P = "spec/nginx_locks/"
local SKIP = nginx.suite_skip()

if SKIP then
  describe("consul locks in nginx", function()
    pending(SKIP)
  end)
  return
end

local now, sleep, read_file, wait_until, path_of = util.now, util.sleep, util.read_file,
  util.wait_until, util.path_of
local exit_code, wait_exit, log_of = children.exit_code, children.wait_exit, children.log_of
local note = util.noter("nginx_locks_spec")
local FLAGS_DIGITS = "3304740253564472344"  -- 0x2ddccbc058a50c18, as Consul's JSON has it
local SPEC_DIR = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "spec"
local SEM_WORKER = SPEC_DIR .. "/helpers/sem_worker.lua"
-- the Lua 5.4 children: the module's 5.4 build, from the repository root
local LUA54_ENV = "env LUA_PATH='./lua/?.lua;./?.lua;./?/init.lua;;' LUA_CPATH='./build/5.4/?.so;;' lua5.4"

-- The Lua 5.4 contender of the mutual exclusion test: N rounds of with_lock around a read of
-- the counter, a short sleep and a write of counter + 1, each noted as { v = counter read,
-- fence, t_in, t_out (CLOCK_MONOTONIC, system-wide) }; waits for the file GO first (30 s at
-- most). Writes W.dump({ holds =, err = }) to OUT.
local LOCK54 = [[
local consul = require("consul")
local system = require("system")
local W = require("spec.helpers.ngx_wire")
local put_file = require("spec.helpers.util").put_file
local addr, key, counter, n, go, out = arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5], arg[6]
local c = consul.new({ addr = addr })
local deadline = system.monotime() + 30
while system.monotime() < deadline do
  local f = io.open(go, "rb")
  if f then f:close() break end
  system.sleep(0.005)
end
math.randomseed(os.time())
local holds, err = {}, nil
for i = 1, n do
  local ok, r1, r2 = pcall(c.with_lock, c, key, { wait = 60, ttl = 15, lock_delay = 0 }, function(lock)
    local t_in = system.monotime()
    local held = lock:held()
    local v, gerr = c.kv:get(counter)
    if gerr then error(gerr) end
    local cur = tonumber(v or "0")
    system.sleep(math.random(0, 5) / 1000)
    local pok, perr = c.kv:put(counter, tostring(cur + 1))
    if not pok then error("put: " .. tostring(perr)) end
    holds[#holds + 1] = { v = cur, fence = lock.fence, t_in = t_in, t_out = system.monotime(),
      held = held, who = "lua5.4" }
  end)
  if not ok then err = "round " .. i .. ": raised: " .. tostring(r1) break end
  if not r1 then err = "round " .. i .. ": " .. tostring(r2) break end
end
put_file(out, W.dump({ holds = holds, err = err }))
c:close()
]]

-- What every nginx of this file has: C (the shared agent), R, OUT, MONO() (CLOCK_MONOTONIC,
-- the clock the Lua 5.4 children read too), WAIT_GO(path) (30 s at most), ROUNDS(n) (the
-- counter rounds of LOCK54, yielding in ngx.sleep) and CAS_ADD(key, d).
local COMMON = [[
  consul = require("consul")
  W = require("spec.helpers.ngx_wire")
  R = W.pack
  function OUT(t) ngx.print(W.dump(t)) end
  local ffi = require("ffi")
  ffi.cdef("typedef struct { long tv_sec; long tv_nsec; } spec_nginx_ts; " ..
    "int clock_gettime(int, spec_nginx_ts *);")
  local ts = ffi.new("spec_nginx_ts")
  function MONO()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
  end
  function WAIT_GO(path)
    for _ = 1, 3000 do
      local f = io.open(path, "rb")
      if f then f:close() return true end
      ngx.sleep(0.01)
    end
    return false
  end
  function ROUNDS(key, counter, n)
    local holds = {}
    for i = 1, n do
      local ok, r1, r2 = pcall(C.with_lock, C, key, { wait = 60, ttl = 15, lock_delay = 0 }, function(lock)
        local t_in = MONO()
        local held = lock:held()
        local v, gerr = C.kv:get(counter)
        if gerr then error(gerr) end
        local cur = tonumber(v or "0")
        ngx.sleep(math.random(0, 5) / 1000)
        local pok, perr = C.kv:put(counter, tostring(cur + 1))
        if not pok then error("put: " .. tostring(perr)) end
        holds[#holds + 1] = { v = cur, fence = lock.fence, t_in = t_in, t_out = MONO(),
          held = held, who = "nginx " .. ngx.worker.pid() .. " " .. ngx.get_phase() }
      end)
      if not ok then return holds, "round " .. i .. ": raised: " .. tostring(r1) end
      if not r1 then return holds, "round " .. i .. ": " .. tostring(r2) end
    end
    return holds
  end
  function CAS_ADD(key, d)
    for _ = 1, 1000 do
      local rec, err = C.kv:record(key)
      if err then error("record " .. key .. ": " .. tostring(err)) end
      local new = tonumber(rec and rec.Value or "0") + d
      local ok, perr = C.kv:put(key, tostring(new), { cas = rec and rec.ModifyIndex or 0 })
      if perr then error("put " .. key .. ": " .. tostring(perr)) end
      if ok then return new end
    end
    error("cas on " .. key .. " lost 1000 times")
  end
]]

describe("consul locks in nginx", function()
  local A, c, TMP, spawner
  local started = {}

  local function start(opts)
    local x = nginx.start(opts)
    started[#started + 1] = x
    return x
  end

  local function init(extra)
    return string.format("%s\nC = consul.new({ addr = %q, timeout = 10 })\n%s", COMMON, A, extra or "")
  end

  local function decode(x, path, status, body)
    assert(status == 200, "GET " .. path .. ": " .. tostring(status) .. " " .. tostring(body) ..
      "\nerror.log:\n" .. x:errors())
    return W.load(body)
  end

  local function call(x, path, timeout)
    return decode(x, path, x:get(path, timeout or 60))
  end

  local function call_async(x, path)
    local req = x:get_async(path, 120)
    return { wait = function() return decode(x, path, req.wait()) end }
  end

  -- the key's record (dkjson, independent of the module) and its text, or nil
  local function raw_record(key) return agent.kv_record(A, key) end

  local function holder(key)
    local rec = raw_record(key)
    return rec and (rec.Session or "")
  end

  local function sessions_named(name)
    local n = 0
    for _, s in ipairs(agent.get_json(A, "/v1/session/list") or {}) do
      if s.Name == name then n = n + 1 end
    end
    return n
  end

  setup(function()
    A = agent.shared().addr
    c = consul.new({ addr = A })
    TMP = agent.tmpdir()
    spawner = children.new(TMP, nil, A)
    agent.http(A, "DELETE", "/v1/kv/" .. P .. "?recurse")
  end)

  teardown(function()
    for _, x in ipairs(started) do x:stop(true) end
    if spawner then spawner:kill_all() end
    agent.http(A, "DELETE", "/v1/kv/" .. P .. "?recurse")
    if c then c:close() end
  end)

  after_each(function()
    -- a spec that left nginx running stops it here, and fails on what error.log says
    for _, x in ipairs(started) do
      if not x.stopped then x:stop() end
    end
  end)

  ---------------------------------------------------------------------------
  describe("interop with consul lock", function()
    local LOCATIONS = {
      ["/try"] = [[
        local t0 = MONO()
        local l, err, meta = C:lock(ngx.var.arg_key, { wait = 0, name = "spec nginx try" })
        local out = { n = 3, l and "a lock" or nil, err, meta, s = MONO() - t0 }
        if l then out.fence, out.released = l.fence, R(l:release()) end
        OUT(out)
      ]],
      ["/hold"] = [[
        HELD = assert(C:lock(ngx.var.arg_key, { wait = 5, name = "spec nginx hold" }))
        OUT({ session = HELD.session, fence = HELD.fence, held = HELD:held() })
      ]],
      ["/held"] = [[ OUT({ held = HELD ~= nil and HELD:held() }) ]],
      ["/release"] = [[
        local r = R(HELD:release())
        r.held = HELD:held()
        HELD = nil
        OUT(r)
      ]],
    }

    it("while `consul lock PREFIX sleep 3` holds PREFIX/.lock, a handler's c:lock(wait = 0) times out; " ..
       "it gets the key once consul lock ended", function()
      local prefix = P .. "interop1"
      local key = prefix .. "/.lock"
      local n = start({ init = init(), locations = LOCATIONS })
      local child = spawner:spawn("consul-lock",
        agent.quote(agent.bin()) .. " lock -http-addr=" .. A .. " " .. prefix .. " sleep 3")
      local rec = wait_until(10, function()
        local r = raw_record(key)
        return r and r.Session and r
      end)
      assert(rec, "consul lock did not take the key: " .. log_of(child))
      assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', select(2, raw_record(key)))

      local t = call(n, "/try?key=" .. key)
      assert.is_nil(t[1])
      assert.is_string(t[2])
      assert.matches("^consul: lock ", t[2])
      assert.are.equal("timeout", t[3].code)
      assert.is_true(t.s < 1, "c:lock with wait = 0 took " .. t.s .. " s")
      assert.is_nil(exit_code(child), "consul lock ended before the check: " .. log_of(child))
      assert.are.equal(rec.Session, holder(key))

      assert.is_truthy(wait_exit(child, 15), "consul lock did not end")
      assert.are.equal(0, exit_code(child), log_of(child))
      t = call(n, "/try?key=" .. key)
      assert.are.equal("a lock", t[1], tostring(t[2]))
      assert.is_true(t.fence > rec.ModifyIndex)
      assert.are.same({ n = 1, true }, t.released)
      assert.are.equal(0, sessions_named("spec nginx try"))
      n:stop()
    end)

    it("while a handler holds PREFIX/.lock, `consul lock -timeout=2s PREFIX` fails; after release() " ..
       "it succeeds, flags intact", function()
      local prefix = P .. "interop2"
      local key = prefix .. "/.lock"
      local n = start({ init = init(), locations = LOCATIONS })
      local h = call(n, "/hold?key=" .. key)
      assert.is_true(h.held)
      assert.are.equal(h.session, holder(key))

      local t0 = now()
      local ok, out, code = agent.run("lock", "-http-addr=" .. A, "-timeout=2s", prefix, "true")
      local elapsed = now() - t0
      assert.is_false(ok, out)
      assert.are.equal(1, code)
      assert.matches("Shutdown triggered or timeout during lock acquisition", out, 1, true)
      assert.is_true(elapsed >= 1.9, "consul lock gave up after " .. elapsed .. " s")
      assert.is_true(call(n, "/held").held)
      assert.are.equal(h.session, holder(key))

      local r = call(n, "/release")
      assert.are.same({ n = 1, true, held = false }, r)
      local rec, text = raw_record(key)
      assert.is_truthy(rec, "the key is gone after release")
      assert.is_nil(rec.Session)
      assert.matches('"Flags":%s*' .. FLAGS_DIGITS .. '[,}%s]', text)
      assert.are.equal(0, sessions_named("spec nginx hold"))
      ok, out, code = agent.run("lock", "-http-addr=" .. A, "-timeout=10s", prefix, "true")
      assert.is_true(ok, "consul lock exit " .. tostring(code) .. ": " .. out)
      n:stop()
    end)
  end)

  ---------------------------------------------------------------------------
  it("mutual exclusion: 2 nginx x 2 workers (timers and requests) and a Lua 5.4 process increment one " ..
     "counter under one lock; no lost update, no overlap, fences strictly increasing", function()
    local key, counter = P .. "mutex/.lock", P .. "mutex/counter"
    local go = TMP .. "/mutex.go"
    local N = 12
    assert(read_file("build/5.4/consul/core.so"), "the Lua 5.4 build (build/5.4) is missing")
    util.write_file(TMP .. "/lock54.lua", LOCK54)
    local extra = string.format("KEY, COUNTER, GO, N = %q, %q, %q, %d", key, counter, go, N)
    local function one()
      return start({
        workers = 2,
        http = "lua_shared_dict results 1m;",
        init = init(extra),
        -- every worker is a contender from a timer...
        init_worker = [[
          ngx.timer.at(0, function(premature)
            if premature then return end
            local ok, holds, err = pcall(function()
              if not WAIT_GO(GO) then return {}, "no GO file within 30 s" end
              return ROUNDS(KEY, COUNTER, N)
            end)
            if not ok then holds, err = {}, "raised: " .. tostring(holds) end
            ngx.shared.results:set("timer " .. ngx.worker.pid(),
              W.dump({ holds = holds, err = err, pid = ngx.worker.pid() }))
          end)
        ]],
        locations = {
          -- ...and so are requests
          ["/count"] = [[
            if not WAIT_GO(GO) then OUT({ holds = {}, err = "no GO file within 30 s" }) return end
            local holds, err = ROUNDS(KEY, COUNTER, N)
            OUT({ holds = holds, err = err, pid = ngx.worker.pid() })
          ]],
          ["/timers"] = [[
            local d = ngx.shared.results
            local t = {}
            for _, k in ipairs(d:get_keys(0)) do t[#t + 1] = W.load(d:get(k)) end
            OUT(t)
          ]],
        },
      })
    end
    local n1, n2 = one(), one()
    local reqs = {}
    for _, x in ipairs({ n1, n2 }) do
      for _ = 1, 2 do reqs[#reqs + 1] = call_async(x, "/count") end
    end
    local out54 = TMP .. "/lock54.out"
    local kid = spawner:spawn("lock54", LUA54_ENV .. " " .. agent.quote(TMP .. "/lock54.lua") .. " " ..
      table.concat({ A, key, counter, N, go, out54 }, " "))
    sleep(0.3)  -- everyone loads, then all start at once
    local t0 = now()
    assert(io.open(go, "wb")):close()

    local results = {}
    for _, r in ipairs(reqs) do results[#results + 1] = r.wait() end
    for _, x in ipairs({ n1, n2 }) do
      local timers = wait_until(60, function()
        local t = call(x, "/timers")
        return #t == 2 and t
      end, 0.1)
      assert(timers, "the 2 workers' timers of an nginx did not finish within 60 s")
      for _, t in ipairs(timers) do results[#results + 1] = t end
      assert.are_not.equal(timers[1].pid, timers[2].pid, "both workers took part")
    end
    assert.is_truthy(wait_exit(kid, 60), "the Lua 5.4 contender did not finish: " .. log_of(kid))
    assert.are.equal(0, exit_code(kid), log_of(kid))
    results[#results + 1] = W.load(assert(read_file(out54), "no results from Lua 5.4: " .. log_of(kid)))
    local took = now() - t0

    local holds = {}
    for i, r in ipairs(results) do
      assert.is_nil(r.err, "contender " .. i .. ": " .. tostring(r.err))
      assert.are.equal(N, #r.holds, "contender " .. i)
      for _, h in ipairs(r.holds) do
        assert.is_true(h.held, "lock:held() false inside with_lock (" .. h.who .. ")")
        holds[#holds + 1] = h
      end
    end
    local total = #results * N
    assert.are.equal(9, #results)
    -- the main judge: no increment was lost
    assert.are.equal(tostring(total), (c.kv:get(counter)))
    -- each hold read a different value: 0 .. total - 1
    table.sort(holds, function(a, b) return a.v < b.v end)
    for i, h in ipairs(holds) do
      assert.are.equal(i - 1, h.v, "two holds read the same counter value (" .. h.who .. ")")
    end
    -- in that order, every holder's fence is above the previous one's
    for i = 2, #holds do
      assert.is_true(holds[i].fence > holds[i - 1].fence, string.format(
        "fence %s (%s) after %s (%s)", tostring(holds[i].fence), holds[i].who,
        tostring(holds[i - 1].fence), holds[i - 1].who))
    end
    -- and no two holds overlap in time (one clock, CLOCK_MONOTONIC, for every process)
    table.sort(holds, function(a, b) return a.t_in < b.t_in end)
    local gap = math.huge
    for i = 2, #holds do
      local d = holds[i].t_in - holds[i - 1].t_out
      assert.is_true(d >= 0, string.format("%s entered %.6f s before %s left", holds[i].who, -d,
        holds[i - 1].who))
      if d < gap then gap = d end
    end
    note("mutual exclusion: %d contenders x %d rounds = %d increments in %.2f s; smallest gap " ..
      "between two holds %.3f ms", #results, N, total, took, gap * 1000)
    assert.are.equal("", holder(key))  -- released, flags kept
    n1:stop()
    n2:stop()
  end)

  ---------------------------------------------------------------------------
  it("a semaphore of 2 across handlers of 2 workers and a Lua 5.4 process: never 3 inside; " ..
     "with_semaphore releases (also when fn raises)", function()
    local prefix, current, total = P .. "sem", P .. "sem-current", P .. "sem-total"
    local R_NGX, R_54, REQS = 8, 8, 4
    local n = start({
      workers = 2,
      http = "lua_shared_dict sem 1m;",
      init = init(string.format("PREFIX, CURRENT, TOTAL = %q, %q, %q", prefix, current, total)),
      locations = {
        ["/sem"] = [[
          local d = ngx.shared.sem
          local out = { max_local = 0, max_global = 0, rounds = 0, pid = ngx.worker.pid() }
          local rounds = tonumber(ngx.var.arg_n)
          for i = 1, rounds do
            local ok, r1, r2 = pcall(C.with_semaphore, C, PREFIX, 2,
              { wait = 60, ttl = 15, lock_delay = 0, name = "spec nginx sem" }, function(sem)
                if not sem:held() then out.not_held = true end
                local here = d:incr("inside", 1, 0)
                if here > out.max_local then out.max_local = here end
                local g = CAS_ADD(CURRENT, 1)
                if g > out.max_global then out.max_global = g end
                ngx.sleep(math.random(10, 40) / 1000)
                CAS_ADD(TOTAL, 1)
                CAS_ADD(CURRENT, -1)
                d:incr("inside", -1, 0)
                return "fn's result"
              end)
            if not ok then out.err = "round " .. i .. ": raised: " .. tostring(r1) break end
            if not r1 then out.err = "round " .. i .. ": " .. tostring(r2) break end
            out.result = r2
            out.rounds = out.rounds + 1
          end
          out.raise = R(pcall(C.with_semaphore, C, PREFIX, 2,
            { wait = 60, ttl = 15, lock_delay = 0, name = "spec nginx sem" },
            function() error("boom", 0) end))
          OUT(out)
        ]],
      },
    })
    local reqs = {}
    for i = 1, REQS do reqs[i] = call_async(n, "/sem?n=" .. R_NGX) end
    local out54 = TMP .. "/sem54.out"
    local kid = spawner:spawn("sem54", LUA54_ENV .. " " .. agent.quote(SEM_WORKER) .. " " ..
      table.concat({ A, "counter", prefix, 2, current, total, R_54, out54 }, " "))
    local max, pids = 0, {}
    for i, r in ipairs(reqs) do
      local t = r.wait()
      assert.is_nil(t.err, "request " .. i .. ": " .. tostring(t.err))
      assert.is_nil(t.not_held, "sem:held() false inside with_semaphore")
      assert.are.equal(R_NGX, t.rounds)
      assert.are.equal("fn's result", t.result)
      assert.is_true(t.max_local <= 2, "request " .. i .. " saw " .. t.max_local .. " inside its nginx")
      assert.is_true(t.max_global <= 2, "request " .. i .. " saw " .. t.max_global .. " inside")
      assert.are.same({ n = 2, false, "boom" }, t.raise)
      max = math.max(max, t.max_global)
      pids[t.pid] = true
    end
    assert.is_truthy(wait_exit(kid, 90), "the Lua 5.4 contender did not finish: " .. log_of(kid))
    assert.are.equal(0, exit_code(kid), log_of(kid))
    local done, m = (read_file(out54) or ""):match("^done (%d+) (%d+)")
    assert(done, "Lua 5.4: " .. tostring(read_file(out54)) .. log_of(kid))
    assert.are.equal(R_54, tonumber(done))
    assert.is_true(tonumber(m) <= 2, "the Lua 5.4 process saw " .. m .. " inside")
    max = math.max(max, tonumber(m))
    local np = 0
    for _ in pairs(pids) do np = np + 1 end
    note("semaphore: %d requests (over %d worker(s)) x %d + Lua 5.4 x %d rounds, at most %d inside",
      REQS, np, R_NGX, R_54, max)
    assert.are.equal(2, max)  -- a semaphore of 2, not a mutex
    assert.are.equal("0", (c.kv:get(current)))
    assert.are.equal(tostring(REQS * R_NGX + R_54), (c.kv:get(total)))
    -- everything released: no holder left, no contender key, no session
    local st, raw = agent.http(A, "GET", "/v1/kv/" .. path_of(prefix .. "/.lock") .. "?raw")
    assert.are.equal(200, st, raw)
    local state = json.decode(raw)
    assert.is_table(state, raw)
    assert.are.same({}, state.Holders or {})
    assert.are.equal(2, state.Limit)
    local status, body = agent.http(A, "GET", "/v1/kv/" .. path_of(prefix .. "/") .. "?keys")
    assert.are.equal(200, status)
    assert.are.same({ prefix .. "/.lock" }, json.decode(body))
    assert.are.equal(0, util.wait_until(3, function()
      return sessions_named("spec nginx sem") == 0 and 0
    end) or sessions_named("spec nginx sem"))
    n:stop()
  end)

  ---------------------------------------------------------------------------
  it("guarded writes in a handler: lock:put and lock:txn land while held; once its session is " ..
     "gone lock:put is refused (code \"lost\") and writes nothing", function()
    local key, data = P .. "guarded/.lock", P .. "guarded/data"
    local n = start({
      init = init(string.format("KEY, DATA = %q, %q", key, data)),
      locations = {
        ["/g"] = [[
          local l = assert(C:lock(KEY, { wait = 5 }))
          local out = { put = R(l:put(DATA, "v1")) }
          out.txn = R(l:txn({ { KV = { Verb = "get", Key = DATA } } }))
          out.destroyed = R(C.session:destroy(l.session))
          out.lost = R(l:put(DATA, "v2"))
          out.held = l:held()
          out.release = R(l:release())
          OUT(out)
        ]],
      },
    })
    local r = call(n, "/g")
    assert.are.same(true, r.put[1], W.dump(r.put))
    assert.are.equal("v1", r.txn[1].Results[1].KV.Value)
    assert.are.same(true, r.destroyed[1])
    assert.is_nil(r.lost[1])
    assert.are.equal("lost", r.lost[3].code, tostring(r.lost[2]))
    assert.is_false(r.held)
    assert.are.same(true, r.release[1])
    local status, body = agent.raw(A, "GET", "/v1/kv/" .. path_of(data) .. "?raw")
    assert.are.equal(200, status)
    assert.are.equal("v1", body)
    n:stop()
  end)

  ---------------------------------------------------------------------------
  it("hand-over between two handlers of one nginx: release() returning to the waiter's c:lock " ..
     "returning (printed; sanity bound 2 s)", function()
    local key = P .. "handover/.lock"
    local n = start({
      init = init(string.format("KEY = %q", key)),
      locations = {
        ["/hold"] = [[
          HELD = assert(C:lock(KEY, { wait = 5, lock_delay = 0 }))
          OUT({ session = HELD.session })
        ]],
        ["/wait"] = [[
          local l, err, meta = C:lock(KEY, { wait = 10, lock_delay = 0 })
          local t = MONO()
          local out = { t = t, err = err, held = l and l:held(), session = l and l.session,
            fence = l and l.fence }
          if l then out.released = R(l:release()) end
          OUT(out)
        ]],
        ["/release"] = [[
          local t0 = MONO()
          local r = R(HELD:release())
          r.t0, r.t = t0, MONO()
          HELD = nil
          OUT(r)
        ]],
      },
    })
    local from_return, from_start = {}, {}
    local function sessions() return #(agent.get_json(A, "/v1/session/list") or {}) end
    for round = 1, 5 do
      local before = sessions()
      local h = call(n, "/hold")
      local waiter = call_async(n, "/wait")
      -- the waiter has its session and waits in its blocking query behind the holder (bounded)
      assert.is_truthy(wait_until(5, function() return sessions() >= before + 2 end),
        "the waiter never made its session")
      sleep(0.2)
      local r = call(n, "/release")
      assert.are.same(true, r[1])
      local w = waiter.wait()
      assert.is_nil(w.err, "round " .. round .. ": " .. tostring(w.err))
      assert.is_true(w.held)
      assert.are_not.equal(h.session, w.session)
      assert.are.same({ n = 1, true }, w.released)
      from_return[round] = w.t - r.t
      from_start[round] = w.t - r.t0
      assert.is_true(math.abs(from_return[round]) < 2, "hand-over took " .. from_return[round] .. " s")
    end
    local function ms(list)
      local t = {}
      for i, v in ipairs(list) do t[i] = string.format("%.3f", v * 1000) end
      return table.concat(t, ", ")
    end
    note("hand-over in one worker, from release() returning to the waiter's c:lock returning: %s ms " ..
      "(from release() starting: %s ms); negative: the waiter had the lock before release() returned " ..
      "(it also destroys the session)", ms(from_return), ms(from_start))
    n:stop()
  end)

  ---------------------------------------------------------------------------
  describe("an ACL agent", function()
    local K, limited, n
    local key = P .. "acl/.lock"

    -- sessions of that name on K (read with the management token)
    local function left(name)
      local _, list = agent.http(K, "GET", "/v1/session/list", nil, K.token)
      local cnt = 0
      for _, s in ipairs(json.decode(list) or {}) do
        if s.Name == name then cnt = cnt + 1 end
      end
      return cnt
    end

    local function none_left(name)
      wait_until(3, function() return left(name) == 0 end)  -- a failed attempt's clean-up may run late
      assert.are.equal(0, left(name), "sessions named '" .. name .. "' left behind")
    end

    -- /try?who=anon|limited|mgmt&what=lock|sem: the attempt's results under pcall (a lock is
    -- "a lock", released at once)
    local function nginx_for_k()
      return start({
        init = COMMON .. string.format([[
          CLIENTS = {
            anon = consul.new({ addr = %q, timeout = 10 }),
            limited = consul.new({ addr = %q, token = %q, timeout = 10 }),
            mgmt = consul.new({ addr = %q, token = %q, timeout = 10 }),
          }
          KEY = %q
        ]], K.addr, K.addr, limited, K.addr, K.token, key),
        locations = {
          ["/try"] = [[
            local who, what = ngx.var.arg_who, ngx.var.arg_what
            local x = CLIENTS[who]
            local name = "spec nginx acl " .. who .. " " .. what
            local t0 = MONO()
            local r = R(pcall(function()
              if what == "sem" then return x:semaphore(KEY .. "-sem", 2, { wait = 1, name = name }) end
              return x:lock(KEY, { wait = 1, name = name })
            end))
            r.s = MONO() - t0
            if r[1] and r[2] then r.released = R(r[2]:release()); r[2] = "a lock" end
            OUT(r)
          ]],
        },
      })
    end

    local function refused(r, what)
      assert.is_true(r[1], what .. ": raised: " .. tostring(r[2]))
      assert.is_nil(r[2], what)
      assert.is_string(r[3], what)
      assert.is_nil(r[3]:find("\n"), what)
      assert.are.equal("http", r[4].code, what .. ": " .. tostring(r[3]))
      assert.are.equal(403, r[4].status, what .. ": " .. tostring(r[3]))
    end

    setup(function()
      K = agent.start({ acl = true, name = "nginx-locks-acl" })
      -- a token that may make sessions but only read the keys
      local status, body = agent.http(K, "PUT", "/v1/acl/policy", json.encode({
        Name = "spec-nginx-locks-limited",
        Rules = 'session_prefix "" { policy = "write" }\nkey_prefix "" { policy = "read" }\n' }), K.token)
      assert.are.equal(200, status, body)
      local pol = json.decode(body)
      status, body = agent.http(K, "PUT", "/v1/acl/token", json.encode({
        Description = "spec nginx locks limited", Policies = { { ID = pol.ID } } }), K.token)
      assert.are.equal(200, status, body)
      limited = json.decode(body).SecretID
    end)

    teardown(function()
      if K then K:stop() end
    end)

    it("c:lock and c:semaphore without a token: nil, err, meta.code \"http\", status 403, no session " ..
       "left behind; with the management token the same key locks", function()
      n = nginx_for_k()
      local r = call(n, "/try?who=anon&what=lock")
      refused(r, "c:lock")
      assert.matches("^consul: PUT /v1/session/create: 403 ", r[3])
      refused(call(n, "/try?who=anon&what=sem"), "c:semaphore")
      none_left("spec nginx acl anon lock")
      none_left("spec nginx acl anon sem")
      local m = call(n, "/try?who=mgmt&what=lock")
      assert.are.equal("a lock", m[2], tostring(m[3]))
      assert.are.same({ n = 1, true }, m.released)
      none_left("spec nginx acl mgmt lock")
      n:stop()
    end)

    -- The token may create the session, not write the key. c:semaphore gets the 403 of its
    -- contender key's write (PUT /v1/kv/PREFIX/<session>) and returns it; its session is
    -- expected to go with the failed attempt ("failed attempts leak nothing").
    it("with a token that may make sessions but not write the key: c:semaphore fails with the 403 " ..
       "and leaves no session", function()
      n = nginx_for_k()
      local r = call(n, "/try?who=limited&what=sem")
      refused(r, "c:semaphore")
      assert.matches("^consul: PUT /v1/kv/" .. (P .. "acl/.lock-sem/"):gsub("%p", "%%%0") .. "%S+: 403 ", r[3])
      none_left("spec nginx acl limited sem")
      n:stop()
    end)

    -- Consul refuses the lock's take: PUT /v1/txn answers 409 with Errors [{OpIndex 0, What
    -- "Permission denied"}]. The lock is expected to fail with that refusal at once, as the
    -- semaphore does with its 403, rather than wait out `wait` as if the key were held (what it
    -- does on Lua 5.4 too: "not acquired in 1 s", meta.code "timeout"; with no `wait`, forever).
    it("with a token that may make sessions but not write the key: c:lock fails with the refusal " ..
       "(meta.code \"http\", Consul's 409 \"Permission denied\") at once, and leaves no session", function()
      n = nginx_for_k()
      local r = call(n, "/try?who=limited&what=lock")
      none_left("spec nginx acl limited lock")
      -- (the refusal comes in the transaction's answer: 409 with Errors "Permission denied")
      assert.is_true(r[1], "raised: " .. tostring(r[2]))
      assert.is_nil(r[2])
      assert.are.equal("http", r[4].code, tostring(r[3]))
      assert.are.equal(409, r[4].status, tostring(r[3]))
      assert.matches("^consul: PUT /v1/txn: 409 op 0: Permission denied", r[3])
      assert.is_true(r.s < 0.9, "c:lock took " .. r.s .. " s to fail")
      n:stop()
    end)
  end)
end)
