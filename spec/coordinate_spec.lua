-- The coordinate routes (c.coordinate) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- Coordinates go to an external node ("spec-coordinate-node", registered in the catalog: the
-- servers drop updates for unknown nodes, and no agent overwrites its coordinate). Servers
-- apply coordinate updates in batches (every 100 ms in -dev, 5 s otherwise): polled with a
-- bounded timeout.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")
local sys = require("system")

local SLOW = os.getenv("CONSUL_TEST_VALGRIND") == "1" or os.getenv("CONSUL_TEST_ASAN") == "1"
local TIMEOUT = SLOW and 60 or 20

local NODE = "spec-coordinate-node"

local eventually = require("spec.helpers.util").eventually_within(TIMEOUT)

local find = require("spec.helpers.util").find

describe("consul coordinate", function()
  local A, c
  local COORD = { Vec = { 0.25, -0.5, 0.125, 0, 0, 0, 0, 0.0625 }, Error = 0.75,
    Adjustment = 0.001, Height = 2.5e-05 }

  local function cleanup()
    agent.http(A, "PUT", "/v1/catalog/deregister", json.encode({ Node = NODE }))
  end

  setup(function()
    A = agent.shared()
    c = consul.new({ addr = A.addr })
    cleanup()
    local status, body = agent.http(A, "PUT", "/v1/catalog/register",
      json.encode({ Node = NODE, Address = "10.3.4.5" }))
    assert(status == 200, body)
  end)

  teardown(function()
    if A then cleanup() end
    if c then c:close() end
  end)

  it("datacenters lists the WAN coordinates of the datacenter's servers", function()
    local dcs, err, meta = c.coordinate:datacenters()
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    local dc = assert(find(dcs, "Datacenter", A.dc))
    assert.are.equal("wan", dc.AreaID)
    local me = find(dc.Coordinates, "Node", A.node) or find(dc.Coordinates, "Node", A.node .. "." .. A.dc)
    assert(me, "no WAN coordinate for " .. A.node .. ": " .. json.encode(dc.Coordinates))
    assert.are.equal(8, #me.Coord.Vec)
    assert.is_number(me.Coord.Error)
  end)

  it("node of a node without a coordinate is nil", function()
    local r, err, meta = c.coordinate:node(NODE)
    assert.is_nil(r)
    assert.is_nil(err)
    assert.are.equal(404, meta.status)
  end)

  it("update stores a coordinate; node and nodes return it", function()
    local ok, err, meta = c.coordinate:update({ Node = NODE, Segment = "", Coord = COORD })
    assert.are.equal(true, ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)

    local res = eventually("the coordinate of " .. NODE, function()
      local r, e, m = c.coordinate:node(NODE)
      assert.is_nil(e)
      if r then return { r, m } end
    end)
    local got, gmeta = res[1], res[2]
    assert.are.equal(1, #got)
    assert.are.equal(NODE, got[1].Node)
    assert.are.equal("", got[1].Segment)
    assert.are.same(COORD, got[1].Coord)
    assert.is_number(gmeta.index)

    -- read independently of the module
    local status, body = agent.http(A, "GET", "/v1/coordinate/node/" .. NODE)
    assert.are.equal(200, status)
    assert.are.same(COORD, json.decode(body)[1].Coord)

    local all, nerr, nmeta = c.coordinate:nodes()
    assert.is_nil(nerr)
    assert.are.equal(200, nmeta.status)
    assert.are.same(COORD, find(all, "Node", NODE).Coord)
    assert.are.same(COORD, find(assert(c.coordinate:nodes({ segment = "" })), "Node", NODE).Coord)
  end)

  it("a second update replaces the coordinate", function()
    local second = { Vec = { 1, 2, 3, 4, 5, 6, 7, 8 }, Error = 0.5, Adjustment = -0.002,
      Height = 0.001 }
    assert.are.equal(true, (c.coordinate:update({ Node = NODE, Coord = second })))
    eventually("the second coordinate", function()
      local r = c.coordinate:node(NODE, { consistent = true })
      return r and r[1].Coord.Vec[8] == 8
    end)
    assert.are.same(second, (c.coordinate:node(NODE))[1].Coord)
  end)

  it("update refuses a malformed coordinate", function()
    local ok, err, meta = c.coordinate:update({ Node = NODE, Coord = { Vec = { 1, 2 } } })
    assert.is_nil(ok)
    assert.are.equal("http", meta.code)
    assert.is_true(meta.status == 400 or meta.status == 500)
    assert.matches("^consul: PUT /v1/coordinate/update: %d%d%d .*", err)
  end)

  it("nodes with dc= of an unknown datacenter fails", function()
    local r, err, meta = c.coordinate:nodes({ dc = "spec-no-such-dc" })
    assert.is_nil(r)
    assert.are.equal(500, meta.status)
    assert.matches("No path to datacenter", err, 1, true)
  end)
end)
