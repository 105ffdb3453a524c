-- The config entry routes (c.config) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- Entries: service-defaults "spec-config-*", and proxy-defaults "global" (one per cluster:
-- removed again at the end). Checked against raw HTTP (agent.http).

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")

local API = "spec-config-api"
local WEB = "spec-config-web"

local find = require("spec.helpers.util").find

describe("consul config", function()
  local A, c

  local function raw_get(path) return agent.get_json(A, path) end

  local function cleanup()
    agent.http(A, "DELETE", "/v1/config/service-defaults/" .. API)
    agent.http(A, "DELETE", "/v1/config/service-defaults/" .. WEB)
    agent.http(A, "DELETE", "/v1/config/proxy-defaults/global")
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

  it("apply writes a service-defaults entry (answer: true)", function()
    local ok, err, meta = c.config:apply({ Kind = "service-defaults", Name = API, Protocol = "http" })
    assert.are.equal(true, ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    local raw = raw_get("/v1/config/service-defaults/" .. API)
    assert.are.equal("http", raw.Protocol)
    assert.are.equal(API, raw.Name)
    assert(c.config:apply({ Kind = "service-defaults", Name = WEB, Protocol = "grpc" }))
  end)

  it("apply writes proxy-defaults global with its Config map", function()
    local ok, err = c.config:apply({ Kind = "proxy-defaults", Name = "global",
      Config = { protocol = "http", local_connect_timeout_ms = 1500 } })
    assert.are.equal(true, ok)
    assert.is_nil(err)
    local raw = raw_get("/v1/config/proxy-defaults/global")
    assert.are.equal("http", raw.Config.protocol)
    assert.are.equal(1500, raw.Config.local_connect_timeout_ms)
  end)

  it("get reads an entry back; nil for an unknown one", function()
    local e, err, meta = c.config:get("service-defaults", API)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    assert.are.equal("service-defaults", e.Kind)
    assert.are.equal(API, e.Name)
    assert.are.equal("http", e.Protocol)
    assert.is_number(e.ModifyIndex)

    local g = assert(c.config:get("proxy-defaults", "global"))
    assert.are.equal("http", g.Config.protocol)
    assert.are.equal(1500, g.Config.local_connect_timeout_ms)

    local none, nerr, nmeta = c.config:get("service-defaults", "spec-config-absent")
    assert.is_nil(none)
    assert.is_nil(nerr)
    assert.are.equal(404, nmeta.status)
  end)

  it("list gives the entries of a kind", function()
    local list, err, meta = c.config:list("service-defaults")
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal("http", find(list, "Name", API).Protocol)
    assert.are.equal("grpc", find(list, "Name", WEB).Protocol)
    local p = assert(c.config:list("proxy-defaults"))
    assert.are.equal(1, #p)
    assert.are.equal("global", p[1].Name)
    local none, berr, bmeta = c.config:list("spec-no-such-kind")
    assert.is_nil(none)
    assert.are.equal("http", bmeta.code)
    assert.matches("^consul: GET /v1/config/spec%-no%-such%-kind: %d%d%d .*kind", berr)
  end)

  it("apply with cas= writes only at the entry's ModifyIndex (answer: false otherwise)", function()
    local e = assert(c.config:get("service-defaults", API))
    local ok, err = c.config:apply({ Kind = "service-defaults", Name = API, Protocol = "tcp" },
      { cas = e.ModifyIndex - 1 })
    assert.are.equal(false, ok)
    assert.is_nil(err)
    assert.are.equal("http", raw_get("/v1/config/service-defaults/" .. API).Protocol)
    ok, err = c.config:apply({ Kind = "service-defaults", Name = API, Protocol = "tcp" },
      { cas = e.ModifyIndex })
    assert.are.equal(true, ok)
    assert.is_nil(err)
    assert.are.equal("tcp", raw_get("/v1/config/service-defaults/" .. API).Protocol)
  end)

  it("apply refuses an invalid entry", function()
    local ok, err, meta = c.config:apply({ Kind = "spec-no-such-kind", Name = "x" })
    assert.is_nil(ok)
    assert.are.equal("http", meta.code)
    assert.is_true(meta.status == 400 or meta.status == 500)
    assert.matches("^consul: PUT /v1/config: %d%d%d ", err)
  end)

  it("delete removes an entry", function()
    local r, err, meta = c.config:delete("service-defaults", WEB)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    -- Consul 1.8 answers "{}": the module hands over the decoded (empty) object
    assert.are.same({}, r)
    assert.is_nil(raw_get("/v1/config/service-defaults/" .. WEB))
    assert.is_nil((c.config:get("service-defaults", WEB)))
    assert.is_table((c.config:delete("proxy-defaults", "global")))
    assert.is_nil(raw_get("/v1/config/proxy-defaults/global"))
    assert.is_table((c.config:delete("service-defaults", API)))
  end)
end)
