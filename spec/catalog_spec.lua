-- The catalog routes (c.catalog) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- An external node ("spec-catalog-node", no agent behind it, so no anti-entropy touches it)
-- carries the services; what the module wrote is read back through raw HTTP (agent.http).
-- Everything is deregistered before and after.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")
local sys = require("system")

local NODE = "spec-catalog-node"
local WEB = "spec-catalog-web"
local NATIVE = "spec-catalog-native"
local GW = "spec-catalog-tgw"

local find = require("spec.helpers.util").find

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("consul catalog", function()
  local A, c

  local function raw_get(path) return agent.get_json(A, path) end

  -- catalog register replaces the node's fields: every registration gives them all
  local function register(def)
    def.Node = NODE
    def.Address = "10.1.2.3"
    def.NodeMeta = { ["spec-owner"] = "catalog", rack = "r1" }
    def.TaggedAddresses = { wan = "198.51.100.3" }
    return c.catalog:register(def)
  end

  local function cleanup()
    agent.http(A, "PUT", "/v1/catalog/deregister", json.encode({ Node = NODE }))
    agent.http(A, "DELETE", "/v1/config/terminating-gateway/" .. GW)
  end

  setup(function()
    A = agent.shared()
    c = consul.new({ addr = A.addr })
    cleanup()
  end)

  teardown(function()
    if A then cleanup() end
    if c then c:close() end
  end)

  ---------------------------------------------------------------------------
  it("register adds an external node with a service and a check", function()
    local ok, err, meta = c.catalog:register({
      Node = NODE,
      Address = "10.1.2.3",
      Datacenter = A.dc,
      NodeMeta = { ["spec-owner"] = "catalog", rack = "r1" },
      TaggedAddresses = { wan = "198.51.100.3" },
      Service = { ID = WEB .. "-1", Service = WEB, Tags = { "blue", "v1" }, Port = 8080,
        Meta = { version = "1" } },
      Check = { CheckID = WEB .. "-1-check", Name = "web alive", Status = "passing",
        ServiceID = WEB .. "-1" },
    })
    assert.are.equal(true, ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    -- a second instance, same node
    assert(register({ Service = { ID = WEB .. "-2", Service = WEB, Tags = { "green" },
      Port = 8081 } }))

    local raw = raw_get("/v1/catalog/node/" .. NODE)
    assert.are.equal("10.1.2.3", raw.Node.Address)
    assert.are.equal("r1", raw.Node.Meta.rack)
    assert.are.equal("198.51.100.3", raw.Node.TaggedAddresses.wan)
    assert.are.equal(WEB, raw.Services[WEB .. "-1"].Service)
    assert.are.same({ "blue", "v1" }, raw.Services[WEB .. "-1"].Tags)
    assert.are.equal(8081, raw.Services[WEB .. "-2"].Port)
    local checks = raw_get("/v1/health/node/" .. NODE)
    assert.are.equal("passing", find(checks, "CheckID", WEB .. "-1-check").Status)
  end)

  it("datacenters lists the agent's datacenter", function()
    local dcs, err, meta = c.catalog:datacenters()
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.same({ A.dc }, dcs)
    assert.are.same({ A.dc }, (c.catalog:datacenters({ cached = true })))
  end)

  describe("nodes", function()
    it("lists the agent's node and the external node", function()
      local nodes, err, meta = c.catalog:nodes()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_number(meta.index)
      assert.is_true(meta.known_leader)
      assert.are.equal("10.1.2.3", find(nodes, "Node", NODE).Address)
      assert.are.equal("127.0.0.1", find(nodes, "Node", A.node).Address)
    end)

    it("node_meta= keeps the nodes with that metadata", function()
      local nodes = assert(c.catalog:nodes({ node_meta = { rack = "r1", ["spec-owner"] = "catalog" } }))
      assert.are.equal(1, #nodes)
      assert.are.equal(NODE, nodes[1].Node)
      nodes = assert(c.catalog:nodes({ node_meta = { rack = "r2" } }))
      assert.are.same({}, nodes)
    end)

    it("filter= keeps the nodes matching the expression", function()
      local nodes = assert(c.catalog:nodes({ filter = 'Meta.rack == "r1"' }))
      assert.are.equal(1, #nodes)
      assert.are.equal(NODE, nodes[1].Node)
      nodes = assert(c.catalog:nodes({ filter = 'Node == "' .. A.node .. '"' }))
      assert.are.equal(1, #nodes)
      assert.are.equal(A.node, nodes[1].Node)
    end)

    it("near=_agent sorts the agent's own node first", function()
      -- nodes without a coordinate (the external node) come after those with one
      local nodes = assert(c.catalog:nodes({ near = "_agent" }))
      assert.are.equal(A.node, nodes[1].Node)
      assert.is_table(find(nodes, "Node", NODE))
    end)

    it("dc= names the datacenter; an unknown one fails", function()
      local nodes, err = c.catalog:nodes({ dc = A.dc, stale = true })
      assert.is_nil(err)
      assert.is_table(find(nodes, "Node", NODE))
      nodes, err = c.catalog:nodes({ consistent = true })
      assert.is_nil(err)
      assert.is_table(find(nodes, "Node", NODE))
      local none, derr, dmeta = c.catalog:nodes({ dc = "spec-no-such-dc" })
      assert.is_nil(none)
      assert.are.equal(500, dmeta.status)
      assert.matches("^consul: GET /v1/catalog/nodes: 500 No path to datacenter", derr)
    end)

  end)

  describe("services", function()
    it("maps service names to their tags", function()
      local s, err, meta = c.catalog:services()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      local tags = s[WEB]
      table.sort(tags)
      assert.are.same({ "blue", "green", "v1" }, tags)
      assert.are.same({}, s.consul)
    end)

    it("node_meta= keeps the services of matching nodes; cached= works", function()
      local s = assert(c.catalog:services({ node_meta = { rack = "r1" } }))
      assert.is_table(s[WEB])
      assert.is_nil(s.consul)
      s = assert(c.catalog:services({ cached = true }))
      assert.is_table(s[WEB])
    end)
  end)

  describe("service", function()
    it("lists the instances of a service", function()
      local list, err, meta = c.catalog:service(WEB)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(2, #list)
      local one = find(list, "ServiceID", WEB .. "-1")
      assert.are.equal(NODE, one.Node)
      assert.are.equal("10.1.2.3", one.Address)
      assert.are.equal(8080, one.ServicePort)
      assert.are.same({ version = "1" }, one.ServiceMeta)
      assert.are.equal("r1", one.NodeMeta.rack)
    end)

    it("tag= keeps the tagged instances (one tag, or all of several)", function()
      local list = assert(c.catalog:service(WEB, { tag = "blue" }))
      assert.are.equal(1, #list)
      assert.are.equal(WEB .. "-1", list[1].ServiceID)
      list = assert(c.catalog:service(WEB, { tag = { "blue", "v1" } }))
      assert.are.equal(1, #list)
      assert.are.equal(WEB .. "-1", list[1].ServiceID)
      list = assert(c.catalog:service(WEB, { tag = { "blue", "green" } }))
      assert.are.same({}, list)
      list = assert(c.catalog:service(WEB, { tag = "green" }))
      assert.are.equal(WEB .. "-2", list[1].ServiceID)
    end)

    it("filter=, node_meta=, near= and cached= are passed on", function()
      local list = assert(c.catalog:service(WEB, { filter = "ServicePort == 8081" }))
      assert.are.equal(1, #list)
      assert.are.equal(WEB .. "-2", list[1].ServiceID)
      list = assert(c.catalog:service(WEB, { node_meta = { rack = "r2" } }))
      assert.are.same({}, list)
      list = assert(c.catalog:service(WEB, { node_meta = { rack = "r1" }, near = "_agent",
        cached = true }))
      assert.are.equal(2, #list)
    end)

    it("a blocking query with the service's index waits for wait=", function()
      -- the index of /catalog/service/NAME moves only when that service changes
      local _, _, meta = assert(c.catalog:service(WEB))
      local t0 = sys.gettime()
      local list, err, meta2 = c.catalog:service(WEB, { index = meta.index, wait = "300ms" })
      local dt = sys.gettime() - t0
      assert.is_nil(err)
      assert.are.equal(2, #list)
      assert.are.equal(meta.index, meta2.index)
      assert.is_true(dt >= 0.25, "returned after " .. dt .. " s")
    end)

    it("an unknown service is an empty list", function()
      local list, err, meta = c.catalog:service("spec-catalog-absent")
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.same({}, list)
    end)
  end)

  describe("node and node_services", function()
    it("node gives the node and its services by ID", function()
      local n, err, meta = c.catalog:node(NODE)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(NODE, n.Node.Node)
      assert.are.equal("10.1.2.3", n.Node.Address)
      assert.are.equal(2, count(n.Services))
      assert.are.equal(8080, n.Services[WEB .. "-1"].Port)
      n = assert(c.catalog:node(NODE, { filter = "Port == 8081" }))
      assert.are.equal(1, count(n.Services))
      assert.is_table(n.Services[WEB .. "-2"])
    end)

    it("node of an unknown node is nil", function()
      local n, err, meta = c.catalog:node("spec-catalog-absent")
      assert.is_nil(n)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)  -- Consul answers 200 "null"
    end)

    it("node_services gives the node and its services as a list", function()
      local n, err, meta = c.catalog:node_services(NODE)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(NODE, n.Node.Node)
      assert.are.equal(2, #n.Services)
      assert.are.equal(WEB, find(n.Services, "ID", WEB .. "-2").Service)
      local a = assert(c.catalog:node_services(A.node))
      assert.is_table(find(a.Services, "ID", "consul"))
    end)
  end)

  describe("connect", function()
    it("lists the Connect-capable instances of a service (a native one)", function()
      assert(register({ Service = { ID = NATIVE .. "-1", Service = NATIVE, Port = 9443,
        Connect = { Native = true } } }))
      local list, err, meta = c.catalog:connect(NATIVE)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(1, #list)
      assert.are.equal(NATIVE .. "-1", list[1].ServiceID)
      assert.is_true(list[1].ServiceConnect.Native)
      assert.are.equal(9443, list[1].ServicePort)
      -- a plain service has no Connect-capable instances
      assert.are.same({}, (c.catalog:connect(WEB)))
    end)
  end)

  describe("gateway_services", function()
    it("lists the services a terminating gateway links", function()
      assert(register({ Service = { ID = GW, Service = GW, Kind = "terminating-gateway",
        Port = 8443 } }))
      assert.are.equal(true, (c.config:apply({ Kind = "terminating-gateway", Name = GW,
        Services = { { Name = WEB, SNI = "web.example" } } })))
      local list, err, meta = c.catalog:gateway_services(GW)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(1, #list)
      assert.are.equal(GW, list[1].Gateway.Name)
      assert.are.equal(WEB, list[1].Service.Name)
      assert.are.equal("terminating-gateway", list[1].GatewayKind)
      assert.are.equal("web.example", list[1].SNI)
      -- no such gateway: Consul answers 200 "null"
      local none, nerr, nmeta = c.catalog:gateway_services("spec-catalog-absent")
      assert.is_nil(none)
      assert.is_nil(nerr)
      assert.are.equal(200, nmeta.status)
    end)
  end)

  ---------------------------------------------------------------------------
  it("deregister removes a service, then the whole node", function()
    local ok, err, meta = c.catalog:deregister({ Node = NODE, ServiceID = WEB .. "-2" })
    assert.are.equal(true, ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    local raw = raw_get("/v1/catalog/node/" .. NODE)
    assert.is_nil(raw.Services[WEB .. "-2"])
    assert.is_table(raw.Services[WEB .. "-1"])

    assert.are.equal(true, (c.catalog:deregister({ Node = NODE, Datacenter = A.dc })))
    assert.is_nil(raw_get("/v1/catalog/node/" .. NODE))  -- "null"
    assert.is_nil(find(raw_get("/v1/catalog/nodes"), "Node", NODE))
    assert.are.same({}, raw_get("/v1/catalog/service/" .. WEB))
  end)
end)
