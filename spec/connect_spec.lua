-- The connect routes (c.connect) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- -dev enables Connect with the built-in CA. ca_set_config is another spec's (it rotates
-- the CA); here the CA is only read. Intentions: "spec-connect-*", deleted before and after.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")

local WEB, API, DB = "spec-connect-web", "spec-connect-api", "spec-connect-db"

local find = require("spec.helpers.util").find

describe("consul connect", function()
  local A, c, id1, id2

  local function raw_get(path) return agent.get_json(A, path) end

  local function cleanup()
    for _, i in ipairs(raw_get("/v1/connect/intentions") or {}) do
      if i.SourceName:find("^spec%-connect%-") or i.DestinationName:find("^spec%-connect%-") then
        agent.http(A, "DELETE", "/v1/connect/intentions/" .. i.ID)
      end
    end
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

  describe("CA", function()
    it("ca_get_config gives the built-in provider's configuration", function()
      local cfg, err, meta = c.connect:ca_get_config()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal("consul", cfg.Provider)
      assert.is_table(cfg.Config)
      assert.is_string(cfg.Config.LeafCertTTL)
      assert.is_number(cfg.ModifyIndex)
    end)

    it("ca_roots gives the roots, the same as the agent's view", function()
      local r, err, meta = c.connect:ca_roots()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_number(meta.index)
      local active = find(r.Roots, "ID", r.ActiveRootID)
      assert.is_true(active.Active)
      assert.matches("^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-", active.RootCert)
      assert.matches("%.consul$", r.TrustDomain)
      local raw = raw_get("/v1/connect/ca/roots")
      assert.are.equal(raw.ActiveRootID, r.ActiveRootID)
      local ag = assert(c.agent:connect_ca_roots())
      assert.are.equal(ag.ActiveRootID, r.ActiveRootID)
      assert.are.equal(ag.TrustDomain, r.TrustDomain)
    end)
  end)

  describe("intentions", function()
    it("intention_create returns the new ID", function()
      local r, err, meta = c.connect:intention_create({ SourceName = WEB, DestinationName = API,
        Action = "allow", Description = "web to api", Meta = { owner = "spec" } })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", r.ID)
      id1 = r.ID
      id2 = assert(c.connect:intention_create({ SourceName = API, DestinationName = DB,
        Action = "deny" })).ID
      local raw = raw_get("/v1/connect/intentions/" .. id1)
      assert.are.equal(WEB, raw.SourceName)
      assert.are.equal("allow", raw.Action)
      assert.are.equal("spec", raw.Meta.owner)

      -- a duplicate source/destination pair is refused
      local _, derr, dmeta = c.connect:intention_create({ SourceName = WEB, DestinationName = API,
        Action = "deny" })
      assert.are.equal("http", dmeta.code)
      assert.matches("^consul: POST /v1/connect/intentions: %d%d%d .*duplicate", derr)
    end)

    it("intentions lists them; filter= narrows", function()
      local list, err, meta = c.connect:intentions()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_number(meta.index)
      assert.are.equal(API, find(list, "ID", id1).DestinationName)
      assert.are.equal("deny", find(list, "ID", id2).Action)
      local some = assert(c.connect:intentions({ filter = 'SourceName == "' .. WEB .. '"' }))
      assert.are.equal(1, #some)
      assert.are.equal(id1, some[1].ID)
    end)

    it("intention_get reads one; nil for an unknown ID", function()
      local i, err, meta = c.connect:intention_get(id1)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(id1, i.ID)
      assert.are.equal(WEB, i.SourceName)
      assert.are.equal(API, i.DestinationName)
      assert.are.equal("web to api", i.Description)
      assert.are.equal("default", i.SourceNS)
      local none, nerr, nmeta = c.connect:intention_get("00000000-0000-0000-0000-000000000000")
      assert.is_nil(none)
      assert.is_nil(nerr)
      assert.are.equal(404, nmeta.status)
    end)

    it("intention_match by source or destination, one name or several", function()
      local m, err, meta = c.connect:intention_match({ by = "source", name = WEB })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(1, #m[WEB])
      assert.are.equal(id1, m[WEB][1].ID)

      m = assert(c.connect:intention_match({ by = "destination", name = { API, DB } }))
      assert.are.equal(id1, m[API][1].ID)
      assert.are.equal(id2, m[DB][1].ID)

      -- Consul 1.8 answers 500 to a bad ?by=
      local none, berr, bmeta = c.connect:intention_match({ by = "sideways", name = WEB })
      assert.is_nil(none)
      assert.are.equal("http", bmeta.code)
      assert.matches("^consul: GET /v1/connect/intentions/match: %d%d%d 'by' parameter must be", berr)
    end)

    it("intention_check answers whether a connection is allowed", function()
      local r, err, meta = c.connect:intention_check({ source = WEB, destination = API })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_true(r.Allowed)
      assert.is_false(assert(c.connect:intention_check({ source = API, destination = DB })).Allowed)
      local none, merr, mmeta = c.connect:intention_check({ source = WEB })
      assert.is_nil(none)
      assert.are.equal("http", mmeta.code)
      assert.matches("^consul: GET /v1/connect/intentions/check: %d%d%d .*destination", merr)
    end)

    it("intention_update replaces it", function()
      local ok, err, meta = c.connect:intention_update(id1, { SourceName = WEB,
        DestinationName = API, Action = "deny", Description = "now denied" })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.same({ ID = id1 }, ok)  -- Consul answers {"ID": ...}
      local raw = raw_get("/v1/connect/intentions/" .. id1)
      assert.are.equal("deny", raw.Action)
      assert.are.equal("now denied", raw.Description)
      assert.is_false(assert(c.connect:intention_check({ source = WEB, destination = API })).Allowed)
    end)

    it("intention_delete removes it", function()
      local ok, err, meta = c.connect:intention_delete(id1)
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_nil(raw_get("/v1/connect/intentions/" .. id1))
      assert.is_nil((c.connect:intention_get(id1)))
      assert.are.equal(true, (c.connect:intention_delete(id2)))
      assert.is_nil(find(assert(c.connect:intentions()), "ID", id2))
    end)
  end)
end)
