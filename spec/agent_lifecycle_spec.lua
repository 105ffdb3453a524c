-- Agent routes that stop or reshape an agent, each on throwaway Consul 1.8.7 dev agents (never
-- the shared one), on Lua 5.4 and LuaJIT:
--
--   K     ACL agent: agent update_token (default, agent, agent_master; an unknown type)
--   A     reload (a service added to its config file), connect ca_get_config/ca_set_config,
--         join (LAN, to B), force_leave (of B, once killed)
--   B     joined to A, then killed (SIGKILL) so that A sees it failed
--   C     join with wan=true (to A's WAN port), then leave: the process exits
--
-- What the module did is checked through agent.http (curl, independent of the module), the
-- agents' logs and their processes.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")

local TIMEOUT = 60  -- generous: the suite also runs under valgrind

local util = require("spec.helpers.util")
local read_file, write_file = util.read_file, util.write_file

-- is the process alive (a zombie is dead)?
local function alive(pid)
  local st = read_file("/proc/" .. tostring(pid) .. "/stat")
  if not st then return false end
  local state = st:match("%)%s+(%S)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

-- polls fn() until it returns a true value (every 0.1 s, up to `secs`); returns its value
local function eventually(secs, fn)
  return util.wait_until(secs, fn, 0.1)
end

local function raw_json(a, method, path, body, token)
  if type(body) == "table" then body = json.encode(body) end
  local status, out = agent.http(a, method, path, body, token)
  assert(status, out)
  return status, json.decode(out), out
end

-- the member named `name` in a's members (wan: the WAN pool), raw HTTP
local function raw_member(a, name, wan)
  local st, list = raw_json(a, "GET", "/v1/agent/members" .. (wan and "?wan=1" or ""))
  assert(st == 200)
  for _, m in ipairs(list) do
    if m.Name == name then return m end
  end
  return nil
end

local fails = util.fails

-- Serf member status codes
local ALIVE, LEFT, FAILED = 1, 3, 4

describe("consul agent lifecycle", function()
  ---------------------------------------------------------------------------
  describe("update_token (an ACL agent)", function()
    local K, c

    setup(function()
      K = agent.start({ acl = true, name = "lc-acl" })
      c = consul.new({ addr = K.addr, token = K.token, timeout = TIMEOUT })
    end)

    teardown(function()
      if c then c:close() end
      if K then K:stop() end
    end)

    local function log_has(text)
      return (read_file(K.log) or ""):find(text, 1, true) ~= nil
    end

    it("default: requests without a token then act with the token given", function()
      assert.are.equal(200, (agent.http(K, "PUT", "/v1/kv/spec/lc/k", "V", K.token)))
      local _, pol = raw_json(K, "PUT", "/v1/acl/policy",
        { Name = "spec-lc-default", Rules = 'key_prefix "spec/lc/" { policy = "read" }' }, K.token)
      local _, tok = raw_json(K, "PUT", "/v1/acl/token", { Policies = { { ID = pol.ID } } }, K.token)
      assert.is_string(tok.SecretID)
      -- before: anonymous, denied
      assert.are.equal(403, (agent.http(K, "GET", "/v1/kv/spec/lc/k?raw")))

      local ok, err, meta = c.agent:update_token("default", { Token = tok.SecretID })
      assert.is_nil(err)
      assert.is_true(ok)
      assert.are.equal(200, meta.status)
      local st, body = agent.http(K, "GET", "/v1/kv/spec/lc/k?raw")
      assert.are.equal(200, st)
      assert.are.equal("V", body)
      assert.is_true(eventually(10, function() return log_has("Updated agent's ACL token: token=default") end))
    end)

    it("agent: the agent takes the token (its log says so)", function()
      local ok, err = c.agent:update_token("agent", { Token = K.token })
      assert.is_nil(err)
      assert.is_true(ok)
      assert.is_true(eventually(10, function() return log_has("Updated agent's ACL token: token=agent") end))
    end)

    it("agent_master: the agent's own endpoints then accept that token", function()
      local master = "5d1b7f0e-3c2a-4b8e-9d6f-1a2b3c4d5e6f"
      assert.are.equal(403, (agent.http(K, "GET", "/v1/agent/self", nil, master)))
      local ok, err = c.agent:update_token("agent_master", { Token = master })
      assert.is_nil(err)
      assert.is_true(ok)
      local st, body = agent.http(K, "GET", "/v1/agent/self", nil, master)
      assert.are.equal(200, st)
      assert.are.equal(K.node, json.decode(body).Config.NodeName)
    end)

    it("an unknown token type: Consul's 404, a failure (not absent) for a PUT", function()
      fails("PUT", "/v1/agent/token/spec-bogus", 404, 'Token "spec-bogus" is unknown',
        c.agent:update_token("spec-bogus", { Token = K.token }))
    end)

    it("without a token: Consul's 403", function()
      local anon = consul.new({ addr = K.addr, timeout = TIMEOUT })
      finally(function() anon:close() end)
      fails("PUT", "/v1/agent/token/default", 403, "Permission denied",
        anon.agent:update_token("default", { Token = K.token }))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("reload, CA configuration, join, force_leave, leave", function()
    local A, B, C, ca, cc

    setup(function()
      A = agent.start({ name = "lc-a" })
      B = agent.start({ name = "lc-b" })
      C = agent.start({ name = "lc-c" })
      ca = consul.new({ addr = A.addr, timeout = TIMEOUT })
      cc = consul.new({ addr = C.addr, timeout = TIMEOUT })
    end)

    teardown(function()
      if ca then ca:close() end
      if cc then cc:close() end
      if C then C:stop() end
      if B then B:stop() end
      if A then A:stop() end
    end)

    it("reload picks up a service added to the agent's config file", function()
      local conf = A.dir .. "/agent.hcl"
      local orig = assert(read_file(conf))
      write_file(conf, orig .. '\nservice {\n  name = "spec-reloaded"\n  port = 4321\n}\n')
      local _, before = raw_json(A, "GET", "/v1/agent/services")
      assert.is_nil(before["spec-reloaded"])

      local ok, err, meta = ca.agent:reload()
      assert.is_nil(err)
      assert.is_true(ok)
      assert.are.equal(200, meta.status)
      local _, after = raw_json(A, "GET", "/v1/agent/services")
      assert.is_table(after["spec-reloaded"])
      assert.are.equal(4321, after["spec-reloaded"].Port)
    end)

    it("reload of a broken config file: Consul's 500; the agent keeps running", function()
      local conf = A.dir .. "/agent.hcl"
      local orig = assert(read_file(conf))
      finally(function() write_file(conf, orig) end)
      write_file(conf, orig .. "\nthis is { not hcl\n")
      fails("PUT", "/v1/agent/reload", 500, nil, ca.agent:reload())
      assert.is_true(alive(A.pid))
      local _, services = raw_json(A, "GET", "/v1/agent/services")
      assert.is_table(services["spec-reloaded"])
    end)

    it("connect ca_get_config returns the built-in CA's configuration", function()
      local conf, err, meta = ca.connect:ca_get_config()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal("consul", conf.Provider)
      local _, rc = raw_json(A, "GET", "/v1/connect/ca/configuration")
      assert.are.equal(rc.Config.LeafCertTTL, conf.Config.LeafCertTTL)
      assert.are.equal(rc.Config.RotationPeriod, conf.Config.RotationPeriod)
      assert.are.equal(rc.ModifyIndex, conf.ModifyIndex)
      assert.is_nil(conf.State)  -- JSON null in an object reads as an absent field
    end)

    it("connect ca_set_config changes LeafCertTTL; read back", function()
      local conf = assert(ca.connect:ca_get_config())
      local want = conf.Config.LeafCertTTL == "48h0m0s" and "36h" or "48h"
      local ok, err, meta = ca.connect:ca_set_config({
        Provider = "consul",
        Config = {
          LeafCertTTL = want,
          RotationPeriod = conf.Config.RotationPeriod,
          IntermediateCertTTL = conf.Config.IntermediateCertTTL,
        },
      })
      assert.is_nil(err)
      assert.is_true(ok)
      assert.are.equal(200, meta.status)
      local _, rc = raw_json(A, "GET", "/v1/connect/ca/configuration")
      assert.are.equal(want, rc.Config.LeafCertTTL)
      assert.is_true(rc.ModifyIndex > conf.ModifyIndex)
      local back = assert(ca.connect:ca_get_config())
      assert.are.equal(want, back.Config.LeafCertTTL)
      -- the CA still has an active root
      local _, roots = raw_json(A, "GET", "/v1/connect/ca/roots")
      assert.is_string(roots.ActiveRootID)
    end)

    it("connect ca_set_config with an unknown provider: Consul's error, config unchanged", function()
      local before = assert(ca.connect:ca_get_config())
      local r, err, meta = ca.connect:ca_set_config({ Provider = "spec-no-such", Config = {} })
      assert.is_nil(r)
      assert.are.equal("http", meta.code)
      assert.is_true(meta.status >= 400)
      assert.are.equal("consul: PUT /v1/connect/ca/configuration: ", err:sub(1, 42))
      local _, rc = raw_json(A, "GET", "/v1/connect/ca/configuration")
      assert.are.equal("consul", rc.Provider)
      assert.are.equal(before.ModifyIndex, rc.ModifyIndex)
    end)

    it("join joins B's LAN serf address: both see each other alive", function()
      -- keep B in the cluster once it dies (autopilot would clean it up otherwise)
      for _, a in ipairs({ A, B }) do
        local st = agent.http(a, "PUT", "/v1/operator/autopilot/configuration",
          json.encode({ CleanupDeadServers = false, ServerStabilizationTime = "1h",
            LastContactThreshold = "200ms", MaxTrailingLogs = 250 }))
        assert.are.equal(200, st)
      end
      assert.is_nil(raw_member(A, B.node))

      local ok, err, meta = ca.agent:join("127.0.0.1:" .. B.serf_lan_port)
      assert.is_nil(err)
      assert.is_true(ok)
      assert.are.equal(200, meta.status)
      assert.are.equal(ALIVE, eventually(30, function()
        local m = raw_member(A, B.node)
        return m and m.Status == ALIVE and m.Status
      end))
      assert.are.equal(ALIVE, eventually(30, function()
        local m = raw_member(B, A.node)
        return m and m.Status == ALIVE and m.Status
      end))
      local members = assert(ca.agent:members())
      assert.are.equal(2, #members)
    end)

    it("join of an address nobody answers: Consul's 500", function()
      local port = agent.free_port()
      local r, err, meta = ca.agent:join("127.0.0.1:" .. port)
      assert.is_nil(r)
      assert.are.equal("http", meta.code)
      assert.are.equal(500, meta.status)
      assert.matches("^consul: PUT /v1/agent/join/127%.0%.0%.1[^ ]*" .. port .. ": 500 ", err)
      assert.is_nil(raw_member(A, "127.0.0.1:" .. port))
    end)

    -- Consul 1.8 reads the flag as `Query().Get("wan") != ""` (agent join and members alike):
    -- a bare `?wan` (what a true boolean option sent before 0b0db53) reads as false, and the
    -- "WAN" join then goes to C's LAN pool (A's WAN member shows up in C's LAN).
    it("join with wan=true joins A's WAN pool", function()
      assert.is_nil(raw_member(C, A.node .. ".dc1", true))
      local ok, err = cc.agent:join("127.0.0.1:" .. A.serf_wan_port, { wan = true })
      assert.is_nil(err)
      assert.is_true(ok)
      -- the join is synchronous: A's WAN member is known to C's WAN pool, not to its LAN
      local lan = raw_member(C, A.node .. ".dc1")
      assert.is_nil(lan, "the WAN join went to C's LAN pool")
      assert.are.equal(ALIVE, eventually(10, function()
        local m = raw_member(C, A.node .. ".dc1", true)
        return m and m.Status == ALIVE and m.Status
      end))
      local wan = assert(cc.agent:members({ wan = true }))
      local names = {}
      for _, m in ipairs(wan) do names[m.Name] = m.Status end
      assert.are.equal(ALIVE, names[A.node .. ".dc1"])
      assert.are.equal(ALIVE, names[C.node .. ".dc1"])
    end)

    it("force_leave of an unknown node: Consul's 500", function()
      fails("PUT", "/v1/agent/force-leave/spec-no-such", 500,
        "No node found with name 'spec-no-such'", ca.agent:force_leave("spec-no-such"))
    end)

    it("force_leave turns a failed member (B, killed) into one that left", function()
      assert.is_true(alive(B.pid))
      agent.sh("kill -KILL " .. B.pid)
      assert.is_true(eventually(30, function() return not alive(B.pid) end))
      assert.are.equal(FAILED, eventually(60, function()
        local m = raw_member(A, B.node)
        return m and m.Status == FAILED and m.Status
      end))

      local ok, err, meta = ca.agent:force_leave(B.node)
      assert.is_nil(err)
      assert.is_true(ok)
      assert.are.equal(200, meta.status)
      assert.are.equal(LEFT, eventually(30, function()
        local m = raw_member(A, B.node)
        return m and m.Status == LEFT and m.Status
      end))
    end)

    it("force_leave with prune=true removes the member from the list", function()
      assert.is_table(raw_member(A, B.node))
      local ok, err = ca.agent:force_leave(B.node, { prune = true })
      assert.is_nil(err)
      assert.is_true(ok)
      assert.is_true(eventually(30, function() return raw_member(A, B.node) == nil end))
    end)

    it("leave: the agent leaves gracefully and its process exits", function()
      assert.is_true(alive(C.pid))
      local ok, err, meta = cc.agent:leave()
      assert.is_nil(err)
      assert.is_true(ok)
      assert.are.equal(200, meta.status)
      assert.is_true(eventually(60, function() return not alive(C.pid) end))
      -- it left its pools (rather than just stopping), then exited cleanly
      local log = read_file(C.log) or ""
      assert.matches("serf: EventMemberLeave: " .. C.node .. " ", log, 1, true)
      assert.matches("Requesting shutdown", log, 1, true)
      assert.matches("Exit code: code=0", log, 1, true)
      -- nobody answers any more
      local r, err2, meta2 = cc.agent:self()
      assert.is_nil(r)
      assert.are.equal("connect", meta2.code)
      assert.matches("^consul: GET /v1/agent/self: ", err2)
    end)
  end)
end)
