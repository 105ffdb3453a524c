-- The prepared query routes (c.query) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- The query serves "spec-query-web": two instances on an external node
-- ("spec-query-node"), -ok passing and tagged "blue", -bad critical. Queries and the node are
-- removed before and after.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")

local NODE = "spec-query-node"
local WEB = "spec-query-web"
local QNAME = "spec-query-q"

local function ids(nodes)
  local t = {}
  for _, n in ipairs(nodes) do t[#t + 1] = n.Service.ID end
  table.sort(t)
  return t
end

describe("consul query", function()
  local A, c, qid

  local function raw_get(path) return agent.get_json(A, path) end

  local function cleanup()
    for _, q in ipairs(raw_get("/v1/query") or {}) do
      if q.Name:find("^spec%-query%-") then agent.http(A, "DELETE", "/v1/query/" .. q.ID) end
    end
    agent.http(A, "PUT", "/v1/catalog/deregister", json.encode({ Node = NODE }))
  end

  local function register(id, tags, status)
    local st, body = agent.http(A, "PUT", "/v1/catalog/register", json.encode({
      Node = NODE, Address = "10.4.5.6",
      Service = { ID = id, Service = WEB, Tags = tags, Port = 80 },
      Check = { CheckID = id .. "-check", Name = id, Status = status, ServiceID = id },
    }))
    assert(st == 200, body)
  end

  setup(function()
    A = agent.shared()
    c = consul.new({ addr = A.addr })
    cleanup()
    register(WEB .. "-ok", { "blue" }, "passing")
    register(WEB .. "-bad", { "green" }, "critical")
  end)

  teardown(function()
    if A then cleanup() end
    if c then c:close() end
  end)

  it("create makes a query and returns its ID", function()
    local r, err, meta = c.query:create({ Name = QNAME, Service = { Service = WEB } })
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", r.ID)
    qid = r.ID
    local raw = raw_get("/v1/query/" .. qid)
    assert.are.equal(QNAME, raw[1].Name)
    assert.are.equal(WEB, raw[1].Service.Service)
  end)

  it("list includes it", function()
    local list, err, meta = c.query:list()
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    local found
    for _, q in ipairs(list) do
      if q.ID == qid then found = q end
    end
    assert.are.equal(QNAME, found.Name)
  end)

  it("get returns Consul's one-element array; nil for an unknown ID", function()
    local r, err, meta = c.query:get(qid)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(1, #r)
    assert.are.equal(qid, r[1].ID)
    assert.are.equal(QNAME, r[1].Name)
    assert.is_false(r[1].Service.OnlyPassing)

    local none, nerr, nmeta = c.query:get("00000000-0000-0000-0000-000000000000")
    assert.is_nil(none)
    assert.is_nil(nerr)
    assert.are.equal(404, nmeta.status)
  end)

  it("execute returns the healthy instances (by ID and by name)", function()
    local r, err, meta = c.query:execute(qid)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(WEB, r.Service)
    assert.are.equal(A.dc, r.Datacenter)
    -- a critical instance is never returned; OnlyPassing=false keeps warnings only
    assert.are.same({ WEB .. "-ok" }, ids(r.Nodes))
    assert.are.equal(NODE, r.Nodes[1].Node.Node)
    assert.are.equal(0, r.Failovers)

    local byname = assert(c.query:execute(QNAME, { near = "_agent", limit = 1 }))
    assert.are.same({ WEB .. "-ok" }, ids(byname.Nodes))
    local cached = assert(c.query:execute(QNAME, { cached = true }))
    assert.are.same({ WEB .. "-ok" }, ids(cached.Nodes))
  end)

  -- Regression (was a bug, fixed; csrc/client.c:580, q_value, Q_BOOL): connect=true goes out as a bare
  -- "?connect", and Consul 1.8 reads it with Query().Get("connect") != "": ignored. Fix: send
  -- "connect=true" (see agent_spec's wan=true).
  it("execute with connect=true keeps only the Connect-capable instances", function()
    local st, body = agent.http(A, "PUT", "/v1/catalog/register", json.encode({
      Node = NODE, Address = "10.4.5.6",
      Service = { ID = WEB .. "-native", Service = WEB, Port = 443, Connect = { Native = true } },
    }))
    assert(st == 200, body)
    finally(function()
      agent.http(A, "PUT", "/v1/catalog/deregister",
        json.encode({ Node = NODE, ServiceID = WEB .. "-native" }))
    end)
    assert.are.same({ WEB .. "-native", WEB .. "-ok" }, ids(assert(c.query:execute(qid)).Nodes))
    -- Consul 1.8 reads ?connect with Query().Get("connect") != "": a bare "?connect" is ignored
    local conn = assert(c.query:execute(QNAME, { connect = true }))
    assert.are.same({ WEB .. "-native" }, ids(conn.Nodes),
      "the module sent a bare ?connect, which Consul ignores")
  end)

  it("update replaces the definition", function()
    register(WEB .. "-bad", { "green" }, "passing")
    assert.are.same({ WEB .. "-bad", WEB .. "-ok" }, ids(assert(c.query:execute(qid)).Nodes))

    local ok, err, meta = c.query:update(qid, { Name = QNAME,
      Service = { Service = WEB, Tags = { "blue" }, OnlyPassing = true } })
    assert.are.equal(true, ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    local raw = raw_get("/v1/query/" .. qid)[1]
    assert.are.same({ "blue" }, raw.Service.Tags)
    assert.is_true(raw.Service.OnlyPassing)
    assert.are.same({ WEB .. "-ok" }, ids(assert(c.query:execute(qid)).Nodes))
  end)

  it("explain shows the query as it would run", function()
    local r, err, meta = c.query:explain(qid)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(qid, r.Query.ID)
    assert.are.equal(WEB, r.Query.Service.Service)
    assert.are.same({ "blue" }, r.Query.Service.Tags)
    -- a template renders for the name it is explained with
    local t = assert(c.query:create({ Name = "spec-query-tpl-", Template = { Type = "name_prefix_match" },
      Service = { Service = "${name.full}" } }))
    local e = assert(c.query:explain("spec-query-tpl-anything"))
    assert.are.equal("spec-query-tpl-anything", e.Query.Service.Service)
    assert.are.equal(true, (c.query:delete(t.ID)))
  end)

  it("delete removes it", function()
    local ok, err, meta = c.query:delete(qid)
    assert.are.equal(true, ok)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_nil(raw_get("/v1/query/" .. qid))
    assert.is_nil((c.query:get(qid)))
    local r, eerr, emeta = c.query:execute(qid)
    assert.is_nil(r)
    assert.is_nil(eerr)
    assert.are.equal(404, emeta.status)
  end)
end)
