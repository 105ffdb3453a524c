-- spec/careless_spec.lua: what the module does with careless callers, against the shared real
-- agent: Lua code that closes the client from inside a call (a metamethod, a finalizer), NUL
-- bytes where C strings go, numbers out of range, values of the wrong type, extra arguments,
-- and with_lock / with_semaphore misused. Misuse raises at the caller's line and sends
-- nothing; memory is never read after it is freed; a KV key may hold any byte.
local consul = require("consul")
local agent = require("spec.helpers.agent")
local util = require("spec.helpers.util")
local sessions = require("spec.helpers.sessions")

local raises = util.raises
local P = "spec/careless/"
local TIMEOUT = util.slack(2, 30)  -- (valgrind decodes 2,000 records slowly)

-- The finalizer hook of a fresh piece of garbage: tables on 5.4, a proxy on LuaJIT (5.1 runs
-- no __gc of tables).
local function garbage_with_gc(fn)
  if newproxy then
    local p = newproxy(true)
    getmetatable(p).__gc = fn
  else
    setmetatable({}, { __gc = fn })
  end
end

describe("careless callers (real agent)", function()
  local shared, c

  setup(function()
    shared = agent.shared()
    c = consul.new({ addr = shared.addr, timeout = TIMEOUT })
  end)

  teardown(function()
    agent.http(shared, "DELETE", "/v1/kv/" .. P .. "?recurse")
    if c then c:close() end
  end)

  after_each(util.run_deferred)

  local function fresh_client()
    local x = consul.new({ addr = shared.addr, timeout = TIMEOUT })
    util.defer(function() x:close() end)
    return x
  end

  -- Asserts that x is closed: its calls raise "consul client is closed".
  local function is_closed(x, why)
    local ok, err = pcall(function() local v = x.kv:get(P .. "closed?") end)
    assert.is_false(ok, "the client is still open afterwards" .. (why or ""))
    assert.matches("consul client is closed", tostring(err))
  end

  -------------------------------------------------------------------------------------------
  describe("a client closed from inside its own call", function()
    -- Options are read raw (lua_next, rawget): no metamethod of the caller's runs in the
    -- middle of a call, so nothing can close the client under it from there.
    it("kv:get with options whose __index would close the client: it never runs, the call completes", function()
      local x = fresh_client()
      local ran = false
      local opts = setmetatable({}, { __index = function() ran = true; x:close() end })
      local v, err, meta = x.kv:get(P .. "k", opts)
      assert.is_false(ran, "an option's __index ran")
      assert.is_nil(err)
      assert.is_table(meta)
      assert.are.equal(404, meta.status)
      assert.is_table(x:stats())  -- still open
    end)

    it("c:request with options whose __index would close the client: it never runs, the call completes", function()
      local x = fresh_client()
      local ran = false
      local opts = setmetatable({}, { __index = function() ran = true; x:close() end })
      local r, err, meta = x:request("GET", "/v1/kv/" .. P .. "k", opts)
      assert.is_false(ran, "an option's __index ran")
      assert.is_nil(r)
      assert.is_nil(err)
      assert.are.equal(404, meta.status)
      assert.is_table(x:stats())
    end)

    -- Other places where Lua code of the caller's may run in the middle of a call: whatever
    -- each does, no crash, and a hook that ran leaves the client closed.
    local HOOKS = {
      { "opts.headers with __index", function(close)
          return { headers = setmetatable({}, { __index = close }) } end },
      { "opts.query with __index", function(close)
          return { query = setmetatable({}, { __index = close }) } end },
      { "opts.body with __index and __len", function(close)
          return { body = setmetatable({}, { __index = close, __len = function() close() return 0 end }) } end },
      { "opts.tag (an array) with __index and __len", function(close)
          return { tag = setmetatable({}, { __index = close, __len = function() close() return 1 end }) } end },
    }
    for _, hook in ipairs(HOOKS) do
      it("c:request with " .. hook[1] .. " that closes the client: no crash; a hook that ran leaves the client closed", function()
        local x = fresh_client()
        local ran = false
        local opts = hook[2](function() ran = true; x:close() end)
        local ok, r, err, meta = pcall(function() return x:request("PUT", "/v1/kv/" .. P .. "hook", opts) end)
        if ok then
          assert.is_table(meta, "returned, but not the module's shape: " .. tostring(r) .. ", " .. tostring(err))
        else
          assert.is_string(r)
        end
        if ran then is_closed(x, " (the hook ran)") end
      end)
    end

    it("a __gc that closes the client, collected while kv:list pushes 2,000 records: no crash; the list or \"consul client is closed\"", function()
      local ops = {}
      for i = 1, 2000 do
        ops[#ops + 1] = { KV = { Verb = "set", Key = P .. "gc/" .. i, Value = string.rep("v", 20) } }
        if #ops == 64 or i == 2000 then
          local r, err = c.txn:apply(ops)
          assert(r, err)
          ops = {}
        end
      end
      local pause
      if _VERSION == "Lua 5.4" then
        collectgarbage("incremental", 10, 400)  -- a collector that runs all the time
      else
        pause = collectgarbage("setpause", 10)
      end
      util.defer(function()
        if _VERSION == "Lua 5.4" then collectgarbage("incremental", 200, 100) else collectgarbage("setpause", pause) end
      end)
      local closes, lists, refused = 0, 0, 0
      local rounds = util.slack(10, 3)
      for _ = 1, rounds do
        local x = consul.new({ addr = shared.addr, timeout = TIMEOUT })
        for _ = 1, 50 do
          garbage_with_gc(function() closes = closes + 1; x:close() end)
        end
        for _ = 1, 2 do
          local junk = {}
          local ok, list, err = pcall(function() return x.kv:list(P .. "gc/") end)
          for j = 1, 300 do junk[j] = { j, tostring(j) } end
          if ok then
            assert.is_nil(err)
            assert.are.equal(2000, #list)
            lists = lists + 1
          else
            assert.matches("consul client is closed", tostring(list))
            refused = refused + 1
          end
        end
        x:close()
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(closes > 0, "no finalizer ran: the spec tested nothing")
      assert.are.equal(2 * rounds, lists + refused)
    end)

    local BAD_DEFS = {
      { "TTL = 1e60", { TTL = 1e60 } },
      { "TTL = -1e60", { TTL = -1e60 } },
      { "LockDelay = 1e300", { LockDelay = 1e300 } },
      { "TTL = 0/0", { TTL = 0 / 0 } },
    }
    for _, case in ipairs(BAD_DEFS) do
      it("session:create({ " .. case[1] .. " }) raises (bad argument) and sends nothing", function()
        local before = c:stats().requests
        raises("bad argument #1 to 'create'", function() c.session:create(case[2]) end)
        assert.are.equal(before, c:stats().requests)
      end)
    end
  end)

  -------------------------------------------------------------------------------------------
  describe("NUL bytes raise instead of being cut", function()
    it("in c:request's path and method, a header value, a node_meta key and a snapshot's file name; nothing is sent", function()
      local before = c:stats().requests
      raises("bad argument #2 to 'request'", function() c:request("GET", "/v1/kv/a\0b") end)
      raises("bad argument #1 to 'request'", function() c:request("GE\0T", "/v1/x") end)
      raises("bad argument #3 to 'request'", function() c:request("GET", "/v1/kv/x", { headers = { ["X-A"] = "a\0b" } }) end)
      raises("bad argument #1 to 'nodes'", function() c.catalog:nodes({ node_meta = { ["a\0b"] = "x" } }) end)
      raises("bad argument #1 to 'save'", function() c.snapshot:save("/tmp/a\0b") end)
      local cut = os.tmpname()  -- a fresh name: a file saved under its part before a NUL shows
      os.remove(cut)
      raises("bad argument #1 to 'save'", function() c.snapshot:save(cut .. "\0b") end)
      assert.are.equal(before, c:stats().requests)
      local f = io.open(cut, "rb")
      if f then f:close(); os.remove(cut) end
      assert.is_nil(f, "the snapshot was written to " .. cut .. " (the name cut at the NUL)")
    end)

    local OPTS = { "addr", "host", "dc", "scheme", "tls_server_name", "ca_file", "token" }
    for _, name in ipairs(OPTS) do
      it("in consul.new's option " .. name, function()
        local v = ({ addr = "127.0.0.1:8500\0x", host = "127.0.0.1\0x", scheme = "http\0s" })[name] or "a\0b"
        raises("'" .. name .. "'", function() consul.new({ [name] = v }) end)
      end)
    end

    -- A key is escaped byte by byte, NUL as %00, and sent whole, never cut. Consul 1.8.7
    -- itself refuses any control byte in /v1/kv/<key> (400), so kv:put and c:lock both refuse
    -- such a key, with Consul's answer, and the lock leaves no session behind.
    it("a KV key with a NUL byte goes out whole (%00) and Consul refuses it: kv:put and c:lock both answer 400", function()
      local ok, err, meta = c.kv:put(P .. "nul/a\0b", "v")
      assert.is_nil(ok)
      assert.matches("^consul: PUT /v1/kv/" .. P:gsub("%p", "%%%0") .. "nul/a%%00b: 400", err)
      assert.are.equal("http", meta.code)
      assert.are.equal(400, meta.status)
      -- and nothing was stored under the key cut short
      assert.are.same({}, assert(c.kv:keys(P .. "nul/")))
      local before = sessions.ids(c)
      local lock, lerr, lmeta = c:lock(P .. "nul/lock\0b", { wait = 1, name = "spec careless nul" })
      assert.is_nil(lock)
      assert.matches("%%00b: 400", lerr)
      assert.are.equal("http", lmeta.code)
      assert.are.equal(400, lmeta.status)
      sessions.assert_no_new(c, before)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("numbers out of range raise", function()
    -- (with a short wait: a module that sent such an index would not block for 5 minutes)
    it("index = -1, 1.5, 0/0, cas = -1 and limit = -1 raise (bad argument); nothing is sent", function()
      local before = c:stats().requests
      raises("bad argument #2 to 'get' %(option 'index'", function() c.kv:get(P .. "k", { index = -1, wait = "10ms" }) end)
      raises("bad argument #2 to 'get' %(option 'index'", function() c.kv:get(P .. "k", { index = 1.5, wait = "10ms" }) end)
      raises("bad argument #2 to 'get' %(option 'index'", function() c.kv:get(P .. "k", { index = 0 / 0, wait = "10ms" }) end)
      raises("bad argument #3 to 'put' %(option 'cas'", function() c.kv:put(P .. "k", "v", { cas = -1 }) end)
      raises("bad argument #2 to 'delete' %(option 'cas'", function() c.kv:delete(P .. "k", { cas = -1 }) end)
      raises("bad argument #3 to 'request' %(option 'limit'", function() c:request("GET", "/v1/catalog/nodes", { limit = -1 }) end)
      assert.are.equal(before, c:stats().requests)
    end)

    it("index = \"18446744073709551615\" (a decimal string) is accepted", function()
      local v, err, meta = c.kv:get(P .. "absent", { index = "18446744073709551615", wait = "1ms" })
      assert.is_nil(v)
      assert.is_nil(err)
      assert.is_table(meta)
    end)

    it("flags = -1 is accepted on Lua 5.4 (two's complement: stored as 18446744073709551615)", function()
      if util.IS_JIT then
        pending("LuaJIT: -1 is a double there, not a 64-bit integer's two's complement")
        return
      end
      local key = P .. "flags"
      assert.is_true((c.kv:put(key, "v", { flags = -1 })))
      local _, raw = agent.kv_record(shared, key)
      assert.matches('"Flags": 18446744073709551615,', raw, 1, true)
      assert.are.equal(-1, c.kv:record(key).Flags)
    end)

    it("event indexes are hashes (any uint64): c.event:list({ index = -1, wait = \"1ms\" }) does not raise on Lua 5.4", function()
      if util.IS_JIT then
        pending("LuaJIT: -1 is a double there, not a uint64; an index above 2^53 comes as a decimal string")
        return
      end
      local list, err = c.event:list({ index = -1, wait = "1ms" })
      assert.is_nil(err)
      assert.is_table(list)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("values of the wrong type raise", function()
    it("c:request(\"\", path) raises", function()
      raises("bad argument #1 to 'request'", function() c:request("", "/v1/x") end)
    end)

    it("{ dc = 5 }, { name = 5 }, { filter = 5 } raise: strings where strings are meant", function()
      raises("bad argument #1 to 'services' %(option 'dc' must be a string", function() c.catalog:services({ dc = 5 }) end)
      raises("bad argument #1 to 'services' %(option 'name' must be a string", function() c.catalog:services({ name = 5 }) end)
      raises("bad argument #1 to 'services' %(option 'filter' must be a string", function() c.catalog:services({ filter = 5 }) end)
      raises("bad argument #2 to 'get' %(option 'dc' must be a string", function() c.kv:get(P .. "k", { dc = 5 }) end)
    end)

    it("stream:read(-1), read(0/0), read(\"x\") raise", function()
      local s = assert(c.agent:monitor({ loglevel = "debug" }))
      util.defer(function() s:close() end)
      -- Lines to read (the debug log names every request): a read that took its argument
      -- for "wait for ever" returns with one of them instead of hanging the spec.
      local function log_lines() for _ = 1, 3 do c.kv:get(P .. "log") end end
      log_lines()
      raises("bad argument #1 to 'read'", function() s:read(-1) end)
      log_lines()
      raises("bad argument #1 to 'read'", function() s:read(0 / 0) end)
      log_lines()
      raises("bad argument #1 to 'read'", function() s:read("x") end)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("extra arguments raise (\"too many arguments\")", function()
    it("client, new, lock, semaphore", function()
      local x = fresh_client()
      raises("too many arguments", function() x:stats(1) end)
      raises("too many arguments", function() x:close(1) end)
      raises("too many arguments", function() consul.new({}, 1) end)
      raises("too many arguments", function() c:lock(P .. "k", {}, 1) end)
      raises("too many arguments", function() c:semaphore(P .. "p", 1, {}, 1) end)
    end)

    it("a lock's held, release and acquire", function()
      local lock = assert(c:lock(P .. "args", { wait = 1 }))
      util.defer(function() lock:release() end)
      raises("too many arguments", function() lock:held(1) end)
      raises("too many arguments", function() lock:release(1) end)
      raises("too many arguments", function() lock:acquire({}, 1) end)
      assert.is_true(lock:held())
    end)

    it("a stream's close and read", function()
      local s = assert(c.agent:monitor())
      util.defer(function() s:close() end)
      raises("too many arguments", function() s:close(1) end)
      raises("too many arguments", function() s:read(1, 2) end)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("with_lock and with_semaphore blame the caller", function()
    -- Inside pcall(function() local a = ... end): `return f()` would be a tail call, losing
    -- the caller's frame.
    local function err_of(f)
      local ok, err = pcall(f)
      assert.is_false(ok, "no error")
      return tostring(err)
    end

    it("bad argument #1 to 'with_lock' / 'with_semaphore', at the caller's line", function()
      local line = debug.getinfo(1, "l").currentline
      local e1 = err_of(function() local a, b = c:with_lock(5, {}, function() end) end)
      local e2 = err_of(function() local a, b = c:with_semaphore(5, 1, {}, function() end) end)
      assert.matches("careless_spec%.lua:" .. (line + 1) .. ": bad argument #1 to 'with_lock'", e1)
      assert.matches("careless_spec%.lua:" .. (line + 2) .. ": bad argument #1 to 'with_semaphore'", e2)
    end)

    it("a function that is not one: bad argument #3 to 'with_lock', #4 to 'with_semaphore', at the caller's line", function()
      local line = debug.getinfo(1, "l").currentline
      local e1 = err_of(function() local a, b = c:with_lock(P .. "k", {}, "notafunction") end)
      local e2 = err_of(function() local a, b = c:with_semaphore(P .. "p", 1, {}, "notafunction") end)
      assert.matches("careless_spec%.lua:" .. (line + 1) .. ": bad argument #3 to 'with_lock'", e1)
      assert.matches("careless_spec%.lua:" .. (line + 2) .. ": bad argument #4 to 'with_semaphore'", e2)
    end)

    it("an unknown option: the error is at the caller's line, not in lua/consul.lua", function()
      local line = debug.getinfo(1, "l").currentline
      local e1 = err_of(function() local a, b = c:with_lock(P .. "k", { bogus = 1 }, function() end) end)
      local e2 = err_of(function() local a, b = c:with_semaphore(P .. "p", 1, { bogus = 1 }, function() end) end)
      assert.matches("^[^\n]*careless_spec%.lua:" .. (line + 1) .. ": ", e1)
      assert.matches("^[^\n]*careless_spec%.lua:" .. (line + 2) .. ": ", e2)
      assert.is_nil(e1:find("consul.lua", 1, true), e1)
      assert.is_nil(e2:find("consul.lua", 1, true), e2)
    end)

    it("an unknown option: the error names 'with_lock' / 'with_semaphore'", function()
      local e1 = err_of(function() local a, b = c:with_lock(P .. "k", { bogus = 1 }, function() end) end)
      local e2 = err_of(function() local a, b = c:with_semaphore(P .. "p", 1, { bogus = 1 }, function() end) end)
      assert.matches("'with_lock'", e1)
      assert.matches("'with_semaphore'", e2)
      assert.matches("bogus", e1)
      assert.matches("bogus", e2)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("session names are escaped, not refused", function()
    it("c:lock with name = 'job \"1\"\\n\\\\x' works, and the session's Name is exactly that", function()
      local name = 'job "1"\n\\x'
      local lock, err = c:lock(P .. "named", { name = name, wait = 1 })
      assert.is_nil(err)
      util.defer(function() lock:release() end)
      local info = assert(c.session:info(lock.session))
      assert.are.equal(name, info.Name)
      -- and as Consul has it (curl, dkjson)
      local s = agent.get_json(shared, "/v1/session/info/" .. lock.session)
      assert.are.equal(name, s[1].Name)
    end)

    it("and control characters too (a tab, \\1, \\127)", function()
      local name = "a\tb\1c\127d"
      local lock, err = c:lock(P .. "named2", { name = name, wait = 1 })
      assert.is_nil(err)
      util.defer(function() lock:release() end)
      assert.are.equal(name, c.session:info(lock.session).Name)
    end)
  end)
end)
