-- The agent routes (c.agent) against the shared dev agent, on Lua 5.4 and LuaJIT.
--
-- Not here (other specs own them): update_token, monitor, join, leave, force_leave, reload.
-- What the agent did is read back through the module and, for the state changes, through raw
-- HTTP (agent.http: curl, independent of the module).
-- Names: service "spec-agent-*", check "spec-agent-*"; everything is deregistered afterwards.

local consul = require("consul")
local agent = require("spec.helpers.agent")
local defer = require("spec.helpers.util").defer  -- every cleanup, not only the last
local json = require("dkjson")

local VALGRIND = os.getenv("CONSUL_TEST_VALGRIND") == "1" or os.getenv("CONSUL_TEST_ASAN") == "1"
local TIMEOUT = VALGRIND and 60 or 15  -- seconds for anything eventually consistent

local sys = require("system")

-- calls fn until it returns a truthy value (returned), or fails after TIMEOUT seconds
local eventually = require("spec.helpers.util").eventually_within(TIMEOUT)

local find = require("spec.helpers.util").find

describe("consul agent", function()
  after_each(function() require("spec.helpers.util").run_deferred() end)
  local A, c

  local function raw_get(path) return agent.get_json(A, path) end

  local function raw_put(path, body)
    local status, out = agent.http(A, "PUT", path, body)
    assert(status, out)
    return status, out
  end

  local function cleanup()
    local services = raw_get("/v1/agent/services") or {}
    for id in pairs(services) do
      if id:find("^spec%-agent%-") then raw_put("/v1/agent/service/deregister/" .. id) end
    end
    local checks = raw_get("/v1/agent/checks") or {}
    for id in pairs(checks) do
      if id:find("^spec%-agent%-") then raw_put("/v1/agent/check/deregister/" .. id) end
    end
    raw_put("/v1/agent/maintenance?enable=false")
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
  describe("self, host, members", function()
    it("self describes the shared agent", function()
      local s, err, meta = c.agent:self()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(A.node, s.Config.NodeName)
      assert.are.equal(A.dc, s.Config.Datacenter)
      assert.is_true(s.Config.Server)
      assert.matches("^1%.8%.7", s.Config.Version)
      assert.are.equal(A.node, s.Member.Name)
      assert.is_table(s.Coord.Vec)
    end)

    it("host gives the host's facts", function()
      local h, err, meta = c.agent:host()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_string(h.Host.hostname)
      assert.is_number(h.Memory.total)
      assert.is_true(h.Memory.total > 0)
      assert.is_table(h.CPU)
      assert.is_number(h.CollectionTime)
    end)

    it("members lists the agent (LAN, and WAN with wan=true)", function()
      local m, err = c.agent:members()
      assert.is_nil(err)
      local me = assert(find(m, "Name", A.node))
      assert.are.equal(1, me.Status)  -- alive
      assert.are.equal("127.0.0.1", me.Addr)
      assert.are.equal(A.dc, me.Tags.dc)

      local s, serr = c.agent:members({ segment = "" })
      assert.is_nil(serr)
      assert.is_table(find(s, "Name", A.node))
    end)

    -- Regression (was a bug, fixed; csrc/client.c:580, q_value, Q_BOOL): a true boolean option goes out as a
    -- bare "?wan". Consul 1.8 reads ?wan with Query().Get("wan") != "" (members and join), so
    -- it answers with the LAN pool. Fix: send "wan=true" (or "name=true" for every Q_BOOL:
    -- the presence checks accept it too; the Go client sends wan=1).
    it("members with wan=true lists the WAN pool", function()
      local cfg = assert(c.agent:self()).DebugConfig
      local lan = assert(find(assert(c.agent:members()), "Name", A.node))
      assert.are.equal(cfg.SerfPortLAN, lan.Port)
      local w, werr = c.agent:members({ wan = true })
      assert.is_nil(werr)
      local me = find(w, "Name", A.node .. "." .. A.dc)
      assert(me, "no WAN member " .. A.node .. "." .. A.dc .. " (got " ..
        tostring(w[1] and w[1].Name) .. ", port " .. tostring(w[1] and w[1].Port) ..
        "): the module sent a bare ?wan, which Consul ignores")
      assert.are.equal(cfg.SerfPortWAN, me.Port)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("metrics", function()
    it("returns the JSON metrics", function()
      local m, err, meta = c.agent:metrics()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_string(m.Timestamp)
      assert.is_table(m.Gauges)
      assert.is_table(m.Samples)
      assert.is_table(m.Counters)
      assert.matches("^%d%d%d%d%-%d%d%-%d%d %d", m.Timestamp)
      for _, g in ipairs(m.Gauges) do
        assert.is_string(g.Name)
        assert.is_number(g.Value)
      end
    end)

    it("passes format=prometheus on: 415 from an agent without prometheus retention", function()
      -- The shared agent has no telemetry.prometheus_retention_time; Consul refuses the format.
      local m, err, meta = c.agent:metrics({ format = "prometheus" })
      assert.is_nil(m)
      assert.are.equal(415, meta.status)
      assert.are.equal("http", meta.code)
      assert.matches("^consul: GET /v1/agent/metrics: 415 .*[Pp]rometheus", err)
    end)

    it("returns Prometheus' text format as a string (an agent with retention)", function()
      -- agent.sh has no place for telemetry settings: a dev agent of our own, in a dir under
      -- CONSUL_TEST_TMP (with-agent.sh stops it whatever happens), stopped here.
      local dir = agent.tmpdir()
      local out, rc = agent.sh(agent.quote(agent.scripts_dir .. "/agent.sh") .. " free-port 4")
      assert.are.equal(0, rc, out)
      local ports = {}
      for p in out:gmatch("%d+") do ports[#ports + 1] = p end
      assert.are.equal(4, #ports)
      local f = assert(io.open(dir .. "/agent.hcl", "w"))
      f:write(([[
node_name = "spec-agent-prom"
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
disable_update_check = true
ports {
  http = %s
  https = -1
  grpc = -1
  dns = -1
  serf_lan = %s
  serf_wan = %s
  server = %s
}
telemetry {
  prometheus_retention_time = "60s"
  disable_hostname = true
}
]]):format(ports[1], ports[2], ports[3], ports[4]))
      f:close()
      if os.getenv("CONSUL_TEST_TMP") then
        local list = assert(io.open(os.getenv("CONSUL_TEST_TMP") .. "/agents", "a"))
        list:write(dir, "\n")
        list:close()
      end
      out, rc = agent.sh("CONSUL_BIN_PATH=" .. agent.quote(agent.bin()) .. " AGENT_DIR=" ..
        agent.quote(dir) .. " setsid sh -c 'echo $$ >\"$AGENT_DIR/pid\"; exec \"$CONSUL_BIN_PATH\" " ..
        "agent -dev -config-file=\"$AGENT_DIR/agent.hcl\" >>\"$AGENT_DIR/agent.log\" 2>&1' " ..
        "</dev/null >/dev/null 2>&1 &")
      assert.are.equal(0, rc, out)
      defer(function()
        agent.sh(agent.quote(agent.scripts_dir .. "/agent.sh") .. " stop " .. agent.quote(dir) ..
          " >/dev/null 2>&1")
      end)
      local addr = "127.0.0.1:" .. ports[1]
      local p = consul.new({ addr = addr })
      defer(function() p:close() end)
      eventually("the Prometheus agent's HTTP server", function()
        return (p.agent:metrics({ format = "prometheus" })) ~= nil
      end)
      local text, err, meta = p.agent:metrics({ format = "prometheus" })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_string(text)
      assert.matches("# TYPE go_goroutines gauge\n", text, 1, true)
      assert.matches("\ngo_goroutines %d+\n", text)
      assert.matches("\n# HELP consul_[%w_]+ ", text)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("node maintenance", function()
    it("enable=true with a reason adds the maintenance check; enable=false removes it", function()
      defer(function() raw_put("/v1/agent/maintenance?enable=false") end)
      local ok, err, meta = c.agent:maintenance({ enable = true, reason = "spec agent maint" })
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)

      local checks = assert(c.agent:checks())
      local m = checks._node_maintenance
      assert.is_table(m)
      assert.are.equal("critical", m.Status)
      assert.are.equal("spec agent maint", m.Notes)
      assert.are.equal("", m.ServiceID)
      assert.is_table(raw_get("/v1/agent/checks")._node_maintenance)

      assert.are.equal(true, (c.agent:maintenance({ enable = false })))
      checks = assert(c.agent:checks())
      assert.is_nil(checks._node_maintenance)
      assert.is_nil(raw_get("/v1/agent/checks")._node_maintenance)
    end)

    it("fails without enable, as Consul requires it", function()
      local ok, err, meta = c.agent:maintenance()
      assert.is_nil(ok)
      assert.are.equal(400, meta.status)
      assert.matches("^consul: PUT /v1/agent/maintenance: 400 ", err)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("services", function()
    local WEB = "spec-agent-web"

    it("service_register registers with tags, meta, port and a check", function()
      local ok, err, meta = c.agent:service_register({
        ID = WEB .. "-1",
        Name = WEB,
        Tags = { "primary", "v1" },
        Meta = { version = "1.0", ["spec-owner"] = "agent" },
        Port = 8080,
        Address = "127.0.0.2",
        Check = { CheckID = WEB .. "-1-ttl", Name = "web ttl", TTL = "30s", Status = "passing" },
      })
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)

      local raw = raw_get("/v1/agent/service/" .. WEB .. "-1")
      assert.are.equal(WEB, raw.Service)
      assert.are.same({ "primary", "v1" }, raw.Tags)
      assert.are.equal("1.0", raw.Meta.version)
      assert.are.equal(8080, raw.Port)
      local rc = raw_get("/v1/agent/checks")[WEB .. "-1-ttl"]
      assert.are.equal("passing", rc.Status)
      assert.are.equal(WEB .. "-1", rc.ServiceID)
    end)

    it("service(id) returns the service's definition; nil for an unknown ID", function()
      local s, err, meta = c.agent:service(WEB .. "-1")
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(WEB .. "-1", s.ID)
      assert.are.equal(WEB, s.Service)
      assert.are.same({ "primary", "v1" }, s.Tags)
      assert.are.same({ version = "1.0", ["spec-owner"] = "agent" }, s.Meta)
      assert.are.equal(8080, s.Port)
      assert.are.equal("127.0.0.2", s.Address)
      assert.is_string(s.ContentHash)

      local none, nerr, nmeta = c.agent:service("spec-agent-absent")
      assert.is_nil(none)
      assert.is_nil(nerr)
      assert.are.equal(404, nmeta.status)
    end)

    it("services lists it, and filter= narrows the list", function()
      assert(c.agent:service_register({ ID = WEB .. "-2", Name = WEB, Tags = { "secondary" },
        Port = 8081 }))
      local all, err = c.agent:services()
      assert.is_nil(err)
      assert.are.equal(8080, all[WEB .. "-1"].Port)
      assert.are.equal(8081, all[WEB .. "-2"].Port)

      local some = assert(c.agent:services({ filter = 'Service == "' .. WEB .. '" and "primary" in Tags' }))
      assert.is_table(some[WEB .. "-1"])
      assert.is_nil(some[WEB .. "-2"])
      local n = 0
      for _ in pairs(some) do n = n + 1 end
      assert.are.equal(1, n)

      -- a bad expression: Consul 1.8 answers 500 with the parser's complaint
      local none, ferr, fmeta = c.agent:services({ filter = "Service ==" })
      assert.is_nil(none)
      assert.are.equal("http", fmeta.code)
      assert.matches("^consul: GET /v1/agent/services: 500 .*boolean expression", ferr)
    end)

    it("replace_existing_checks=true drops the checks a re-registration leaves out", function()
      local id = WEB .. "-3"
      local def = { ID = id, Name = WEB, Port = 8083, Checks = {
        { CheckID = id .. "-a", Name = "a", TTL = "30s" },
        { CheckID = id .. "-b", Name = "b", TTL = "30s" },
      } }
      assert(c.agent:service_register(def))
      local checks = raw_get("/v1/agent/checks")
      assert.is_table(checks[id .. "-a"])
      assert.is_table(checks[id .. "-b"])

      -- without the option, the left-out check stays
      def.Checks = { { CheckID = id .. "-a", Name = "a", TTL = "30s" } }
      assert(c.agent:service_register(def))
      checks = raw_get("/v1/agent/checks")
      assert.is_table(checks[id .. "-b"])

      local ok, err = c.agent:service_register(def, { replace_existing_checks = true })
      assert.are.equal(true, ok)
      assert.is_nil(err)
      checks = raw_get("/v1/agent/checks")
      assert.is_table(checks[id .. "-a"])
      assert.is_nil(checks[id .. "-b"])
    end)

    it("service_maintenance enable=true/false adds and removes the service's maintenance check", function()
      local id = WEB .. "-1"
      local mid = "_service_maintenance:" .. id
      local ok, err, meta = c.agent:service_maintenance(id, { enable = true, reason = "spec svc maint" })
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      local m = assert(c.agent:checks())[mid]
      assert.is_table(m)
      assert.are.equal("critical", m.Status)
      assert.are.equal("spec svc maint", m.Notes)
      assert.are.equal(id, m.ServiceID)

      assert.are.equal(true, (c.agent:service_maintenance(id, { enable = false })))
      assert.is_nil(raw_get("/v1/agent/checks")[mid])

      local _, uerr, umeta = c.agent:service_maintenance("spec-agent-absent", { enable = true })
      assert.are.equal(404, umeta.status)
      assert.matches("^consul: PUT /v1/agent/service/maintenance/spec%-agent%-absent: 404", uerr)
    end)

    it("service_deregister removes the service and its checks", function()
      local ok, err, meta = c.agent:service_deregister(WEB .. "-2")
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_nil((raw_get("/v1/agent/service/" .. WEB .. "-2")))
      assert.is_nil((c.agent:service(WEB .. "-2")))

      assert(c.agent:service_deregister(WEB .. "-1"))
      assert.is_nil(raw_get("/v1/agent/checks")[WEB .. "-1-ttl"])
      assert(c.agent:service_deregister(WEB .. "-3"))
      assert.is_nil(raw_get("/v1/agent/services")[WEB .. "-3"])
    end)
  end)

  ---------------------------------------------------------------------------
  describe("checks", function()
    local CHK = "spec-agent-chk"

    it("check_register adds a TTL check; checks() lists it; filter= narrows", function()
      local ok, err, meta = c.agent:check_register({
        ID = CHK, Name = "spec agent check", TTL = "60s", Notes = "from the spec",
      })
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      local checks, cerr = c.agent:checks()
      assert.is_nil(cerr)
      local ch = checks[CHK]
      assert.are.equal("spec agent check", ch.Name)
      assert.are.equal("critical", ch.Status)  -- a TTL check starts critical
      assert.are.equal("from the spec", ch.Notes)
      assert.are.equal("ttl", ch.Type)
      assert.are.equal(A.node, ch.Node)

      local some = assert(c.agent:checks({ filter = 'CheckID == "' .. CHK .. '"' }))
      assert.is_table(some[CHK])
      assert.is_nil(some.serfHealth)
    end)

    it("check_pass, check_warn, check_fail set the status (and the note as Output)", function()
      assert.are.equal(true, (c.agent:check_pass(CHK, { note = "all good" })))
      local ch = raw_get("/v1/agent/checks")[CHK]
      assert.are.equal("passing", ch.Status)
      assert.are.equal("all good", ch.Output)

      assert.are.equal(true, (c.agent:check_warn(CHK, { note = "hmm" })))
      ch = raw_get("/v1/agent/checks")[CHK]
      assert.are.equal("warning", ch.Status)
      assert.are.equal("hmm", ch.Output)

      assert.are.equal(true, (c.agent:check_fail(CHK)))
      ch = raw_get("/v1/agent/checks")[CHK]
      assert.are.equal("critical", ch.Status)
      assert.are.equal("", ch.Output)
    end)

    it("check_update sets Status and Output from the body", function()
      local ok, err, meta = c.agent:check_update(CHK, { Status = "warning", Output = "disk 91%" })
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      local ch = assert(c.agent:checks())[CHK]
      assert.are.equal("warning", ch.Status)
      assert.are.equal("disk 91%", ch.Output)

      local _, berr, bmeta = c.agent:check_update(CHK, { Status = "bogus" })
      assert.are.equal(400, bmeta.status)
      assert.matches("^consul: PUT /v1/agent/check/update/spec%-agent%-chk: 400 ", berr)
    end)

    it("check_pass on an unknown check fails with Consul's status", function()
      local ok, err, meta = c.agent:check_pass("spec-agent-absent")
      assert.is_nil(ok)
      assert.are.equal("http", meta.code)
      assert.is_true(meta.status == 404 or meta.status == 500)
      assert.matches("^consul: PUT /v1/agent/check/pass/spec%-agent%-absent: %d%d%d ", err)
    end)

    it("check_deregister removes it", function()
      local ok, err = c.agent:check_deregister(CHK)
      assert.are.equal(true, ok)
      assert.is_nil(err)
      assert.is_nil(raw_get("/v1/agent/checks")[CHK])
      assert.is_nil(assert(c.agent:checks())[CHK])
    end)
  end)

  ---------------------------------------------------------------------------
  describe("local service health", function()
    local SVC = "spec-agent-health"
    local ID = SVC .. "-1"
    local CID = ID .. "-ttl"

    setup(function()
      assert(c.agent:service_register({ ID = ID, Name = SVC, Port = 9000,
        Check = { CheckID = CID, Name = "ttl", TTL = "60s" } }))
    end)
    teardown(function() c.agent:service_deregister(ID) end)

    local function by_id()
      local r, err, meta = c.agent:health_service_by_id(ID)
      assert.is_nil(err)
      assert.is_table(r)
      return r, meta
    end
    local function by_name()
      local r, err, meta = c.agent:health_service_by_name(SVC)
      assert.is_nil(err)
      assert.is_table(r)
      return r, meta
    end

    it("passing: 200 and the decoded answer", function()
      assert(c.agent:check_pass(CID))
      local r, meta = by_id()
      assert.are.equal(200, meta.status)
      assert.are.equal("passing", r.AggregatedStatus)
      assert.are.equal(ID, r.Service.ID)
      assert.are.equal(SVC, r.Service.Service)
      assert.are.equal("passing", find(r.Checks, "CheckID", CID).Status)

      local list, lmeta = by_name()
      assert.are.equal(200, lmeta.status)
      assert.are.equal(1, #list)
      assert.are.equal("passing", list[1].AggregatedStatus)
      assert.are.equal(ID, list[1].Service.ID)
    end)

    it("warning: meta.status 429, the answer still decoded", function()
      assert(c.agent:check_warn(CID))
      local r, meta = by_id()
      assert.are.equal(429, meta.status)
      assert.is_nil(meta.code)
      assert.are.equal("warning", r.AggregatedStatus)
      assert.are.equal(ID, r.Service.ID)

      local list, lmeta = by_name()
      assert.are.equal(429, lmeta.status)
      assert.are.equal("warning", list[1].AggregatedStatus)
    end)

    it("critical: meta.status 503, the answer still decoded", function()
      assert(c.agent:check_fail(CID))
      local r, meta = by_id()
      assert.are.equal(503, meta.status)
      assert.is_nil(meta.code)
      assert.are.equal("critical", r.AggregatedStatus)
      assert.are.equal("critical", find(r.Checks, "CheckID", CID).Status)

      local list, lmeta = by_name()
      assert.are.equal(503, lmeta.status)
      assert.are.equal("critical", list[1].AggregatedStatus)
    end)

    it("format=text gives the status as text", function()
      assert(c.agent:check_pass(CID))
      local t, err, meta = c.agent:health_service_by_id(ID, { format = "text" })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal("passing", t)
      assert(c.agent:check_fail(CID))
      t, err, meta = c.agent:health_service_by_name(SVC, { format = "text" })
      assert.is_nil(err)
      assert.are.equal(503, meta.status)
      assert.are.equal("critical", t)
    end)

    it("an unknown service: nil, nil, meta (404)", function()
      local r, err, meta = c.agent:health_service_by_id("spec-agent-absent")
      assert.is_nil(r)
      assert.is_nil(err)
      assert.are.equal(404, meta.status)
      r, err, meta = c.agent:health_service_by_name("spec-agent-absent")
      assert.is_nil(r)
      assert.is_nil(err)
      assert.are.equal(404, meta.status)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("connect", function()
    local SRC, DST, DENY = "spec-agent-src", "spec-agent-dst", "spec-agent-denied"
    local intentions = {}

    setup(function()
      assert(c.agent:service_register({ ID = DST, Name = DST, Port = 9100,
        Connect = { SidecarService = {} } }))
      assert(c.agent:service_register({ ID = SRC, Name = SRC, Port = 9101 }))
      intentions[1] = assert(c.connect:intention_create({ SourceName = SRC,
        DestinationName = DST, Action = "allow" })).ID
      intentions[2] = assert(c.connect:intention_create({ SourceName = DENY,
        DestinationName = DST, Action = "deny" })).ID
    end)

    teardown(function()
      for _, id in ipairs(intentions) do
        agent.http(A, "DELETE", "/v1/connect/intentions/" .. id)
      end
      c.agent:service_deregister(SRC)
      c.agent:service_deregister(DST)
    end)

    it("connect_ca_roots gives the CA roots, the active one among them", function()
      local r, err, meta = c.agent:connect_ca_roots()
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_number(meta.index)
      assert.is_string(r.ActiveRootID)
      assert.is_string(r.TrustDomain)
      local active = find(r.Roots, "ID", r.ActiveRootID)
      assert.is_table(active)
      assert.is_true(active.Active)
      assert.matches("^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-", active.RootCert)
    end)

    it("connect_ca_leaf gives a leaf certificate for a registered service", function()
      local roots = assert(c.agent:connect_ca_roots())
      local l, err, meta = c.agent:connect_ca_leaf(DST)
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.are.equal(DST, l.Service)
      assert.matches("^%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-", l.CertPEM)
      assert.matches("BEGIN EC PRIVATE KEY", l.PrivateKeyPEM, 1, true)
      assert.are.equal("spiffe://" .. roots.TrustDomain .. "/ns/default/dc/" .. A.dc ..
        "/svc/" .. DST, l.ServiceURI)
      assert.is_string(l.ValidBefore)
    end)

    it("connect_authorize answers from the intentions", function()
      local roots = assert(c.agent:connect_ca_roots())
      local function uri(svc)
        return "spiffe://" .. roots.TrustDomain .. "/ns/default/dc/" .. A.dc .. "/svc/" .. svc
      end
      local r, err, meta = c.agent:connect_authorize({ Target = DST, ClientCertURI = uri(SRC) })
      assert.is_nil(err)
      assert.are.equal(200, meta.status)
      assert.is_true(r.Authorized)
      assert.matches(intentions[1], r.Reason, 1, true)

      r, err = c.agent:connect_authorize({ Target = DST, ClientCertURI = uri(DENY) })
      assert.is_nil(err)
      assert.is_false(r.Authorized)
      assert.matches(intentions[2], r.Reason, 1, true)

      local _, berr, bmeta = c.agent:connect_authorize({ Target = DST, ClientCertURI = "bogus" })
      assert.are.equal(400, bmeta.status)
      assert.matches("^consul: POST /v1/agent/connect/authorize: 400 ", berr)
    end)
  end)
end)
