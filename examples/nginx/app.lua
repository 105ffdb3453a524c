-- examples/nginx/app.lua: the handlers of examples/nginx/nginx.conf.
--
--   GET /kv?key=K            the value of K from Consul's KV (a handler that reads config)
--   GET /critical            a critical section serialised across the whole fleet (with_lock)
--   GET /leader              which node and worker runs the leader job, and how often it ran
--
-- The leader job: every worker of every node runs a timer that tries c:lock("jobs/leader",
-- { wait = 0 }) each second; the one that holds it runs the job (here: counting its runs in
-- KV). When its nginx stops, its workers release what they hold on their way out, and
-- another worker, on another node, takes the lock within a second.
local consul = require("consul")

local _M = {}

local NODE = os.getenv("DEMO_NODE") or "node"
local client, leader

local function c()
  -- one client per worker, made on first use: it serves every request of the worker
  client = client or consul.new()  -- CONSUL_HTTP_ADDR (the conf says `env CONSUL_HTTP_ADDR;`)
  return client
end

function _M.kv()
  local key = ngx.var.arg_key or "demo/greeting"
  local v, err = c().kv:get(key)
  if err then
    ngx.status = 502
    ngx.say(err)
  elseif v == nil then
    ngx.status = 404
    ngx.say("no such key: ", key)
  else
    ngx.say(v)
  end
end

function _M.critical()
  local ok, err = c():with_lock("demo/critical", { wait = 10 }, function(lock)
    -- one request at a time, fleet-wide: read, think, write
    local n = tonumber((c().kv:get("demo/critical/count")) or "0")
    ngx.sleep(0.05)
    assert(c().kv:put("demo/critical/count", tostring(n + 1)))
    return n + 1
  end)
  if not ok then
    ngx.status = 503
    ngx.say(err)
    return
  end
  ngx.say("count ", err)  -- with_lock returns true, then fn's results
end

local function tick(premature)
  if premature then return end  -- the worker is exiting: its lock goes with it
  if not (leader and leader:held()) then
    leader = c():lock("jobs/leader", { wait = 0, value = NODE .. " pid " .. ngx.worker.pid() })
  end
  if leader and leader:held() then
    -- the job itself; fence-guarded writes (lock.fence) would keep a stale leader out
    c().kv:put("jobs/leader/last", NODE .. " pid " .. ngx.worker.pid())
    local runs = tonumber((c().kv:get("jobs/leader/runs")) or "0")
    c().kv:put("jobs/leader/runs", tostring(runs + 1))
  end
end

function _M.init_worker()
  ngx.timer.every(1, tick)
end

function _M.leader()
  local who = c().kv:get("jobs/leader/last")
  local runs = c().kv:get("jobs/leader/runs")
  ngx.say("leader: ", tostring(who), " (", tostring(runs), " runs); this worker: ", NODE, " pid ",
    ngx.worker.pid(), leader and leader:held() and " (the leader)" or "")
end

return _M
