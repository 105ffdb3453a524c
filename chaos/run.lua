-- make chaos: locks judged by their histories, on a real cluster with faults injected.
--
-- For each round: a fresh 3-server, 2-client Consul 1.8.7 cluster (chaos/cluster.lua, on
-- 127.0.N.1-5), K worker processes (chaos/worker.lua, half on each client agent) contending
-- for one lock (or semaphore) and incrementing a counter under it, and a nemesis injecting,
-- one after the other: SIGKILL of the Raft leader (restarted 10 s later), SIGSTOP of the
-- holder's agent for 20 s, SIGKILL of the holder, a graceful restart of the holder's agent.
-- Then the workers stop, and a checker reads their logs (CLOCK_MONOTONIC times, comparable
-- across processes) and the cluster's final state, and prints per round:
--
--   overlaps      two holds that both confirmed held() at overlapping times
--   lost updates  counter writes that succeeded but are not in the final value
--   fences        takes whose fence was not above the previous take's
--   waits         c:lock / c:semaphore calls that returned more than 1 s after their wait
--   sessions      sessions left once the workers stopped (after Consul's 2 x TTL)
--   after leader  from a new leader being elected to the lock being held again
--   longest gap   per fault, the longest time without a holder after it
--
-- and exits non-zero on a violation of the round's goals.
--
-- Environment: CHAOS_ROUNDS (lock,guarded,sem), CHAOS_FAULTS (leader,freeze,kill,restart),
-- CHAOS_CYCLES (1: the faults once each), CHAOS_WORKERS (4), CHAOS_DIR (build/chaos),
-- CHAOS_NET (the N of 127.0.N.x: 77), CONSUL_BIN.
local ROOT = (arg[0]:match("^(.*)/chaos/[^/]*$")) or "."
package.path = ROOT .. "/chaos/?.lua;" .. package.path
local system = require("system")
local cluster = require("cluster")
local quote, sh, read = cluster.quote, cluster.sh, cluster.read
local now, sleep = system.monotime, system.sleep

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local function list(s)
  local t = {}
  for w in s:gmatch("[^,%s]+") do t[#t + 1] = w end
  return t
end

local ROUNDS = {
  lock = { mode = "plain", ttl = 10, lock_delay = 15, wait = 5,
    what = "c:lock, default lock_delay (15 s), counter by c.kv:put",
    goals = { overlaps = true, lost = true } },
  guarded = { mode = "guarded", ttl = 10, lock_delay = 0, wait = 5,
    what = "c:lock, lock_delay = 0, counter by lock:put",
    goals = { lost = true } },
  sem = { mode = "sem", ttl = 10, lock_delay = 15, wait = 5, limit = 2,
    what = "c:semaphore limit 2, default lock_delay (15 s)",
    goals = { overlaps = true } },
}

local BIN = env("CONSUL_BIN", nil)
if not BIN then
  local out, rc = sh(quote(ROOT .. "/scripts/fetch-consul.sh") .. " 2>/dev/null")
  BIN = rc == 0 and out:match("([^\n]+)%s*$") or nil
  assert(BIN, "no consul binary: scripts/fetch-consul.sh failed")
end
local DIR = env("CHAOS_DIR", ROOT .. "/build/chaos")
local NET = tonumber(env("CHAOS_NET", "77"))
local K = tonumber(env("CHAOS_WORKERS", "4"))
local CYCLES = tonumber(env("CHAOS_CYCLES", "1"))
local FAULTS = list(env("CHAOS_FAULTS", "leader,freeze,kill,restart"))
local T_START = now()

-- Processes a previous run left (interrupted): every PID file under DIR whose process still
-- runs with DIR in its command line (not another process that got the PID since) is killed.
local function cleanup()
  local out = sh("find " .. quote(DIR) .. " -name '*pid' -type f 2>/dev/null")
  local n = 0
  for f in out:gmatch("[^\n]+") do
    local pid = tonumber((read(f) or ""):match("^%d+") or "")
    local cmd = pid and read("/proc/" .. pid .. "/cmdline")
    if cmd and cmd:find(DIR, 1, true) then
      os.execute("kill -CONT " .. pid .. " 2>/dev/null; kill -KILL " .. pid .. " 2>/dev/null")
      n = n + 1
    end
    os.remove(f)
  end
  return n
end

if arg[1] == "--cleanup" then
  local n = cleanup()
  if n > 0 then print("chaos: killed " .. n .. " processes left by an interrupted run") end
  os.exit(0)
end
cleanup()

local function say(fmt, ...)
  io.stdout:write(string.format("[chaos %6.1f] " .. fmt .. "\n", now() - T_START, ...))
  io.stdout:flush()
end

---------------------------------------------------------------------------
-- workers

local Workers = {}
Workers.__index = Workers

local function new_workers(cl, r, rdir)
  local self = setmetatable({ cl = cl, r = r, dir = rdir, procs = {}, gen = {} }, Workers)
  self.key = r.mode == "sem" and "chaos/sem" or "chaos/lock/.lock"
  self.counter = "chaos/counter"
  self.stopfile = rdir .. "/stop"
  return self
end

function Workers:spawn(i)
  local r = self.r
  self.gen[i] = (self.gen[i] or 0) + 1
  local client = self.cl.clients[(i - 1) % #self.cl.clients + 1]
  local p = { i = i, gen = self.gen[i], client = client,
    log = string.format("%s/w%d.%d.log", self.dir, i, self.gen[i]),
    pidfile = string.format("%s/w%d.%d.pid", self.dir, i, self.gen[i]) }
  local args = { client.addr, self.key, self.counter, r.mode, p.log, self.stopfile,
    "chaos-w" .. i, r.wait, r.ttl, r.lock_delay, r.limit or 1 }
  for k, v in ipairs(args) do args[k] = quote(v) end
  os.execute(string.format("cd %s && PIDF=%s setsid sh -c 'echo $$ >\"$PIDF\"; exec lua5.4 " ..
    "chaos/worker.lua %s' </dev/null >>%s 2>&1 &", quote(ROOT), quote(p.pidfile),
    table.concat(args, " "):gsub("'", "'\\''"), quote(p.log .. ".stderr")))
  local deadline = now() + 5
  repeat
    local s = read(p.pidfile)
    if s and s:match("^%d+") then p.pid = tonumber(s:match("^%d+")) break end
    sleep(0.02)
  until now() > deadline
  assert(p.pid, "worker " .. i .. " did not start")
  self.procs[i] = p
  return p
end

local function alive(pid)
  local _, rc = sh("kill -0 " .. pid .. " 2>/dev/null")
  return rc == 0
end

function Workers:start()
  for i = 1, K do self:spawn(i) end
end

-- A long hold, asked for: the file GRAB, which the next worker to take the lock renames to
-- GRAB.<its name> and then holds on until held() is false (30 s at most). Returns that worker
-- and its client agent, once it holds.
function Workers:grab(timeout)
  local grab = self.dir .. "/grab"
  local f = assert(io.open(grab, "wb"))
  f:close()
  local deadline = now() + timeout
  repeat
    for i, p in pairs(self.procs) do
      local mine = grab .. ".chaos-w" .. i
      if os.rename(mine, mine .. ".seen") then return p, p.client end
    end
    sleep(0.01)
  until now() > deadline
  os.remove(grab)
end

function Workers:stop()
  local f = assert(io.open(self.stopfile, "wb"))
  f:close()
  local deadline = now() + self.r.wait + 10
  local killed = 0
  for _, p in pairs(self.procs) do
    while alive(p.pid) and now() < deadline do sleep(0.05) end
    if alive(p.pid) then
      os.execute("kill -KILL " .. p.pid)
      killed = killed + 1
    end
  end
  return killed
end

---------------------------------------------------------------------------
-- the nemesis: each fault returns its events { t =, what = } and when it is over

local function wait_until(timeout, fn, step)
  local deadline = now() + timeout
  repeat
    local v = fn()
    if v then return v end
    sleep(step or 0.1)
  until now() > deadline
end

local nemesis = {}

-- (no long hold here: short holds go on, so releases fall into the election)
function nemesis.leader(cl, _, ev)
  local l = wait_until(20, function() return cl:leader() end)
  local s = l and cl:server_at(l)
  if not s then ev("no leader to kill") return end
  ev("kill", "SIGKILL of the leader " .. s.name)
  s:signal("KILL")
  s:wait_exit(5)
  local t_kill = now()
  local nl = wait_until(30, function()
    local x = cl:leader()
    return x and x ~= l and x
  end, 0.05)
  if nl then
    ev("leader", "new leader " .. cl:server_at(nl).name ..
      string.format(" after %.1f s", now() - t_kill))
  else
    ev("no new leader", "no new leader within 30 s")
  end
  sleep(math.max(0, t_kill + 10 - now()))
  s:start()
  ev("back", s.name .. " restarted")
  cl:wait_ready(30)
  sleep(10)
end

function nemesis.freeze(cl, w, ev)
  local p, a = w:grab(10)
  if not a then ev("no holder", "no holder to freeze") return end
  if a.server then a = w.cl.clients[1] end
  ev("stop", string.format("SIGSTOP of %s (the agent of w%d) for 20 s", a.name, p.i))
  a:signal("STOP")
  a.frozen = true
  sleep(20)
  a:signal("CONT")
  a.frozen = false
  ev("cont", "SIGCONT of " .. a.name)
  cl:wait_ready(30)
  sleep(10)
end

function nemesis.kill(_, w, ev)
  local p = w:grab(10)
  if not p then ev("no holder", "no holder to kill") return end
  ev("kill", string.format("SIGKILL of the holder w%d (pid %d)", p.i, p.pid))
  os.execute("kill -KILL " .. p.pid)
  while alive(p.pid) do sleep(0.02) end
  p.killed = now()
  w:spawn(p.i)
  -- its session ends after up to 2 x TTL, then the lock-delay
  sleep(2 * w.r.ttl + w.r.lock_delay + 5)
end

function nemesis.restart(cl, w, ev)
  local p, a = w:grab(10)
  if not a then ev("no holder", "no holder whose agent to restart") return end
  if a.server then a = w.cl.clients[1] end
  ev("term", string.format("graceful restart of %s (the agent of w%d): SIGTERM, it leaves",
    a.name, p.i))
  a:signal("TERM")
  if not a:wait_exit(20) then
    ev("slow", a.name .. " still running 20 s after SIGTERM: SIGKILL")
    a:signal("KILL")
    a:wait_exit(5)
  end
  a:start()
  cl:wait_ready(30)
  ev("back", a.name .. " back")
  sleep(w.r.lock_delay + 10)
end

---------------------------------------------------------------------------
-- the checker

local function parse_logs(rdir)
  local holds, calls, writes, releases = {}, {}, {}, {}
  local out, _ = sh("ls " .. quote(rdir) .. " | grep -E '^w[0-9]+\\.[0-9]+\\.log$'")
  for name in out:gmatch("[^\n]+") do
    local w = name:match("^(w%d+%.%d+)")
    local cur
    for line in io.lines(rdir .. "/" .. name) do
      local f = {}
      for x in line:gmatch("%S+") do f[#f + 1] = x end
      local ev = f[1]
      if ev == "call" then
        local c = { w = w, t0 = tonumber(f[2]), t1 = tonumber(f[3]), ok = f[4] == "ok",
          code = f[5] }
        calls[#calls + 1] = c
        if c.ok then
          cur = { w = w, got = c.t1, fence = tonumber(f[6]), session = f[7], confirmed = {} }
          holds[#holds + 1] = cur
        end
      elseif ev == "in" and cur then
        local t, held = tonumber(f[2]), f[3] == "true"
        if held then
          cur.open = t
        end
      elseif ev == "read" and cur then
        cur.read_v = tonumber(f[3])
      elseif ev == "write" and cur then
        local wr = { w = w, t0 = tonumber(f[2]), t1 = tonumber(f[3]), outcome = f[4],
          v = tonumber(f[5]), hold = cur }
        writes[#writes + 1] = wr
      elseif ev == "out" and cur then
        local t, held = tonumber(f[2]), f[3] == "true"
        if cur.open then
          -- confirmed from the round's start, to its end if held() still said so
          cur.confirmed[#cur.confirmed + 1] = { cur.open, held and t or cur.open }
          cur.open = nil
        end
        cur.last = t
      elseif ev == "rel" and cur then
        if cur.open then cur.confirmed[#cur.confirmed + 1] = { cur.open, cur.open } end
        cur.rel_t = tonumber(f[2])
        releases[#releases + 1] = { t0 = tonumber(f[2]), t1 = tonumber(f[3]), ok = f[4] == "ok",
          code = f[5], pending = f[6] == "true" }
        cur = nil
      end
    end
    -- a hold its worker did not end (killed): what it confirmed stands
    if cur then
      if cur.open then cur.confirmed[#cur.confirmed + 1] = { cur.open, cur.open } end
      cur.unfinished = true
    end
  end
  return holds, calls, writes, releases
end

local function check(r, holds, calls, writes, releases, final, events, t_end)
  local res = { holds = #holds, calls = #calls }
  -- overlaps / most holders at once
  local iv = {}
  for _, h in ipairs(holds) do
    -- a hold's rounds follow one another: from its first confirmation to its last
    local first, last
    for _, x in ipairs(h.confirmed) do
      first = first and math.min(first, x[1]) or x[1]
      last = last and math.max(last, x[2]) or x[2]
    end
    if first then iv[#iv + 1] = { a = first, b = last, w = h.w } end
  end
  local pts = {}
  for _, x in ipairs(iv) do
    pts[#pts + 1] = { t = x.a, d = 1 }
    pts[#pts + 1] = { t = x.b, d = -1 }
  end
  table.sort(pts, function(p, q) if p.t ~= q.t then return p.t < q.t end return p.d > q.d end)
  local n, most, over = 0, 0, 0
  local limit = r.limit or 1
  for _, p in ipairs(pts) do
    n = n + p.d
    if n > most then most = n end
    if p.d > 0 and n > limit then over = over + 1 end
  end
  res.overlaps, res.most = over, most

  -- lost updates
  if r.mode ~= "sem" then
    local ok, unknown, seen, dup = 0, 0, {}, 0
    for _, wr in ipairs(writes) do
      if wr.outcome == "ok" then
        ok = ok + 1
        if seen[wr.v] then dup = dup + 1 end
        seen[wr.v] = true
      elseif wr.outcome == "unknown" then
        unknown = unknown + 1
      end
    end
    res.writes, res.unknown, res.final = ok, unknown, final
    res.lost = math.max(dup, ok - (final or 0), 0)
    -- fences, in the order of the takes
    table.sort(holds, function(p, q) return p.got < q.got end)
    local bad, last = 0, nil
    for _, h in ipairs(holds) do
      if h.fence then
        if last and h.fence <= last then bad = bad + 1 end
        last = h.fence
      end
    end
    res.fences = bad
  end

  -- waits
  local exceeded, longest = 0, 0
  for _, c in ipairs(calls) do
    local d = c.t1 - c.t0
    if d > longest then longest = d end
    if d > r.wait + 1 then exceeded = exceeded + 1 end
  end
  res.waits, res.longest_call = exceeded, longest
  local rel_longest, pending = 0, 0
  for _, x in ipairs(releases) do
    if x.t1 - x.t0 > rel_longest then rel_longest = x.t1 - x.t0 end
    if x.pending then pending = pending + 1 end
  end
  res.longest_release, res.pending = rel_longest, pending

  -- availability: the time covered by holds (taken .. release called)
  local cover = {}
  for _, h in ipairs(holds) do
    cover[#cover + 1] = { a = h.got, b = h.rel_t or h.last or h.got }
  end
  table.sort(cover, function(p, q) return p.a < q.a end)
  local function longest_gap(a, b)
    local t, gap = a, 0
    for _, x in ipairs(cover) do
      if x.b >= t then
        if x.a > t then
          local g = math.min(x.a, b) - t
          if g > gap then gap = g end
        end
        if x.b > t then t = x.b end
      end
      if t >= b then break end
    end
    if t < b and b - t > gap then gap = b - t end
    return gap
  end
  local function held_again(t)
    for _, x in ipairs(cover) do
      if x.a <= t and x.b >= t then return 0 end
      if x.a >= t then return x.a - t end
    end
  end
  res.faults = {}
  for i, f in ipairs(events) do
    local b = events[i + 1] and events[i + 1].t0 or t_end
    local item = { name = f.name, gap = longest_gap(f.t0, b) }
    if f.leader then item.after_leader = held_again(f.leader) end
    res.faults[#res.faults + 1] = item
  end
  return res
end

---------------------------------------------------------------------------
-- a round

local function run_round(name)
  local r = assert(ROUNDS[name], "no round " .. name)
  local rdir = DIR .. "/" .. name
  os.execute("rm -rf " .. quote(rdir) .. " && mkdir -p " .. quote(rdir))
  say("round %s: %s", name, r.what)
  local cl = cluster.new({ root = ROOT, bin = BIN, dir = rdir, net = NET })
  local ok, err = pcall(function()
    assert(cl:start(), "the cluster did not become ready in 60 s")
    say("cluster up: servers %s, %s, %s; clients %s, %s", cl.servers[1].addr, cl.servers[2].addr,
      cl.servers[3].addr, cl.clients[1].addr, cl.clients[2].addr)
  end)
  if not ok then
    cl:stop()
    error(err, 0)
  end
  local w = new_workers(cl, r, rdir)
  local events, violations = {}, {}
  local result
  ok, err = pcall(function()
    w:start()
    sleep(5)
    for _ = 1, CYCLES do
      for _, fault in ipairs(FAULTS) do
        local f = { name = fault, t0 = now() }
        events[#events + 1] = f
        assert(nemesis[fault], "no fault " .. fault)(cl, w, function(what, text)
          if what == "leader" then f.leader = now() end
          say("%s: %s", fault, text or what)
        end)
      end
    end
    local t_end = now()
    sleep(2)
    local killed = w:stop()
    if killed > 0 then violations[#violations + 1] = killed .. " workers did not stop" end
    -- the counter, read with consistency
    local final
    local status, body = cl:get("/v1/kv/" .. w.counter .. "?raw&consistent", 3)
    if status == 200 then final = tonumber(body) elseif status == 404 then final = 0 end
    -- sessions: each one's end, Consul's 2 x TTL at most (the killed holder's), then none
    local left
    wait_until(2 * r.ttl + 10, function()
      local s, b = cl:get("/v1/session/list", 2)
      if s ~= 200 then return false end
      left = select(2, b:gsub('"ID":', ""))
      return left == 0
    end, 0.5)
    local holds, calls, writes, releases = parse_logs(rdir)
    result = check(r, holds, calls, writes, releases, final, events, t_end)
    result.sessions = left or -1
  end)
  cl:stop()
  if not ok then error(err, 0) end
  result.name = name
  local g = r.goals
  if g.overlaps and result.overlaps > 0 then
    violations[#violations + 1] = result.overlaps .. " overlapping holds"
  end
  if g.lost and (result.lost or 0) > 0 then
    violations[#violations + 1] = result.lost .. " lost updates"
  end
  if (result.fences or 0) > 0 then violations[#violations + 1] = result.fences .. " fences not increasing" end
  if result.waits > 0 then violations[#violations + 1] = result.waits .. " waits exceeded" end
  if result.sessions ~= 0 then violations[#violations + 1] = result.sessions .. " sessions left" end
  for _, f in ipairs(result.faults) do
    if f.name == "leader" and (f.after_leader == nil or f.after_leader > 5) then
      violations[#violations + 1] = string.format("the lock not held again within 5 s of the new " ..
        "leader (%s)", f.after_leader and string.format("%.1f s", f.after_leader) or "never")
    end
  end
  result.violations = violations
  return result
end

---------------------------------------------------------------------------

local results, failed = {}, 0
for _, name in ipairs(list(env("CHAOS_ROUNDS", "lock,guarded,sem"))) do
  local ok, res = pcall(run_round, name)
  if not ok then
    say("round %s: could not run: %s", name, tostring(res))
    res = { name = name, violations = { "could not run: " .. tostring(res) }, faults = {} }
  end
  results[#results + 1] = res
  if #res.violations > 0 then failed = failed + 1 end
  say("round %s: %s", name, #res.violations == 0 and "ok" or table.concat(res.violations, "; "))
end

local function fmt(v, f) if v == nil then return "-" end return string.format(f or "%s", v) end
print()
print("| round | holds | overlaps (most at once) | lost updates (ok writes, unknown, final) | " ..
  "fences not increasing | waits > wait+1 s (longest call) | sessions left | " ..
  "lock held again after a new leader | longest gap per fault | result |")
print("|---|---|---|---|---|---|---|---|---|---|")
for _, r in ipairs(results) do
  local gaps, after = {}, {}
  for _, f in ipairs(r.faults) do
    gaps[#gaps + 1] = string.format("%s %.1f s", f.name, f.gap)
    if f.after_leader then after[#after + 1] = string.format("%.2f s", f.after_leader) end
  end
  print(string.format("| %s | %s | %s (%s) | %s (%s, %s, %s) | %s | %s (%s s) | %s | %s | %s | %s |",
    r.name, fmt(r.holds), fmt(r.overlaps), fmt(r.most), fmt(r.lost), fmt(r.writes),
    fmt(r.unknown), fmt(r.final), fmt(r.fences), fmt(r.waits), fmt(r.longest_call, "%.2f"),
    fmt(r.sessions), #after > 0 and table.concat(after, ", ") or "-", table.concat(gaps, ", "),
    #r.violations == 0 and "ok" or table.concat(r.violations, "; ")))
end
print()
print(string.format("chaos: %d rounds, %d failed", #results, failed))
os.exit(failed == 0 and 0 or 1)
