-- spec/errors_spec.lua: how calls fail. Runtime failures return nil, "consul: METHOD /path:
-- why", meta with a stable meta.code (connect, timeout, http, decode, closed); an absent
-- answer is nil, nil; bad arguments raise at the caller's line.
--
-- Real agents for everything a real agent can do (the shared agent, plus one ACL agent for
-- 403s, started once). Only what no agent ever does (a stalled socket, broken JSON, a
-- connection closed mid-answer) uses spec/helpers/fakeserver, and those specs say
-- "fake server" in their names.
local consul = require("consul")
local agent = require("spec.helpers.agent")
local fakeserver = require("spec.helpers.fakeserver")

local PREFIX = "spec/errors/"
local MAX_VALUE = 512 * 1024  -- Consul's default kv_max_value_size

local function now()
  local p = assert(io.popen("date +%s%N"))
  local ns = p:read("*a")
  p:close()
  return tonumber(ns) / 1e9
end

local function esc(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

local raises = require("spec.helpers.util").raises

-- A failure: nil, a one-line "consul: " message, meta with code (and status when given).
local function failed(code, status, r, err, meta)
  assert.is_nil(r)
  assert.is_string(err)
  assert.matches("^consul: ", err)
  assert.is_nil(err:find("\n"), "not one line: " .. err)
  assert.is_table(meta)
  assert.equals(code, meta.code, err)
  assert.equals(status, meta.status, err)
  return err, meta
end

describe("errors", function()
  local shared, c

  setup(function()
    shared = agent.shared()
    c = consul.new({ addr = shared.addr })
  end)

  teardown(function()
    agent.http(shared, "DELETE", "/v1/kv/" .. PREFIX .. "?recurse")
    if c then c:close() end
  end)

  -------------------------------------------------------------------------------------------
  describe("agent not running", function()
    it("a free port: nil, \"consul: GET /v1/kv/x: connect to 127.0.0.1:N refused\", code connect", function()
      local port = agent.free_port()
      local x = consul.new({ addr = "127.0.0.1:" .. port })
      for _ = 1, 3 do  -- the same client keeps answering the same error
        local err, meta = failed("connect", nil, x.kv:get("x"))
        assert.equals("consul: GET /v1/kv/x: connect to 127.0.0.1:" .. port .. " refused", err)
        assert.matches("^consul: GET /v1/kv/x: connect to 127%.0%.0%.1:%d+ refused", err)
        assert.is_nil(meta.index)
        assert.is_nil(meta.known_leader)
      end
      failed("connect", nil, x.kv:put("x", "v"))
      failed("connect", nil, x:request("GET", "/v1/agent/self"))
      assert.equals(5, x:stats().requests)
      x:close()
      -- a new client with a good address works
      local y = consul.new({ addr = shared.addr })
      assert.is_string((y.status:leader()))
      y:close()
    end)

    it("a unix socket that does not exist: code connect, \"no such socket\"", function()
      local x = consul.new({ addr = "unix:///nonexistent/consul.sock" })
      local err = failed("connect", nil, x.status:leader())
      assert.equals("consul: GET /v1/status/leader: connect to unix:///nonexistent/consul.sock: no such socket", err)
      x:close()
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("fake server", function()
    local fs

    setup(function() fs = fakeserver.start() end)
    teardown(function() if fs then fs:stop() end end)

    it("fake server: stalled socket with timeout = 1 gives code timeout within ~1-2 s", function()
      local x = consul.new({ addr = fs.addr, timeout = 1 })
      local t0 = now()
      local err = failed("timeout", nil, x.kv:get("stall"))
      local dt = now() - t0
      assert.matches("^consul: GET /v1/kv/stall: " .. esc(fs.addr) .. ": ", err)
      assert.is_true(dt >= 0.9 and dt < 2.5, "took " .. dt .. " s")
      -- the client goes on: the next answer is a good one
      local r, rerr, meta = x:request("GET", "/v1/ok")
      assert.is_nil(rerr)
      assert.same({}, r)
      assert.equals(200, meta.status)
      x:close()
    end)

    it("fake server: a stalled blocking query times out after timeout + wait + wait/16", function()
      local x = consul.new({ addr = fs.addr, timeout = 1 })
      local t0 = now()
      failed("timeout", nil, x.kv:get("stall", { index = 5, wait = "1s" }))
      local dt = now() - t0
      assert.is_true(dt >= 1.9 and dt < 3.5, "took " .. dt .. " s")
      x:close()
    end)

    it("fake server: malformed JSON is code decode with status 200", function()
      local x = consul.new({ addr = fs.addr })
      local err, meta = failed("decode", 200, x:request("GET", "/v1/badjson"))
      assert.equals("consul: GET /v1/badjson: malformed JSON answer", err)
      assert.equals(7, meta.index)
      err = failed("decode", 200, x.kv:record("badjson"))
      assert.matches("malformed JSON", err)
      -- kv:get reads ?raw: whatever the body is, it is the value's bytes
      assert.equals('{"a":', (x.kv:get("badjson")))
      x:close()
    end)

    it("fake server: truncated JSON is code decode with status 200", function()
      local x = consul.new({ addr = fs.addr })
      local err = failed("decode", 200, x.kv:list("truncated"))
      assert.equals("consul: GET /v1/kv/truncated: malformed JSON answer", err)
      failed("decode", 200, x:request("GET", "/v1/truncated"))
      x:close()
    end)

    it("fake server: a Value that is not base64 is code decode, never data", function()
      -- Consul always encodes Value; a broken one is an answer of the wrong shape
      local x = consul.new({ addr = fs.addr })
      local err = failed("decode", 200, x.kv:list("notbase64"))
      assert.equals("consul: GET /v1/kv/notbase64: an answer of the wrong shape", err)
      failed("decode", 200, x.kv:record("notbase64"))
      x:close()
    end)

    it("fake server: a peer closing mid-answer is code closed, and the client goes on", function()
      local x = consul.new({ addr = fs.addr })
      local err = failed("closed", 200, x.kv:get("close"))
      assert.matches("^consul: GET /v1/kv/close: " .. esc(fs.addr) .. " closed the connection: ", err)
      -- a peer closing without a byte of answer: no status
      err = failed("closed", nil, x.kv:get("nothing"))
      assert.matches("^consul: GET /v1/kv/nothing: " .. esc(fs.addr) .. " closed the connection: ", err)
      local r, rerr, meta = x:request("GET", "/v1/ok")
      assert.is_nil(rerr)
      assert.same({}, r)
      assert.equals(200, meta.status)
      x:close()
    end)

    it("fake server: a kept connection that closes before a byte of answer is replaced once; a new one is not", function()
      local x = consul.new({ addr = fs.addr, timeout = 2 })
      local kept = fakeserver.answer("[1]", { close = false })
      fs:script("keep", { kept })
      assert.same({ 1 }, (x:request("GET", "/v1/raw/keep")))
      assert.same({ requests = 1, connects = 1 }, x:stats())
      -- the kept connection is asked next and closes without a byte ("nothing"): the request
      -- goes once more, on a new connection, which does the same: that is the answer
      fs:forget_requests()
      local err = failed("closed", nil, x:request("GET", "/v1/kv/nothing"))
      assert.matches("^consul: GET /v1/kv/nothing: " .. esc(fs.addr) .. " closed the connection: ", err)
      assert.equals(2, #fs:requests())
      assert.same({ requests = 2, connects = 2 }, x:stats())
      -- a new connection that closes at once is not tried again
      fs:forget_requests()
      failed("closed", nil, x:request("GET", "/v1/kv/nothing"))
      assert.equals(1, #fs:requests())
      assert.same({ requests = 3, connects = 3 }, x:stats())
      x:close()
    end)
  end)

  describe("fake server: it drops each connection after 1 s, as an agent may drop an idle one", function()
    local fs
    setup(function() fs = fakeserver.start({ connection = 1 }) end)
    teardown(function() if fs then fs:stop() end end)

    it("a kept connection the server dropped meanwhile: the next call goes on a new one and succeeds", function()
      local x = consul.new({ addr = fs.addr, timeout = 2 })
      local kept = fakeserver.answer("[1]", { close = false })
      fs:script("idle", { kept, fakeserver.answer("[2]", { close = false }) })
      assert.same({ 1 }, (x:request("GET", "/v1/raw/idle")))
      os.execute("sleep 1.5")
      local r, err = x:request("GET", "/v1/raw/idle")
      assert.same({ 2 }, r, err)
      assert.same({ requests = 2, connects = 2 }, x:stats())
      x:close()
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("HTTP failures", function()
    describe("from an ACL agent", function()
      local a
      setup(function() a = agent.start({ acl = true }) end)
      teardown(function() if a then a:stop() end end)

      it("403: nil, \"consul: PUT /v1/kv/...: 403 Permission denied\", code http", function()
        local x = consul.new({ addr = a.addr })
        local k = PREFIX .. "acl"
        local err = failed("http", 403, x.kv:put(k, "v"))
        assert.equals("consul: PUT /v1/kv/" .. k .. ": 403 Permission denied", err)
        failed("http", 403, x.kv:get(k))
        failed("http", 403, x.kv:delete(k))
        err = failed("http", 403, x:request("GET", "/v1/agent/self"))
        assert.matches("^consul: GET /v1/agent/self: 403 ", err)
        -- a bad token is a 403 too; the client goes on with a good one
        failed("http", 403, x.kv:get(k, { token = "00000000-0000-0000-0000-00000000dead" }))
        assert.is_true((x.kv:put(k, "v", { token = a.token })))
        x:close()
      end)
    end)

    it("404 on a read is absent: nil, nil, meta.status 404", function()
      local k = PREFIX .. "absent"
      for _, call in ipairs({
        function() return c.kv:get(k) end,
        function() return c.kv:record(k) end,
        function() return c:request("GET", "/v1/kv/" .. k) end,
        function() return c.agent:service("spec-errors-no-such-service") end,
      }) do
        local r, err, meta = call()
        assert.is_nil(r)
        assert.is_nil(err)
        assert.equals(404, meta.status)
        assert.is_nil(meta.code)
      end
      -- an absent prefix lists as empty
      local list, err = c.kv:list(k .. "/")
      assert.is_nil(err)
      assert.same({}, list)
      local keys = c.kv:keys(k .. "/")
      assert.same({}, keys)
      -- a null answer is absent too (session info of an unknown ID)
      local r, serr, meta = c.session:info("00000000-0000-0000-0000-000000000000")
      assert.is_nil(r)
      assert.is_nil(serr)
      assert.equals(200, meta.status)
    end)

    it("404 on a write is a failure with code http", function()
      local err = failed("http", 404, c:request("PUT", "/v1/no/such/route"))
      assert.matches("^consul: PUT /v1/no/such/route: 404", err)
    end)

    it("413: a value of 512 KiB + 1 fails, the client stays usable, 512 KiB works", function()
      local k = PREFIX .. "big"
      local err = failed("http", 413, c.kv:put(k, string.rep("x", MAX_VALUE + 1)))
      assert.matches("^consul: PUT /v1/kv/spec/errors/big: 413 ", err)
      assert.is_truthy(err:find("413", 1, true))
      -- right after: a put works
      assert.is_true((c.kv:put(k, "small")))
      assert.equals("small", (c.kv:get(k)))
      local big = string.rep("y", MAX_VALUE)
      assert.is_true((c.kv:put(k, big)))
      local v, gerr = c.kv:get(k)
      assert.is_nil(gerr)
      assert.equals(#big, #v)
      assert.equals(big, v)
      assert.is_true((c.kv:delete(k)))
    end)

    it("413 for values far over the limit (1, 4, 16, 64 MiB): the agent answers before it has read them, and that answer is the call's", function()
      -- Consul refuses by Content-Length and stops reading: a client that only sent would
      -- meet a closed connection ("closed") instead of the agent's 413 and its reason
      local x = consul.new({ addr = shared.addr, timeout = 10 })
      local k = PREFIX .. "huge"
      for _, mib in ipairs({ 1, 4, 16, 64 }) do
        local err, meta = failed("http", 413, x.kv:put(k, string.rep("z", mib * 1024 * 1024)))
        assert.matches("^consul: PUT /v1/kv/spec/errors/huge: 413 Request body%(" .. mib * 1024 * 1024 ..
          " bytes%) too large", err)
        assert.equals(413, meta.status)
      end
      assert.is_true((x.kv:put(k, "after")))
      assert.equals("after", (x.kv:get(k)))
      assert.is_true((x.kv:delete(k)))
      x:close()
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("bad arguments raise at the caller's line", function()
    it("a non-string key: number, table, nil, none", function()
      raises("bad argument #1 to 'get' %(string expected, got number%)", function() c.kv:get(1) end)
      raises("bad argument #1 to 'get' %(string expected, got table%)", function() c.kv:get({}) end)
      raises("bad argument #1 to 'get' %(string expected, got nil%)", function() c.kv:get(nil) end)
      raises("bad argument #1 to 'get' %(string expected, got nil%)", function() c.kv:get() end)
      raises("bad argument #1 to 'put' %(string expected, got number%)", function() c.kv:put(1, "v") end)
      raises("bad argument #1 to 'delete' %(string expected, got boolean%)", function() c.kv:delete(true) end)
      raises("bad argument #1 to 'record' %(string expected, got table%)", function() c.kv:record({}) end)
      raises("bad argument #1 to 'info' %(string expected, got number%)", function() c.session:info(1) end)
      raises("bad argument #1 to 'info' %(must not be empty%)", function() c.session:info("") end)
    end)

    it("a value that is not a string", function()
      raises("bad argument #2 to 'put' %(string expected, got number%)", function() c.kv:put("k", 5) end)
      raises("bad argument #2 to 'put' %(string expected, got table%)", function() c.kv:put("k", {}) end)
      raises("bad argument #2 to 'put' %(string expected, got boolean%)", function() c.kv:put("k", true) end)
      raises("bad argument #1 to 'service_register' %(table or string expected, got number%)", function() c.agent:service_register(1) end)
      raises("bad argument #1 to 'service_register' %(table or string expected, got nil%)", function() c.agent:service_register() end)
    end)

    it("options that are not a table", function()
      raises("bad argument #2 to 'get' %(table expected, got string%)", function() c.kv:get("k", "recurse") end)
      raises("bad argument #3 to 'put' %(table expected, got number%)", function() c.kv:put("k", "v", 1) end)
      raises("bad argument #1 to 'leader' %(options table expected%)", function() c.status:leader("x") end)
      raises("bad argument #3 to 'request' %(table expected, got string%)", function() c:request("GET", "/v1/status/leader", "x") end)
    end)

    it("unknown option names and option values of the wrong type", function()
      raises("bad argument #2 to 'get' %(unknown option 'bogus'%)", function() c.kv:get("k", { bogus = 1 }) end)
      raises("bad argument #1 to 'leader' %(unknown option 'x'%)", function() c.status:leader({ x = true }) end)
      raises("bad argument #3 to 'request' %(unknown option 'x'%)", function() c:request("GET", "/v1/status/leader", { x = 1 }) end)
      raises("bad argument #2 to 'get' %(option names must be strings%)", function() c.kv:get("k", { "stale" }) end)
      raises("bad argument #2 to 'get' %(option 'index' must be a non%-negative integer", function() c.kv:get("k", { index = "five" }) end)
      raises("bad argument #2 to 'get' %(option 'index' must be a non%-negative integer", function() c.kv:get("k", { index = 1.5 }) end)
      raises("bad argument #2 to 'get' %(option 'wait' must be seconds or a duration like \"30s\"%)", function() c.kv:get("k", { wait = "soon" }) end)
      raises("bad argument #2 to 'get' %(option 'wait' must be 0%.%.86400 seconds or a duration%)", function() c.kv:get("k", { wait = -1 }) end)
      raises("bad argument #2 to 'get' %(option 'stale' must be a boolean%)", function() c.kv:get("k", { stale = "yes" }) end)
      raises("bad argument #2 to 'get' %(option 'dc' must be a string%)", function() c.kv:get("k", { dc = {} }) end)
      raises("bad argument #2 to 'get' %(option 'token' must be a string%)", function() c.kv:get("k", { token = 1 }) end)
      raises("bad argument #2 to 'get' %(option 'token' has control characters%)", function() c.kv:get("k", { token = "a\nb" }) end)
      raises("bad argument #2 to 'delete' %(option 'recurse' must be a boolean%)", function() c.kv:delete("k", { recurse = 1 }) end)
      raises("bad argument #3 to 'put' %(option 'flags' must be an integer", function() c.kv:put("k", "v", { flags = "0x1" }) end)
      raises("bad argument #2 to 'get' %(option 'recurse' is not for this method %(use kv:list%)%)", function() c.kv:get("k", { recurse = true }) end)
    end)

    it("too many arguments", function()
      raises("too many arguments %(key and options expected%)", function() c.kv:get("k", {}, 1) end)
      raises("too many arguments %(key, value and options expected%)", function() c.kv:put("k", "v", {}, 1) end)
      raises("too many arguments %(key and options expected%)", function() c.kv:delete("k", {}, 1) end)
      raises("too many arguments to 'leader' %(1 expected at most%)", function() c.status:leader({}, 1) end)
      raises("too many arguments to 'info' %(2 expected at most%)", function() c.session:info("id", {}, 1) end)
    end)

    it("a group method called with '.' instead of ':' (self missing)", function()
      raises("bad argument #1 to 'get' %(table expected, got string%)", function() c.kv.get("k") end)
      raises("bad argument #1 to 'get' %(table expected, got no value%)", function() c.kv.get() end)
      raises("bad argument #1 to 'leader' %(table expected, got no value%)", function() c.status.leader() end)
      raises("call it with ':'", function() c.kv.get({}, "k") end)
    end)

    it("c:request: method, path, query, headers and body", function()
      raises("bad argument #1 to 'request' %(an HTTP method in capitals expected%)", function() c:request("get", "/v1/status/leader") end)
      raises("bad argument #1 to 'request' %(string expected, got nil%)", function() c:request(nil, "/v1/status/leader") end)
      raises("bad argument #2 to 'request' %(an escaped path starting with '/' expected", function() c:request("GET", "v1/status/leader") end)
      raises("bad argument #2 to 'request' %(an escaped path starting with '/' expected", function() c:request("GET", "/v1/kv/x?recurse") end)
      raises("bad argument #2 to 'request' %(string expected, got table%)", function() c:request("GET", {}) end)
      raises("bad argument #3 to 'request' %(option 'query' must be a table%)", function() c:request("GET", "/v1/kv/x", { query = "recurse" }) end)
      raises("bad argument #3 to 'request' %(option 'query' keys must be strings%)", function() c:request("GET", "/v1/kv/x", { query = { "recurse" } }) end)
      raises("option 'headers' must be a table", function() c:request("GET", "/v1/kv/x", { headers = "X-A: b" }) end)
      raises("option 'headers' must map strings to strings", function() c:request("GET", "/v1/kv/x", { headers = { ["X-A"] = 1 } }) end)
      raises("option 'headers' has a bad header name", function() c:request("GET", "/v1/kv/x", { headers = { ["X-A: b"] = "c" } }) end)
      raises("bad argument #3 to 'request' %(cannot encode a function as JSON%)", function() c:request("PUT", "/v1/kv/x", { body = print }) end)
    end)

    -- Regression: a bad opts.headers once blamed the path (#2) instead of the options (#3).
    it("a bad opts.headers blames the options (#3), not the path", function()
      raises("bad argument #3 to 'request' %(option 'headers' must be a table%)", function() c:request("GET", "/v1/kv/x", { headers = "X-A: b" }) end)
      raises("bad argument #3 to 'request' %(option 'headers' must map strings to strings%)", function() c:request("GET", "/v1/kv/x", { headers = { "X-A: b" } }) end)
      raises("bad argument #3 to 'request' %(option 'headers' has a bad header value %(control bytes%)%)", function() c:request("GET", "/v1/kv/x", { headers = { ["X-A"] = "b\r\nX-B: c" } }) end)
    end)

    it("the client stays usable after all of these", function()
      assert.is_string((c.status:leader()))
      assert.is_nil(select(2, c.kv:get(PREFIX .. "after")))
    end)
  end)
end)
