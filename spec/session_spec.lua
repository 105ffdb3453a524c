-- Sessions (c.session) against a real Consul 1.8.7 dev agent (scripts/with-agent.sh), on
-- Lua 5.4 and LuaJIT.
--
-- What Consul stored is read back twice: through the module (c.session:info) and with
-- agent.http (curl + dkjson, independent of the module). Every session made here is
-- destroyed in after_each; keys live under "spec/session/", wiped before and after.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")

local IS_JIT = type(jit) == "table"
local P = "spec/session/"
local UNKNOWN = "00000000-0000-0000-0000-000000000000"

describe("consul sessions", function()
  local A, c, node
  local made = {}

  local function raw(method, path, body) return agent.raw(A, method, path, body) end

  -- the session as Consul has it, read without the module (nil when absent)
  local function raw_info(id)
    local status, body = raw("GET", "/v1/session/info/" .. id)
    assert.are.equal(200, status)
    local t = json.decode(body)
    return type(t) == "table" and t[1] or nil
  end

  local function create(def, opts)
    local id, err, meta = c.session:create(def, opts)
    if id then made[#made + 1] = id end
    return id, err, meta
  end

  local function contains(list, id)
    for _, s in ipairs(list) do
      if s.ID == id then return s end
    end
    return nil
  end

  local function is_integer(v)
    if IS_JIT then return type(v) == "number" and v == math.floor(v) end
    return math.type(v) == "integer"
  end

  setup(function()
    local shared = agent.shared()
    A, node = shared.addr, shared.node
    c = consul.new({ addr = A })
    raw("DELETE", "/v1/kv/" .. P .. "?recurse")
  end)

  after_each(function()
    for i = #made, 1, -1 do
      raw("PUT", "/v1/session/destroy/" .. made[i])
      made[i] = nil
    end
  end)

  teardown(function()
    raw("DELETE", "/v1/kv/" .. P .. "?recurse")
    if c then c:close() end
  end)

  ---------------------------------------------------------------------------
  describe("create", function()
    it("with every field, TTL and LockDelay as seconds: Consul stores them", function()
      local id, err, meta = create({
        Name = "spec every field", Node = node, TTL = 15, LockDelay = 2,
        Behavior = "delete", Checks = { "serfHealth" },
      })
      assert.is_nil(err)
      assert.is_string(id)
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", id)
      assert.are.equal(200, meta.status)

      local s = assert(c.session:info(id))
      assert.is_nil(s[1])  -- the session itself, not an array
      assert.are.equal(id, s.ID)
      assert.are.equal("spec every field", s.Name)
      assert.are.equal(node, s.Node)
      assert.are.equal("15s", s.TTL)
      assert.are.equal(2000000000, s.LockDelay)  -- nanoseconds in Consul's answer
      assert.is_true(is_integer(s.LockDelay))
      assert.are.equal("delete", s.Behavior)
      -- Consul 1.8 keeps the old Checks as NodeChecks
      assert.are.same({ "serfHealth" }, s.NodeChecks)
      assert.is_true(is_integer(s.CreateIndex))

      local r = assert(raw_info(id))
      assert.are.equal("15s", r.TTL)
      assert.are.equal(2000000000, r.LockDelay)
      assert.are.equal("delete", r.Behavior)
      assert.are.equal(node, r.Node)
    end)

    it("TTL and LockDelay as duration strings, NodeChecks, Behavior release", function()
      local id = assert(create({
        Name = "spec strings", TTL = "15s", LockDelay = "3s", Behavior = "release",
        NodeChecks = { "serfHealth" },
      }))
      local s = assert(c.session:info(id))
      assert.are.equal("15s", s.TTL)
      assert.are.equal(3000000000, s.LockDelay)
      assert.are.equal("release", s.Behavior)
      assert.are.same({ "serfHealth" }, s.NodeChecks)
      assert.are.equal(node, s.Node)  -- the agent's own node by default
    end)

    it("fractional seconds and milliseconds", function()
      local id = assert(create({ TTL = 10.5, LockDelay = 1.5 }))
      local s = assert(c.session:info(id))
      assert.are.equal(1500000000, s.LockDelay)
      local id2 = assert(create({ TTL = "12000ms", LockDelay = "250ms" }))
      local s2 = assert(c.session:info(id2))
      assert.are.equal("12000ms", s2.TTL)
      assert.are.equal(250000000, s2.LockDelay)
      -- Consul parses what it stored: 10.5 s went out as a duration it accepts
      assert.matches("^10%.5", s.TTL)
    end)

    it("LockDelay 0 and no TTL: Consul's defaults otherwise", function()
      local id = assert(create({ LockDelay = 0 }))
      local s = assert(c.session:info(id))
      assert.are.equal(0, s.LockDelay)
      assert.are.equal("", s.TTL)
      local id2 = assert(create({}))
      local s2 = assert(c.session:info(id2))
      assert.are.equal(15000000000, s2.LockDelay)  -- Consul's default lock-delay
      assert.are.equal("release", s2.Behavior)
      local id3 = assert(create())
      assert.is_truthy(c.session:info(id3))
    end)

    it("ServiceChecks with a registered service's check", function()
      local svc = "spec-session-svc"
      assert(c.agent:service_register({
        ID = svc, Name = svc, Port = 1,
        Check = { CheckID = svc .. "-check", TTL = "60s", Status = "passing" },
      }))
      finally(function() c.agent:service_deregister(svc) end)
      local id, err = create({ Name = "spec service checks", NodeChecks = consul.empty_array,
        ServiceChecks = { { ID = svc .. "-check" } } })
      assert(id, err)
      local s = assert(c.session:info(id))
      assert.is_table(s.ServiceChecks)
      assert.are.equal(svc .. "-check", s.ServiceChecks[1].ID)
      assert.are.equal(0, #(s.NodeChecks or {}))  -- consul.empty_array went out as []
      -- the check failing invalidates the session
      assert(c.agent:check_fail(svc .. "-check"))
      local gone = false
      for _ = 1, 100 do
        if c.session:info(id) == nil then gone = true break end
        os.execute("sleep 0.05")
      end
      assert.is_true(gone, "the session outlived its failing service check")
    end)

    it("TTL outside 10s..24h: nil, Consul's message passed through, meta.status", function()
      for _, ttl in ipairs({ 5, "5s", 86401, "25h" }) do
        local id, err, meta = create({ TTL = ttl })
        assert.is_nil(id, "TTL " .. tostring(ttl) .. " accepted")
        assert.is_string(err)
        assert.matches("^consul: PUT /v1/session/create: %d+ ", err)
        assert.matches("Invalid Session TTL", err, 1, true)
        assert.is_true(meta.status == 500 or meta.status == 400, tostring(meta.status))
        assert.are.equal("http", meta.code)
      end
    end)

    it("a bad Behavior: nil, Consul's message", function()
      local id, err, meta = create({ Behavior = "bogus" })
      assert.is_nil(id)
      assert.matches("Invalid Behavior setting", err, 1, true)
      assert.is_true(meta.status == 500 or meta.status == 400)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("destroy, info, renew", function()
    it("destroy: true, and the session is gone", function()
      local id = assert(create({ Name = "spec destroy" }))
      assert.is_truthy(raw_info(id))
      local ok, err, meta = c.session:destroy(id)
      assert.is_true(ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_nil(raw_info(id))
      local s, err2 = c.session:info(id)
      assert.is_nil(s)
      assert.is_nil(err2)
    end)

    it("destroy of an unknown id: true (Consul's answer)", function()
      assert.is_true((c.session:destroy(UNKNOWN)))
    end)

    it("info and renew of an unknown id: nil, nil", function()
      local s, err, meta = c.session:info(UNKNOWN)
      assert.is_nil(s)
      assert.is_nil(err)
      assert.is_table(meta)
      local r, err2, meta2 = c.session:renew(UNKNOWN)
      assert.is_nil(r)
      assert.is_nil(err2)
      assert.is_table(meta2)
      assert.are.equal(404, meta2.status)
    end)

    it("renew: the session table (not an array)", function()
      local id = assert(create({ Name = "spec renew", TTL = "20s" }))
      local s, err = c.session:renew(id)
      assert.is_nil(err)
      assert.is_table(s)
      assert.is_nil(s[1])
      assert.are.equal(id, s.ID)
      assert.are.equal("20s", s.TTL)
      assert.are.equal("spec renew", s.Name)
    end)

    it("info of a malformed id: an error, not absent", function()
      local s, err, meta = c.session:info("not-a-uuid")
      assert.is_nil(s)
      assert.is_string(err)
      assert.matches("^consul: GET /v1/session/info/not%-a%-uuid: ", err)
      assert.are.equal("http", meta.code)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("node, list", function()
    it("node(node): an array with the node's sessions", function()
      local id = assert(create({ Name = "spec node" }))
      local list, err = c.session:node(node)
      assert.is_nil(err)
      assert.is_table(list)
      local s = contains(list, id)
      assert.is_truthy(s, "session not listed for its node")
      assert.are.equal("spec node", s.Name)
      for _, e in ipairs(list) do assert.are.equal(node, e.Node) end
      local none = assert(c.session:node("spec-no-such-node"))
      assert.are.equal(0, #none)
    end)

    it("list(): an array with every session", function()
      local id1 = assert(create({ Name = "spec list 1" }))
      local id2 = assert(create({ Name = "spec list 2" }))
      local list, err, meta = c.session:list()
      assert.is_nil(err)
      assert.is_table(list)
      assert.is_truthy(contains(list, id1))
      assert.is_truthy(contains(list, id2))
      assert.is_number(meta.index)
      assert.is_true(c.session:destroy(id1))
      assert.is_nil(contains(assert(c.session:list()), id1))
      assert.is_truthy(contains(assert(c.session:list()), id2))
    end)

    it("per-call dc: the agent's own works, an unknown one fails with Consul's message", function()
      local dc = agent.shared().dc
      local id, err = create({ Name = "spec dc" }, { dc = dc })
      assert(id, err)
      assert.is_truthy(contains(assert(c.session:list({ dc = dc })), id))
      assert.is_truthy(c.session:info(id, { dc = dc }))
      assert.is_truthy(c.session:node(node, { dc = dc }))
      assert.is_table((c.session:renew(id, { dc = dc })))
      for _, call in ipairs({
        function() return c.session:list({ dc = "spec-nowhere" }) end,
        function() return c.session:info(id, { dc = "spec-nowhere" }) end,
        function() return c.session:create({ Name = "x" }, { dc = "spec-nowhere" }) end,
        function() return c.session:destroy(id, { dc = "spec-nowhere" }) end,
      }) do
        local r, e, meta = call()
        assert.is_nil(r)
        assert.matches("No path to datacenter", e, 1, true)
        assert.are.equal(500, meta.status)
      end
      assert.is_truthy(c.session:info(id), "destroyed through another dc")
      assert.is_true(c.session:destroy(id, { dc = dc }))
      assert.is_nil(c.session:info(id))
    end)
  end)

  ---------------------------------------------------------------------------
  describe("behavior", function()
    local function acquire(key, id)
      assert.is_true((c.kv:put(key, "v", { acquire = id })))
      local rec = assert(c.kv:record(key))
      assert.are.equal(id, rec.Session)
    end

    it("delete: a key acquired by the session is deleted when it is destroyed", function()
      local key = P .. "behavior/delete"
      local id = assert(create({ Behavior = "delete", LockDelay = 0 }))
      acquire(key, id)
      assert.is_true(c.session:destroy(id))
      local rec, err = c.kv:record(key)
      assert.is_nil(err)
      assert.is_nil(rec, "the key survived its delete session")
      local status = raw("GET", "/v1/kv/" .. key)
      assert.are.equal(404, status)
    end)

    it("release: the key stays, without a session", function()
      local key = P .. "behavior/release"
      local id = assert(create({ Behavior = "release", LockDelay = 0 }))
      acquire(key, id)
      assert.is_true(c.session:destroy(id))
      local rec = assert(c.kv:record(key))
      assert.is_nil(rec.Session)
      assert.are.equal("v", rec.Value)
    end)
  end)
end)
