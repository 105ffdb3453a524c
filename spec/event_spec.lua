-- The event routes (c.event) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- User events travel by gossip: the agent lists an event once it has received it back, and
-- only if its node, service and tag filters match the agent. Polls with a bounded timeout.
-- Event names: "spec-event-*".
--
-- Consul's JSON carries Payload as base64; the module decodes it (as Consul's Go
-- client's UserEvent.Payload is []byte, decoded); these specs pin that down.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local json = require("dkjson")
local sys = require("system")

local IS_JIT = type(jit) == "table"
local SLOW = os.getenv("CONSUL_TEST_VALGRIND") == "1" or os.getenv("CONSUL_TEST_ASAN") == "1"
local TIMEOUT = SLOW and 60 or 15

local eventually = require("spec.helpers.util").eventually_within(TIMEOUT)

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for k = 3, 0, -1 do
      local v = math.floor(n / 64 ^ k) % 64
      chars[#chars + 1] = B64:sub(v + 1, v + 1)
    end
    if not b then chars[3], chars[4] = "=", "=" elseif not c then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

local find = require("spec.helpers.util").find

describe("consul event", function()
  local A, c
  -- unique per run, so events of an earlier run in the same agent do not count
  local RUN = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
  local NAME = "spec-event-" .. RUN

  setup(function()
    A = agent.shared()
    c = consul.new({ addr = A.addr })
  end)

  teardown(function()
    if c then c:close() end
  end)

  -- the listed event with that ID, once the agent has it
  local function listed(id, name)
    return eventually("event " .. id .. " in event/list", function()
      local list, err = c.event:list({ name = name or NAME })
      assert.is_nil(err)
      return find(list, "ID", id)
    end)
  end

  it("fire sends an event with a payload; list finds it, the payload decoded", function()
    local payload = "hello \0 \255 world"
    local ev, err, meta = c.event:fire(NAME, payload)
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", ev.ID)
    assert.are.equal(NAME, ev.Name)
    assert.are.equal(payload, ev.Payload)  -- Consul's base64, decoded as its Go client does
    assert.are.equal("", ev.NodeFilter)
    assert.are.equal(1, ev.Version)

    local got = listed(ev.ID)
    assert.are.equal(NAME, got.Name)
    assert.are.equal(payload, got.Payload)
    assert.is_true(got.LTime > 0)

    -- the same, read independently of the module
    local status, body = agent.http(A, "GET", "/v1/event/list?name=" .. agent.urlencode(NAME))
    assert.are.equal(200, status)
    local raw = find(json.decode(body), "ID", ev.ID)
    assert.are.equal(base64(payload), raw.Payload)
  end)

  it("fire without a payload: no Payload field", function()
    local ev, err = c.event:fire(NAME .. "-empty")
    assert.is_nil(err)
    assert.is_nil(ev.Payload)
    local got = listed(ev.ID, NAME .. "-empty")
    assert.is_nil(got.Payload)
  end)

  it("fire with a table body sends its JSON as the payload", function()
    local ev = assert(c.event:fire(NAME .. "-json", { a = 1 }))
    assert.are.equal('{"a":1}', ev.Payload)
  end)

  it("node=, service=, tag= become the event's filters; the agent keeps only matching events", function()
    -- the agent matches service and tag filters against its own (local) services
    local SVC = "spec-event-svc"
    assert(c.agent:service_register({ ID = SVC, Name = SVC, Tags = { "spec-tag" }, Port = 1 }))
    finally(function() c.agent:service_deregister(SVC) end)

    -- events for another node, another tag: the agent receives them but does not list them
    local other = assert(c.event:fire(NAME .. "-f", "x", { node = "^spec-no-such-node$" }))
    assert.are.equal("^spec-no-such-node$", other.NodeFilter)
    local untagged = assert(c.event:fire(NAME .. "-f", "x", { service = SVC, tag = "spec-no-tag" }))
    assert.are.equal(SVC, untagged.ServiceFilter)
    assert.are.equal("spec-no-tag", untagged.TagFilter)
    -- one for this node, the service and its tag
    local mine, err = c.event:fire(NAME .. "-f", "y", { node = "^" .. A.node .. "$",
      service = "^" .. SVC .. "$", tag = "^spec-tag$" })
    assert.is_nil(err)
    assert.are.equal("^" .. A.node .. "$", mine.NodeFilter)
    assert.are.equal("^" .. SVC .. "$", mine.ServiceFilter)
    assert.are.equal("^spec-tag$", mine.TagFilter)
    local got = listed(mine.ID, NAME .. "-f")
    assert.are.equal("^spec-tag$", got.TagFilter)
    assert.are.equal("y", got.Payload)
    -- fired before mine, over the same path: they would be there by now
    local list = assert(c.event:list({ name = NAME .. "-f" }))
    assert.is_nil(find(list, "ID", other.ID))
    assert.is_nil(find(list, "ID", untagged.ID))
  end)

  it("list without a name lists every event the agent has", function()
    local ev = assert(c.event:fire(NAME .. "-all"))
    listed(ev.ID, NAME .. "-all")
    local all, err, meta = c.event:list()
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_table(find(all, "ID", ev.ID))
    assert.is_nil(find(assert(c.event:list({ name = "spec-event-none-" .. RUN })), "ID", ev.ID))
  end)

  -- event/list's X-Consul-Index is a 64-bit hash of the events, almost always above 2^53.
  -- Lua 5.4 gets it exactly as an integer (two's complement above 2^63); LuaJIT, whose
  -- numbers are doubles, gets it as a decimal string, and index= takes it back as it is.
  it("list blocks on its (hash) index until wait= runs out", function()
    local ev = assert(c.event:fire(NAME .. "-block"))
    listed(ev.ID, NAME .. "-block")
    local _, _, meta = assert(c.event:list({ name = NAME .. "-block" }))
    if IS_JIT then
      assert.is_truthy(type(meta.index) == "number" or meta.index:match("^%d+$"), meta.index)
    else
      assert.is_number(meta.index)
    end
    local t0 = sys.gettime()
    local list, err, meta2 = c.event:list({ name = NAME .. "-block", index = meta.index,
      wait = "400ms" })
    local dt = sys.gettime() - t0
    assert.is_nil(err)
    assert.is_table(find(list, "ID", ev.ID))
    assert.are.equal(meta.index, meta2.index)
    assert(dt >= 0.3, string.format("returned after %.3f s, not blocked: index %s", dt,
      tostring(meta.index)))
  end)

  it("fire checks its arguments", function()
    assert.has_error(function() c.event:fire() end)
    assert.has_error(function() c.event:fire(NAME, 42) end)
    assert.has_error(function() c.event:fire(NAME, "p", { bogus = 1 }) end)
  end)
end)
