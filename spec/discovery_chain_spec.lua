-- The discovery chain routes (c.discovery_chain) against the shared dev agent, on Lua 5.4 and
-- LuaJIT. A service-defaults entry gives "spec-chain-api" the http protocol, a service-resolver
-- a connect timeout; both are removed before and after.

local consul = require("consul")
local agent = require("spec.helpers.agent")

local API = "spec-chain-api"

describe("consul discovery_chain", function()
  local A, c

  local function cleanup()
    agent.http(A, "DELETE", "/v1/config/service-resolver/" .. API)
    agent.http(A, "DELETE", "/v1/config/service-defaults/" .. API)
  end

  setup(function()
    A = agent.shared()
    c = consul.new({ addr = A.addr })
    cleanup()
    assert(c.config:apply({ Kind = "service-defaults", Name = API, Protocol = "http" }))
    assert(c.config:apply({ Kind = "service-resolver", Name = API, ConnectTimeout = "3s" }))
  end)

  teardown(function()
    if A then cleanup() end
    if c then c:close() end
  end)

  local TARGET = API .. ".default." -- .. dc

  it("get compiles the chain from the config entries", function()
    local r, err, meta = c.discovery_chain:get(API)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    local ch = r.Chain
    assert.are.equal(API, ch.ServiceName)
    assert.are.equal("default", ch.Namespace)
    assert.are.equal(A.dc, ch.Datacenter)
    assert.are.equal("http", ch.Protocol)
    assert.are.equal("resolver:" .. TARGET .. A.dc, ch.StartNode)
    local node = ch.Nodes["resolver:" .. TARGET .. A.dc]
    assert.are.equal("resolver", node.Type)
    assert.are.equal("3s", node.Resolver.ConnectTimeout)
    assert.is_falsy(node.Resolver.Default)  -- omitted when false
    assert.are.equal(API, ch.Targets[TARGET .. A.dc].Service)
    assert.is_nil(ch.CustomizationHash)
  end)

  it("get of a service without entries gives the default chain", function()
    local r = assert(c.discovery_chain:get("spec-chain-plain"))
    assert.are.equal("tcp", r.Chain.Protocol)
    assert.is_true(r.Chain.Nodes["resolver:spec-chain-plain.default." .. A.dc].Resolver.Default)
  end)

  it("compile with overrides: the body reaches the compiler", function()
    local r, err, meta = c.discovery_chain:compile(API, { OverrideProtocol = "grpc",
      OverrideConnectTimeout = "7s" })
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    local ch = r.Chain
    assert.are.equal("grpc", ch.Protocol)
    assert.are.equal("7s", ch.Nodes["resolver:" .. TARGET .. A.dc].Resolver.ConnectTimeout)
    assert.is_string(ch.CustomizationHash)
    assert.are_not.equal("", ch.CustomizationHash)
  end)

  -- Regression (was a gap, fixed; csrc/routes.c:142): compile's body is optional (B_OPT), but Consul 1.8 decodes
  -- the POST body unconditionally: an empty one is a 400 ("Request decoding failed: EOF").
  -- Fix: send "{}" when no body is given (or make the body required).
  it("compile without a body is get by POST", function()
    -- (the route's body is optional)
    local r, err = c.discovery_chain:compile(API)
    assert.is_nil(err)
    assert.are.equal("http", r.Chain.Protocol)
    assert.is_nil(r.Chain.CustomizationHash)
  end)

  it("compile_dc= names the datacenter to compile for", function()
    local r, err = c.discovery_chain:compile(API, { OverrideProtocol = "http2" },
      { compile_dc = A.dc })
    assert.is_nil(err)
    assert.are.equal("http2", r.Chain.Protocol)
    assert.are.equal(A.dc, r.Chain.Datacenter)

    -- compiled for another datacenter, the targets move there
    r, err = c.discovery_chain:get(API, { compile_dc = "spec-dc2" })
    assert.is_nil(err)
    assert.are.equal("spec-dc2", r.Chain.Datacenter)
    assert.are.equal(API, r.Chain.Targets[TARGET .. "spec-dc2"].Service)
    assert.are.equal("spec-dc2", r.Chain.Targets[TARGET .. "spec-dc2"].Datacenter)
  end)

  it("compile refuses a bad override", function()
    local r, err, meta = c.discovery_chain:compile(API, { OverrideConnectTimeout = "soon" })
    assert.is_nil(r)
    assert.are.equal("http", meta.code)
    assert.matches("^consul: POST /v1/discovery%-chain/spec%-chain%-api: %d%d%d ", err)
  end)
end)
