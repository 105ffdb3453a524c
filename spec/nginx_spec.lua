-- The module inside a real nginx (Debian's nginx + lua-nginx-module, LuaJIT 2.1), against the
-- real agent: calls yield the worker instead of blocking it, and locks follow requests, timers,
-- garbage collection and worker exits. nginx is driven from here with curl; what a handler
-- saw comes back in its answer. These run in the LuaJIT suite (nginx's own Lua is LuaJIT).

local consul = require("consul")
local agent = require("spec.helpers.agent")
local nginx = require("spec.helpers.nginx")
local util = require("spec.helpers.util")
local fakeserver = require("spec.helpers.fakeserver")

local P = "spec/nginx/"
local SKIP = nginx.suite_skip()

if SKIP then
  describe("consul in nginx", function()
    pending(SKIP)
  end)
  return
end

describe("consul in nginx", function()
  local A, c
  local started = {}

  local function start(opts)
    local n = nginx.start(opts)
    started[#started + 1] = n
    return n
  end

  local function init(extra)
    return string.format("consul = require('consul'); C = consul.new({ addr = %q, timeout = 5 })\n%s",
      A, extra or "")
  end

  local function session_of(key)
    local rec = agent.kv_record(A, key)
    return rec and rec.Session
  end

  local function sessions_named(name)
    local n = 0
    for _, s in ipairs(assert(c.session:list())) do
      if s.Name == name then n = n + 1 end
    end
    return n
  end

  setup(function()
    A = agent.shared().addr
    c = consul.new({ addr = A })
    c.kv:delete(P, { recurse = true })
  end)

  teardown(function()
    for _, n in ipairs(started) do n:stop(true) end
    if c then
      c.kv:delete(P, { recurse = true })
      c:close()
    end
  end)

  after_each(function()
    -- a spec that left nginx running stops it here, and fails on what error.log says
    for _, n in ipairs(started) do
      if not n.stopped then n:stop() end
    end
  end)

  it("KV, a blocking query, a lock and a semaphore from a handler, with the results of Lua 5.4", function()
    local n = start({
      init = init(),
      locations = {
        ["/t"] = [[
          local ok, err = C.kv:put("spec/nginx/a", "hello\0world")
          local v, gerr, meta = C.kv:get("spec/nginx/a")
          local miss, merr, mmeta = C.kv:get("spec/nginx/absent")
          local rec = C.kv:record("spec/nginx/a")
          local list = C.kv:list("spec/nginx/")
          local n = 0
          for k in C.kv:pairs("spec/nginx/") do n = n + 1 end
          local l = assert(C:lock("spec/nginx/lock", { wait = 2 }))
          local fence, held = l.fence, l:held()
          assert(l:release())
          local r = { C:with_semaphore("spec/nginx/sem", 2, { wait = 2 }, function(s) return s:held() end) }
          ngx.say(table.concat({ tostring(ok), tostring(err), tostring(#v), tostring(v == "hello\0world"),
            tostring(gerr), tostring(meta.status), type(meta.index), tostring(miss), tostring(merr),
            tostring(mmeta.status), tostring(rec.Value == v), tostring(#list), tostring(n),
            tostring(fence > 0), tostring(held), tostring(l:held()), tostring(r[1]), tostring(r[2]),
            type(C:stats().requests) }, " "))
        ]],
      },
    })
    local status, body = n:get("/t")
    assert.are.equal(200, status, body)
    assert.are.equal("true nil 11 true nil 200 number nil nil 404 true 1 1 true true false true true number\n",
      body)
    n:stop()
  end)

  it("never blocks the worker: while one request waits in a blocking query and another in c:lock " ..
     "behind a holder, a burst of 20 others (half calling the agent) all finish first", function()
    local key = P .. "order/lock"
    local holder = assert(c:lock(key, { wait = 2 }))
    assert(c.kv:put(P .. "order/quiet", "nobody writes this key meanwhile"))
    local _, _, m = c.kv:get(P .. "order/quiet")
    local n = start({
      http = "lua_shared_dict order 1m;",
      init = init(),
      locations = {
        ["/blocking"] = string.format([[
          C.kv:get("spec/nginx/order/quiet", { index = %d, wait = "4s" })
          ngx.say((ngx.shared.order:incr("seq", 1, 0)))
        ]], m.index),
        ["/waiting"] = [[
          local l, err = C:lock("spec/nginx/order/lock", { wait = 10 })
          local seq = (ngx.shared.order:incr("seq", 1, 0))
          if l then l:release() end
          ngx.say(seq, " ", tostring(err))
        ]],
        ["/quick"] = [[
          if tonumber(ngx.var.arg_kv) == 1 then assert(C.kv:get("spec/nginx/order/quiet")) end
          ngx.say((ngx.shared.order:incr("seq", 1, 0)))
        ]],
      },
    })
    local blocking = n:get_async("/blocking")
    local waiting = n:get_async("/waiting")
    util.sleep(0.5)  -- both are in their waits (a worker blocked in them would hold all the rest)
    local quick = {}
    for i = 1, 20 do quick[i] = n:get_async("/quick?kv=" .. (i % 2)) end
    local last_quick = 0
    for i = 1, 20 do
      local status, body = quick[i]:wait()
      assert.are.equal(200, status, body)
      local seq = tonumber(body)
      assert.is_number(seq, "a quick request answered: " .. body)
      last_quick = math.max(last_quick, seq)
    end
    assert(holder:release())
    local s1, b1 = blocking:wait()
    local s2, b2 = waiting:wait()
    assert.are.equal(200, s1, b1)
    assert.are.equal(200, s2, b2)
    local seq_blocking, seq_waiting = tonumber(b1), tonumber(b2:match("^(%d+)"))
    assert.matches(" nil\n$", b2)
    assert.is_true(last_quick < seq_blocking, "a quick request finished after the blocking query")
    assert.is_true(last_quick < seq_waiting, "a quick request finished after the lock wait")
    assert.are.equal(20, last_quick)
    n:stop()
  end)

  it("with_lock releases the lock when the handler raises and when it calls ngx.exit", function()
    local n = start({
      init = init(),
      locations = {
        ["/raise"] = [[
          local ok, err = pcall(C.with_lock, C, "spec/nginx/wl/raise", { wait = 2 }, function()
            error("boom")
          end)
          ngx.say(tostring(ok), " ", tostring(err))
        ]],
        ["/exit"] = [[
          C:with_lock("spec/nginx/wl/exit", { wait = 2 }, function()
            ngx.say("inside")
            ngx.exit(200)
          end)
        ]],
      },
    })
    local status, body = n:get("/raise")
    assert.are.equal(200, status)
    assert.matches("^false .*boom", body)
    assert.is_nil(session_of(P .. "wl/raise"))
    status, body = n:get("/exit")
    assert.are.equal(200, status)
    assert.are.equal("inside\n", body)
    -- ngx.exit ends the handler: the lock object is garbage now, released by the renewer
    n:get("/health")
    assert.is_truthy(util.wait_until(5, function() return session_of(P .. "wl/exit") == nil end),
      "the lock of a handler that called ngx.exit is still held")
    n:stop()
  end)

  it("a lock a timer keeps in a module table is renewed in the background beyond its TTL", function()
    local key = P .. "timer/leader"
    local n = start({
      init = init(),
      init_worker = [[
        LEADER = nil
        local function tick(premature)
          if premature then return end
          if not (LEADER and LEADER:held()) then
            LEADER = C:lock("spec/nginx/timer/leader", { wait = 0, ttl = 10 })
          end
        end
        ngx.timer.every(0.5, tick)
      ]],
      locations = {
        ["/leader"] = [[
          ngx.say(LEADER and LEADER:held() and LEADER.session or "none")
        ]],
      },
    })
    local sess = util.wait_until(5, function()
      local _, body = n:get("/leader")
      return body and body ~= "none\n" and body:gsub("%s+$", "")
    end)
    assert.is_string(sess)
    assert.are.equal(sess, session_of(key))
    util.sleep(12)  -- past the TTL: only background renewals keep it
    local _, body = n:get("/leader")
    assert.are.equal(sess .. "\n", body)
    assert.are.equal(sess, session_of(key))
    assert.is_table(assert(c.session:info(sess)))
    n:stop()
    -- a worker that exits (quit) releases what it held
    assert.is_truthy(util.wait_until(5, function() return session_of(key) == nil end))
    assert.is_nil((c.session:info(sess)))
  end)

  it("a lock that becomes garbage is released without blocking or raising", function()
    local n = start({
      init = init(),
      locations = {
        ["/take"] = [[
          local l = assert(C:lock("spec/nginx/gc/k", { wait = 2, name = "spec nginx gc" }))
          ngx.say(l.session)
        ]],
        ["/collect"] = [[
          collectgarbage()
          collectgarbage()
          ngx.say("collected")
        ]],
      },
    })
    local _, sess = n:get("/take")
    sess = sess:gsub("%s+$", "")
    assert.are.equal(sess, session_of(P .. "gc/k"))
    local t0 = util.now()
    local status, body = n:get("/collect")
    assert.are.equal(200, status)
    assert.are.equal("collected\n", body)
    assert.is_true(util.now() - t0 < 1, "collecting took " .. (util.now() - t0) .. " s")
    assert.is_truthy(util.wait_until(5, function() return session_of(P .. "gc/k") == nil end))
    assert.are.equal(0, sessions_named("spec nginx gc"))
    n:stop()
  end)

  it("nginx -s reload: the old worker releases what it held within a few seconds", function()
    local key = P .. "reload/job"
    local n = start({
      init = init(),
      init_worker = [[
        ngx.timer.at(0, function(premature)
          if premature then return end
          JOB = C:lock("spec/nginx/reload/job", { wait = 5, name = "spec nginx reload" })
        end)
      ]],
      locations = {
        ["/who"] = [[ ngx.say(JOB and JOB.session or "none") ]],
      },
    })
    local old = util.wait_until(5, function() return session_of(key) end)
    assert.is_string(old)
    local t0 = util.now()
    n:reload()
    -- the new worker takes it once the old one let go of it
    local new = util.wait_until(10, function()
      local s = session_of(key)
      return s and s ~= old and s
    end)
    assert.is_string(new, "the new worker never got the lock")
    local elapsed = util.now() - t0
    assert.is_true(elapsed < 5, "the old worker's lock went only after " .. elapsed .. " s")
    assert.is_nil((c.session:info(old)), "the old worker's session is left behind")
    n:stop()
  end)

  it("a client that goes away while its request waits in c:lock leaves no session behind", function()
    local key = P .. "abort/lock"
    local holder = assert(c:lock(key, { wait = 2 }))
    local n = start({
      server = "lua_check_client_abort on;",
      init = init(),
      locations = {
        ["/wait"] = [[
          local l = C:lock("spec/nginx/abort/lock", { wait = 30, name = "spec nginx abort" })
          ngx.say("got it")
        ]],
        ["/collect"] = [[ collectgarbage() collectgarbage() ngx.say("ok") ]],
      },
    })
    local req = n:get_async("/wait", 2)  -- curl gives up after 2 s: the client is gone
    -- while it waits, its attempt has a session (looked at before the client goes: once it
    -- has gone, the session may be gone already, which is the point)
    assert.is_truthy(util.wait_until(1.8, function() return sessions_named("spec nginx abort") == 1 end,
      0.02), "the waiting attempt had no session")
    assert.is_nil((req.wait()))
    -- the aborted request's coroutine is garbage: its attempt's session goes with it
    n:get("/collect")
    assert.is_truthy(util.wait_until(5, function() return sessions_named("spec nginx abort") == 0 end),
      "the aborted attempt's session is left behind")
    assert.are.equal(holder.session, session_of(key))
    assert(holder:release())
    n:stop()
  end)

  it("failures come back as on Lua 5.4: absent, 413, connect refused, timeout (fake server: it stalls)", function()
    local fs = fakeserver.start()
    local closed_port = agent.free_port()
    local n = start({
      init = init(string.format(
        "DOWN = consul.new({ addr = '127.0.0.1:%d', timeout = 1 }); STALL = consul.new({ addr = %q, timeout = 1 })",
        closed_port, fs.addr)),
      locations = {
        ["/t"] = [[
          local out = {}
          local function add(...) out[#out + 1] = table.concat({ tostring(select(1, ...)), tostring(select(2, ...)),
            tostring((select(3, ...) or {}).code), tostring((select(3, ...) or {}).status) }, "|") end
          add(C.kv:get("spec/nginx/absent"))
          add(C.kv:put("spec/nginx/big", string.rep("x", 512 * 1024 + 1)))
          add(DOWN.kv:get("k"))
          add(C.kv:put("spec/nginx/big", string.rep("x", 16 * 1024 * 1024)))
          local t0 = ngx.now()
          add(STALL.kv:get("stall"))
          out[#out + 1] = string.format("%.1f", ngx.now() - t0)
          ngx.say(table.concat(out, "\n"))
        ]],
      },
    })
    local status, body = n:get("/t")
    fs:stop()
    assert.are.equal(200, status, body)
    local lines = {}
    for line in body:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.are.equal("nil|nil|nil|404", lines[1])
    assert.matches("^nil|consul: PUT /v1/kv/spec/nginx/big: 413 .*|http|413$", lines[2])
    assert.matches("^nil|consul: GET /v1/kv/k: connect to 127%.0%.0%.1:%d+ failed: .*|connect|nil$", lines[3])
    assert.matches("^nil|consul: PUT /v1/kv/spec/nginx/big: 413 .*|http|413$", lines[4])
    assert.matches("^nil|consul: GET /v1/kv/stall: .*|timeout|nil$", lines[5])
    local took = tonumber(lines[6])
    assert.is_true(took >= 0.9 and took < 2.5, "the stalled call took " .. took .. " s")
    n:stop()
  end)

  it("where nginx cannot yield, calls block (a put from log_by_lua lands); c:lock in init_by_lua raises", function()
    local n = start({
      init = init([[
        local ok, err = pcall(C.lock, C, "spec/nginx/init/lock")
        INIT_LOCK = tostring(ok) .. " " .. tostring(err)
        INIT_LEADER = C.status:leader()  -- a call in the master: blocking, allowed
      ]]),
      server = [[
        location = /logged {
          content_by_lua_block { ngx.say("ok") }
          log_by_lua_block { C.kv:put("spec/nginx/logged", ngx.var.arg_v) }
        }
      ]],
      locations = {
        ["/init"] = [[ ngx.say(INIT_LOCK, "\n", INIT_LEADER) ]],
      },
    })
    local _, body = n:get("/init")
    assert.matches("^false .*c:lock cannot run in init_by_lua", body)
    assert.matches("\n127%.0%.0%.1:%d+\n$", body)
    assert.are.equal(200, (n:get("/logged?v=from-log")))
    assert.is_truthy(util.wait_until(3, function() return c.kv:get(P .. "logged") == "from-log" end))
    n:stop()
  end)
end)
