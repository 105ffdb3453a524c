-- The health routes (c.health) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- An external node ("spec-health-node": no agent behind it, so no anti-entropy) carries two
-- instances of "spec-health-web": -ok (check passing, tags blue) and -bad (check critical,
-- tags green); a Connect-native instance; an ingress gateway. Checked against raw HTTP where
-- the module wrote; deregistered before and after.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")

local NODE = "spec-health-node"
local WEB = "spec-health-web"
local NATIVE = "spec-health-native"
local IGW = "spec-health-igw"

local find = require("spec.helpers.util").find

-- the instances' service IDs, sorted
local function ids(list)
  local t = {}
  for _, e in ipairs(list) do t[#t + 1] = e.Service.ID end
  table.sort(t)
  return t
end

describe("consul health", function()
  local A, c

  local function raw_put(path, body)
    local status, out = agent.http(A, "PUT", path, body and json.encode(body))
    assert(status, out)
    assert(status == 200, path .. ": " .. tostring(status) .. " " .. tostring(out))
  end

  local function register(service, check)
    raw_put("/v1/catalog/register", {
      Node = NODE, Address = "10.2.3.4", NodeMeta = { ["spec-owner"] = "health", zone = "z1" },
      Service = service, Check = check,
    })
  end

  local function cleanup()
    agent.http(A, "PUT", "/v1/catalog/deregister", json.encode({ Node = NODE }))
    agent.http(A, "DELETE", "/v1/config/ingress-gateway/" .. IGW)
  end

  setup(function()
    A = agent.shared()
    c = consul.new({ addr = A.addr })
    cleanup()
    register({ ID = WEB .. "-ok", Service = WEB, Tags = { "blue", "v1" }, Port = 8080 },
      { CheckID = WEB .. "-ok-check", Name = "ok", Status = "passing", ServiceID = WEB .. "-ok",
        Output = "fine" })
    register({ ID = WEB .. "-bad", Service = WEB, Tags = { "green" }, Port = 8081 },
      { CheckID = WEB .. "-bad-check", Name = "bad", Status = "critical",
        ServiceID = WEB .. "-bad", Output = "down" })
    register(nil, { CheckID = "spec-health-node-check", Name = "node", Status = "passing" })
    register(nil, { CheckID = WEB .. "-bad-warn", Name = "bad warn", Status = "warning",
      ServiceID = WEB .. "-bad" })
  end)

  teardown(function()
    if A then cleanup() end
    if c then c:close() end
  end)

  it("node lists the node's checks", function()
    local list, err, meta = c.health:node(NODE)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    assert.are.equal(4, #list)
    assert.are.equal("passing", find(list, "CheckID", WEB .. "-ok-check").Status)
    assert.are.equal("critical", find(list, "CheckID", WEB .. "-bad-check").Status)
    assert.are.equal("warning", find(list, "CheckID", WEB .. "-bad-warn").Status)
    local n = find(list, "CheckID", "spec-health-node-check")
    assert.are.equal("passing", n.Status)
    assert.are.equal("", n.ServiceID)

    list = assert(c.health:node(NODE, { filter = 'Status == "critical"' }))
    assert.are.equal(1, #list)
    assert.are.equal(WEB .. "-bad-check", list[1].CheckID)

    -- the agent's own node has serfHealth
    assert.is_table(find(assert(c.health:node(A.node)), "CheckID", "serfHealth"))
    assert.are.same({}, (c.health:node("spec-health-absent")))
  end)

  it("checks lists a service's checks", function()
    local list, err, meta = c.health:checks(WEB)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(3, #list)
    assert.are.equal("down", find(list, "CheckID", WEB .. "-bad-check").Output)
    assert.are.equal(WEB, list[1].ServiceName)

    list = assert(c.health:checks(WEB, { filter = 'Status == "passing"' }))
    assert.are.equal(1, #list)
    assert.are.equal(WEB .. "-ok-check", list[1].CheckID)
    list = assert(c.health:checks(WEB, { node_meta = { zone = "z2" } }))
    assert.are.same({}, list)
    list = assert(c.health:checks(WEB, { node_meta = { zone = "z1" }, near = "_agent" }))
    assert.are.equal(3, #list)
  end)

  it("state gives the checks in a state (any, passing, warning, critical)", function()
    local function ours(state, opts)
      local list, err, meta = c.health:state(state, opts)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      local t = {}
      for _, ch in ipairs(list) do
        if ch.Node == NODE then t[#t + 1] = ch.CheckID end
      end
      table.sort(t)
      return t
    end
    assert.are.same({ "spec-health-node-check", WEB .. "-bad-check", WEB .. "-bad-warn",
      WEB .. "-ok-check" }, ours("any"))
    assert.are.same({ "spec-health-node-check", WEB .. "-ok-check" }, ours("passing"))
    assert.are.same({ WEB .. "-bad-warn" }, ours("warning"))
    assert.are.same({ WEB .. "-bad-check" }, ours("critical"))
    assert.are.same({ WEB .. "-bad-check", WEB .. "-bad-warn" },
      ours("any", { filter = 'ServiceTags contains "green"' }))
    assert.are.same({}, ours("critical", { node_meta = { zone = "z2" } }))
  end)

  describe("service", function()
    it("lists every instance with its node and checks", function()
      local list, err, meta = c.health:service(WEB)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.same({ WEB .. "-bad", WEB .. "-ok" }, ids(list))
      local e = list[1].Service.ID == WEB .. "-ok" and list[1] or list[2]
      assert.are.equal(NODE, e.Node.Node)
      assert.are.equal("10.2.3.4", e.Node.Address)
      assert.are.equal(8080, e.Service.Port)
      -- the node-level check counts for every instance on the node
      assert.is_table(find(e.Checks, "CheckID", "spec-health-node-check"))
      assert.is_table(find(e.Checks, "CheckID", WEB .. "-ok-check"))
    end)

    it("passing=true drops the failing instance", function()
      local list, err = c.health:service(WEB, { passing = true })
      assert.is_nil(err)
      assert.are.same({ WEB .. "-ok" }, ids(list))
      list = assert(c.health:service(WEB, { passing = false }))
      assert.are.same({ WEB .. "-bad", WEB .. "-ok" }, ids(list))
    end)

    it("tag= keeps the tagged instances", function()
      assert.are.same({ WEB .. "-bad" }, ids(assert(c.health:service(WEB, { tag = "green" }))))
      assert.are.same({ WEB .. "-ok" }, ids(assert(c.health:service(WEB, { tag = { "blue", "v1" } }))))
      assert.are.same({}, ids(assert(c.health:service(WEB, { tag = { "blue", "green" } }))))
    end)

    it("node_meta=, near=, filter= are passed on", function()
      assert.are.same({}, ids(assert(c.health:service(WEB, { node_meta = { zone = "z2" } }))))
      assert.are.same({ WEB .. "-bad", WEB .. "-ok" },
        ids(assert(c.health:service(WEB, { node_meta = { zone = "z1" }, near = "_agent" }))))
      assert.are.same({ WEB .. "-bad" },
        ids(assert(c.health:service(WEB, { filter = "Service.Port == 8081" }))))
      assert.are.same({ WEB .. "-ok" },
        ids(assert(c.health:service(WEB, { filter = '"blue" in Service.Tags', passing = false }))))
    end)

    it("cached=true, stale=true and consistent=true work", function()
      local list, err, meta = c.health:service(WEB, { cached = true, passing = true })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.same({ WEB .. "-ok" }, ids(list))
      list, err = c.health:service(WEB, { stale = true })
      assert.is_nil(err)
      assert.are.equal(2, #list)
      list, err = c.health:service(WEB, { consistent = true })
      assert.is_nil(err)
      assert.are.equal(2, #list)
    end)

    it("dc= is passed on: the agent's dc works, an unknown dc fails", function()
      assert.are.equal(2, #assert(c.health:service(WEB, { dc = A.dc })))
      local r, err, meta = c.health:service(WEB, { dc = "spec-no-such-dc" })
      assert.is_nil(r)
      assert.are.equal(500, meta.status)
      assert.matches("No path to datacenter", err, 1, true)
    end)

    it("ns= reaches Consul, which (OSS 1.8) refuses namespaces", function()
      local r, err, meta = c.health:service(WEB, { ns = "default" })
      assert.is_nil(r)
      assert.are.equal(400, meta.status)
      assert.are.equal("http", meta.code)
      assert.matches("^consul: GET /v1/health/service/spec%-health%-web: 400 .*Namespaces", err)
    end)

    it("an unknown service is an empty list", function()
      local list, err, meta = c.health:service("spec-health-absent")
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.same({}, list)
    end)
  end)

  it("connect lists the Connect-capable instances with their health", function()
    register({ ID = NATIVE .. "-1", Service = NATIVE, Port = 9443, Connect = { Native = true } },
      { CheckID = NATIVE .. "-check", Name = "native", Status = "critical",
        ServiceID = NATIVE .. "-1" })
    local list, err, meta = c.health:connect(NATIVE)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.same({ NATIVE .. "-1" }, ids(list))
    assert.is_true(list[1].Service.Connect.Native)
    assert.are.equal("critical", find(list[1].Checks, "CheckID", NATIVE .. "-check").Status)
    assert.are.same({}, (c.health:connect(NATIVE, { passing = true })))
    assert.are.same({}, (c.health:connect(WEB)))  -- not Connect-capable
  end)

  it("ingress lists the ingress gateways that expose a service", function()
    register({ ID = IGW, Service = IGW, Kind = "ingress-gateway", Port = 8888 },
      { CheckID = IGW .. "-check", Name = "igw", Status = "passing", ServiceID = IGW })
    assert.are.equal(true, (c.config:apply({ Kind = "ingress-gateway", Name = IGW,
      Listeners = { { Port = 8888, Protocol = "tcp", Services = { { Name = WEB } } } } })))
    local list, err, meta = c.health:ingress(WEB)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(1, #list)
    assert.are.equal(IGW, list[1].Service.ID)
    assert.are.equal("ingress-gateway", list[1].Service.Kind)
    assert.are.equal(NODE, list[1].Node.Node)
    assert.are.equal(1, #assert(c.health:ingress(WEB, { passing = true })))
    assert.are.same({}, (c.health:ingress(NATIVE)))
  end)
end)
