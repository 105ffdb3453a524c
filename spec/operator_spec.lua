-- The operator group (all 9 routes) against throwaway Consul 1.8.7 dev agents, on Lua 5.4 and
-- LuaJIT.
--
--   E       started with a gossip key (encrypt=true): keyring_*, autopilot_*
--   R1, R2  two plain dev servers joined (through raw HTTP) into one Raft cluster, then the
--           follower killed: raft_get_configuration, autopilot_server_health of an unhealthy
--           cluster, and a real raft_remove_peer of the dead follower
--
-- What the module wrote is checked through agent.http (curl, independent of the module); what
-- it read is compared with raw answers.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")

local TIMEOUT = 60  -- generous: the suite also runs under valgrind

local function sleep(s)
  agent.sh("sleep " .. tostring(s))
end

local find = require("spec.helpers.util").find

local function raw_json(a, method, path, body)
  if type(body) == "table" then body = json.encode(body) end
  local status, out = agent.http(a, method, path, body)
  assert(status, out)
  return status, json.decode(out), out
end

local fails = require("spec.helpers.util").fails

-- the keyring answer as { ["LAN"|"WAN"] = { keys = {k=n}, primary = {k=n}, nodes = n } }
local function rings(list)
  local t = {}
  for _, r in ipairs(list) do
    t[r.WAN and "WAN" or "LAN"] = { keys = r.Keys, primary = r.PrimaryKeys, nodes = r.NumNodes,
      dc = r.Datacenter }
  end
  return t
end

local function count(t)
  local n = 0
  for _ in pairs(t or {}) do n = n + 1 end
  return n
end

describe("consul operator", function()
  ---------------------------------------------------------------------------
  describe("keyring (an agent with a gossip key)", function()
    local E, c

    setup(function()
      E = agent.start({ encrypt = true, name = "op-keyring" })
      c = consul.new({ addr = E.addr, timeout = TIMEOUT })
    end)

    teardown(function()
      if c then c:close() end
      if E then E:stop() end
    end)

    it("keyring_list lists the LAN and WAN rings with the agent's key", function()
      local list, err, meta = c.operator:keyring_list()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(2, #list)
      local r = rings(list)
      for _, pool in ipairs({ "LAN", "WAN" }) do
        assert.are.equal(1, r[pool].nodes)
        assert.are.equal("dc1", r[pool].dc)
        assert.are.same({ [E.encrypt_key] = 1 }, r[pool].keys)
        assert.are.same({ [E.encrypt_key] = 1 }, r[pool].primary)
      end
      local _, rl = raw_json(E, "GET", "/v1/operator/keyring")
      assert.are.same(rings(rl), r)
    end)

    it("keyring_install, keyring_use, keyring_remove rotate the key", function()
      local ok, new, code = agent.run("keygen")
      assert.is_true(ok, new)
      assert.are.equal(0, code)
      new = new:gsub("%s+$", "")
      assert.are.equal(44, #new)
      local old = E.encrypt_key

      -- install: both keys, the old one still primary
      local r, err, meta = c.operator:keyring_install({ Key = new })
      assert.is_nil(err)
      assert.is_true(r)
      assert.are.equal(200, meta.status)
      local _, rl = raw_json(E, "GET", "/v1/operator/keyring")
      for _, pool in pairs(rings(rl)) do
        assert.are.same({ [old] = 1, [new] = 1 }, pool.keys)
        assert.are.same({ [old] = 1 }, pool.primary)
      end

      -- use: the new one is primary
      r, err = c.operator:keyring_use({ Key = new })
      assert.is_nil(err)
      assert.is_true(r)
      _, rl = raw_json(E, "GET", "/v1/operator/keyring")
      for _, pool in pairs(rings(rl)) do
        assert.are.same({ [new] = 1 }, pool.primary)
        assert.are.equal(2, count(pool.keys))
      end

      -- remove the old one: only the new one is left
      r, err = c.operator:keyring_remove({ Key = old })
      assert.is_nil(err)
      assert.is_true(r)
      _, rl = raw_json(E, "GET", "/v1/operator/keyring")
      for _, pool in pairs(rings(rl)) do
        assert.are.same({ [new] = 1 }, pool.keys)
      end
      local list = assert(c.operator:keyring_list())
      for pool, ring in pairs(rings(list)) do
        assert.are.same({ [new] = 1 }, ring.keys, pool)
        assert.are.same({ [new] = 1 }, ring.primary, pool)
      end
      E.encrypt_key = new

    end)

    -- Consul 1.8 parses local-only with strconv.ParseBool(Query().Get("local-only")): a bare
    -- `?local-only` (what a true boolean option sent before 0b0db53) reads as false and both
    -- rings come back.
    it("keyring_list with local_only = true lists this agent's LAN ring alone", function()
      local st, rl = raw_json(E, "GET", "/v1/operator/keyring?local-only=true")
      assert.are.equal(200, st)
      assert.are.equal(1, #rl)
      assert.is_false(rl[1].WAN)
      local loc, err, meta = c.operator:keyring_list({ local_only = true })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.same(rl, loc)
    end)

    it("keyring_install of a key that is not one: Consul's error, keyring unchanged", function()
      local _, before = raw_json(E, "GET", "/v1/operator/keyring")
      fails("POST", "/v1/operator/keyring", 500, nil,
        c.operator:keyring_install({ Key = "not-a-key" }))
      local _, after = raw_json(E, "GET", "/v1/operator/keyring")
      assert.are.same(rings(before), rings(after))
    end)

    -- Regression (was a bug, fixed; csrc/http.c:501, failure_text): Consul answers 500 with a multi-line body
    --   "4 errors occurred:\n\t* WAN error: 1/1 nodes reported failure\n\t* op-keyring.dc1:
    --    Removing the primary key is not allowed\n..."
    -- and the module keeps only the first line ("4 errors occurred:"), so err does not say why
    -- (API.md: one line that says what failed and why). Same for every go-multierror or
    -- mapstructure answer (e.g. a bad auth method Config: "error decoding config: 1 error(s)
    -- decoding:"). Fix: fold the body into one line (each run of CR/LF/TAB -> one space)
    -- instead of cutting at the first line break, keeping the 300-byte cap.
    it("keyring_remove of the primary key: Consul's 500, err says why",
      function()
      local r, err, meta = c.operator:keyring_remove({ Key = E.encrypt_key })
      fails("DELETE", "/v1/operator/keyring", 500, nil, r, err, meta)
      local _, rl = raw_json(E, "GET", "/v1/operator/keyring")
      for _, pool in pairs(rings(rl)) do
        assert.are.same({ [E.encrypt_key] = 1 }, pool.keys)
      end
      assert.matches("Removing the primary key is not allowed", err, 1, true)
    end)

    -------------------------------------------------------------------------
    describe("autopilot", function()
      it("autopilot_get_configuration returns Consul's configuration", function()
        local conf, err, meta = c.operator:autopilot_get_configuration()
        assert.is_nil(err)
        assert.are.equal(200, meta.status)
        local _, rc = raw_json(E, "GET", "/v1/operator/autopilot/configuration")
        assert.are.same(rc, conf)
        assert.is_boolean(conf.CleanupDeadServers)
        assert.is_string(conf.LastContactThreshold)
        assert.is_number(conf.ModifyIndex)
      end)

      it("autopilot_set_configuration changes CleanupDeadServers; read back", function()
        local conf = assert(c.operator:autopilot_get_configuration())
        local want = not conf.CleanupDeadServers
        conf.CleanupDeadServers = want
        conf.MaxTrailingLogs = 321
        local ok, err, meta = c.operator:autopilot_set_configuration(conf)
        assert.is_nil(err)
        assert.is_true(ok)
        assert.are.equal(200, meta.status)
        local _, rc = raw_json(E, "GET", "/v1/operator/autopilot/configuration")
        assert.are.equal(want, rc.CleanupDeadServers)
        assert.are.equal(321, rc.MaxTrailingLogs)
        assert.are.equal(conf.LastContactThreshold, rc.LastContactThreshold)
        assert.are.equal(conf.ServerStabilizationTime, rc.ServerStabilizationTime)
        assert.is_true(rc.ModifyIndex > conf.ModifyIndex)
        local back = assert(c.operator:autopilot_get_configuration())
        assert.are.equal(want, back.CleanupDeadServers)
        assert.are.equal(rc.ModifyIndex, back.ModifyIndex)
      end)

      it("autopilot_set_configuration with cas: false on a stale index, true on the current", function()
        local conf = assert(c.operator:autopilot_get_configuration())
        local stale = conf.ModifyIndex - 1
        conf.MaxTrailingLogs = 111
        local ok, err, meta = c.operator:autopilot_set_configuration(conf, { cas = stale })
        assert.is_nil(err)
        assert.is_false(ok)
        assert.are.equal(200, meta.status)
        local _, rc = raw_json(E, "GET", "/v1/operator/autopilot/configuration")
        assert.are_not.equal(111, rc.MaxTrailingLogs)
        assert.are.equal(conf.ModifyIndex, rc.ModifyIndex)

        ok, err = c.operator:autopilot_set_configuration(conf, { cas = conf.ModifyIndex })
        assert.is_nil(err)
        assert.is_true(ok)
        _, rc = raw_json(E, "GET", "/v1/operator/autopilot/configuration")
        assert.are.equal(111, rc.MaxTrailingLogs)
      end)

      it("autopilot_server_health reports the one healthy server, the leader", function()
        -- a fresh server reports itself healthy after its first stats round (~2 s)
        for _ = 1, 300 do
          if agent.http(E, "GET", "/v1/operator/autopilot/health") == 200 then break end
          sleep(0.1)
        end
        local h, err, meta = c.operator:autopilot_server_health()
        assert.is_nil(err)
        assert.are.equal(200, meta.status)
        assert.is_true(h.Healthy)
        assert.are.equal(0, h.FailureTolerance)
        assert.are.equal(1, #h.Servers)
        local s = h.Servers[1]
        assert.are.equal(E.node, s.Name)
        assert.is_true(s.Leader)
        assert.is_true(s.Voter)
        assert.are.equal("alive", s.SerfStatus)
        assert.are.equal("127.0.0.1:" .. E.server_port, s.Address)
        local _, rh = raw_json(E, "GET", "/v1/operator/autopilot/health")
        assert.are.equal(rh.Servers[1].ID, s.ID)
      end)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("raft (two dev servers joined into one cluster)", function()
    local R1, R2, c1

    setup(function()
      R1 = agent.start({ name = "op-raft-1" })
      R2 = agent.start({ name = "op-raft-2" })
      c1 = consul.new({ addr = R1.addr, timeout = TIMEOUT })
    end)

    teardown(function()
      if c1 then c1:close() end
      if R2 then R2:stop() end
      if R1 then R1:stop() end
    end)

    it("raft_get_configuration lists the single server, leader and voter", function()
      local conf, err, meta = c1.operator:raft_get_configuration()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(1, #conf.Servers)
      local s = conf.Servers[1]
      assert.are.equal(R1.node, s.Node)
      assert.are.equal("127.0.0.1:" .. R1.server_port, s.Address)
      assert.is_true(s.Leader)
      assert.is_true(s.Voter)
      local _, rc = raw_json(R1, "GET", "/v1/operator/raft/configuration")
      assert.are.same(rc, conf)
    end)

    it("raft_remove_peer without id or address: Consul's 400", function()
      fails("DELETE", "/v1/operator/raft/peer", 400, "Must specify either ?id",
        c1.operator:raft_remove_peer())
    end)

    it("raft_remove_peer of an unknown peer: Consul's 500, configuration unchanged", function()
      fails("DELETE", "/v1/operator/raft/peer", 500,
        'address "127.0.0.1:1" was not found in the Raft configuration',
        c1.operator:raft_remove_peer({ address = "127.0.0.1:1" }))
      fails("DELETE", "/v1/operator/raft/peer", 500,
        'id "spec-no-such-id" was not found in the Raft configuration',
        c1.operator:raft_remove_peer({ id = "spec-no-such-id" }))
      local _, rc = raw_json(R1, "GET", "/v1/operator/raft/configuration")
      assert.are.equal(1, #rc.Servers)
    end)

    describe("with a second server joined, then killed", function()
      local leader, follower, L, F, cl

      setup(function()
        -- keep the dead server in the Raft configuration (no cleanup, no promotion to voter)
        for _, a in ipairs({ R1, R2 }) do
          local st, body = agent.http(a, "PUT", "/v1/operator/autopilot/configuration",
            json.encode({ CleanupDeadServers = false, ServerStabilizationTime = "1h",
              LastContactThreshold = "200ms", MaxTrailingLogs = 250 }))
          assert(st == 200, body)
        end
        -- join (raw HTTP): the leader adds the other server to its Raft configuration
        local st, body = agent.http(R1, "PUT", "/v1/agent/join/127.0.0.1:" .. R2.serf_lan_port)
        assert(st == 200, body)
        local conf
        for _ = 1, 300 do
          local s2, c2 = raw_json(R1, "GET", "/v1/operator/raft/configuration")
          conf = c2
          if s2 == 200 and #conf.Servers == 2 then break end
          sleep(0.1)
        end
        assert(#conf.Servers == 2, "the second server never joined the Raft configuration")
        for _, s in ipairs(conf.Servers) do
          if s.Leader then leader = s else follower = s end
        end
        assert(leader and follower, "no leader")
        local by_node = { [R1.node] = R1, [R2.node] = R2 }
        L, F = by_node[leader.Node], by_node[follower.Node]
        assert(L and F)
        cl = consul.new({ addr = L.addr, timeout = TIMEOUT })
        -- the follower dies without leaving
        agent.sh("kill -KILL " .. F.pid)
      end)

      teardown(function()
        if cl then cl:close() end
      end)

      -- Regression (was a bug, fixed; csrc/routes.c:174, autopilot_server_health): Consul answers 429 with the
      -- health report when the cluster is unhealthy (as agent health_service_by_* answer
      -- 429/503 with data); the module turns it into a failure ("429 {", the report lost).
      -- Fix: RX("operator", "autopilot_server_health", "GET", "/v1/operator/autopilot/health",
      --         B_NONE, CONSUL_ANS_AUTO, 0, CONSUL_CALL_STATUS_DATA),
      it("autopilot_server_health on an unhealthy cluster: the report, "
        .. "meta.status 429", function()
        local st, rh
        for _ = 1, 300 do
          st, rh = raw_json(L, "GET", "/v1/operator/autopilot/health")
          if st == 429 and find(rh.Servers, "ID", follower.ID) then break end
          sleep(0.1)
        end
        assert.are.equal(429, st)
        assert.is_false(rh.Healthy)
        assert.is_false(find(rh.Servers, "ID", follower.ID).Healthy)
        assert.is_true(find(rh.Servers, "ID", leader.ID).Healthy)
        local h, err, meta = cl.operator:autopilot_server_health()
        assert.are.equal(429, meta.status)
        assert.is_nil(err)
        assert.is_table(h)
        assert.is_false(h.Healthy)
        assert.is_false(find(h.Servers, "ID", follower.ID).Healthy)
        assert.is_true(find(h.Servers, "ID", leader.ID).Healthy)
      end)

      it("raft_remove_peer removes the dead follower (by id) from the configuration", function()
        local before = assert(cl.operator:raft_get_configuration())
        assert.are.equal(2, #before.Servers)
        assert.is_table(find(before.Servers, "ID", follower.ID))
        local ok, err, meta = cl.operator:raft_remove_peer({ id = follower.ID })
        assert.is_nil(err)
        assert.is_true(ok)
        assert.are.equal(200, meta.status)
        local _, rc = raw_json(L, "GET", "/v1/operator/raft/configuration")
        assert.are.equal(1, #rc.Servers)
        assert.are.equal(leader.ID, rc.Servers[1].ID)
        assert.is_nil(find(rc.Servers, "ID", follower.ID))
        local after = assert(cl.operator:raft_get_configuration())
        assert.are.same(rc, after)
      end)
    end)
  end)
end)
