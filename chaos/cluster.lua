-- A real Consul 1.8.7 cluster for the chaos run: 3 servers and 2 client agents, each on its own
-- loopback address (127.0.N.1 .. 127.0.N.5) with its own free ports and data dir, started with
-- setsid and stopped by the PID it wrote, never by name.
local system = require("system")

local M = {}
local Agent = {}
Agent.__index = Agent

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.quote = quote

local function sh(cmd)
  local p = io.popen(cmd, "r")
  local out = p:read("a")
  local ok, _, rc = p:close()
  return out, ok and 0 or rc
end
M.sh = sh

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read = read

-- curl, one request: status (number, or nil: no answer) and body
function M.http(addr, method, path, timeout)
  local out = sh(string.format("curl -s -m %g -X %s -w '\\n%%{http_code}' %s 2>/dev/null",
    timeout or 2, method, quote("http://" .. addr .. path)))
  local body, code = out:match("^(.*)\n(%d+)$")
  code = tonumber(code)
  if not code or code == 0 then return nil, "" end
  return code, body
end

function Agent:alive()
  if not self.pid then return false end
  local _, rc = sh("kill -0 " .. self.pid .. " 2>/dev/null")
  return rc == 0
end

function Agent:signal(sig)
  if self.pid then os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null") end
end

-- Starts the agent (its config written at cluster creation); returns when its PID is known.
function Agent:start()
  os.remove(self.dir .. "/pid")
  os.execute(string.format(
    "BIN=%s DIR=%s setsid sh -c 'echo $$ >\"$DIR/pid\"; exec \"$BIN\" agent " ..
    "-config-file=\"$DIR/agent.hcl\" >>\"$DIR/agent.log\" 2>&1' </dev/null >/dev/null 2>&1 &",
    quote(self.bin), quote(self.dir)))
  local deadline = system.monotime() + 5
  repeat
    local pid = read(self.dir .. "/pid")
    if pid and pid:match("^%d+") then
      self.pid = tonumber(pid:match("^%d+"))
      return true
    end
    system.sleep(0.02)
  until system.monotime() > deadline
  error("agent " .. self.name .. " did not start (no pid file)")
end

-- Waits for the process to end (up to timeout s); true when it has.
function Agent:wait_exit(timeout)
  local deadline = system.monotime() + (timeout or 10)
  while self:alive() do
    if system.monotime() > deadline then return false end
    system.sleep(0.05)
  end
  return true
end

-- SIGTERM, then SIGKILL after 10 s; the process gone either way.
function Agent:stop()
  if not self:alive() then return end
  self:signal("CONT")
  self:signal("TERM")
  if not self:wait_exit(10) then
    self:signal("KILL")
    self:wait_exit(5)
  end
end

function Agent:http(method, path, timeout)
  return M.http(self.addr, method, path, timeout)
end

-- The leader this agent knows ("" none), or nil when it does not answer.
function Agent:leader()
  local status, body = self:http("GET", "/v1/status/leader", 1)
  if status ~= 200 then return nil end
  return body:match('^"(.*)"$') or ""
end

local function free_ports(n)
  local out, rc = sh(quote(M.root .. "/scripts/agent.sh") .. " free-port " .. n)
  assert(rc == 0, "free ports: " .. out)
  local t = {}
  for p in out:gmatch("%d+") do t[#t + 1] = tonumber(p) end
  assert(#t == n, "free ports: " .. out)
  return t
end

-- M.new{ root =, bin =, dir =, net = N } --> cluster (not started)
function M.new(o)
  M.root = o.root
  local cl = { agents = {}, servers = {}, clients = {}, dir = o.dir }
  local ports = free_ports(5 * 3)
  local function port() return table.remove(ports) end
  for i = 1, 5 do
    local server = i <= 3
    local a = setmetatable({
      name = (server and "s" or "c") .. (server and i or i - 3),
      ip = string.format("127.0.%d.%d", o.net, i),
      server = server, bin = o.bin, dir = o.dir .. "/" .. (server and "s" or "c") .. i,
      http_port = port(), serf_port = port(), server_port = port(),
    }, Agent)
    a.addr = a.ip .. ":" .. a.http_port
    cl.agents[i] = a
    if server then cl.servers[#cl.servers + 1] = a else cl.clients[#cl.clients + 1] = a end
  end
  local join = {}
  for _, s in ipairs(cl.servers) do join[#join + 1] = string.format("%q", s.ip .. ":" .. s.serf_port) end
  for _, a in ipairs(cl.agents) do
    os.execute("mkdir -p " .. quote(a.dir .. "/data"))
    write(a.dir .. "/agent.hcl", table.concat({
      string.format("node_name = %q", a.name),
      'datacenter = "chaos"',
      string.format("data_dir = %q", a.dir .. "/data"),
      string.format("bind_addr = %q", a.ip),
      string.format("advertise_addr = %q", a.ip),
      string.format("client_addr = %q", a.ip),
      a.server and "server = true\nbootstrap_expect = 3" or "server = false",
      "retry_join = [" .. table.concat(join, ", ") .. "]",
      "retry_interval = \"1s\"",
      string.format("ports {\n  http = %d\n  serf_lan = %d\n  server = %d\n  serf_wan = -1\n" ..
        "  dns = -1\n  grpc = -1\n  https = -1\n}", a.http_port, a.serf_port, a.server_port),
      "performance { raft_multiplier = 1 }",
      "disable_update_check = true",
      'log_level = "info"',
      -- client agents leave the cluster on SIGTERM (Consul's default for clients, said here)
      a.server and "leave_on_terminate = false" or "leave_on_terminate = true",
      "",
    }, "\n"))
  end
  return setmetatable(cl, { __index = M })
end

function M:start()
  for _, a in ipairs(self.agents) do a:start() end
  return self:wait_ready(60)
end

-- The leader's address ("ip:port" of its server RPC) as the servers agree on it, or nil.
function M:leader()
  for _, s in ipairs(self.servers) do
    if s:alive() and not s.frozen then
      local l = s:leader()
      if l and l ~= "" then return l end
    end
  end
  return nil
end

function M:server_at(rpc_addr)
  for _, s in ipairs(self.servers) do
    if s.ip .. ":" .. s.server_port == rpc_addr then return s end
  end
end

-- Ready: a leader, every live agent answering with it and every node's serfHealth passing
-- (a session cannot be made on a node whose serfHealth is not).
function M:wait_ready(timeout)
  local deadline = system.monotime() + timeout
  while system.monotime() < deadline do
    local ok = self:leader() ~= nil
    for _, a in ipairs(self.agents) do
      if ok and a:alive() and not a.frozen then
        local l = a:leader()
        ok = l ~= nil and l ~= ""
        if ok then
          local status, body = a:http("GET", "/v1/health/node/" .. a.name, 1)
          ok = status == 200 and body:find('"serfHealth"', 1, true) ~= nil and
            not body:find('"Status":%s*"critical"') and not body:find('"Status":%s*"warning"')
        end
      end
    end
    if ok then return true end
    system.sleep(0.2)
  end
  return false
end

function M:stop()
  for i = #self.agents, 1, -1 do self.agents[i]:stop() end
end

-- The node that holds a session, and the session's name (curl, through any live agent).
function M:session_info(id)
  for _, a in ipairs(self.agents) do
    if a:alive() and not a.frozen then
      local status, body = a:http("GET", "/v1/session/info/" .. id, 1)
      if status == 200 then
        return body:match('"Node":%s*"([^"]*)"'), body:match('"Name":%s*"([^"]*)"')
      end
    end
  end
end

function M:agent_named(name)
  for _, a in ipairs(self.agents) do if a.name == name then return a end end
end

-- Any answering agent's GET
function M:get(path, timeout)
  for _, a in ipairs(self.agents) do
    if a:alive() and not a.frozen then
      local status, body = a:http("GET", path, timeout or 2)
      if status then return status, body end
    end
  end
  return nil, ""
end

return M
