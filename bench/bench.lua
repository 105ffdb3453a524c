--[[
bench/bench.lua: `make bench`. The consul module against a raw libcurl loop (bench/rawbench.c)
sending the same HTTP requests, on the throwaway agent of scripts/with-agent.sh.

  lua5.4 bench/bench.lua RAWBENCH                      the whole benchmark (CONSUL_TEST_ADDR set)
  lua5.4 bench/bench.lua --worker WORKLOAD N [EXTRA]   one module measurement (used by the above)

Every measurement runs in a process of its own (rawbench, or this script with --worker) that
makes its connection and runs a few untimed operations first, then times N operations and
prints one line:  ops=N secs=WALL cpu=USER+SYS user=USER sys=SYS rss_kb=KB
WALL is CLOCK_MONOTONIC and CPU is getrusage(RUSAGE_SELF) of that process around the timed loop
only (Lua gets both clocks from bench/benchutil.c, built by `make bench`). The agent's CPU is
not counted: it is the same for both sides.

Fairness: the keys are written once before any measurement; each workload is then measured
ROUNDS times, the sides taking turns and rotating who goes first each round, and the best of
each side is reported (highest ops/s, lowest CPU/op: on a shared 2-core machine other load and
the agent's own warm-up only ever make a run slower). BENCH_STAT=median reports medians.

Goals (from the issue): throughput >= 0.9x raw and client CPU/op <= 1.5x raw, per workload;
resident memory growth < 1 MiB over 100,000 gets after a warm-up. Timings never fail the run:
the exit status is non-zero only when something errored.

Environment: BENCH_ROUNDS (default 5), BENCH_STAT (best or median), BENCH_SCALE (multiplies
every N; 0.1 for a quick look), BENCH_VERBOSE=1 (every single measurement on stderr).
]]

-- ---- the workloads -----------------------------------------------------------------------
--
-- One row of the table each. Fields:
--   id       the name rawbench.c knows too (its `workloads` table) and --worker takes
--   label    the row's name in the table
--   n        timed operations per measurement (scaled by BENCH_SCALE)
--   extra    optional argument passed to both sides (list: the number of records expected)
--   warmup   untimed operations before the timed loop (rawbench has its own, the same)
--   floor    optional rawbench workload reported as an extra baseline (receive only)
--   run      function(c, n, extra, i0): the module side, n operations starting at i0
--
-- An operation may be several requests: issue 3's lock cycle is one operation of 4 requests
-- (session create, PUT ?acquire=, PUT ?release=, session destroy): add
--   { id = "lock", label = "lock cycle (4 req)", n = ..., warmup = ..., run = ... }
-- here and { "lock", op_lock, ... } to rawbench.c's table. Lock hand-over latency between two
-- processes is not a module-vs-raw ops/s row: it belongs in `checks` below, like the RSS check.

local NKEYS = 1000          -- keys of the list prefix, also read round-robin by get
local VALUE = string.rep("v", 100)

local list_keys, put_keys = {}, {}
for i = 0, NKEYS - 1 do
  list_keys[i] = string.format("bench/list/%04d", i)
  put_keys[i] = "bench/put/" .. i
end

local workloads = {
  { id = "put", label = "kv put 100B", n = 10000, warmup = 50,
    run = function(c, n, _, i0)
      for i = i0, i0 + n - 1 do
        local ok, err = c.kv:put(put_keys[i % NKEYS], VALUE)
        if ok ~= true then error("put: " .. tostring(err)) end
      end
    end },
  { id = "get", label = "kv get", n = 20000, warmup = 50, floor = "get-recv",
    run = function(c, n, _, i0)
      for i = i0, i0 + n - 1 do
        local v, err = c.kv:get(list_keys[i % NKEYS])
        if v == nil or #v ~= 100 then error("get: " .. tostring(err)) end
      end
    end },
  { id = "list", label = "kv list 1000", n = 300, extra = NKEYS, warmup = 3, floor = "list-recv",
    run = function(c, n, extra, _)
      for _ = 1, n do
        local t, err = c.kv:list("bench/list/")
        if t == nil or #t ~= extra then error("list: " .. tostring(err)) end
      end
    end },
  -- issue 3: the lock cycle goes here (see above).
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

-- ---- checks: measurements that are not module-vs-raw ops/s rows ----------------------------
--
-- Each runs (module only) in a worker process of its own: `worker(c, n)` does the work and
-- returns the fields it prints (key=value); `report(r, n)` prints its line from them.
-- Issue 3: lock hand-over latency between two processes goes here (its worker can start the
-- second process, e.g. this script with --worker and another id, and report latencies).

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
}

-- ---- worker: one module measurement in this process ------------------------------------------

local function worker(id, n, extra)
  local c = new_client()
  local check = find(checks, id)
  if check then
    print(check.worker(c, n))
  else
    local w = find(workloads, id)
    if w == nil then error("unknown workload " .. tostring(id)) end
    w.run(c, w.warmup, extra, 0)
    local secs, user, sys = timed(function() w.run(c, n, extra, w.warmup) end)
    print(string.format("ops=%d secs=%.6f cpu=%.6f user=%.6f sys=%.6f rss_kb=%d", n, secs,
      user + sys, user, sys, rss_kb()))
  end
  c:close()
end

if arg[1] == "--worker" then
  local ok, err = pcall(worker, arg[2], tonumber(arg[3]), tonumber(arg[4]))
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

-- the Lua interpreter running us, for the workers
local LUA = "lua5.4"
do
  local i = -1
  while arg[i] ~= nil do LUA = arg[i]; i = i - 1 end
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

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

local function measure(side, id, n, extra)
  if side == "module" then
    return run(string.format("%s %s --worker %s %d %s", q(LUA), q(arg[0]), q(id), n,
      extra and tostring(extra) or ""))
  end
  return run(string.format("%s %s %s %d %s", q(RAW), q(ADDR), q(id), n,
    extra and tostring(extra) or ""))
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
  local ops, cpu_op = {}, {}
  for i, r in ipairs(rs) do ops[i], cpu_op[i] = r.ops_s, r.cpu_op end
  if STAT == "median" then return { ops_s = median(ops), cpu_op = median(cpu_op) } end
  return { ops_s = math.max(table.unpack(ops)), cpu_op = math.min(table.unpack(cpu_op)) }
end

local function us(x) return string.format("%.1f us", x * 1e6) end

local started = util.now()

-- setup: the keys of every workload, once, before any measurement
do
  local c = new_client()
  for i = 0, NKEYS - 1 do
    assert(c.kv:put(list_keys[i], VALUE), "setup put failed")
    assert(c.kv:put(put_keys[i], VALUE), "setup put failed")
  end
  local t = assert(c.kv:list("bench/list/"))
  assert(#t == NKEYS, "setup: list returned " .. #t .. " records")
  c:close()
end

print(string.format("consul bench: agent %s, %d round(s) per workload, %s of each side; " ..
  "cpu = client getrusage user+sys", ADDR, ROUNDS, STAT))
print("raw = bench/rawbench.c: libcurl + cJSON parse + base64 decode of each Value " ..
  "(floor = receive only)")
print()

local results = {}
for _, w in ipairs(workloads) do
  local n = math.max(1, math.floor(w.n * SCALE + 0.5))
  local sides = { "raw", "module" }
  if w.floor then sides[#sides + 1] = "floor" end
  local got = { raw = {}, module = {}, floor = {} }
  for r = 1, ROUNDS do
    -- rotate who goes first, so warm-up or drift does not favour one side
    local order = {}
    for i = 1, #sides do order[i] = sides[(i + r - 2) % #sides + 1] end
    for _, side in ipairs(order) do
      local id = side == "floor" and w.floor or w.id
      local res = measure(side == "module" and "module" or "raw", id, n, w.extra)
      if VERBOSE then
        io.stderr:write(string.format("  %-12s round %d %-6s %9.0f ops/s %8.1f us cpu/op\n", w.id, r,
          side, res.ops_s, res.cpu_op * 1e6))
      end
      table.insert(got[side], res)
    end
  end
  results[#results + 1] = {
    w = w, n = n,
    raw = summarize(got.raw), module = summarize(got.module),
    floor = w.floor and summarize(got.floor) or nil,
  }
end

-- the checks: module only, each in its own process
local checked = {}
for _, ch in ipairs(checks) do
  local n = math.max(1, math.floor(ch.n * SCALE + 0.5))
  checked[#checked + 1] = { ch = ch, n = n, r = measure("module", ch.id, n) }
end

-- ---- report --------------------------------------------------------------------------------

local fmt = "%-16s %8s %13s %11s %7s %14s %12s %9s  %s"
print(string.format(fmt, "workload", "N", "module ops/s", "raw ops/s", "ratio", "module cpu/op",
  "raw cpu/op", "cpu ratio", "goal (>=0.9x, <=1.5x)"))
for _, r in ipairs(results) do
  local tr = r.module.ops_s / r.raw.ops_s
  local cr = r.module.cpu_op / r.raw.cpu_op
  local missed = {}
  if tr < 0.9 then missed[#missed + 1] = "throughput" end
  if cr > 1.5 then missed[#missed + 1] = "cpu" end
  print(string.format(fmt, r.w.label, r.n, string.format("%.0f", r.module.ops_s),
    string.format("%.0f", r.raw.ops_s), string.format("%.2fx", tr), us(r.module.cpu_op),
    us(r.raw.cpu_op), string.format("%.2fx", cr),
    #missed == 0 and "goal met" or ("goal missed (" .. table.concat(missed, ", ") .. ")")))
end

print()
print("against the raw floor (libcurl receive only, no JSON parse, no base64):")
for _, r in ipairs(results) do
  if r.floor then
    print(string.format(fmt, r.w.label, r.n, string.format("%.0f", r.module.ops_s),
      string.format("%.0f", r.floor.ops_s), string.format("%.2fx", r.module.ops_s / r.floor.ops_s),
      us(r.module.cpu_op), us(r.floor.cpu_op),
      string.format("%.2fx", r.module.cpu_op / r.floor.cpu_op), "(information)"))
  end
end

print()
for _, x in ipairs(checked) do x.ch.report(x.r, x.n) end
print(string.format("bench took %.1f s", util.now() - started))
