-- The status routes (c.status) against the shared dev agent, on Lua 5.4 and LuaJIT.

local consul = require("consul")
local agent = require("spec.helpers.agent")

describe("consul status", function()
  local A, c, server_addr

  setup(function()
    A = agent.shared()
    c = consul.new({ addr = A.addr })
    -- the server RPC address, as the agent itself reports it
    local me = assert(c.agent:self())
    server_addr = "127.0.0.1:" .. me.DebugConfig.ServerPort
  end)

  teardown(function()
    if c then c:close() end
  end)

  it("leader is the dev server's RPC address, a string", function()
    local l, err, meta = c.status:leader()
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_string(l)
    assert.matches("^127%.0%.0%.1:%d+$", l)
    assert.are.equal(server_addr, l)
    -- the same as raw HTTP gives (a JSON string)
    local status, body = agent.http(A, "GET", "/v1/status/leader")
    assert.are.equal(200, status)
    assert.are.equal('"' .. l .. '"', (body:gsub("%s+$", "")))
  end)

  it("peers is an array holding the leader", function()
    local p, err, meta = c.status:peers()
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.same({ server_addr }, p)
  end)

  it("dc= names the datacenter; an unknown one fails", function()
    assert.are.equal(server_addr, (c.status:leader({ dc = A.dc })))
    assert.are.same({ server_addr }, (c.status:peers({ dc = A.dc })))
    local l, err, meta = c.status:leader({ dc = "spec-no-such-dc" })
    assert.is_nil(l)
    assert.are.equal("http", meta.code)
    assert.are.equal(500, meta.status)
    assert.matches("^consul: GET /v1/status/leader: 500 No path to datacenter", err)
  end)

  it("a client's default dc applies; an explicit dc= wins", function()
    local c2 = consul.new({ addr = A.addr, dc = "spec-no-such-dc" })
    finally(function() c2:close() end)
    local _, err = c2.status:peers()
    assert.matches("No path to datacenter", err, 1, true)
    assert.are.same({ server_addr }, (c2.status:peers({ dc = A.dc })))
  end)

  it("takes no path parameters", function()
    assert.has_error(function() c.status:leader("x") end)
    assert.has_error(function() c.status:peers({ bogus = true }) end)
  end)
end)
