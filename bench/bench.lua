--[[
bench/bench.lua: `make bench`. The consul module against the least a C client can do for the
same job (bench/rawbench.c: one reused libcurl handle, ?raw where only a value is wanted, JSON
parsed only where the answer is JSON), on the throwaway agent of scripts/with-agent.sh; the 1 MiB
rows on one of their own (KV values up to 2 MiB, a bounded Raft log: "The 1 MiB rows' agent").

  lua5.4 bench/bench.lua RAWBENCH                      the whole benchmark (CONSUL_TEST_ADDR set)
  lua5.4 bench/bench.lua --worker WORKLOAD N [EXTRA]   one module measurement (used by the above)
  lua5.4 bench/bench.lua --worker CHECK N              one check (rss, handover); handover starts
                                                       its second process as --worker handover-peer N

Every measurement runs in a process of its own (rawbench, or this script with --worker) that
makes its connection and runs a few untimed operations first, then times N operations and
prints one line:  ops=N secs=WALL cpu=USER+SYS user=USER sys=SYS rss_kb=KB maxrss_kb=PEAK
agent_cpu=SECS requests=REQUESTS. WALL is CLOCK_MONOTONIC and CPU getrusage(RUSAGE_SELF) of
that process (all its threads: the module's renewer counts) around the timed loop only; PEAK
its peak resident memory; agent_cpu the agent's CPU over the loop (/proc/$CONSUL_TEST_PID).
The module side is a plain Lua loop as a user writes it: keys built in the loop, one call per
operation, results checked.

Fairness: the keys are written once before any measurement; each workload is then measured
ROUNDS times, the sides taking turns and rotating who goes first each round, and the best of
each side is reported (highest ops/s, lowest CPU/op: on a shared 2-core machine other load and
the agent's own warm-up only ever make a run slower). BENCH_STAT=median reports medians. An
information block gives the paired figures too: each round's module run over the raw run next
to it in time, the median over the rounds.

Information rows: under the lock cycle, the plain 4 requests and Go's 5 made raw; under get,
the raw get followed by 3 us of busy client CPU ("get-spin"): what a little more client work
per request costs in throughput here, where the agent shares the 2 cores.

Goals (issues 2 and 8): get, put, session and lock cycle >= 0.95x throughput and <= 1.2x client
CPU per op; 1 MiB put + get and 1 MiB get >= 0.9x and <= 1.3x, peak RSS at most the raw
client's + 4 MiB; KV list <= 1.5x CPU; resident memory growth < 1 MiB over 100,000 gets; lock
hand-over between two processes: median < 1 ms. Timings never fail the run: the exit status
is non-zero only when something errored.

Environment: BENCH_ROUNDS (default 5), BENCH_STAT (best or median), BENCH_SCALE (multiplies
every N; 0.1 for a quick look), BENCH_VERBOSE=1 (every single measurement on stderr),
BENCH_ONLY=id,id (only these workloads and checks), BENCH_PIN=0 (client and agent not pinned
to CPUs of their own; see "Pinning" below), BENCH_AA=1 (every workload's raw run a second time,
as a third side taking its turn like the others, judged like the module: raw ÷ raw, the
harness's own noise floor for the same statistic).
]]

-- ---- the workloads -----------------------------------------------------------------------
--
-- One row of the table each. Fields:
--   id       the name rawbench.c knows too (its `workloads` table) and --worker takes
--   label    the row's name in the table
--   n        timed operations per measurement (scaled by BENCH_SCALE)
--   extra    optional argument passed to both sides (list: the number of records expected)
--   warmup   untimed operations before the timed loop (rawbench has its own, the same)
--   alts     optional rawbench workloads reported as extra baselines (information): { id, label }
--   goal     { ops = min throughput ratio, cpu = max CPU/op ratio, rss_kb = max peak RSS over raw }
--   big      measured on the 1 MiB rows' agent of its own (see "The 1 MiB rows' agent" below)
--   run      function(c, n, extra, i0): the module side, n operations starting at i0

local NKEYS = 1000          -- keys of the list prefix, also read round-robin by get
local VALUE = string.rep("v", 100)
local BIG_LEN = 1024 * 1024
-- every byte value (NULs, invalid UTF-8), 4,096 times; made only where it is sent, and once per
-- process, as rawbench mallocs its own once (made again for the timed loop, the warm-up's copy
-- was still garbage then: 2 MiB of the peak RSS that were the benchmark's, not the module's)
local big_cache
local function big_value()
  if big_cache == nil then
    local t = {}
    for i = 0, 255 do t[#t + 1] = string.char((i * 7) & 255) end
    big_cache = string.rep(table.concat(t), BIG_LEN // 256)
  end
  return big_cache
end

local workloads = {
  { id = "put", label = "kv put 100B", n = 10000, warmup = 50, goal = { ops = 0.95, cpu = 1.2 },
    run = function(c, n, _, i0)
      for i = i0, i0 + n - 1 do
        local ok, err = c.kv:put("bench/put/" .. i % NKEYS, VALUE)
        if ok ~= true then error("put: " .. tostring(err)) end
      end
    end },
  { id = "get", label = "kv get 100B", n = 20000, warmup = 50, goal = { ops = 0.95, cpu = 1.2 },
    alts = { { id = "get-spin", label = "raw + 3 us", spin = true } },
    run = function(c, n, _, i0)
      for i = i0, i0 + n - 1 do
        local v, err = c.kv:get(string.format("bench/list/%04d", i % NKEYS))
        if v == nil or #v ~= 100 then error("get: " .. tostring(err)) end
      end
    end },
  { id = "session", label = "session", n = 3000, warmup = 10, goal = { ops = 0.95, cpu = 1.2 },
    run = function(c, n)
      for _ = 1, n do
        local id, err = c.session:create({ TTL = "15s" })
        if not id then error("session create: " .. tostring(err)) end
        local ok, derr = c.session:destroy(id)
        if ok ~= true then error("session destroy: " .. tostring(derr)) end
      end
    end },
  { id = "lock", label = "lock cycle", n = 2000, warmup = 10,
    alts = { { id = "lock-plain", label = "vs plain 4 req" }, { id = "lock-go", label = "vs Go's 5 req" } },
    goal = { ops = 0.95, cpu = 1.2 },
    run = function(c, n)
      for _ = 1, n do
        local l = assert(c:lock("bench/lock"))
        assert(l:release())
      end
    end },
  { id = "big-putget", label = "1 MiB put + get", n = 200, warmup = 3, big = true,
    goal = { ops = 0.9, cpu = 1.3, rss_kb = 4096 },
    run = function(c, n)
      local big = big_value()
      for _ = 1, n do
        local ok, err = c.kv:put("bench/big", big)
        if ok ~= true then error("big put: " .. tostring(err)) end
        local v, gerr = c.kv:get("bench/big")
        if v == nil or #v ~= BIG_LEN then error("big get: " .. tostring(gerr)) end
      end
    end },
  { id = "big-get", label = "1 MiB get", n = 300, warmup = 3, big = true,
    goal = { ops = 0.9, cpu = 1.3, rss_kb = 4096 },
    run = function(c, n)
      for _ = 1, n do
        local v, err = c.kv:get("bench/big")
        if v == nil or #v ~= BIG_LEN then error("big get: " .. tostring(err)) end
      end
    end },
  { id = "list", label = "kv list 1000", n = 300, extra = NKEYS, warmup = 3,
    goal = { cpu = 1.5 },
    run = function(c, n, extra)
      for _ = 1, n do
        local t, err = c.kv:list("bench/list/")
        if t == nil or #t ~= extra then error("list: " .. tostring(err)) end
      end
    end },
}

-- ---- shared helpers ----------------------------------------------------------------------

local script_dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = script_dir:match("^(.*)/[^/]*$") or "."
package.cpath = root .. "/build/bench/?.so;" .. package.cpath
local util = require("benchutil")

local function rss_kb()
  local f = assert(io.open("/proc/self/status", "r"))
  local kb
  for line in f:lines() do
    local v = line:match("^VmRSS:%s*(%d+)")
    if v then kb = tonumber(v) end
  end
  f:close()
  return kb
end

local function cpu()
  local u, s = util.rusage()
  return u, s
end

-- The agent's CPU seconds so far (/proc/PID/stat utime + stime), or nil.
local AGENT_PID = os.getenv("CONSUL_TEST_PID")
local function agent_cpu()
  local f = AGENT_PID and io.open("/proc/" .. AGENT_PID .. "/stat", "r")
  if not f then return nil end
  local line = f:read("l")
  f:close()
  local rest = line and line:match("%)%s+(.*)$")
  if not rest then return nil end
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  -- after the command: state is field 3 of the line, utime and stime are 14 and 15
  return (tonumber(fields[12]) + tonumber(fields[13])) / util.clk_tck()
end

local function addr()
  local a = os.getenv("CONSUL_TEST_ADDR")
  if a == nil or a == "" then
    io.stderr:write("bench: CONSUL_TEST_ADDR is not set (run through scripts/with-agent.sh)\n")
    os.exit(2)
  end
  return a
end

local function new_client()
  return require("consul").new({ addr = addr() })
end

local function timed(fn)
  local u0, s0 = cpu()
  local t0 = util.now()
  fn()
  local t1 = util.now()
  local u1, s1 = cpu()
  return t1 - t0, u1 - u0, s1 - s0
end

local function find(list, id)
  for _, x in ipairs(list) do if x.id == id then return x end end
end

-- the Lua interpreter running us, for the workers
local LUA = "lua5.4"
do
  local i = -1
  while arg[i] ~= nil do LUA = arg[i]; i = i - 1 end
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function requests(c) return c:stats().requests end

-- percentiles of a list of seconds, in us: median, p99 (nearest rank), min, max
local function pct_us(xs)
  local t = {}
  for i, x in ipairs(xs) do t[i] = x * 1e6 end
  table.sort(t)
  local n = #t
  local med = n % 2 == 1 and t[n // 2 + 1] or (t[n // 2] + t[n // 2 + 1]) / 2
  return med, t[math.max(1, math.ceil(0.99 * n))], t[1], t[n]
end

-- ---- checks: measurements that are not module-vs-raw ops/s rows ----------------------------
--
-- Each runs (module only) in a worker process of its own: `worker(c, n)` does the work and
-- returns the fields it prints (key=value); `report(r, n, raw)` prints its lines from them.
-- Optional: `peer(c, n)`, run by `--worker ID-peer N` (a second process the worker starts);
-- `raw = true`: rawbench's workload ID is run too (its fields are report's `raw`).


-- Lock hand-over: two processes (A = the check's worker, B = its peer) pass HO_KEY back and
-- forth. A holds it first; in round r the holder is A when r is odd, else B. The waiter first
-- waits until the other holds the lock (after releasing in the last round it may still be
-- taking it), writes HO_READY = r, then blocks in c:lock(HO_KEY, {wait = 10}) and records
-- t_acquired when it returns. The holder waits (blocking gets) until HO_READY = r, sleeps 20 ms
-- so the waiter is surely in its blocking read, records t_call, calls lock:release() and records
-- t_release when it returns. Latency = t_acquired - t_release (CLOCK_MONOTONIC, system-wide),
-- and from t_call. The raw C client (rawbench "handover") runs the same protocol.
local HO_KEY, HO_READY = "bench/handover/lock", "bench/handover/ready"

local function ho_loop(c, me, n, lk)
  local t = { call = {}, rel = {}, acq = {} }
  local ready_index = 0
  for r = 1, n do
    local give_up = util.now() + 30
    if (r % 2 == 1 and 0 or 1) == me then
      while true do
        local v, err, meta = c.kv:get(HO_READY,
          ready_index > 0 and { index = ready_index, wait = 10 } or nil)
        if err then error(err, 0) end
        ready_index = meta.index or 0
        if v == tostring(r) then break end
        if util.now() > give_up then error("handover: the waiter never became ready", 0) end
      end
      util.sleep(0.02)
      t.call[r] = util.now()
      local ok, err = lk:release()
      t.rel[r] = util.now()
      if not ok then error(err, 0) end
      lk = nil
    else
      local index = 0
      while true do
        -- the record, not get (?raw): only the record says who holds the key
        local rec, err, meta = c.kv:record(HO_KEY, index > 0 and { index = index, wait = 10 } or nil)
        if err then error(err, 0) end
        if rec and (rec.Session or "") ~= "" then break end
        index = meta.index or 0
        if util.now() > give_up then error("handover: the other never took the lock", 0) end
      end
      assert(c.kv:put(HO_READY, tostring(r)))
      local l, err = c:lock(HO_KEY, { wait = 10 })
      t.acq[r] = util.now()
      if not l then error(err, 0) end
      lk = l
    end
  end
  if lk then assert(lk:release()) end  -- the last round's taker
  return t
end

local function ho_fields(prefix, med, p99, min, max)
  return string.format("%smedian_us=%.1f %sp99_us=%.1f %smin_us=%.1f %smax_us=%.1f", prefix, med,
    prefix, p99, prefix, min, prefix, max)
end

local RSS_WARMUP = 5000

local checks = {
  { id = "rss", n = 100000,
    worker = function(c, n)
      -- resident memory across n gets, after a warm-up of RSS_WARMUP gets
      local get = find(workloads, "get").run
      get(c, RSS_WARMUP, nil, 0)
      local before, heap_before = rss_kb(), collectgarbage("count")
      local secs, user, sys = timed(function() get(c, n, nil, RSS_WARMUP) end)
      local after, heap_after = rss_kb(), collectgarbage("count")
      return string.format("ops=%d secs=%.6f cpu=%.6f rss_before_kb=%d rss_after_kb=%d " ..
        "heap_before_kb=%.0f heap_after_kb=%.0f", n, secs, user + sys, before, after,
        heap_before, heap_after)
    end,
    report = function(r)
      local growth = r.rss_after_kb - r.rss_before_kb
      print(string.format("rss: %d module gets after %d warm-up gets: VmRSS %d kB -> %d kB, " ..
        "growth %+d kB (Lua heap %d kB -> %d kB; %.0f gets/s)  %s (< 1024 kB)",
        r.ops, RSS_WARMUP, r.rss_before_kb, r.rss_after_kb, growth, r.heap_before_kb,
        r.heap_after_kb, r.ops / r.secs, growth < 1024 and "goal met" or "goal missed"))
    end },
  { id = "handover", n = 200, raw = true,
    worker = function(c, n)
      assert(c.kv:put(HO_READY, "0"))
      local lk = assert(c:lock(HO_KEY, { wait = 10 }))
      local peer = assert(io.popen(string.format("%s %s --worker handover-peer %d", q(LUA),
        q(arg[0]), n), "r"))
      local t0 = util.now()
      local ok, mine = pcall(ho_loop, c, 0, n, lk)
      local out = peer:read("a")
      local pok = peer:close()
      if not ok then error(mine, 0) end
      if not pok then error("handover: the peer process failed", 0) end
      local theirs = { call = {}, rel = {}, acq = {} }
      for what, r, x in out:gmatch("(%a+) (%d+) ([%d%.]+)") do theirs[what][tonumber(r)] = tonumber(x) end
      local lat, lat_call = {}, {}
      for r = 1, n do
        local h, w = mine, theirs
        if r % 2 == 0 then h, w = theirs, mine end
        if not (w.acq[r] and h.rel[r] and h.call[r]) then error("handover: round " .. r .. " missing", 0) end
        lat[r], lat_call[r] = w.acq[r] - h.rel[r], w.acq[r] - h.call[r]
      end
      return string.format("rounds=%d secs=%.3f %s %s", n, util.now() - t0,
        ho_fields("", pct_us(lat)), ho_fields("call_", pct_us(lat_call)))
    end,
    peer = function(c, n)
      local t = ho_loop(c, 1, n)
      local lines = {}
      for _, what in ipairs({ "call", "rel", "acq" }) do
        for r, x in pairs(t[what]) do lines[#lines + 1] = string.format("%s %d %.9f", what, r, x) end
      end
      return table.concat(lines, "\n")
    end,
    report = function(r, _, raw)
      local function line(who, x)
        return string.format("  %-21s median %7.1f us  p99 %7.1f us  (min %.1f, max %.1f)   " ..
          "from the call: median %7.1f us  p99 %7.1f us", who, x.median_us, x.p99_us, x.min_us,
          x.max_us, x.call_median_us, x.call_p99_us)
      end
      print(string.format("lock hand-over between two processes, %d rounds (t_acquired in the " ..
        "waiter - t_release in the holder, CLOCK_MONOTONIC):", r.rounds))
      print(line("module (c:lock/release)", r) .. "  " ..
        (r.median_us < 1000 and "goal met" or "goal missed") .. " (median < 1 ms)")
      if raw then print(line("raw C (libcurl)", raw) .. "  (information)") end
      print("  t_release is taken when lock:release() returns, i.e. after PUT ?release= AND the " ..
        "session destroy: the")
      print("  waiter can take the lock during the destroy, so this can be negative; " ..
        "\"from the call\" counts from before release().")
    end },
}

-- ---- worker: one module measurement in this process ------------------------------------------

local function worker(id, n, extra)
  local c = new_client()
  local check = find(checks, id)
  local peer = find(checks, (id:match("^(.*)%-peer$")))
  if check then
    print(check.worker(c, n))
  elseif peer and peer.peer then
    print(peer.peer(c, n))
  else
    local w = find(workloads, id)
    if w == nil then error("unknown workload " .. tostring(id)) end
    w.run(c, w.warmup, extra, 0)
    local req0 = requests(c)
    local a0 = agent_cpu()
    local secs, user, sys = timed(function() w.run(c, n, extra, w.warmup) end)
    local a1 = agent_cpu()
    print(string.format("ops=%d secs=%.6f cpu=%.6f user=%.6f sys=%.6f rss_kb=%d maxrss_kb=%d " ..
      "agent_cpu=%.6f requests=%d", n, secs, user + sys, user, sys, rss_kb(), util.maxrss(),
      a0 and a1 and a1 - a0 or -1, requests(c) - req0))
  end
  c:close()
end

if arg[1] == "--worker" then
  local ok, err = pcall(worker, tostring(arg[2]), tonumber(arg[3]), tonumber(arg[4]))
  if not ok then
    io.stderr:write("bench worker: ", tostring(err), "\n")
    os.exit(1)
  end
  os.exit(0)
end

-- ---- driver --------------------------------------------------------------------------------

local RAW = arg[1]
if RAW == nil then
  io.stderr:write("usage: lua5.4 bench/bench.lua RAWBENCH  (or --worker WORKLOAD N [EXTRA])\n")
  os.exit(2)
end
local ADDR = addr()
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS") or "") or 5
local STAT = os.getenv("BENCH_STAT") == "median" and "median" or "best"
local SCALE = tonumber(os.getenv("BENCH_SCALE") or "") or 1
local VERBOSE = (os.getenv("BENCH_VERBOSE") or "") ~= ""
local ONLY = {}
for id in (os.getenv("BENCH_ONLY") or ""):gmatch("[^,%s]+") do ONLY[id] = true end
local function wanted(id) return next(ONLY) == nil or ONLY[id] end
local AA = (os.getenv("BENCH_AA") or "") ~= "" and os.getenv("BENCH_AA") ~= "0"

local function run(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  if not ok then
    error(string.format("%s failed (%s %s)", cmd, tostring(how), tostring(code)), 0)
  end
  local r = {}
  for k, v in out:gmatch("([%w_]+)=([%d%.%-]+)") do r[k] = tonumber(v) end
  if next(r) == nil then error(cmd .. ": no result in: " .. out, 0) end
  if r.ops and r.secs and r.cpu then
    r.ops_s = r.ops / r.secs
    r.cpu_op = r.cpu / r.ops
  end
  return r
end

-- one measurement; agent: { addr, pid } of an agent other than the shared one, or nil
local function measure(side, id, n, extra, agent)
  local env = agent and string.format("env CONSUL_TEST_ADDR=%s CONSUL_TEST_PID=%s ",
    q(agent.addr), q(agent.pid)) or ""
  if side == "module" then
    return run(string.format("%s%s %s --worker %s %d %s", env, q(LUA), q(arg[0]), q(id), n,
      extra and tostring(extra) or ""))
  end
  return run(string.format("%s%s %s %s %d %s", env, q(RAW), q(agent and agent.addr or ADDR), q(id),
    n, extra and tostring(extra) or ""))
end

local function median(xs)
  local t = {}
  for i, x in ipairs(xs) do t[i] = x end
  table.sort(t)
  local m = #t // 2
  if #t % 2 == 1 then return t[m + 1] end
  return (t[m] + t[m + 1]) / 2
end

local function summarize(rs)
  local ops, cpu_op, agent_op, maxrss = {}, {}, {}, {}
  for i, r in ipairs(rs) do
    ops[i], cpu_op[i], maxrss[i] = r.ops_s, r.cpu_op, r.maxrss_kb or 0
    agent_op[i] = (r.agent_cpu or -1) >= 0 and r.agent_cpu / r.ops or 0
  end
  local req_op = rs[1].requests and rs[1].requests / rs[1].ops
  if STAT == "median" then
    return { ops_s = median(ops), cpu_op = median(cpu_op), agent_op = median(agent_op),
      maxrss_kb = median(maxrss), req_op = req_op }
  end
  return { ops_s = math.max(table.unpack(ops)), cpu_op = math.min(table.unpack(cpu_op)),
    agent_op = math.min(table.unpack(agent_op)), maxrss_kb = math.min(table.unpack(maxrss)),
    req_op = req_op }
end

local function us(x) return string.format("%.1f us", x * 1e6) end

local started = util.now()

-- Pinning (BENCH_PIN, default on where there are 2 CPUs or more): this process, and so every
-- measuring process it starts (both sides alike), on CPU 0; the agent, all its threads, on the
-- others. On these 2 cores the agent, a Go runtime whose threads spin, park and wake, otherwise
-- shares each core with the client, and where the scheduler puts them moved a row by more than
-- the goals' 5% (the raw client's own puts did 4,369-6,749/s within one run): pinned, each side
-- is timed against an agent with a core of its own, as it has on any machine with more cores.
-- The agent's affinity is given back at the end (make bench runs the nginx part next).
local PIN = os.getenv("BENCH_PIN") ~= "0"
local pinned
local function ncpu()
  local p = io.popen("nproc 2>/dev/null")
  local n = p and tonumber(p:read("a"):match("%d+"))
  if p then p:close() end
  return n or 1
end
local function taskset(args)
  return os.execute("taskset " .. args .. " >/dev/null 2>&1") == true
end
if PIN and AGENT_PID then
  local n = ncpu()
  local f = io.open("/proc/self/stat", "r")
  local self_pid = f and f:read("n")
  if f then f:close() end
  if n < 2 then
    print("bench: not pinned (1 CPU)")
  elseif not (self_pid and taskset("-p -c 0 " .. self_pid)
      and taskset(string.format("-a -p -c 1-%d %s", n - 1, AGENT_PID))) then
    print("bench: not pinned (taskset failed: is util-linux installed?)")
    if self_pid then taskset(string.format("-p -c 0-%d %d", n - 1, self_pid)) end
  else
    pinned = { n = n, text = "client processes on CPU 0, the agent on CPU " ..
      (n == 2 and "1" or "1-" .. (n - 1)) }
  end
end
local function unpin()
  if pinned then taskset(string.format("-a -p -c 0-%d %s", pinned.n - 1, AGENT_PID)) end
end

-- The 1 MiB rows' agent: a dev agent of their own (KV values up to 2 MiB), started when the
-- first of them runs and stopped after the last. A dev agent keeps its Raft log in memory and by
-- default compacts it only past 16,384 entries, keeping 10,240: the rows' thousands of 1 MiB puts
-- grew the shared agent by gigabytes (4 GB in 27 s), each put costing the agent more than the
-- last, and the raw client missed 0.9x against itself in two runs of three. This one snapshots
-- every 250-500 ms once 64 entries are new and keeps 64 (scripts/agent.sh --raft-log-entries);
-- the small rows keep the shared agent as it is, no snapshots among their writes.
local SCRIPTS = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/../scripts"
local big_agent
local function start_big_agent()
  local tmp = os.getenv("CONSUL_TEST_TMP")
  if tmp == nil or tmp == "" then
    error("bench: CONSUL_TEST_TMP is not set (run through scripts/with-agent.sh)", 0)
  end
  local dir = tmp .. "/bench-big"
  local p = assert(io.popen(string.format("%s start %s --name bench-big --kv-max-value-size %d " ..
    "--raft-log-entries 64", q(SCRIPTS .. "/agent.sh"), q(dir), 2 * BIG_LEN), "r"))
  local out = p:read("a")
  local a, kv = { dir = dir }, {}
  if p:close() then
    for line in out:gmatch("[^\n]+") do
      local k, v = line:match("^(%u[%u_]*)=(.*)$")
      if k then kv[k] = v end
    end
    a.addr, a.pid = kv.ADDR, kv.PID and kv.PID:match("^%d+$")
  end
  if a.addr == nil or a.pid == nil then error("bench: starting the 1 MiB rows' agent failed", 0) end
  if pinned then taskset(string.format("-a -p -c 1-%d %s", pinned.n - 1, a.pid)) end
  local c = require("consul").new({ addr = a.addr })
  local ok, err = c.kv:put("bench/big", big_value())
  c:close()
  assert(ok, "setup: a 1 MiB value on the 1 MiB rows' agent: " .. tostring(err))
  return a
end
local function stop_big_agent()
  if big_agent then
    os.execute(string.format("%s stop %s >/dev/null", q(SCRIPTS .. "/agent.sh"), q(big_agent.dir)))
    big_agent = nil
  end
end

-- setup: the keys of every workload, once, before any measurement
do
  local c = new_client()
  for i = 0, NKEYS - 1 do
    assert(c.kv:put(string.format("bench/list/%04d", i), VALUE), "setup put failed")
    assert(c.kv:put("bench/put/" .. i, VALUE), "setup put failed")
  end
  local t = assert(c.kv:list("bench/list/"))
  assert(#t == NKEYS, "setup: list returned " .. #t .. " records")
  c:close()
end

print(string.format("consul bench: agent %s, %d round(s) per workload, %s of each side; " ..
  "cpu = client getrusage user+sys", ADDR, ROUNDS, STAT))
print(pinned and ("pinned: " .. pinned.text .. " (BENCH_PIN=0: not pinned)")
  or "not pinned: client and agent share the CPUs")
print("raw = bench/rawbench.c: the least a client can do for the job (one reused libcurl " ..
  "handle, ?raw for values, JSON parsed only where the answer is JSON)")
print()

local results = {}
for _, w in ipairs(workloads) do
  if not wanted(w.id) then goto next_workload end
  if not w.big then
    stop_big_agent()
  elseif big_agent == nil then
    big_agent = start_big_agent()
    print(string.format("the 1 MiB rows: an agent of their own, %s, its in-memory Raft log kept " ..
      "to 64 entries (see bench.lua)", big_agent.addr))
  end
  local n = math.max(1, math.floor(w.n * SCALE + 0.5))
  local sides = { "raw", "module" }
  local got = { raw = {}, module = {} }
  if AA then
    sides[#sides + 1] = "aa"
    got.aa = {}
  end
  for i, a in ipairs(w.alts or {}) do
    sides[#sides + 1] = i
    got[i] = {}
  end
  for r = 1, ROUNDS do
    -- rotate who goes first, so warm-up or drift does not favour one side
    local order = {}
    for i = 1, #sides do order[i] = sides[(i + r - 2) % #sides + 1] end
    for _, side in ipairs(order) do
      local alt = w.alts and w.alts[side]
      local res = measure(side == "module" and "module" or "raw", alt and alt.id or w.id, n, w.extra,
        w.big and big_agent or nil)
      if VERBOSE then
        io.stderr:write(string.format("  %-12s round %d %-10s %9.0f ops/s %8.1f us cpu/op\n", w.id, r,
          alt and alt.id or side, res.ops_s, res.cpu_op * 1e6))
      end
      table.insert(got[side], res)
    end
  end
  local alts = {}
  for i, a in ipairs(w.alts or {}) do alts[i] = { label = a.label, spin = a.spin, s = summarize(got[i]) } end
  -- paired: each round's module run (or BENCH_AA's second raw run) against the raw run next to
  -- it in time, the median over the rounds (a slow change of the machine or the agent moves
  -- both runs of a pair alike)
  local function paired(of)
    local pt, pc = {}, {}
    for i = 1, ROUNDS do
      pt[i] = of[i].ops_s / got.raw[i].ops_s
      pc[i] = of[i].cpu_op / got.raw[i].cpu_op
    end
    return { ops = median(pt), cpu = median(pc), ops_lo = math.min(table.unpack(pt)),
      ops_hi = math.max(table.unpack(pt)) }
  end
  results[#results + 1] = {
    w = w, n = n,
    raw = summarize(got.raw), module = summarize(got.module), alts = alts,
    paired = paired(got.module),
    aa = AA and { s = summarize(got.aa), paired = paired(got.aa) } or nil,
  }
  ::next_workload::
end

-- the checks: module only, each in its own process
local checked = {}
for _, ch in ipairs(checks) do
  if not wanted(ch.id) then goto next_check end
  local n = math.max(1, math.floor(ch.n * SCALE + 0.5))
  checked[#checked + 1] = { ch = ch, n = n, r = measure("module", ch.id, n),
    raw = ch.raw and measure("raw", ch.id, n) or nil }
  ::next_check::
end

-- ---- report --------------------------------------------------------------------------------

local function ratio(x) return string.format("%.2fx", x) end
local fmt = "%-16s %6s %11s %10s %6s %12s %11s %6s %7s %13s  %s"
print(string.format(fmt, "workload", "N", "module op/s", "raw op/s", "ratio", "module cpu", "raw cpu",
  "ratio", "agent", "peak RSS", "goal"))
print(string.format(fmt, "", "", "", "", "", "per op", "per op", "", "cpu/op", "module / raw", ""))
for _, r in ipairs(results) do
  local tr = r.module.ops_s / r.raw.ops_s
  local cr = r.module.cpu_op / r.raw.cpu_op
  local ar = r.raw.agent_op > 0 and ratio(r.module.agent_op / r.raw.agent_op) or "?"
  local g, missed, goals = r.w.goal, {}, {}
  if g.ops then
    goals[#goals + 1] = ">=" .. g.ops .. "x"
    if tr < g.ops then missed[#missed + 1] = "throughput" end
  end
  if g.cpu then
    goals[#goals + 1] = "<=" .. g.cpu .. "x cpu"
    if cr > g.cpu then missed[#missed + 1] = "cpu" end
  end
  if g.rss_kb then
    goals[#goals + 1] = "rss <= raw+" .. g.rss_kb // 1024 .. " MiB"
    if r.module.maxrss_kb > r.raw.maxrss_kb + g.rss_kb then missed[#missed + 1] = "rss" end
  end
  print(string.format(fmt, r.w.label, r.n, string.format("%.0f", r.module.ops_s),
    string.format("%.0f", r.raw.ops_s), ratio(tr), us(r.module.cpu_op), us(r.raw.cpu_op), ratio(cr),
    ar, string.format("%.1f/%.1f MiB", r.module.maxrss_kb / 1024, r.raw.maxrss_kb / 1024),
    (#missed == 0 and "met" or "MISSED (" .. table.concat(missed, ", ") .. ")") ..
    " (" .. table.concat(goals, ", ") .. ")"))
end
print("agent cpu/op: the agent's CPU per op, module over raw (what the agent is given to do).")
print()
print("paired (information): each round's module run over the raw run next to it, the median " ..
  "over the rounds (and their range)")
for _, r in ipairs(results) do
  print(string.format("  %-16s throughput %s (%s-%s), client cpu per op %s", r.w.label,
    ratio(r.paired.ops), ratio(r.paired.ops_lo), ratio(r.paired.ops_hi), ratio(r.paired.cpu)))
end

if AA then
  print()
  print("noise floor (BENCH_AA, information): the raw client again, as a third side, over raw; " ..
    "the same statistics as the module's (best of each side; paired median and range)")
  for _, r in ipairs(results) do
    print(string.format("  %-16s throughput %s, client cpu per op %s; paired %s (%s-%s), cpu %s",
      r.w.label, ratio(r.aa.s.ops_s / r.raw.ops_s), ratio(r.aa.s.cpu_op / r.raw.cpu_op),
      ratio(r.aa.paired.ops), ratio(r.aa.paired.ops_lo), ratio(r.aa.paired.ops_hi),
      ratio(r.aa.paired.cpu)))
  end
end

for _, r in ipairs(results) do
  for _, a in ipairs(r.alts) do
    if a.spin then
      -- the same raw requests with 3 us of busy client CPU after each: not the module, but
      -- what so little more client work costs here (the agent shares the 2 cores)
      print()
      print(string.format("%s, %s of client CPU per request (information): %.0f ops/s, %s of raw " ..
        "throughput, %s of raw client CPU, agent cpu/op %s of raw", r.w.label, a.label:gsub("^raw %+ ", ""),
        a.s.ops_s, ratio(a.s.ops_s / r.raw.ops_s), ratio(a.s.cpu_op / r.raw.cpu_op),
        r.raw.agent_op > 0 and ratio(a.s.agent_op / r.raw.agent_op) or "?"))
    end
  end
end
for _, r in ipairs(results) do
  if r.w.id == "lock" and #r.alts > 0 then
    local function reqs(x) return x.req_op and string.format("%.2f", x.req_op) or "?" end
    local parts = {}
    for _, a in ipairs(r.alts) do parts[#parts + 1] = a.label:gsub("^vs ", "") .. " " .. reqs(a.s) end
    print()
    print(string.format("%s: one op = c:lock(key) + lock:release() on the same key; requests/op: " ..
      "module %s, raw %s (the least with a fence: create, txn check-index + lock, txn unlock, " ..
      "destroy); %s", r.w.label, reqs(r.module), reqs(r.raw), table.concat(parts, ", ")))
    for _, a in ipairs(r.alts) do
      print(string.format(fmt, a.label, r.n, string.format("%.0f", r.module.ops_s),
        string.format("%.0f", a.s.ops_s), ratio(r.module.ops_s / a.s.ops_s), us(r.module.cpu_op),
        us(a.s.cpu_op), ratio(r.module.cpu_op / a.s.cpu_op), "", "", "(information)"))
    end
    print("  plain: ?acquire= / ?release= give no fence, and the acquire takes any free key, " ..
      "a lock or not")
  end
end

print()
for _, x in ipairs(checked) do x.ch.report(x.r, x.n, x.raw) end
stop_big_agent()
unpin()
print(string.format("bench took %.1f s", util.now() - started))
