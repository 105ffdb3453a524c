-- Every group of routes through a real nginx (Debian's nginx + lua-nginx-module, LuaJIT 2.1):
-- each call is made in a handler, where it yields the worker over cosockets (lua/consul/ngx.lua),
-- and what the handler got comes back to the spec whole (spec/helpers/ngx_wire.lua) to be
-- checked against the expectations of the group's Lua spec (spec/<group>_spec.lua) and, where
-- the module wrote, against the agent read over raw HTTP (curl, independent of the module).
-- One nginx serves every group: the shared agent, and a throwaway agent with ACLs and a gossip
-- key (acl, operator keyring, snapshot: a restore reshapes an agent's whole state).
-- These run in the LuaJIT suite (nginx's own Lua is LuaJIT).

local consul = require("consul")
local agent = require("spec.helpers.agent")
local nginx = require("spec.helpers.nginx")
local util = require("spec.helpers.util")
local W = require("spec.helpers.ngx_wire")
local json = require("dkjson")

local P = "spec/nginx_routes/"
local SKIP = nginx.suite_skip()

if SKIP then
  describe("consul routes in nginx", function()
    pending(SKIP)
  end)
  return
end

local find = util.find
local NODE = "spec-nginx-routes-node"       -- an external node (catalog, health, query, coordinate)
local WEB = "spec-nginx-routes-web"         -- its service
local ASVC = "spec-nginx-routes-agent"      -- a service of the agent itself
local CHK = "spec-nginx-routes-chk"         -- a check of the agent itself
local CFG = "spec-nginx-routes-cfg"         -- a service-defaults entry
local SRC, DST = "spec-nginx-routes-src", "spec-nginx-routes-dst"  -- an intention
local QNAME = "spec-nginx-routes-q"         -- a prepared query
local CHAIN = "spec-nginx-routes-chain"     -- a discovery chain
local RUN = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local EVENT = "spec-nginx-routes-" .. RUN   -- a user event

-- The handlers. Globals from init: C (shared agent), K (the throwaway agent, management
-- token), KANON (the same agent, no token), R = W.pack, OUT(t) answers with t, and the names
-- above. A handler that raises answers 500: the spec shows error.log then.
local LOCATIONS = {}

LOCATIONS["/status"] = [[
  OUT({ leader = R(C.status:leader()), peers = R(C.status:peers()),
        nodc = R(C.status:leader({ dc = "spec-no-such-dc" })) })
]]

LOCATIONS["/agent"] = [[
  local out = {}
  if ngx.var.arg_step == "register" then
    out.self = R(C.agent:self())
    out.members = R(C.agent:members())
    out.reg = R(C.agent:service_register({ ID = ASVC .. "-1", Name = ASVC, Tags = { "primary", "v1" },
      Meta = { version = "1.0" }, Port = 8080, Address = "127.0.0.2",
      Check = { CheckID = ASVC .. "-1-ttl", Name = "web ttl", TTL = "30s", Status = "passing" } }))
    out.services = R(C.agent:services())
    out.service = R(C.agent:service(ASVC .. "-1"))
    out.absent = R(C.agent:service(ASVC .. "-absent"))
    out.chk = R(C.agent:check_register({ ID = CHK, Name = "spec nginx check", TTL = "60s",
      Notes = "from nginx" }))
    out.checks_before = R(C.agent:checks())
    out.pass = R(C.agent:check_pass(CHK, { note = "all good" }))
    out.checks = R(C.agent:checks())
    out.pass_absent = R(C.agent:check_pass(CHK .. "-absent"))
  else
    out.dereg = R(C.agent:service_deregister(ASVC .. "-1"))
    out.chk_dereg = R(C.agent:check_deregister(CHK))
    out.services = R(C.agent:services())
    out.checks = R(C.agent:checks())
  end
  OUT(out)
]]

LOCATIONS["/catalog"] = [[
  local out = {}
  if ngx.var.arg_step == "register" then
    out.reg = R(C.catalog:register({ Node = NODE, Address = "10.1.2.3",
      NodeMeta = { ["spec-owner"] = "nginx", rack = "r1" },
      Service = { ID = WEB .. "-1", Service = WEB, Tags = { "blue", "v1" }, Port = 8080,
        Meta = { version = "1" } },
      Check = { CheckID = WEB .. "-1-check", Name = "web alive", Status = "passing",
        ServiceID = WEB .. "-1" } }))
    out.reg2 = R(C.catalog:register({ Node = NODE, Address = "10.1.2.3",
      NodeMeta = { ["spec-owner"] = "nginx", rack = "r1" },
      Service = { ID = WEB .. "-2", Service = WEB, Tags = { "green" }, Port = 8081 },
      Check = { CheckID = WEB .. "-2-check", Name = "web down", Status = "critical",
        ServiceID = WEB .. "-2" } }))
    out.datacenters = R(C.catalog:datacenters())
    out.nodes = R(C.catalog:nodes())
    out.nodes_meta = R(C.catalog:nodes({ node_meta = { rack = "r1", ["spec-owner"] = "nginx" } }))
    out.services = R(C.catalog:services())
    out.service = R(C.catalog:service(WEB))
    out.service_tag = R(C.catalog:service(WEB, { tag = "blue" }))
    out.node = R(C.catalog:node(NODE))
    out.node_absent = R(C.catalog:node(NODE .. "-absent"))
    out.nodc = R(C.catalog:nodes({ dc = "spec-no-such-dc" }))
  else
    out.dereg = R(C.catalog:deregister({ Node = NODE }))
    out.node = R(C.catalog:node(NODE))
    out.service = R(C.catalog:service(WEB))
  end
  OUT(out)
]]

LOCATIONS["/config"] = [[
  local out = {}
  out.apply = R(C.config:apply({ Kind = "service-defaults", Name = CFG, Protocol = "http" }))
  out.get = R(C.config:get("service-defaults", CFG))
  out.list = R(C.config:list("service-defaults"))
  local e = out.get[1]
  out.cas_stale = R(C.config:apply({ Kind = "service-defaults", Name = CFG, Protocol = "tcp" },
    { cas = e.ModifyIndex - 1 }))
  out.bad = R(C.config:apply({ Kind = "spec-no-such-kind", Name = "x" }))
  if ngx.var.arg_delete == "1" then
    out.delete = R(C.config:delete("service-defaults", CFG))
    out.after = R(C.config:get("service-defaults", CFG))
  end
  OUT(out)
]]

LOCATIONS["/connect"] = [[
  local out = {}
  out.roots = R(C.connect:ca_roots())
  out.agent_roots = R(C.agent:connect_ca_roots())
  out.create = R(C.connect:intention_create({ SourceName = SRC, DestinationName = DST,
    Action = "allow", Description = "src to dst", Meta = { owner = "nginx" } }))
  out.dup = R(C.connect:intention_create({ SourceName = SRC, DestinationName = DST, Action = "deny" }))
  local id = out.create[1] and out.create[1].ID
  out.list = R(C.connect:intentions())
  out.get = R(C.connect:intention_get(id))
  out.check = R(C.connect:intention_check({ source = SRC, destination = DST }))
  out.delete = R(C.connect:intention_delete(id))
  out.after = R(C.connect:intention_get(id))
  OUT(out)
]]

LOCATIONS["/coordinate"] = [[
  local out = {}
  out.datacenters = R(C.coordinate:datacenters())
  out.absent = R(C.coordinate:node(NODE))
  out.update = R(C.coordinate:update({ Node = NODE, Segment = "", Coord = COORD }))
  -- servers apply coordinate updates in batches: poll (bounded)
  for _ = 1, 150 do
    out.node = R(C.coordinate:node(NODE))
    if out.node[1] then break end
    ngx.sleep(0.1)
  end
  out.nodes = R(C.coordinate:nodes())
  out.bad = R(C.coordinate:update({ Node = NODE, Coord = { Vec = { 1, 2 } } }))
  OUT(out)
]]

LOCATIONS["/discovery_chain"] = [[
  local out = {}
  out.plain = R(C.discovery_chain:get(CHAIN .. "-plain"))
  out.cfg = R(C.config:apply({ Kind = "service-defaults", Name = CHAIN, Protocol = "http" }))
  out.res = R(C.config:apply({ Kind = "service-resolver", Name = CHAIN, ConnectTimeout = "3s" }))
  out.get = R(C.discovery_chain:get(CHAIN))
  out.compile = R(C.discovery_chain:compile(CHAIN, { OverrideProtocol = "grpc",
    OverrideConnectTimeout = "7s" }))
  out.compile_nobody = R(C.discovery_chain:compile(CHAIN))
  C.config:delete("service-resolver", CHAIN)
  C.config:delete("service-defaults", CHAIN)
  OUT(out)
]]

LOCATIONS["/event"] = [[
  local out = {}
  out.fire = R(C.event:fire(EVENT, "hello \0 \255 world"))
  out.fire_empty = R(C.event:fire(EVENT .. "-empty"))
  out.fire_json = R(C.event:fire(EVENT .. "-json", { a = 1 }))
  local id = out.fire[1] and out.fire[1].ID
  -- events travel by gossip: the agent lists one once it has received it back (bounded)
  for _ = 1, 150 do
    out.list = R(C.event:list({ name = EVENT }))
    local found = false
    for _, e in ipairs(out.list[1] or {}) do if e.ID == id then found = true end end
    if found then break end
    ngx.sleep(0.1)
  end
  OUT(out)
]]

LOCATIONS["/health_routes"] = [[
  local out = {}
  out.agent_node = R(C.health:node(AGENT_NODE))
  out.node = R(C.health:node(NODE))
  out.checks = R(C.health:checks(WEB))
  out.service = R(C.health:service(WEB))
  out.passing = R(C.health:service(WEB, { passing = true }))
  out.state = R(C.health:state("critical"))
  out.absent = R(C.health:service(WEB .. "-absent"))
  OUT(out)
]]

LOCATIONS["/kv"] = [[
  local out = {}
  out.put = R(C.kv:put(P .. "kv/a", "hello\0world", { flags = 42 }))
  out.get = R(C.kv:get(P .. "kv/a"))
  out.put_empty = R(C.kv:put(P .. "kv/empty", ""))
  out.empty = R(C.kv:get(P .. "kv/empty"))
  out.miss = R(C.kv:get(P .. "kv/absent"))
  out.rec = R(C.kv:record(P .. "kv/a"))
  for _, k in ipairs({ "dir/x", "dir/y", "dir/sub/z" }) do C.kv:put(P .. "kv/" .. k, "v:" .. k) end
  out.list = R(C.kv:list(P .. "kv/dir/"))
  out.list_absent = R(C.kv:list(P .. "kv/nothing/"))
  out.keys = R(C.kv:keys(P .. "kv/dir/"))
  out.keys_sep = R(C.kv:keys(P .. "kv/dir/", { separator = "/" }))
  out.pairs = {}
  for k, v in C.kv:pairs(P .. "kv/dir/") do out.pairs[#out.pairs + 1] = { k, v } end
  local rec = out.rec[1]
  out.cas_stale = R(C.kv:put(P .. "kv/a", "stale", { cas = rec.ModifyIndex - 1 }))
  out.cas_ok = R(C.kv:put(P .. "kv/a", "fresh", { cas = rec.ModifyIndex }))
  out.after_cas = R(C.kv:get(P .. "kv/a"))
  -- a blocking query on a key nobody writes returns after wait with the same index
  local _, _, m = C.kv:get(P .. "kv/empty")
  local t0 = ngx.now()
  out.blocking = R(C.kv:get(P .. "kv/empty", { index = m.index, wait = "300ms" }))
  ngx.update_time()
  out.blocking_s = ngx.now() - t0
  out.blocking_index = m.index
  out.big = R(C.kv:put(P .. "kv/big", string.rep("x", 512 * 1024 + 1)))
  out.del = R(C.kv:delete(P .. "kv/a"))
  out.after_del = R(C.kv:get(P .. "kv/a"))
  out.del_recurse = R(C.kv:delete(P .. "kv/dir/", { recurse = true }))
  out.after_recurse = R(C.kv:keys(P .. "kv/dir/"))
  out.txn = R(C.txn:apply({
    { KV = { Verb = "set", Key = P .. "txn/a", Value = "\0bin\255", Flags = 5 } },
    { KV = { Verb = "set", Key = P .. "txn/b", Value = "" } },
    { KV = { Verb = "get", Key = P .. "txn/a" } },
  }))
  C.kv:put(P .. "txn/d", "d")
  local d = C.kv:record(P .. "txn/d").ModifyIndex
  C.kv:put(P .. "txn/d", "d2")
  out.txn_fail = R(C.txn:apply({
    { KV = { Verb = "set", Key = P .. "txn/e", Value = "not applied" } },
    { KV = { Verb = "check-index", Key = P .. "txn/d", Index = d } },
  }))
  OUT(out)
]]

LOCATIONS["/operator"] = [[
  local out = {}
  out.raft = R(C.operator:raft_get_configuration())
  out.autopilot = R(C.operator:autopilot_get_configuration())
  out.health = R(C.operator:autopilot_server_health())
  out.keyring = R(K.operator:keyring_list())
  out.keyring_anon = R(KANON.operator:keyring_list())
  OUT(out)
]]

LOCATIONS["/query"] = [[
  local out = {}
  out.create = R(C.query:create({ Name = QNAME, Service = { Service = WEB } }))
  local id = out.create[1] and out.create[1].ID
  out.list = R(C.query:list())
  out.get = R(C.query:get(id))
  out.execute = R(C.query:execute(id))
  out.by_name = R(C.query:execute(QNAME, { limit = 1 }))
  out.delete = R(C.query:delete(id))
  out.after = R(C.query:get(id))
  out.execute_after = R(C.query:execute(id))
  OUT(out)
]]

LOCATIONS["/session"] = [[
  local out = {}
  out.create = R(C.session:create({ Name = "spec nginx session", TTL = 15, LockDelay = 2,
    Behavior = "delete", Checks = { "serfHealth" } }))
  local id = out.create[1]
  out.info = R(C.session:info(id))
  out.list = R(C.session:list())
  out.node = R(C.session:node(AGENT_NODE))
  out.renew = R(C.session:renew(id))
  out.destroy = R(C.session:destroy(id))
  out.info_after = R(C.session:info(id))
  out.renew_after = R(C.session:renew(id))
  out.bad_ttl = R(C.session:create({ TTL = 5 }))
  OUT(out)
]]

LOCATIONS["/acl"] = [[
  local out = {}
  out.self = R(K.acl:token_read_self())
  out.create = R(K.acl:policy_create({ Name = "spec-nginx-pol", Description = "from nginx",
    Rules = ACL_RULES }))
  local id = out.create[1] and out.create[1].ID
  out.read = R(K.acl:policy_read(id))
  out.by_name = R(K.acl:policy_read_by_name("spec-nginx-pol"))
  out.list = R(K.acl:policy_list())
  out.anon_list = R(KANON.acl:policy_list())
  out.delete = R(K.acl:policy_delete(id))
  out.read_after = R(K.acl:policy_read(id))
  OUT(out)
]]

LOCATIONS["/snapshot"] = [[
  local out = {}
  local path = ngx.unescape_uri(ngx.var.arg_path)
  out.put = R(K.kv:put("snap/before", "written before the save"))
  out.save_path = R(K.snapshot:save(path))
  out.save_bytes = R(K.snapshot:save())
  local bytes = out.save_bytes[1]
  out.save_bytes = { n = 1, type(bytes), bytes and #bytes, bytes and bytes:sub(1, 2) }
  out.delete = R(K.kv:delete("snap/before"))
  out.put_after = R(K.kv:put("snap/after", "written after the save"))
  local f = io.open(path, "rb")
  out.restore_file = R(K.snapshot:restore(f))
  f:close()
  for _ = 1, 100 do
    out.back = R(K.kv:get("snap/before"))
    if out.back[1] then break end
    ngx.sleep(0.05)
  end
  out.gone = R(K.kv:get("snap/after"))
  K.kv:delete("snap/before")
  out.restore_bytes = R(K.snapshot:restore(bytes))
  for _ = 1, 100 do
    out.back2 = R(K.kv:get("snap/before"))
    if out.back2[1] then break end
    ngx.sleep(0.05)
  end
  out.restore_bad = R(K.snapshot:restore("not a snapshot"))
  OUT(out)
]]

LOCATIONS["/monitor"] = [[
  local out = {}
  local marker = P .. "monitor-" .. ngx.var.arg_run
  local s, err, meta = C.agent:monitor({ loglevel = "debug" })
  out.open = { n = 3, tostring(s), err, meta and meta.code }
  out.lines = 0
  ngx.update_time()
  local deadline = ngx.now() + 10
  while s and not out.seen and ngx.now() < deadline do
    -- something for the agent to log: its debug log names every request
    C.kv:put(marker, "x")
    local line = s:read(1)
    while line do
      out.lines = out.lines + 1
      if line:find("\n", 1, true) then out.multiline = line end
      if line:find(marker, 1, true) then out.seen = line break end
      line = s:read(0.2)
    end
    ngx.update_time()
  end
  if s then s:close() end
  local q = C.agent:monitor({ loglevel = "err" })
  ngx.update_time()
  local t0 = ngx.now()
  out.quiet = R(q:read(0.2))
  ngx.update_time()
  out.quiet_s = ngx.now() - t0
  C.kv:put(marker, "z")
  out.quiet2 = R(q:read(0.2))
  q:close()
  out.closed = R(q:read(0.1))
  out.bogus = R(C.agent:monitor({ loglevel = "bogus" }))
  out.leader = R(C.status:leader())
  OUT(out)
]]

LOCATIONS["/request"] = [[
  local out = {}
  out.leader = R(C:request("GET", "/v1/status/leader"))
  out.put = R(C:request("PUT", "/v1/kv/" .. P .. "request/raw", { body = "raw \0 bytes" }))
  out.raw = R(C:request("GET", "/v1/kv/" .. P .. "request/raw", { query = { raw = true } }))
  out.json = R(C:request("GET", "/v1/kv/" .. P .. "request/raw"))
  out.absent = R(C:request("GET", "/v1/kv/" .. P .. "request/absent"))
  out.table_body = R(C:request("PUT", "/v1/txn", { body = {
    { KV = { Verb = "get", Key = P .. "request/raw" } } } }))
  out.bad = R(C:request("PUT", "/v1/txn", { body = "not json" }))
  OUT(out)
]]

describe("consul routes in nginx", function()
  local S, A, K, c, n
  local COORD = { Vec = { 0.25, -0.5, 0.125, 0, 0, 0, 0, 0.0625 }, Error = 0.75,
    Adjustment = 0.001, Height = 2.5e-05 }
  local ACL_RULES = 'key_prefix "spec/nginx/" {\n  policy = "read"\n}\n'
  local started = {}

  local function start(opts)
    local x = nginx.start(opts)
    started[#started + 1] = x
    return x
  end

  local function raw_get(path) return agent.get_json(A, path) end

  -- GET path from the nginx: what its handler dumped
  local function call(path)
    local status, body = n:get(path, 60)
    assert(status == 200, "GET " .. path .. ": " .. tostring(status) .. " " .. tostring(body) ..
      "\nerror.log:\n" .. n:errors())
    return W.load(body)
  end

  local function cleanup()
    agent.http(A, "PUT", "/v1/catalog/deregister", json.encode({ Node = NODE }))
    agent.http(A, "PUT", "/v1/agent/service/deregister/" .. ASVC .. "-1")
    agent.http(A, "PUT", "/v1/agent/check/deregister/" .. CHK)
    agent.http(A, "DELETE", "/v1/config/service-defaults/" .. CFG)
    agent.http(A, "DELETE", "/v1/config/service-resolver/" .. CHAIN)
    agent.http(A, "DELETE", "/v1/config/service-defaults/" .. CHAIN)
    agent.http(A, "DELETE", "/v1/kv/" .. P .. "?recurse")
    for _, i in ipairs(raw_get("/v1/connect/intentions") or {}) do
      if i.SourceName == SRC then agent.http(A, "DELETE", "/v1/connect/intentions/" .. i.ID) end
    end
    for _, q in ipairs(raw_get("/v1/query") or {}) do
      if q.Name == QNAME then agent.http(A, "DELETE", "/v1/query/" .. q.ID) end
    end
  end

  setup(function()
    S = agent.shared()
    A = S.addr
    c = consul.new({ addr = A })
    cleanup()
    K = agent.start({ acl = true, encrypt = true, name = "nginx-routes" })
    local names = { NODE = NODE, WEB = WEB, ASVC = ASVC, CHK = CHK, CFG = CFG, SRC = SRC,
      DST = DST, QNAME = QNAME, CHAIN = CHAIN, EVENT = EVENT, P = P, AGENT_NODE = S.node,
      ACL_RULES = ACL_RULES }
    local init = { string.format([[
      consul = require("consul")
      W = require("spec.helpers.ngx_wire")
      R = W.pack
      function OUT(t) ngx.print(W.dump(t)) end
      C = consul.new({ addr = %q, timeout = 10 })
      K = consul.new({ addr = %q, token = %q, timeout = 30 })
      KANON = consul.new({ addr = %q, timeout = 10 })
      COORD = %s
    ]], A, K.addr, K.token, K.addr, W.dump(COORD)) }
    for k, v in pairs(names) do init[#init + 1] = string.format("%s = %q", k, v) end
    n = start({ init = table.concat(init, "\n"), locations = LOCATIONS })
  end)

  teardown(function()
    -- stopped here, the nginx the tests shared fails on what its error.log says at the end
    local errs = {}
    for _, x in ipairs(started) do
      local ok, err = pcall(x.stop, x)
      if not ok then errs[#errs + 1] = tostring(err) end
    end
    if c then
      cleanup()
      c:close()
    end
    if K then K:stop() end
    if #errs > 0 then error(table.concat(errs, "\n"), 0) end
  end)

  after_each(function()
    -- nginx went wrong (an [alert], a [crit], a worker killed by a signal): fail here
    for _, x in ipairs(started) do
      local bad = x:bad_lines()
      if #bad > 0 then error("nginx error.log:\n" .. table.concat(bad, "\n")) end
    end
  end)

  it("status: leader and peers are the dev server's RPC address; an unknown dc fails", function()
    local server_addr = "127.0.0.1:" .. raw_get("/v1/agent/self").DebugConfig.ServerPort
    local t = call("/status")
    local l, err, meta = t.leader[1], t.leader[2], t.leader[3]
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(server_addr, l)
    assert.is_nil(t.peers[2])
    assert.are.equal(200, t.peers[3].status)
    assert.are.same({ server_addr }, t.peers[1])
    util.fails("GET", "/v1/status/leader", 500, "No path to datacenter", t.nodc[1], t.nodc[2], t.nodc[3])
  end)

  it("agent: self, members, service_register/services/service/deregister, check_register/pass/checks", function()
    local t = call("/agent?step=register")
    local s, err, meta = t.self[1], t.self[2], t.self[3]
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(S.node, s.Config.NodeName)
    assert.are.equal(S.dc, s.Config.Datacenter)
    assert.is_true(s.Config.Server)
    assert.matches("^1%.8%.7", s.Config.Version)
    assert.is_table(s.Coord.Vec)
    local me = assert(find(t.members[1], "Name", S.node))
    assert.are.equal(1, me.Status)
    assert.are.equal("127.0.0.1", me.Addr)

    assert.are.same({ n = 3, true, nil, t.reg[3] }, t.reg)
    assert.are.equal(200, t.reg[3].status)
    local all = t.services[1]
    assert.are.equal(8080, all[ASVC .. "-1"].Port)
    local one = t.service[1]
    assert.are.equal(ASVC, one.Service)
    assert.are.same({ "primary", "v1" }, one.Tags)
    assert.are.same({ version = "1.0" }, one.Meta)
    assert.are.equal("127.0.0.2", one.Address)
    assert.is_string(one.ContentHash)
    assert.is_nil(t.absent[1])
    assert.is_nil(t.absent[2])
    assert.are.equal(404, t.absent[3].status)

    assert.are.equal(true, t.chk[1])
    assert.are.equal("critical", t.checks_before[1][CHK].Status)  -- a TTL check starts critical
    assert.are.equal("from nginx", t.checks_before[1][CHK].Notes)
    assert.are.equal("ttl", t.checks_before[1][CHK].Type)
    assert.are.equal(true, t.pass[1])
    assert.are.equal("passing", t.checks[1][CHK].Status)
    assert.are.equal("all good", t.checks[1][CHK].Output)
    assert.is_nil(t.pass_absent[1])
    assert.are.equal("http", t.pass_absent[3].code)
    assert.matches("^consul: PUT /v1/agent/check/pass/spec%-nginx%-routes%-chk%-absent: %d%d%d ",
      t.pass_absent[2])
    -- what the agent has, read without the module
    local raw = raw_get("/v1/agent/service/" .. ASVC .. "-1")
    assert.are.equal(ASVC, raw.Service)
    assert.are.equal(8080, raw.Port)
    assert.are.equal("passing", raw_get("/v1/agent/checks")[ASVC .. "-1-ttl"].Status)
    assert.are.equal("passing", raw_get("/v1/agent/checks")[CHK].Status)

    t = call("/agent?step=deregister")
    assert.are.equal(true, t.dereg[1])
    assert.are.equal(true, t.chk_dereg[1])
    assert.is_nil(t.services[1][ASVC .. "-1"])
    assert.is_nil(t.checks[1][CHK])
    assert.is_nil(raw_get("/v1/agent/service/" .. ASVC .. "-1"))
    assert.is_nil(raw_get("/v1/agent/checks")[CHK])
  end)

  it("catalog: register, datacenters, nodes, services, service, node, deregister", function()
    local t = call("/catalog?step=register")
    assert.are.equal(true, t.reg[1])
    assert.is_nil(t.reg[2])
    assert.are.equal(200, t.reg[3].status)
    assert.are.same({ S.dc }, t.datacenters[1])
    local nodes, meta = t.nodes[1], t.nodes[3]
    assert.is_number(meta.index)
    assert.is_true(meta.known_leader)
    assert.are.equal("10.1.2.3", find(nodes, "Node", NODE).Address)
    assert.are.equal("127.0.0.1", find(nodes, "Node", S.node).Address)
    assert.are.equal(1, #t.nodes_meta[1])
    assert.are.equal(NODE, t.nodes_meta[1][1].Node)
    local tags = t.services[1][WEB]
    table.sort(tags)
    assert.are.same({ "blue", "green", "v1" }, tags)
    assert.are.same({}, t.services[1].consul)
    assert.are.equal(2, #t.service[1])
    local one = find(t.service[1], "ServiceID", WEB .. "-1")
    assert.are.equal(NODE, one.Node)
    assert.are.equal(8080, one.ServicePort)
    assert.are.same({ version = "1" }, one.ServiceMeta)
    assert.are.equal("r1", one.NodeMeta.rack)
    assert.are.equal(1, #t.service_tag[1])
    assert.are.equal(WEB .. "-1", t.service_tag[1][1].ServiceID)
    assert.are.equal(NODE, t.node[1].Node.Node)
    assert.are.equal(8081, t.node[1].Services[WEB .. "-2"].Port)
    assert.is_nil(t.node_absent[1])
    assert.is_nil(t.node_absent[2])
    assert.are.equal(200, t.node_absent[3].status)  -- Consul answers 200 "null"
    util.fails("GET", "/v1/catalog/nodes", 500, "No path to datacenter", t.nodc[1], t.nodc[2], t.nodc[3])
    local raw = raw_get("/v1/catalog/node/" .. NODE)
    assert.are.equal("10.1.2.3", raw.Node.Address)
    assert.are.same({ "blue", "v1" }, raw.Services[WEB .. "-1"].Tags)
  end)

  it("health: node, checks, service (passing=), state", function()
    -- the catalog spec above registered NODE with WEB-1 (passing) and WEB-2 (critical)
    local t = call("/health_routes")
    assert.is_table(find(t.agent_node[1], "CheckID", "serfHealth"))
    local list, err, meta = t.node[1], t.node[2], t.node[3]
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    assert.are.equal(2, #list)
    assert.are.equal("passing", find(list, "CheckID", WEB .. "-1-check").Status)
    assert.are.equal("critical", find(list, "CheckID", WEB .. "-2-check").Status)
    assert.are.equal(2, #t.checks[1])
    assert.are.equal(WEB, t.checks[1][1].ServiceName)
    local ids = {}
    for _, e in ipairs(t.service[1]) do ids[#ids + 1] = e.Service.ID end
    table.sort(ids)
    assert.are.same({ WEB .. "-1", WEB .. "-2" }, ids)
    local e = t.service[1][1].Service.ID == WEB .. "-1" and t.service[1][1] or t.service[1][2]
    assert.are.equal(NODE, e.Node.Node)
    assert.are.equal("10.1.2.3", e.Node.Address)
    assert.are.equal(8080, e.Service.Port)
    assert.is_table(find(e.Checks, "CheckID", WEB .. "-1-check"))
    assert.are.equal(1, #t.passing[1])
    assert.are.equal(WEB .. "-1", t.passing[1][1].Service.ID)
    assert.is_table(find(t.state[1], "CheckID", WEB .. "-2-check"))
    assert.is_nil(find(t.state[1], "CheckID", WEB .. "-1-check"))
    assert.are.same({}, t.absent[1])
    assert.are.equal(200, t.absent[3].status)
  end)

  it("query: create, list, get, execute, delete", function()
    local t = call("/query")
    assert.is_nil(t.create[2])
    assert.are.equal(200, t.create[3].status)
    local id = t.create[1].ID
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", id)
    assert.is_number(t.list[3].index)
    assert.are.equal(QNAME, find(t.list[1], "ID", id).Name)
    assert.are.equal(1, #t.get[1])
    assert.are.equal(id, t.get[1][1].ID)
    assert.is_false(t.get[1][1].Service.OnlyPassing)
    local r = t.execute[1]
    assert.is_nil(t.execute[2])
    assert.are.equal(WEB, r.Service)
    assert.are.equal(S.dc, r.Datacenter)
    -- a critical instance is never returned
    assert.are.equal(1, #r.Nodes)
    assert.are.equal(WEB .. "-1", r.Nodes[1].Service.ID)
    assert.are.equal(NODE, r.Nodes[1].Node.Node)
    assert.are.equal(0, r.Failovers)
    assert.are.equal(WEB .. "-1", t.by_name[1].Nodes[1].Service.ID)
    assert.are.equal(true, t.delete[1])
    assert.is_nil(t.after[1])
    assert.is_nil(t.after[2])
    assert.are.equal(404, t.after[3].status)
    assert.is_nil(t.execute_after[1])
    assert.is_nil(t.execute_after[2])
    assert.are.equal(404, t.execute_after[3].status)
    assert.is_nil(raw_get("/v1/query/" .. id))
  end)

  it("coordinate: datacenters, update, node, nodes", function()
    local t = call("/coordinate")
    local dc = assert(find(t.datacenters[1], "Datacenter", S.dc))
    assert.are.equal("wan", dc.AreaID)
    local me = find(dc.Coordinates, "Node", S.node) or find(dc.Coordinates, "Node", S.node .. "." .. S.dc)
    assert.is_table(me)
    assert.are.equal(8, #me.Coord.Vec)
    assert.is_nil(t.absent[1])
    assert.is_nil(t.absent[2])
    assert.are.equal(404, t.absent[3].status)
    assert.are.same({ n = 3, true, nil, t.update[3] }, t.update)
    assert.is_table(t.node[1], "the coordinate never showed")
    assert.are.equal(1, #t.node[1])
    assert.are.same(COORD, t.node[1][1].Coord)
    assert.is_number(t.node[3].index)
    assert.are.same(COORD, find(t.nodes[1], "Node", NODE).Coord)
    assert.is_nil(t.bad[1])
    assert.are.equal("http", t.bad[3].code)
    assert.matches("^consul: PUT /v1/coordinate/update: %d%d%d ", t.bad[2])
  end)

  it("catalog: deregister removes the node (after health, query and coordinate used it)", function()
    local t = call("/catalog?step=deregister")
    assert.are.same({ n = 3, true, nil, t.dereg[3] }, t.dereg)
    assert.is_nil(t.node[1])
    assert.are.same({}, t.service[1])
    assert.is_nil(raw_get("/v1/catalog/node/" .. NODE))
  end)

  it("config: apply, get, list, apply with a stale cas, delete of a service-defaults entry", function()
    local t = call("/config")
    assert.are.same({ n = 3, true, nil, t.apply[3] }, t.apply)
    local e, err, meta = t.get[1], t.get[2], t.get[3]
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    assert.are.equal("service-defaults", e.Kind)
    assert.are.equal(CFG, e.Name)
    assert.are.equal("http", e.Protocol)
    assert.are.equal("http", find(t.list[1], "Name", CFG).Protocol)
    assert.are.equal(false, t.cas_stale[1])
    assert.is_nil(t.cas_stale[2])
    assert.is_nil(t.bad[1])
    assert.are.equal("http", t.bad[3].code)
    assert.matches("^consul: PUT /v1/config: %d%d%d ", t.bad[2])
    assert.are.equal("http", raw_get("/v1/config/service-defaults/" .. CFG).Protocol)
    t = call("/config?delete=1")
    assert.is_nil(t.delete[2])
    assert.are.equal(200, t.delete[3].status)
    assert.are.same({}, t.delete[1])  -- Consul 1.8 answers "{}"
    assert.is_nil(t.after[1])
    assert.is_nil(t.after[2])
    assert.are.equal(404, t.after[3].status)
    assert.is_nil(raw_get("/v1/config/service-defaults/" .. CFG))
  end)

  it("connect: ca_roots, intention_create, intentions, intention_get, intention_check, intention_delete", function()
    local t = call("/connect")
    local r, meta = t.roots[1], t.roots[3]
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    local active = find(r.Roots, "ID", r.ActiveRootID)
    assert.is_true(active.Active)
    assert.matches("^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-", active.RootCert)
    assert.matches("%.consul$", r.TrustDomain)
    assert.are.equal(r.ActiveRootID, t.agent_roots[1].ActiveRootID)
    assert.are.equal(raw_get("/v1/connect/ca/roots").ActiveRootID, r.ActiveRootID)
    local id = t.create[1].ID
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", id)
    assert.are.equal("http", t.dup[3].code)
    assert.matches("^consul: POST /v1/connect/intentions: %d%d%d .*duplicate", t.dup[2])
    assert.are.equal(DST, find(t.list[1], "ID", id).DestinationName)
    assert.are.equal(SRC, t.get[1].SourceName)
    assert.are.equal("src to dst", t.get[1].Description)
    assert.are.equal("nginx", t.get[1].Meta.owner)
    assert.is_true(t.check[1].Allowed)
    assert.are.same({ n = 3, true, nil, t.delete[3] }, t.delete)
    assert.is_nil(t.after[1])
    assert.is_nil(t.after[2])
    assert.are.equal(404, t.after[3].status)
    assert.is_nil(raw_get("/v1/connect/intentions/" .. id))
  end)

  it("discovery_chain: get (default and from config entries) and compile", function()
    local t = call("/discovery_chain")
    local plain = t.plain[1].Chain
    assert.are.equal("tcp", plain.Protocol)
    assert.is_true(plain.Nodes["resolver:" .. CHAIN .. "-plain.default." .. S.dc].Resolver.Default)
    local ch, meta = t.get[1].Chain, t.get[3]
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    assert.are.equal(CHAIN, ch.ServiceName)
    assert.are.equal("http", ch.Protocol)
    local target = CHAIN .. ".default." .. S.dc
    assert.are.equal("resolver:" .. target, ch.StartNode)
    assert.are.equal("3s", ch.Nodes["resolver:" .. target].Resolver.ConnectTimeout)
    assert.are.equal(CHAIN, ch.Targets[target].Service)
    local cc = t.compile[1].Chain
    assert.are.equal("grpc", cc.Protocol)
    assert.are.equal("7s", cc.Nodes["resolver:" .. target].Resolver.ConnectTimeout)
    assert.is_string(cc.CustomizationHash)
    assert.are.equal("http", t.compile_nobody[1].Chain.Protocol)
  end)

  it("event: fire (payload bytes, none, a table) and list with Payload decoded", function()
    local payload = "hello \0 \255 world"
    local t = call("/event")
    local ev, err, meta = t.fire[1], t.fire[2], t.fire[3]
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", ev.ID)
    assert.are.equal(EVENT, ev.Name)
    assert.are.equal(payload, ev.Payload)
    assert.are.equal(1, ev.Version)
    assert.is_nil(t.fire_empty[1].Payload)
    assert.are.equal('{"a":1}', t.fire_json[1].Payload)
    local got = find(t.list[1], "ID", ev.ID)
    assert.is_table(got, "the event never showed in event/list")
    assert.are.equal(payload, got.Payload)
    assert.is_true(got.LTime > 0)
    -- event/list's index is a hash, above 2^53 almost always: a decimal string on LuaJIT
    local idx = t.list[3].index
    assert.is_truthy(type(idx) == "number" or tostring(idx):match("^%d+$"), tostring(idx))
    -- Consul's own JSON carries it as base64
    local status, body = agent.http(A, "GET", "/v1/event/list?name=" .. agent.urlencode(EVENT))
    assert.are.equal(200, status)
    assert.are.equal("aGVsbG8gACD/IHdvcmxk", find(json.decode(body), "ID", ev.ID).Payload)
  end)

  it("kv: put, get, record, list, keys, pairs, cas, a blocking query, 413, delete; txn:apply", function()
    local t = call("/kv")
    assert.are.same({ n = 3, true, nil, t.put[3] }, t.put)
    local v, err, meta = t.get[1], t.get[2], t.get[3]
    assert.is_nil(err)
    assert.are.equal("hello\0world", v)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    assert.is_true(meta.known_leader)
    assert.is_number(meta.last_contact)
    assert.are.equal("", t.empty[1])
    assert.are.same({ n = 3, nil, nil, t.miss[3] }, t.miss)
    assert.are.equal(404, t.miss[3].status)
    local rec = t.rec[1]
    assert.are.equal(P .. "kv/a", rec.Key)
    assert.are.equal("hello\0world", rec.Value)
    assert.are.equal(42, rec.Flags)
    assert.is_number(rec.CreateIndex)
    assert.is_number(rec.ModifyIndex)
    local list = t.list[1]
    assert.are.equal(3, #list)
    assert.are.equal(P .. "kv/dir/sub/z", list[1].Key)
    assert.are.equal("v:dir/sub/z", list[1].Value)
    assert.are.equal(P .. "kv/dir/x", list[2].Key)
    assert.are.same({}, t.list_absent[1])
    assert.is_nil(t.list_absent[2])
    assert.are.equal(404, t.list_absent[3].status)
    assert.are.same({ P .. "kv/dir/sub/z", P .. "kv/dir/x", P .. "kv/dir/y" }, t.keys[1])
    assert.are.same({ P .. "kv/dir/sub/", P .. "kv/dir/x", P .. "kv/dir/y" }, t.keys_sep[1])
    assert.are.same({ { P .. "kv/dir/sub/z", "v:dir/sub/z" }, { P .. "kv/dir/x", "v:dir/x" },
      { P .. "kv/dir/y", "v:dir/y" } }, t.pairs)
    assert.are.same({ n = 3, false, nil, t.cas_stale[3] }, t.cas_stale)
    assert.are.equal(true, t.cas_ok[1])
    assert.are.equal("fresh", t.after_cas[1])
    assert.are.equal("", t.blocking[1])
    assert.are.equal(t.blocking_index, t.blocking[3].index)
    assert.is_true(t.blocking_s >= 0.25, "the blocking query returned after " .. t.blocking_s .. " s")
    assert.matches("^consul: PUT /v1/kv/spec/nginx_routes/kv/big: 413 ", t.big[2])
    assert.are.equal("http", t.big[3].code)
    assert.are.equal(413, t.big[3].status)
    assert.are.equal(true, t.del[1])
    assert.is_nil(t.after_del[1])
    assert.are.equal(true, t.del_recurse[1])
    assert.are.same({}, t.after_recurse[1])
    -- txn: values as raw bytes both ways
    local r = t.txn[1]
    assert.is_nil(t.txn[2])
    assert.are.equal(200, t.txn[3].status)
    assert.is_nil(r.Errors)
    assert.are.equal(3, #r.Results)
    assert.are.equal("\0bin\255", r.Results[3].KV.Value)
    assert.are.equal(5, r.Results[3].KV.Flags)
    local status, body = agent.http(A, "GET", "/v1/kv/" .. P .. "txn/a?raw")
    assert.are.equal(200, status)
    assert.are.equal("\0bin\255", body)
    assert.is_nil(t.txn_fail[1])
    assert.matches("^consul: PUT /v1/txn: 409", t.txn_fail[2])
    assert.is_nil(t.txn_fail[2]:find("\n"))
    assert.are.equal(409, t.txn_fail[3].status)
    assert.are.equal("http", t.txn_fail[3].code)
    assert.are.equal(404, (agent.http(A, "GET", "/v1/kv/" .. P .. "txn/e")))
  end)

  it("session: create, info, list, node, renew, destroy", function()
    local t = call("/session")
    local id = t.create[1]
    assert.is_nil(t.create[2])
    assert.are.equal(200, t.create[3].status)
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", id)
    local s = t.info[1]
    assert.is_nil(s[1])  -- the session itself, not an array
    assert.are.equal(id, s.ID)
    assert.are.equal("spec nginx session", s.Name)
    assert.are.equal(S.node, s.Node)
    assert.are.equal("15s", s.TTL)
    assert.are.equal(2000000000, s.LockDelay)
    assert.are.equal("delete", s.Behavior)
    assert.are.same({ "serfHealth" }, s.NodeChecks)
    assert.is_table(find(t.list[1], "ID", id))
    assert.is_number(t.list[3].index)
    assert.is_table(find(t.node[1], "ID", id))
    assert.is_nil(t.renew[1][1])
    assert.are.equal(id, t.renew[1].ID)
    assert.are.equal("15s", t.renew[1].TTL)
    assert.are.same({ n = 3, true, nil, t.destroy[3] }, t.destroy)
    assert.is_nil(t.info_after[1])
    assert.is_nil(t.info_after[2])
    assert.is_nil(t.renew_after[1])
    assert.is_nil(t.renew_after[2])
    assert.are.equal(404, t.renew_after[3].status)
    assert.is_nil(t.bad_ttl[1])
    assert.are.equal("http", t.bad_ttl[3].code)
    assert.matches("^consul: PUT /v1/session/create: %d%d%d ", t.bad_ttl[2])
    local st, body = agent.http(A, "GET", "/v1/session/info/" .. id)
    assert.are.equal(200, st)
    assert.is_nil(json.decode(body)[1])
  end)

  it("operator: raft_get_configuration, autopilot (shared agent); keyring_list (gossip key, token)", function()
    local t = call("/operator")
    local conf, err, meta = t.raft[1], t.raft[2], t.raft[3]
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(1, #conf.Servers)
    assert.are.equal(S.node, conf.Servers[1].Node)
    assert.is_true(conf.Servers[1].Leader)
    assert.is_true(conf.Servers[1].Voter)
    assert.are.same(raw_get("/v1/operator/raft/configuration"), conf)
    assert.are.same(raw_get("/v1/operator/autopilot/configuration"), t.autopilot[1])
    assert.is_boolean(t.autopilot[1].CleanupDeadServers)
    assert.is_string(t.autopilot[1].LastContactThreshold)
    local h = t.health[1]
    assert.is_true(h.Healthy)
    assert.are.equal(1, #h.Servers)
    assert.are.equal(S.node, h.Servers[1].Name)
    assert.is_true(h.Servers[1].Leader)
    local rings = {}
    for _, r in ipairs(t.keyring[1]) do rings[r.WAN and "WAN" or "LAN"] = r end
    assert.are.equal(2, #t.keyring[1])
    for _, pool in ipairs({ "LAN", "WAN" }) do
      assert.are.same({ [K.encrypt_key] = 1 }, rings[pool].Keys)
      assert.are.same({ [K.encrypt_key] = 1 }, rings[pool].PrimaryKeys)
      assert.are.equal(1, rings[pool].NumNodes)
    end
    -- Consul 1.8 refuses a keyring read without the permission with a 500
    util.fails("GET", "/v1/operator/keyring", 500, "Reading keyring denied by ACLs",
      t.keyring_anon[1], t.keyring_anon[2], t.keyring_anon[3])
  end)

  it("acl (an ACL agent): token_read_self, policy_create/read/read_by_name/list/delete; 403 without a token", function()
    local t = call("/acl")
    local s, err, meta = t.self[1], t.self[2], t.self[3]
    assert.is_nil(err)
    assert.are.equal(200, meta.status)
    assert.are.equal(K.token, s.SecretID)
    assert.are.equal("global-management", s.Policies[1].Name)
    local p = t.create[1]
    assert.is_nil(t.create[2])
    assert.is_string(p.ID)
    assert.are.equal("spec-nginx-pol", p.Name)
    assert.are.equal(ACL_RULES, p.Rules)
    assert.is_number(p.CreateIndex)
    assert.are.equal(p.ID, t.read[1].ID)
    assert.are.equal(ACL_RULES, t.read[1].Rules)
    assert.are.equal(p.ID, t.by_name[1].ID)
    assert.is_table(find(t.list[1], "ID", p.ID))
    assert.is_table(find(t.list[1], "Name", "global-management"))
    assert.is_number(t.list[3].index)
    util.fails("GET", "/v1/acl/policies", 403, "Permission denied",
      t.anon_list[1], t.anon_list[2], t.anon_list[3])
    assert.are.same({ n = 3, true, nil, t.delete[3] }, t.delete)
    util.fails("GET", "/v1/acl/policy/" .. p.ID, 403, "ACL not found",
      t.read_after[1], t.read_after[2], t.read_after[3])
    assert.are.equal(403, (agent.http(K, "GET", "/v1/acl/policy/" .. p.ID, nil, K.token)))
  end)

  it("agent:monitor: a line a request makes; read(0.2) on a quiet stream times out and the stream stays usable; close", function()
    local t = call("/monitor?run=" .. RUN)
    assert.matches("^consul.Stream", t.open[1])
    assert.is_nil(t.open[2])
    assert.is_string(t.seen, "the requests made while monitoring were not logged (" .. t.lines ..
      " lines)")
    assert.is_nil(t.multiline, "one line at a time")
    local line, err, meta = t.quiet[1], t.quiet[2], t.quiet[3]
    assert.is_nil(line)
    assert.matches("no line within", err)
    assert.are.equal("timeout", meta.code)
    assert.is_true(t.quiet_s >= 0.15 and t.quiet_s < 2, "read(0.2) took " .. t.quiet_s .. " s")
    assert.are.equal(3, t.quiet2.n)  -- still usable: another timeout, not a failure
    assert.is_nil(t.quiet2[1])
    assert.are.equal("timeout", t.quiet2[3].code)
    assert.is_nil(t.closed[1])
    assert.is_nil(t.closed[2])  -- the end, after close
    util.fails("GET", "/v1/agent/monitor", 400, nil, t.bogus[1], t.bogus[2], t.bogus[3])
    assert.is_string(t.leader[1])
  end)

  it("c:request: a raw route, as the Lua client answers it (string, true, raw bytes, JSON, absent, failure)", function()
    local t = call("/request")
    assert.matches("^127%.0%.0%.1:%d+$", t.leader[1])
    assert.are.equal(true, t.put[1])
    assert.are.equal("raw \0 bytes", t.raw[1])
    assert.are.equal(P .. "request/raw", t.json[1][1].Key)
    assert.are.equal(200, t.json[3].status)
    assert.is_nil(t.absent[1])
    assert.is_nil(t.absent[2])
    assert.are.equal(404, t.absent[3].status)
    assert.are.equal(P .. "request/raw", t.table_body[1].Results[1].KV.Key)
    assert.is_nil(t.bad[1])
    assert.matches("^consul: PUT /v1/txn: 400 ", t.bad[2])
    assert.are.equal("http", t.bad[3].code)
    -- the same calls from this process (libcurl, not cosockets) give the same results
    local function same(name, r)
      assert.are.same(r[1], t[name][1], name)
      assert.are.same(r[2], t[name][2], name)
      assert.are.same(r[3].status, t[name][3].status, name)
      assert.are.same(r[3].code, t[name][3].code, name)
    end
    same("leader", W.pack(c:request("GET", "/v1/status/leader")))
    same("raw", W.pack(c:request("GET", "/v1/kv/" .. P .. "request/raw", { query = { raw = true } })))
    same("absent", W.pack(c:request("GET", "/v1/kv/" .. P .. "request/absent")))
    same("bad", W.pack(c:request("PUT", "/v1/txn", { body = "not json" })))
    local j = c:request("GET", "/v1/kv/" .. P .. "request/raw")
    assert.are.same(j, t.json[1])
  end)

  -- last: a restore reshapes the throwaway agent's whole state
  it("snapshot (the ACL agent): save to a file path and to a string, restore from a file and from the bytes", function()
    local path = agent.tmpdir() .. "/nginx.snap"
    local t = call("/snapshot?path=" .. agent.urlencode(path))
    assert.are.equal(true, t.put[1])
    local ok, err, meta = t.save_path[1], t.save_path[2], t.save_path[3]
    assert.is_nil(err)
    assert.is_true(ok)
    assert.are.equal(200, meta.status)
    assert.is_number(meta.index)
    local saved = assert(util.read_file(path))
    assert.is_true(#saved > 100)
    assert.are.equal("\31\139", saved:sub(1, 2), "a gzip stream")
    assert.are.same({ n = 1, "string", t.save_bytes[2], "\31\139" }, t.save_bytes)
    assert.is_true(t.save_bytes[2] > 100)
    assert.are.same({ n = 3, true, nil, t.restore_file[3] }, t.restore_file)
    assert.are.equal("written before the save", t.back[1])
    assert.is_nil(t.gone[1])
    assert.are.same({ n = 3, true, nil, t.restore_bytes[3] }, t.restore_bytes)
    assert.are.equal("written before the save", t.back2[1])
    util.fails("PUT", "/v1/snapshot", 500, nil, t.restore_bad[1], t.restore_bad[2], t.restore_bad[3])
  end)
end)
