-- spec/client_spec.lua: the consul.Client. consul.new() with every option and environment
-- variable, one kept-alive connection, meta, blocking queries, TLS, unix sockets, ACL tokens,
-- c:request, consul.routes() and the client's lifetime (close, <close>, __gc).
--
-- Everything runs against real Consul agents: the shared one of scripts/with-agent.sh, plus
-- up to four started once for this file when first needed (TLS, TLS verifying client
-- certificates, ACL, unix socket) and stopped in teardown. Environment variables are tested
-- in child processes running the same interpreter as this run.
local consul = require("consul")
local agent = require("spec.helpers.agent")
local util = require("spec.helpers.util")

local PREFIX = "spec/client/"
-- valgrind and ASan runs: fewer repetitions
local SLOW = false
for _, v in ipairs({ "CONSUL_TEST_SLOW", "CONSUL_TEST_VALGRIND", "CONSUL_TEST_ASAN" }) do
  SLOW = SLOW or (os.getenv(v) or "") ~= ""
end

-- The interpreter running this file, for child processes: luajit, lua5.4, or an instrumented
-- front end such as build/asan/lua (an ASan-built module loads only into that one). Under
-- valgrind /proc/self/exe is valgrind's tool, so children run plain lua5.4.
local LUA = "lua5.4"
if jit then
  LUA = "luajit"
else
  local p = io.popen("readlink -f /proc/$PPID/exe 2>/dev/null")
  local exe = p and (p:read("*a") or ""):gsub("%s+$", "") or ""
  if p then p:close() end
  if exe ~= "" and not exe:find("valgrind", 1, true) and not exe:find("memcheck", 1, true) then
    LUA = exe
  end
end

-- Every variable the module reads; children start with none of them set.
local CONSUL_ENV = {
  "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE",
  "CONSUL_HTTP_SSL_VERIFY", "CONSUL_CACERT", "CONSUL_CAPATH", "CONSUL_CLIENT_CERT",
  "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME",
}

---------------------------------------------------------------------------------------------
-- helpers

local function now()
  local p = assert(io.popen("date +%s%N"))
  local ns = p:read("*a")
  p:close()
  return tonumber(ns) / 1e9
end

local write_file = util.write_file

local raises = util.raises

-- Does the string s occur anywhere in v (strings, keys and values of nested tables)?
local function contains(v, s, seen)
  if type(v) == "string" then
    return v:find(s, 1, true) ~= nil
  elseif type(v) == "table" then
    seen = seen or {}
    if seen[v] then return false end
    seen[v] = true
    for k, x in pairs(v) do
      if contains(k, s, seen) or contains(x, s, seen) then return true end
    end
  end
  return false
end

-- A Lua table constructor for a flat table of strings, numbers and booleans.
local function lit(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format("[%q] = %s", k,
      type(v) == "string" and string.format("%q", v) or tostring(v))
  end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

local function split(s)
  local t = {}
  for field in (s .. "\t"):gmatch("([^\t]*)\t") do t[#t + 1] = field end
  return t
end

-- The child: consul.new(opts), then (unless path is "-") one c:request("GET", path).
local CHILD = [[
local consul = require("consul")
local opts = assert((loadstring or load)("return " .. arg[1]))()
local ok, c = pcall(consul.new, opts)
if not ok then io.write("raise\t", tostring(c), "\n") return end
io.write("client\t", tostring(c))
if arg[2] ~= "-" then
  local r, err, meta = c:request("GET", arg[2])
  io.write("\t", type(r), "\t", tostring(err), "\t", tostring(meta.code), "\t",
           tostring(meta.status))
end
c:close()
io.write("\n")
]]

local child_file

-- Runs CHILD with exactly the CONSUL_* variables of env. Returns a table:
-- { kind = "client", str = tostring(c), rtype =, err =, code =, status = } or
-- { kind = "raise", err = message }.
local function child(env, opts, path)
  if not child_file then
    child_file = agent.tmpdir() .. "/child.lua"
    write_file(child_file, CHILD)
  end
  local cmd = { "env" }
  for _, k in ipairs(CONSUL_ENV) do cmd[#cmd + 1] = "-u " .. k end
  for k, v in pairs(env) do cmd[#cmd + 1] = agent.quote(k .. "=" .. v) end
  cmd[#cmd + 1] = agent.quote(LUA) .. " " .. agent.quote(child_file) .. " " .. agent.quote(lit(opts or {})) ..
    " " .. agent.quote(path or "/v1/status/leader") .. " 2>&1"
  local out = agent.sh(table.concat(cmd, " "))
  local f = split((out:gsub("\n$", "")))
  if f[1] == "raise" then return { kind = "raise", err = f[2], out = out } end
  assert.equals("client", f[1], "child failed: " .. out)
  return { kind = "client", str = f[2], rtype = f[3], err = f[4], code = f[5],
           status = tonumber(f[6]), out = out }
end

-- A child's request succeeded (2xx and a result).
local function child_ok(r)
  assert.equals("client", r.kind, r.out)
  assert.equals("nil", r.err, r.out)
  assert.equals(200, r.status, r.out)
  assert.are_not.equals("nil", r.rtype, r.out)
end

---------------------------------------------------------------------------------------------

describe("consul client", function()
  local shared, c
  local agents = {}
  local AGENT_OPTS = {
    tls = { tls = true },
    mtls = { tls_verify_incoming = true },
    acl = { acl = true },
    unix = { unix = true },
  }

  -- The extra agents, each started once for the file when first needed.
  local function extra(kind)
    if not agents[kind] then agents[kind] = agent.start(AGENT_OPTS[kind]) end
    return agents[kind]
  end

  setup(function()
    shared = agent.shared()
    c = consul.new({ addr = shared.addr })
  end)

  teardown(function()
    agent.http(shared, "DELETE", "/v1/kv/" .. PREFIX .. "?recurse")
    if c then c:close() end
    for kind, a in pairs(agents) do
      a:stop()
      agents[kind] = nil
    end
  end)

  -------------------------------------------------------------------------------------------
  describe("consul.new()", function()
    it("has a version and does no network I/O: nothing needs to listen", function()
      assert.equals("0.1.0", consul._VERSION)
      local port = agent.free_port()
      local x = consul.new({ addr = "127.0.0.1:" .. port })
      assert.equals("consul.Client (http://127.0.0.1:" .. port .. ")", tostring(x))
      assert.same({ requests = 0, connects = 0 }, x:stats())
      x:close()
    end)

    it("defaults to http://127.0.0.1:8500 with no options and no environment", function()
      local r = child({}, {}, "-")
      assert.equals("client", r.kind, r.out)
      assert.equals("consul.Client (http://127.0.0.1:8500)", r.str)
      local x = consul.new()  -- nil opts is the same as {}
      assert.is_string(tostring(x))
      x:close()
    end)

    it("takes addr as host:port, http://host:port[/], or host/port/scheme", function()
      local host, port = shared.addr:match("^(.*):(%d+)$")
      for _, opts in ipairs({
        { addr = shared.addr },
        { addr = "http://" .. shared.addr },
        { addr = "http://" .. shared.addr .. "/" },
        { host = host, port = tonumber(port) },
        { host = host, port = port },  -- a numeric string
        { host = host, port = tonumber(port), scheme = "http" },
      }) do
        local x = consul.new(opts)
        assert.equals("consul.Client (http://" .. shared.addr .. ")", tostring(x))
        local leader, err, meta = x.status:leader()
        assert.is_nil(err)
        assert.is_string(leader)
        assert.equals(200, meta.status)
        x:close()
      end
    end)

    it("does not change the caller's options table", function()
      local host, port = shared.addr:match("^(.*):(%d+)$")
      local opts = { host = host, port = tonumber(port) }
      consul.new(opts):close()
      assert.same({ host = host, port = tonumber(port) }, opts)
    end)

    it("dc / datacenter: the default datacenter of every call; a per-call dc wins", function()
      local good = consul.new({ addr = shared.addr, dc = "dc1" })
      assert.is_string((good.status:leader()))
      good:close()
      for _, opts in ipairs({ { addr = shared.addr, dc = "nowhere" },
                              { addr = shared.addr, datacenter = "nowhere" } }) do
        local x = consul.new(opts)
        local r, err, meta = x.kv:get(PREFIX .. "dc")
        assert.is_nil(r)
        assert.matches("^consul: GET /v1/kv/spec/client/dc: 500 No path to datacenter", err)
        assert.equals("http", meta.code)
        assert.equals(500, meta.status)
        r, err, meta = x.kv:get(PREFIX .. "dc", { dc = "dc1" })
        assert.is_nil(err)
        assert.equals(404, meta.status)
        x:close()
      end
    end)

    it("consistency: sends ?consistent / ?stale on reads (Consul refuses both at once)", function()
      local key = "/v1/kv/" .. PREFIX .. "consistency"
      local function refused(x, query)
        local r, err, meta = x:request("GET", key, { query = query })
        return r == nil and meta.status == 400 and
          (err or ""):find("Cannot specify ?stale with ?consistent", 1, true) ~= nil
      end
      local def = consul.new({ addr = shared.addr })
      local dflt = consul.new({ addr = shared.addr, consistency = "default" })
      local cons = consul.new({ addr = shared.addr, consistency = "consistent" })
      local stale = consul.new({ addr = shared.addr, consistency = "stale" })
      for _, x in ipairs({ def, dflt }) do
        assert.is_false(refused(x, { stale = true }))
        assert.is_false(refused(x, { consistent = true }))
      end
      assert.is_true(refused(cons, { stale = true }))
      assert.is_true(refused(stale, { consistent = true }))
      -- a per-call option replaces the client's default
      for _, x in ipairs({ def, dflt, cons, stale }) do
        local _, err = x.kv:get(PREFIX .. "consistency", { stale = true })
        assert.is_nil(err)
        _, err = x.kv:get(PREFIX .. "consistency", { consistent = true })
        assert.is_nil(err)
        _, err = x.kv:get(PREFIX .. "consistency")
        assert.is_nil(err)
        x:close()
      end
    end)

    it("timeout: accepts fractional seconds", function()
      local x = consul.new({ addr = shared.addr, timeout = 0.5 })
      assert.is_string((x.status:leader()))
      x:close()
    end)

    it("raises on bad options, at the caller's line, naming the option", function()
      raises("unknown option 'bogus'", function() consul.new({ bogus = 1 }) end)
      raises("option names are strings", function() consul.new({ "x" }) end)
      raises("table expected, got string", function() consul.new("127.0.0.1:8500") end)
      raises("bad option 'addr' to 'new' %(string expected, got number%)", function() consul.new({ addr = 8500 }) end)
      raises("give either addr or host/port, not both", function() consul.new({ addr = "a:1", host = "b" }) end)
      raises("give either addr or host/port, not both", function() consul.new({ addr = "a:1", port = 1 }) end)
      raises("port needs host", function() consul.new({ port = 8500 }) end)
      raises("bad option 'port' to 'new' %(1%.%.65535 expected%)", function() consul.new({ host = "h", port = 0 }) end)
      raises("bad option 'port' to 'new' %(1%.%.65535 expected%)", function() consul.new({ host = "h", port = 70000 }) end)
      raises("bad option 'addr' to 'new' %(bad port in 'h:99999'%)", function() consul.new({ addr = "h:99999" }) end)
      raises("bad option 'addr' to 'new' %(bad port in 'h:x'%)", function() consul.new({ addr = "h:x" }) end)
      raises("bad option 'addr' to 'new' %(no host in ':8500'%)", function() consul.new({ addr = ":8500" }) end)
      raises("bad option 'addr' to 'new' %(empty unix socket path%)", function() consul.new({ addr = "unix://" }) end)
      raises("bad option 'addr' to 'new' %('h/v1' is not host:port%)", function() consul.new({ addr = "http://h/v1" }) end)
      raises("bad option 'scheme' to 'new'", function() consul.new({ scheme = "ftp" }) end)
      raises("bad option 'timeout' to 'new' %(0 < seconds <= 86400 expected%)", function() consul.new({ timeout = 0 }) end)
      raises("bad option 'timeout' to 'new' %(0 < seconds <= 86400 expected%)", function() consul.new({ timeout = -1 }) end)
      raises("bad option 'timeout' to 'new' %(0 < seconds <= 86400 expected%)", function() consul.new({ timeout = 86401 }) end)
      raises("bad option 'timeout' to 'new' %(seconds expected%)", function() consul.new({ timeout = "5" }) end)
      raises("bad option 'verify' to 'new' %(boolean expected%)", function() consul.new({ verify = "false" }) end)
      raises("bad option 'consistency' to 'new'", function() consul.new({ consistency = "strong" }) end)
      raises("bad option 'dc' to 'new' %(string expected, got number%)", function() consul.new({ dc = 1 }) end)
      raises("dc and datacenter are the same option", function() consul.new({ dc = "a", datacenter = "b" }) end)
      raises("bad option 'token' to 'new' %(string expected, got number%)", function() consul.new({ token = 1 }) end)
      raises("bad token from option 'token': control characters are not allowed", function() consul.new({ token = "a\nb" }) end)
      raises("cannot read token file '/nonexistent/token'", function() consul.new({ token_file = "/nonexistent/token" }) end)
      raises("bad option 'token_file' to 'new' %(string expected, got boolean%)", function() consul.new({ token_file = true }) end)
      raises("bad option 'ca_file' to 'new' %(string expected, got boolean%)", function() consul.new({ ca_file = true }) end)
      raises("bad option 'ca_path' to 'new' %(string expected, got number%)", function() consul.new({ ca_path = 1 }) end)
      raises("bad option 'cert_file' to 'new' %(string expected, got table%)", function() consul.new({ cert_file = {} }) end)
      raises("bad option 'key_file' to 'new' %(string expected, got table%)", function() consul.new({ key_file = {} }) end)
      raises("bad option 'tls_server_name' to 'new' %(a host name expected%)", function() consul.new({ tls_server_name = "a:b" }) end)
      raises("bad option 'scheme' to 'new' %(string expected, got boolean%)", function() consul.new({ scheme = true }) end)
    end)

    -- Regression (was a gap, fixed; csrc/client.c:285): `host` is checked with luaL_checkstring(L, -1), so a
    -- bad host says "bad argument #-1 to 'new' (string expected, got table)" and does not
    -- name the option. Proposed fix: check it like the others, e.g.
    --   if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "bad option 'host' to 'new'
    --       (string expected, got %s)", luaL_typename(L, -1));
    it("a bad host raises naming the option 'host'", function()
      raises("bad option 'host' to 'new' %(string expected, got table%)", function() consul.new({ host = {} }) end)
    end)

    describe("environment variables (in a child process)", function()
      it("CONSUL_HTTP_ADDR, with or without http://; an explicit addr or host/port wins", function()
        local r = child({ CONSUL_HTTP_ADDR = shared.addr })
        child_ok(r)
        assert.equals("consul.Client (http://" .. shared.addr .. ")", r.str)
        child_ok(child({ CONSUL_HTTP_ADDR = "http://" .. shared.addr }))
        local dead = "127.0.0.1:" .. agent.free_port()
        r = child({ CONSUL_HTTP_ADDR = dead })
        assert.equals("connect", r.code, r.out)
        child_ok(child({ CONSUL_HTTP_ADDR = dead }, { addr = shared.addr }))
        local host, port = shared.addr:match("^(.*):(%d+)$")
        child_ok(child({ CONSUL_HTTP_ADDR = dead }, { host = host, port = tonumber(port) }))
      end)

      -- Regression (was a gap, fixed; csrc/client.c:309-315, configure): the scheme prefix of CONSUL_HTTP_ADDR
      -- overrides an explicit scheme option: { scheme = "http" } with
      -- CONSUL_HTTP_ADDR=https://h:p gives an https client. An explicit option should win
      -- over the environment. Proposed fix: remember whether addr came from the option or
      -- the environment, and when it came from CONSUL_HTTP_ADDR and the scheme option is
      -- given, strip the env's "http(s)://" prefix without touching `https`.
      it("an explicit scheme wins over CONSUL_HTTP_ADDR's https://", function()
        local r = child({ CONSUL_HTTP_ADDR = "https://127.0.0.1:1" }, { scheme = "http" }, "-")
        assert.equals("consul.Client (http://127.0.0.1:1)", r.str, r.out)
      end)

      it("an empty variable counts as unset", function()
        local r = child({ CONSUL_HTTP_ADDR = "", CONSUL_HTTP_TOKEN = "" }, {}, "-")
        assert.equals("consul.Client (http://127.0.0.1:8500)", r.str, r.out)
      end)

      it("bad values from the environment raise in consul.new", function()
        local r = child({ CONSUL_HTTP_ADDR = "h:99999" }, {}, "-")
        assert.equals("raise", r.kind, r.out)
        assert.matches("bad port in 'h:99999'", r.err)
        r = child({ CONSUL_HTTP_TOKEN_FILE = "/nonexistent/token" }, {}, "-")
        assert.equals("raise", r.kind, r.out)
        assert.matches("cannot read token file '/nonexistent/token'", r.err)
      end)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("one connection", function()
    it("1,000 sequential calls (GET, PUT, DELETE) open exactly one TCP connection", function()
      local n = SLOW and 200 or 1000
      local x = consul.new({ addr = shared.addr })
      local k = PREFIX .. "conn"
      for i = 1, n do
        local ok, err
        if i % 50 == 0 then
          ok, err = x.kv:delete(k)
        elseif i % 10 == 0 then
          ok, err = x.kv:put(k, tostring(i))
        else
          ok, err = x.status:leader()
        end
        assert(ok, err)
      end
      assert.same({ requests = n, connects = 1 }, x:stats())
      x:close()
    end)

    it("stats() counts failed requests too; a refused connect opens no connection", function()
      local x = consul.new({ addr = "127.0.0.1:" .. agent.free_port() })
      assert.same({ requests = 0, connects = 0 }, x:stats())
      x.status:leader()
      x.status:leader()
      local s = x:stats()
      assert.equals(2, s.requests)
      assert.equals(0, s.connects)
      x:close()
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("meta", function()
    it("has status, index (growing after a write), known_leader and last_contact", function()
      local k = PREFIX .. "meta"
      assert.is_true((c.kv:put(k, "1")))
      local v, err, meta = c.kv:get(k)
      assert.is_nil(err)
      assert.equals("1", v)
      assert.equals(200, meta.status)
      assert.is_number(meta.index)
      if math.type then assert.equals("integer", math.type(meta.index)) end
      assert.is_true(meta.index > 0)
      assert.is_true(meta.known_leader)
      assert.is_number(meta.last_contact)
      assert.is_true(meta.last_contact >= 0)
      assert.is_nil(meta.code)
      assert.is_true((c.kv:put(k, "2")))
      local v2, err2, meta2 = c.kv:get(k)
      assert.is_nil(err2)
      assert.equals("2", v2)
      assert.is_true(meta2.index > meta.index)
      -- a write's own answer carries its status, a read of nothing its 404
      local ok, _, wmeta = c.kv:put(k, "3")
      assert.is_true(ok)
      assert.equals(200, wmeta.status)
      local none, nerr, nmeta = c.kv:get(k .. "/absent")
      assert.is_nil(none)
      assert.is_nil(nerr)
      assert.equals(404, nmeta.status)
      assert.is_number(nmeta.index)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("blocking queries", function()
    it("return early, with a higher index and the new value, when the key changes", function()
      local k = PREFIX .. "blocking/change"
      assert.is_true((c.kv:put(k, "v1")))
      local _, _, meta = c.kv:get(k)
      -- another process changes the key about one second from now
      os.execute("(sleep 1; curl -sS -o /dev/null -X PUT --data-binary v2 " ..
        agent.quote("http://" .. shared.addr .. "/v1/kv/" .. k) .. ") </dev/null >/dev/null 2>&1 &")
      local t0 = now()
      local v, err, meta2 = c.kv:get(k, { index = meta.index, wait = "10s" })
      local dt = now() - t0
      assert.is_nil(err)
      assert.equals("v2", v)
      assert.is_true(meta2.index > meta.index)
      assert.is_true(dt > 0.5, "did not block: " .. dt .. " s")
      assert.is_true(dt < 5, "did not return early: " .. dt .. " s")
    end)

    it("wait = \"1s\" with nothing changing returns after about 1 s with the same index", function()
      local k = PREFIX .. "blocking/same"
      assert.is_true((c.kv:put(k, "v")))
      local _, _, meta = c.kv:get(k)
      local t0 = now()
      local v, err, meta2 = c.kv:get(k, { index = meta.index, wait = "1s" })
      local dt = now() - t0
      assert.is_nil(err)
      assert.equals("v", v)
      assert.equals(meta.index, meta2.index)
      assert.is_true(dt >= 0.9 and dt < 2.5, "took " .. dt .. " s")
      -- wait in seconds (a number) is the same
      t0 = now()
      v, err, meta2 = c.kv:get(k, { index = meta.index, wait = 0.5 })
      dt = now() - t0
      assert.is_nil(err)
      assert.equals(meta.index, meta2.index)
      assert.is_true(dt >= 0.4 and dt < 2, "took " .. dt .. " s")
    end)

    -- Regression (was a gap, fixed; csrc/client.c:606, consul_opts): with `index` and no `wait`, Consul blocks
    -- for its default wait of 5 minutes, but the module extends the HTTP timeout only by an
    -- explicit wait, so `c.kv:get(k, { index = i })` fails with "timeout" after `timeout`
    -- seconds (10 by default) whenever nothing changes. Proposed fix: in consul_opts, when
    -- `index` is given without `wait`, set call->wait_ms = 300000 (Consul's default wait),
    -- so the timeout becomes timeout + 5m + 5m/16.
    it("index without wait blocks past the client's timeout", function()
      local k = PREFIX .. "blocking/nowait"
      local x = consul.new({ addr = shared.addr, timeout = 1 })
      assert.is_true((x.kv:put(k, "v1")))
      local _, _, meta = x.kv:get(k)
      os.execute("(sleep 2; curl -sS -o /dev/null -X PUT --data-binary v2 " ..
        agent.quote("http://" .. shared.addr .. "/v1/kv/" .. k) .. ") </dev/null >/dev/null 2>&1 &")
      local v, err = x.kv:get(k, { index = meta.index })
      x:close()
      if err then os.execute("sleep 1.5") end  -- let the writer finish before the next spec
      assert.is_nil(err)
      assert.equals("v2", v)
    end)

    it("extend the client's timeout by wait: timeout = 1 with wait = \"3s\" succeeds", function()
      local k = PREFIX .. "blocking/timeout"
      local x = consul.new({ addr = shared.addr, timeout = 1 })
      assert.is_true((x.kv:put(k, "v")))
      local _, _, meta = x.kv:get(k)
      local t0 = now()
      local v, err, meta2 = x.kv:get(k, { index = meta.index, wait = "3s" })
      local dt = now() - t0
      assert.is_nil(err)
      assert.equals("v", v)
      assert.equals(meta.index, meta2.index)
      assert.is_true(dt >= 2.5, "took " .. dt .. " s")
      x:close()
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("TLS", function()
    local a
    setup(function() a = extra("tls") end)

    local function leader(opts)
      local x = consul.new(opts)
      local r, err, meta = x.status:leader()
      local s = tostring(x)
      x:close()
      return r, err, meta, s
    end

    it("https with ca_file succeeds (addr https://, or scheme = \"https\")", function()
      local r, err, meta, s = leader({ addr = "https://" .. a.https_addr, ca_file = a.ca_file })
      assert.is_nil(err)
      assert.is_string(r)
      assert.equals(200, meta.status)
      assert.equals("consul.Client (https://" .. a.https_addr .. ")", s)
      r, err = leader({ host = "127.0.0.1", port = a.https_port, scheme = "https", ca_file = a.ca_file })
      assert.is_nil(err)
      assert.is_string(r)
    end)

    it("https without ca_file fails with meta.code \"tls\"", function()
      local r, err, meta = leader({ addr = "https://" .. a.https_addr })
      assert.is_nil(r)
      assert.matches("^consul: GET /v1/status/leader: TLS with " .. a.https_addr:gsub("%.", "%%.") .. ": ", err)
      assert.equals("tls", meta.code)
      assert.is_nil(meta.status)
    end)

    it("verify = false succeeds without a CA", function()
      local r, err = leader({ addr = "https://" .. a.https_addr, verify = false })
      assert.is_nil(err)
      assert.is_string(r)
    end)

    it("ca_path (a hashed directory) succeeds", function()
      local dir = agent.tmpdir()
      local _, rc = agent.sh("cp " .. agent.quote(a.ca_file) .. " " .. agent.quote(dir .. "/ca.pem") ..
        " && openssl rehash " .. agent.quote(dir) .. " >/dev/null 2>&1")
      assert.equals(0, rc)
      local r, err = leader({ addr = "https://" .. a.https_addr, ca_path = dir })
      assert.is_nil(err)
      assert.is_string(r)
    end)

    it("tls_server_name = \"server.dc1.consul\" verifies that name while connecting to 127.0.0.1", function()
      local r, err, _, s = leader({ addr = "https://" .. a.https_addr, ca_file = a.ca_file,
                                    tls_server_name = "server.dc1.consul" })
      assert.is_nil(err)
      assert.is_string(r)
      assert.equals("consul.Client (https://server.dc1.consul:" .. a.https_port .. ")", s)
    end)

    it("a wrong tls_server_name fails with \"tls\"", function()
      local r, err, meta = leader({ addr = "https://" .. a.https_addr, ca_file = a.ca_file,
                                    tls_server_name = "wrong.example" })
      assert.is_nil(r)
      assert.matches("^consul: GET /v1/status/leader: TLS with ", err)
      assert.equals("tls", meta.code)
    end)

    it("a missing ca_file fails with \"tls\"", function()
      local r, err, meta = leader({ addr = "https://" .. a.https_addr, ca_file = "/nonexistent/ca.pem" })
      assert.is_nil(r)
      assert.matches("/nonexistent/ca%.pem", err)
      assert.equals("tls", meta.code)
    end)

    it("plain http to the https port is the agent's 400", function()
      local r, err, meta = leader({ addr = "http://" .. a.https_addr })
      assert.is_nil(r)
      assert.matches("^consul: GET /v1/status/leader: 400 ", err)
      assert.equals("http", meta.code)
      assert.equals(400, meta.status)
    end)

    it("env: CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CAPATH, CONSUL_HTTP_SSL_VERIFY, CONSUL_TLS_SERVER_NAME", function()
      local https = "https://" .. a.https_addr
      -- CONSUL_HTTP_SSL=true turns a bare host:port into https
      local r = child({ CONSUL_HTTP_ADDR = a.https_addr, CONSUL_HTTP_SSL = "true", CONSUL_CACERT = a.ca_file })
      child_ok(r)
      assert.equals("consul.Client (https://" .. a.https_addr .. ")", r.str)
      -- ... unless scheme says otherwise
      r = child({ CONSUL_HTTP_SSL = "true" }, { addr = a.addr, scheme = "http" })
      child_ok(r)
      assert.equals("consul.Client (http://" .. a.addr .. ")", r.str)
      -- CONSUL_CACERT; an explicit ca_file wins over a bad one
      child_ok(child({ CONSUL_HTTP_ADDR = https, CONSUL_CACERT = a.ca_file }))
      child_ok(child({ CONSUL_HTTP_ADDR = https, CONSUL_CACERT = "/nonexistent/ca.pem" }, { ca_file = a.ca_file }))
      r = child({ CONSUL_HTTP_ADDR = https, CONSUL_CACERT = "/nonexistent/ca.pem" })
      assert.equals("tls", r.code, r.out)
      -- CONSUL_CAPATH
      local dir = agent.tmpdir()
      agent.sh("cp " .. agent.quote(a.ca_file) .. " " .. agent.quote(dir .. "/ca.pem") ..
        " && openssl rehash " .. agent.quote(dir) .. " >/dev/null 2>&1")
      child_ok(child({ CONSUL_HTTP_ADDR = https, CONSUL_CAPATH = dir }))
      -- CONSUL_HTTP_SSL_VERIFY=false; verify = true wins over it
      child_ok(child({ CONSUL_HTTP_ADDR = https, CONSUL_HTTP_SSL_VERIFY = "false" }))
      r = child({ CONSUL_HTTP_ADDR = https, CONSUL_HTTP_SSL_VERIFY = "false" }, { verify = true })
      assert.equals("tls", r.code, r.out)
      r = child({ CONSUL_HTTP_ADDR = https })
      assert.equals("tls", r.code, r.out)
      -- CONSUL_TLS_SERVER_NAME; an explicit tls_server_name wins
      r = child({ CONSUL_HTTP_ADDR = https, CONSUL_CACERT = a.ca_file,
                  CONSUL_TLS_SERVER_NAME = "server.dc1.consul" })
      child_ok(r)
      assert.equals("consul.Client (https://server.dc1.consul:" .. a.https_port .. ")", r.str)
      r = child({ CONSUL_HTTP_ADDR = https, CONSUL_CACERT = a.ca_file,
                  CONSUL_TLS_SERVER_NAME = "wrong.example" })
      assert.equals("tls", r.code, r.out)
      child_ok(child({ CONSUL_HTTP_ADDR = https, CONSUL_CACERT = a.ca_file,
                       CONSUL_TLS_SERVER_NAME = "wrong.example" },
                     { tls_server_name = "server.dc1.consul" }))
    end)

    describe("with verify_incoming (client certificates)", function()
      local m
      setup(function() m = extra("mtls") end)

      it("without a client certificate fails: an error, not a crash, and the client goes on", function()
        local x = consul.new({ addr = "https://" .. m.https_addr, ca_file = m.ca_file })
        for _ = 1, 3 do
          local r, err, meta = x.status:leader()
          assert.is_nil(r)
          assert.is_string(err)
          assert.matches("^consul: GET /v1/status/leader: ", err)
          assert.is_nil(err:find("\n"))
          -- today libcurl reports the peer's refusal as a send or receive error: "closed"
          -- (see the regression spec below); either is a clean failure
          assert.is_truthy(meta.code == "tls" or meta.code == "closed", meta.code)
          assert.is_nil(meta.status)
        end
        x:close()
      end)

      -- Regression (was a gap, fixed; csrc/http.c:318-321, map_error): when an https agent refuses the
      -- handshake for want of a client certificate, libcurl fails with CURLE_SEND_ERROR
      -- ("getpeername() failed with errno 107") or CURLE_RECV_ERROR ("sslv3 alert bad
      -- certificate"), which map_error reports as "closed" with that text. It is a TLS
      -- failure: meta.code should be "tls" and the message should say so. Proposed fix: in
      -- map_error, for CURLE_SEND_ERROR / CURLE_RECV_ERROR / CURLE_GOT_NOTHING on an
      -- https:// base_url when no status came (rs->status == 0) and this request opened
      -- its connection (CURLINFO_NUM_CONNECTS > 0), report CONSUL_ETLS, e.g.
      -- "TLS with %s: handshake refused by the server (client certificate required?): %s".
      it("a refused client certificate is meta.code \"tls\"", function()
        local x = consul.new({ addr = "https://" .. m.https_addr, ca_file = m.ca_file })
        local r, err, meta = x.status:leader()
        x:close()
        assert.is_nil(r)
        assert.equals("tls", meta.code, err)
        assert.matches("TLS", err)
      end)

      it("with cert_file and key_file succeeds", function()
        local x = consul.new({ addr = "https://" .. m.https_addr, ca_file = m.ca_file,
                               cert_file = m.client_cert, key_file = m.client_key })
        local r, err, meta = x.status:leader()
        assert.is_nil(err)
        assert.is_string(r)
        assert.equals(200, meta.status)
        x:close()
      end)

      it("a missing key_file fails with \"tls\"", function()
        local x = consul.new({ addr = "https://" .. m.https_addr, ca_file = m.ca_file,
                               cert_file = m.client_cert, key_file = "/nonexistent/key.pem" })
        local r, err, meta = x.status:leader()
        assert.is_nil(r)
        assert.matches("/nonexistent/key%.pem", err)
        assert.equals("tls", meta.code)
        x:close()
      end)

      it("env: CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY; explicit options win", function()
        local env = { CONSUL_HTTP_ADDR = "https://" .. m.https_addr, CONSUL_CACERT = m.ca_file,
                      CONSUL_CLIENT_CERT = m.client_cert, CONSUL_CLIENT_KEY = m.client_key }
        child_ok(child(env))
        env.CONSUL_CLIENT_KEY = "/nonexistent/key.pem"
        local r = child(env)
        assert.equals("tls", r.code, r.out)
        child_ok(child(env, { key_file = m.client_key }))
        env.CONSUL_CLIENT_KEY = m.client_key
        env.CONSUL_CLIENT_CERT = "/nonexistent/cert.pem"
        child_ok(child(env, { cert_file = m.client_cert }))
      end)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("unix socket", function()
    local u
    setup(function() u = extra("unix") end)

    it("addr = \"unix://\" .. path: kv put, get, delete over one connection", function()
      local x = consul.new({ addr = "unix://" .. u.unix_path })
      local k = PREFIX .. "unix"
      assert.is_true((x.kv:put(k, "over a socket")))
      local v, err, meta = x.kv:get(k)
      assert.is_nil(err)
      assert.equals("over a socket", v)
      assert.equals(200, meta.status)
      assert.is_true(meta.known_leader)
      assert.is_true((x.kv:delete(k)))
      assert.is_nil((x.kv:get(k)))
      assert.same({ requests = 4, connects = 1 }, x:stats())
      x:close()
    end)

    it("env: CONSUL_HTTP_ADDR=unix://...", function()
      child_ok(child({ CONSUL_HTTP_ADDR = "unix://" .. u.unix_path }))
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("ACL tokens", function()
    local a, token, k, dir
    local BOGUS = "00000000-bogus-token-0000-000000000000"
    setup(function()
      a = extra("acl")
      token = a.token
      k = PREFIX .. "acl"
      dir = agent.tmpdir()
      write_file(dir .. "/good", "  " .. token .. "\n")  -- surrounding blanks are trimmed
      write_file(dir .. "/bad", BOGUS .. "\n")
      assert.equals(200, (agent.http(a, "PUT", "/v1/kv/" .. k, "secret value", token)))
    end)

    it("without a token: nil, \"consul: ... 403 ...\", meta.code \"http\", meta.status 403", function()
      local x = consul.new({ addr = a.addr })
      local r, err, meta = x.kv:put(k, "x")
      assert.is_nil(r)
      assert.equals("consul: PUT /v1/kv/" .. k .. ": 403 Permission denied", err)
      assert.equals("http", meta.code)
      assert.equals(403, meta.status)
      -- a refused read is a failure too, not "absent"
      r, err, meta = x.kv:get(k)
      assert.is_nil(r)
      assert.matches("^consul: GET /v1/kv/spec/client/acl: 403 ", err)
      assert.equals(403, meta.status)
      x:close()
    end)

    it("token option, token_file option, per-call token and c:request headers succeed", function()
      local x = consul.new({ addr = a.addr, token = token })
      assert.equals("secret value", (x.kv:get(k)))
      x:close()
      x = consul.new({ addr = a.addr, token_file = dir .. "/good" })
      assert.equals("secret value", (x.kv:get(k)))
      x:close()
      x = consul.new({ addr = a.addr })
      assert.equals("secret value", (x.kv:get(k, { token = token })))
      local r, err = x:request("GET", "/v1/kv/" .. k, { headers = { ["X-Consul-Token"] = token } })
      assert.is_nil(err)
      assert.equals("table", type(r))
      x:close()
    end)

    it("precedence: per-call token > token > token_file", function()
      local x = consul.new({ addr = a.addr, token = BOGUS })
      local r, err, meta = x.kv:get(k)
      assert.is_nil(r)
      assert.matches("403 ACL not found", err)
      assert.equals(403, meta.status)
      assert.equals("secret value", (x.kv:get(k, { token = token })))
      x:close()
      x = consul.new({ addr = a.addr, token = token })
      r, err = x.kv:get(k, { token = BOGUS })
      assert.is_nil(r)
      assert.matches("403 ACL not found", err)
      x:close()
      x = consul.new({ addr = a.addr, token = token, token_file = dir .. "/bad" })
      assert.equals("secret value", (x.kv:get(k)))
      x:close()
    end)

    it("env: CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, and their precedence", function()
      local path = "/v1/kv/" .. k
      local r = child({ CONSUL_HTTP_ADDR = a.addr }, {}, path)
      assert.equals(403, r.status, r.out)
      child_ok(child({ CONSUL_HTTP_ADDR = a.addr, CONSUL_HTTP_TOKEN = token }, {}, path))
      child_ok(child({ CONSUL_HTTP_ADDR = a.addr, CONSUL_HTTP_TOKEN_FILE = dir .. "/good" }, {}, path))
      -- token option > CONSUL_HTTP_TOKEN
      child_ok(child({ CONSUL_HTTP_ADDR = a.addr, CONSUL_HTTP_TOKEN = BOGUS }, { token = token }, path))
      -- token_file option > CONSUL_HTTP_TOKEN
      child_ok(child({ CONSUL_HTTP_ADDR = a.addr, CONSUL_HTTP_TOKEN = BOGUS },
                     { token_file = dir .. "/good" }, path))
      -- CONSUL_HTTP_TOKEN > CONSUL_HTTP_TOKEN_FILE
      child_ok(child({ CONSUL_HTTP_ADDR = a.addr, CONSUL_HTTP_TOKEN = token,
                       CONSUL_HTTP_TOKEN_FILE = dir .. "/bad" }, {}, path))
      r = child({ CONSUL_HTTP_ADDR = a.addr, CONSUL_HTTP_TOKEN = BOGUS,
                  CONSUL_HTTP_TOKEN_FILE = dir .. "/good" }, {}, path)
      assert.equals(403, r.status, r.out)
      -- and the token never shows in the child's tostring(c) nor its error
      assert.is_nil(r.out:find(BOGUS, 1, true))
    end)

    it("the token never appears in err, tostring(c), results or meta", function()
      local seen = {}
      local function keep(...)
        for i = 1, select("#", ...) do seen[#seen + 1] = (select(i, ...)) end
      end
      for _, secret in ipairs({ token, BOGUS }) do
        local x = consul.new({ addr = a.addr, token = secret })
        keep(tostring(x))
        keep(x.kv:get(k))
        keep(x.kv:put(k .. "/t", "v"))
        keep(x.kv:list(k))
        keep(x.kv:record(k))
        keep(x:request("GET", "/v1/kv/" .. k))
        keep(x.status:leader())
        keep(x:stats())
        keep(tostring(x.kv))
        x:close()
        keep(tostring(x))
        x = consul.new({ addr = a.addr })
        keep(x.kv:get(k, { token = secret }))
        keep(x.kv:put(k .. "/t", "v", { token = secret }))
        x:close()
        -- an unreachable agent, a TLS failure
        x = consul.new({ addr = "127.0.0.1:" .. agent.free_port(), token = secret })
        keep(x.kv:get(k))
        x:close()
        assert.is_false(contains(seen, secret), "the token leaked")
      end
      assert.is_true(#seen > 20)
      -- nor in the message of a raise about it
      local ok, err = pcall(consul.new, { token = token .. "\1" })
      assert.is_false(ok)
      assert.is_nil(tostring(err):find(token, 1, true))
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("c:request and consul.routes()", function()
    it("GET /v1/agent/self decodes the agent's JSON", function()
      local self, err, meta = c:request("GET", "/v1/agent/self")
      assert.is_nil(err)
      assert.equals(200, meta.status)
      assert.equals(shared.node, self.Config.NodeName)
      assert.equals("dc1", self.Config.Datacenter)
    end)

    it("PUT with a table body sends JSON (service register / read / deregister)", function()
      local id = "spec-client-svc"
      local ok, err, meta = c:request("PUT", "/v1/agent/service/register",
        { body = { ID = id, Name = "spec-client", Port = 4321, Tags = { "a", "b" },
                   Meta = { owner = "client_spec" } } })
      assert.is_nil(err)
      assert.is_true(ok)
      assert.equals(200, meta.status)
      local svc = assert(c.agent:service(id))
      assert.equals("spec-client", svc.Service)
      assert.equals(4321, svc.Port)
      assert.same({ "a", "b" }, svc.Tags)
      assert.equals("client_spec", svc.Meta.owner)
      assert.is_true((c:request("PUT", "/v1/agent/service/deregister/" .. id)))
      local gone, gerr, gmeta = c:request("GET", "/v1/agent/service/" .. id)
      assert.is_nil(gone)
      assert.is_nil(gerr)
      assert.equals(404, gmeta.status)
    end)

    it("a string body is sent as is (binary-safe), a JSON body as JSON", function()
      local path = "/v1/kv/" .. PREFIX .. "req/raw"
      local bytes = "a\0b\255\r\n"
      assert.is_true((c:request("PUT", path, { body = bytes })))
      local r, err = c:request("GET", path, { query = { raw = true } })
      assert.is_nil(err)
      assert.equals(bytes, r)
      assert.is_true((c:request("PUT", path, { body = { list = { 1, 2 } } })))
      assert.equals('{"list":[1,2]}', (c.kv:get(PREFIX .. "req/raw")))
    end)

    it("query parameters: recurse, keys with separator, and per-call options", function()
      local base = PREFIX .. "req/q/"
      for _, k in ipairs({ "a", "b/c", "b/d" }) do assert.is_true((c.kv:put(base .. k, k))) end
      local recs, err = c:request("GET", "/v1/kv/" .. base, { query = { recurse = true } })
      assert.is_nil(err)
      assert.equals(3, #recs)
      local keys = c:request("GET", "/v1/kv/" .. base, { query = { keys = true, separator = "/" } })
      table.sort(keys)
      assert.same({ base .. "a", base .. "b/" }, keys)
      keys = c:request("GET", "/v1/kv/" .. base, { query = { keys = true }, dc = "dc1" })
      assert.equals(3, #keys)
      local _, derr, dmeta = c:request("GET", "/v1/kv/" .. base, { query = { keys = true }, dc = "nowhere" })
      assert.matches("No path to datacenter", derr)
      assert.equals(500, dmeta.status)
      -- false leaves a flag out
      local one = c:request("GET", "/v1/kv/" .. base .. "a", { query = { recurse = false } })
      assert.equals(1, #one)
    end)

    it("a 404 on a GET is absent: nil, nil, meta.status 404", function()
      local r, err, meta = c:request("GET", "/v1/kv/" .. PREFIX .. "req/none")
      assert.is_nil(r)
      assert.is_nil(err)
      assert.equals(404, meta.status)
    end)

    it("a HEAD's answer ends at its head (its Content-Length is a GET's): a 405, and the connection goes on", function()
      -- Consul answers HEAD with 405 and "Content-Length: 23" but no body: a client that waited
      -- for those 23 bytes would end in a timeout (or take the next answer's bytes for them)
      local x = consul.new({ addr = shared.addr, timeout = 3 })
      local r, err, meta = x:request("HEAD", "/v1/status/leader")
      assert.is_nil(r)
      assert.equals("http", meta.code, err)
      assert.equals(405, meta.status)
      assert.matches("^consul: HEAD /v1/status/leader: 405", err)
      local leader, lerr = x.status:leader()
      assert.is_string(leader, lerr)
      assert.same({ requests = 2, connects = 1 }, x:stats())
      x:close()
    end)

    it("consul.routes() has 137 routes, each reachable as c.<group>:<name>", function()
      local routes = consul.routes()
      assert.equals(137, #routes)
      local seen = {}
      for _, r in ipairs(routes) do
        assert.is_string(r.group)
        assert.is_string(r.name)
        assert.is_string(r.method)
        assert.is_string(r.path)
        assert.matches("^[a-z_]+$", r.group)
        assert.matches("^[a-z_0-9]+$", r.name)
        assert.is_truthy(({ GET = true, PUT = true, POST = true, DELETE = true })[r.method], r.method)
        assert.matches("^/v1/", r.path)
        local id = r.group .. "." .. r.name
        assert.is_nil(seen[id], "duplicate " .. id)
        seen[id] = true
        assert.is_function(c[r.group][r.name], id)
      end
      for _, id in ipairs({ "kv.get", "kv.put", "kv.delete", "status.leader", "agent.self",
                            "session.create", "txn.apply" }) do
        assert.is_true(seen[id], id)
      end
      assert.is_nil(c.nosuchgroup)
    end)
  end)

  -------------------------------------------------------------------------------------------
  describe("lifetime", function()
    it("close() twice is harmless; tostring says closed", function()
      local x = consul.new({ addr = shared.addr })
      assert.is_string((x.status:leader()))
      x:close()
      x:close()
      assert.equals("consul.Client (closed)", tostring(x))
    end)

    it("any call after close raises \"consul client is closed\" at the caller's line", function()
      local x = consul.new({ addr = shared.addr })
      local kv = x.kv
      x:close()
      raises("consul client is closed", function() x:stats() end)
      raises("consul client is closed", function() x:request("GET", "/v1/status/leader") end)
      raises("consul client is closed", function() kv:get("k") end)
      raises("consul client is closed", function() x.kv:put("k", "v") end)
      raises("consul client is closed", function() x.status:leader() end)
    end)

    if _VERSION == "Lua 5.4" then
      it("<close> closes the client at scope exit, also when the block raises", function()
        local chunk = assert(load([[
          local consul, addr = ...
          local escaped
          do
            local x <close> = consul.new({ addr = addr })
            escaped = x
            assert(x.status:leader())
          end
          local raised
          local ok = pcall(function()
            local y <close> = consul.new({ addr = addr })
            raised = y
            error("boom")
          end)
          return escaped, raised, ok
        ]], "=<close> chunk"))
        local x, y, ok = chunk(consul, shared.addr)
        assert.is_false(ok)
        assert.equals("consul.Client (closed)", tostring(x))
        assert.equals("consul.Client (closed)", tostring(y))
        assert.has_error(function() x:stats() end)
      end)
    else
      pending("<close> needs Lua 5.4 (this is " .. (jit and jit.version or _VERSION) .. ")")
    end

    it("close() and __gc of unclosed clients release their connections; no crash", function()
      -- The process's sockets, counted from outside. The renewer thread may open or close a
      -- connection of its own meanwhile (a lock collected by an earlier spec being released):
      -- a count that moved for that reason is measured again, up to three times; a client
      -- that keeps its socket after close() or __gc fails every time.
      local function fds()
        -- sockets only: a Lua file handle awaiting collection is an fd too, but no connection
        local p = assert(io.popen("ls -l /proc/$PPID/fd | grep -c 'socket:'"))
        local n = tonumber(p:read("*a"))
        p:close()
        return n
      end
      -- Garbage of earlier specs (a lock, a stream) is finalized by the first full collection
      -- and its connections closed, some of them by the renewer thread a moment later: count
      -- from a process whose fd count has stood still for 0.2 s.
      local function settle()
        collectgarbage("collect")
        collectgarbage("collect")
        local prev = fds()
        for _ = 1, 25 do
          util.sleep(0.2)
          local n = fds()
          if n == prev then return n end
          prev = n
        end
        return prev
      end
      local function attempt()
        local base = settle()
        -- made in a function of their own: a dead local of this frame would keep one alive
        local keep = (function()
          local t = {}
          for i = 1, 20 do
            t[i] = consul.new({ addr = shared.addr })
            assert.is_string((t[i].status:leader()))
          end
          return t
        end)()
        -- each client holds its socket (and whatever else libcurl keeps per handle)
        local per = (fds() - base) / 20
        if not (per >= 1 and per == math.floor(per)) then
          return false, "fds per client: " .. per
        end
        for i = 1, 10 do keep[i]:close() end
        local n = fds()
        if n ~= base + 10 * per then
          return false, ("after 10 close(): %d fds, expected %d"):format(n, base + 10 * per)
        end
        -- the other ten are dropped unclosed, one still referenced only by its group object
        local kv = keep[11].kv
        keep = nil
        collectgarbage("collect")
        collectgarbage("collect")
        n = fds()
        if n ~= base + per then
          return false, ("after collecting 9: %d fds, expected %d"):format(n, base + per)
        end
        assert.is_nil((kv:get(PREFIX .. "gc")))
        kv = nil
        collectgarbage("collect")
        collectgarbage("collect")
        n = fds()
        if n ~= base then
          return false, ("after collecting the last: %d fds, expected %d"):format(n, base)
        end
        return true
      end
      local ok, why
      for try = 1, 3 do
        ok, why = attempt()
        if ok then break end
        io.stderr:write("\n[client_spec note] fd count moved (", why, "), measuring again (", try, " of 3)\n")
      end
      assert(ok, why)
    end)
  end)
end)
