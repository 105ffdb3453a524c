-- spec/hostile_spec.lua: what the module does with answers no Consul agent ever sends: broken
-- framing, stalls and drips, answers without end, JSON of the wrong shape, strings with NUL
-- bytes, and lock answers that try to smuggle a string into the next request. Each is a
-- failure of the module's shape (nil, one line "consul: METHOD /path: why", meta.code), in
-- bounded time and memory, never data and never a crash.
--
-- Everything here talks to spec/helpers/fakeserver (a real agent cannot be made to send any
-- of it), and every describe says so. Clients use timeout = 1 or 2, so stalls end fast.
local consul = require("consul")
local fakeserver = require("spec.helpers.fakeserver")
local util = require("spec.helpers.util")

local answer = fakeserver.answer
local now, slack = util.now, util.slack
local MiB = 1024 * 1024
local CONNECTION = slack(8, 40)

-- A failure: nil, a one-line message starting with head, meta.code == code.
local function failed(code, head, r, err, meta)
  assert.is_nil(r, "expected a failure, got data: " .. tostring(r))
  assert.is_string(err)
  assert.is_nil(err:find("\n", 1, true), "not one line: " .. err)
  assert.are.equal(head, err:sub(1, #head), "message: " .. err)
  assert.is_table(meta)
  assert.are.equal(code, meta.code, err)
  return err, meta
end

local function pack(...) return { n = select("#", ...), ... } end

-- Seconds f takes, and its results (packed).
local function timed(f)
  local t0 = now()
  local r = pack(f())
  return now() - t0, r
end

-- The process's resident set, in KiB.
local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local kib = line:match("^VmRSS:%s+(%d+)")
    if kib then return tonumber(kib) end
  end
end

local function unpack3(t) return t[1], t[2], t[3] end

-------------------------------------------------------------------------------------------
describe("hostile framing (fake server: a real agent never sends these)", function()
  local fs, c

  setup(function()
    fs = fakeserver.start()
    c = consul.new({ addr = fs.addr, timeout = 2 })
  end)
  teardown(function()
    if c then c:close() end
    if fs then fs:stop() end
  end)

  local OK_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
  -- { what, raw answer's name, code, bytes }: "decode" for an answer that came but cannot be
  -- read (a broken chunk too: the module frames HTTP itself, csrc/wire.c), "closed" for one
  -- cut short; never "connect".
  local CASES = {
    { "a status code that is not digits (HTTP/1.1 abc OK)", "badcode", "decode",
      "HTTP/1.1 abc OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]" },
    { "a status line that is not HTTP (FOO 200)", "nothttp", "decode",
      "FOO 200\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]" },
    { "a four-digit status (HTTP/1.1 1000 OK)", "status1000", "decode",
      "HTTP/1.1 1000 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]" },
    { "Content-Length: -1", "neglength", "decode",
      OK_HEAD .. "Content-Length: -1\r\nConnection: close\r\n\r\n[]" },
    { "a header line without a colon", "nocolon", "decode",
      OK_HEAD .. "X-Consul-Index 7\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]" },
    { "a NUL byte inside a header", "nulheader", "decode",
      OK_HEAD .. "X-Consul-Index: 7\0\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]" },
    { "two different Content-Length headers", "twolengths", "decode",
      OK_HEAD .. "Content-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n[]" },
    { "a chunk size that is not hex", "badhex", "decode",
      OK_HEAD .. "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n[]\r\n0\r\n\r\n" },
    { "a chunk without its CRLF", "nocrlf", "decode",
      OK_HEAD .. "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n[]XX0\r\n\r\n" },
    { "a body shorter than its Content-Length, then close", "short", "closed",
      OK_HEAD .. "Content-Length: 10\r\nConnection: close\r\n\r\n[]" },
    { "a headers block over 64 KiB: one header of 1 MiB", "bigheader", "decode",
      OK_HEAD .. "X-Big: " .. string.rep("a", MiB) .. "\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]" },
    { "a headers block over 64 KiB: 100 headers of 1 KiB", "manyheaders", "decode",
      OK_HEAD .. string.rep("X-Many: " .. string.rep("b", 1024) .. "\r\n", 100) ..
      "Content-Length: 2\r\nConnection: close\r\n\r\n[]" },
  }

  for _, case in ipairs(CASES) do
    local what, name, code, bytes = case[1], case[2], case[3], case[4]
    it(what .. ": nil, \"consul: GET /v1/kv/...\", code " .. code .. "; the client goes on", function()
      fs:raw(name, bytes)
      local err = failed(code, "consul: GET /v1/kv/raw/" .. name .. ": ", c.kv:list("raw/" .. name))
      if name:match("header") then
        assert.is_nil(err:lower():find("memory", 1, true), "a refused head is not out of memory: " .. err)
      end
      -- the same client, the next answer a good one
      fs:raw("good", answer('[{"Key":"k","Value":"dg=="}]'))
      local list, lerr = c.kv:list("raw/good")
      assert.is_nil(lerr)
      assert.are.equal("v", list[1].Value)
    end)
  end
end)

-------------------------------------------------------------------------------------------
describe("stalls and drips (fake server: a real agent always answers, and at speed)", function()
  local TIMEOUT = 1
  local servers = {}
  local tmp

  local function server(mode)
    if not servers[mode] then
      -- a connection lives CONNECTION s at most: a client that never gives up fails, not hangs
      servers[mode] = fakeserver.start({ mode = mode, connection = CONNECTION })
    end
    return servers[mode]
  end

  setup(function() tmp = os.tmpname() end)
  teardown(function()
    for _, fs in pairs(servers) do fs:stop() end
    os.remove(tmp)
  end)

  local function client(mode)
    return consul.new({ addr = server(mode).addr, timeout = TIMEOUT })
  end

  -- f ends within `within` seconds (past the timeout) with nil, err, {code = "timeout"}.
  local function times_out(within, head, f)
    local dt, r = timed(f)
    failed("timeout", head, unpack3(r))
    assert.is_true(dt >= TIMEOUT - 0.1, "ended before the timeout: " .. dt .. " s")
    assert.is_true(dt < TIMEOUT + slack(within, within + 5), "took " .. dt .. " s")
  end

  it("a server that accepts and sends nothing: status:leader and kv:get give code timeout within timeout + 1 s", function()
    local x = client("stall")
    times_out(1, "consul: GET /v1/status/leader: ", function() return x.status:leader() end)
    times_out(1, "consul: GET /v1/kv/k: ", function() return x.kv:get("k") end)
    x:close()
  end)

  it("a server that drips its answer a byte a second: kv:get gives code timeout within timeout + 1 s (the timeout bounds the whole call, not each read)", function()
    local x = client("drip")
    times_out(1, "consul: GET /v1/kv/k: ", function() return x.kv:get("k") end)
    times_out(1, "consul: GET /v1/kv/k: ", function() return x.kv:list("k") end)
    x:close()
  end)

  for _, mode in ipairs({ "stall", "continue" }) do
    it("agent:monitor against a server that " ..
       (mode == "stall" and "sends nothing" or "sends only \"100 Continue\"") ..
       ": nil, err, code timeout within timeout + 1 s", function()
      local x = client(mode)
      times_out(1, "consul: GET /v1/agent/monitor: ", function() return x.agent:monitor() end)
      x:close()
    end)
  end

  it("agent:monitor whose answer stalls after its head: read() gives code timeout within its timeout + 1 s, and the stream stays usable", function()
    local x = client("headstall")
    local s = assert(x.agent:monitor())
    times_out(1, "consul: GET /v1/agent/monitor: ", function() return s:read() end)
    times_out(1, "consul: GET /v1/agent/monitor: ", function() return s:read(TIMEOUT) end)
    s:close()
    x:close()
  end)

  local WHAT = { stall = "sends nothing", drip = "drips one byte a second",
                 headstall = "sends a head and then nothing" }
  for _, mode in ipairs({ "stall", "drip", "headstall" }) do
    it("snapshot:save() and snapshot:save(path) against a server that " .. WHAT[mode] ..
       ": code timeout within timeout + 2 s (a snapshot under 1 KiB/s for timeout seconds)", function()
      local x = client(mode)
      times_out(2, "consul: GET /v1/snapshot: ", function() return x.snapshot:save() end)
      times_out(2, "consul: GET /v1/snapshot: ", function() return x.snapshot:save(tmp) end)
      x:close()
    end)
  end
end)

-------------------------------------------------------------------------------------------
describe("answers without end (fake server: a real agent's answers end, and within max_answer)", function()
  local servers = {}

  local function server(mode)
    if not servers[mode] then
      -- a connection lives CONNECTION s at most: a client that never gives up fails, not hangs
      servers[mode] = fakeserver.start({ mode = mode, connection = CONNECTION })
    end
    return servers[mode]
  end

  teardown(function()
    for _, fs in pairs(servers) do fs:stop() end
  end)

  it("snapshot:save() to a string, against chunks for ever, max_answer = 1 MiB: code decode saying max_answer, quickly, and memory stays flat", function()
    local x = consul.new({ addr = server("endless").addr, timeout = 2, max_answer = MiB })
    collectgarbage()
    collectgarbage()
    local before = rss_kib()
    local dt, r = timed(function() return x.snapshot:save() end)
    local err = failed("decode", "consul: GET /v1/snapshot: ", unpack3(r))
    assert.matches("max_answer", err)
    assert.is_true(dt < slack(1.5, 10), "took " .. dt .. " s")
    r = nil
    collectgarbage()
    collectgarbage()
    local grew = rss_kib() - before
    assert.is_true(grew < slack(8, 64) * 1024, "the process grew by " .. grew .. " KiB")
    x:close()
  end)

  it("agent:monitor against a body without newlines for ever, max_answer = 1 MiB: reading ends with nil, err, code decode saying max_answer", function()
    local x = consul.new({ addr = server("endlessline").addr, timeout = 2, max_answer = MiB })
    local s = assert(x.agent:monitor())
    local deadline = now() + slack(10, 30)
    local line, err, meta
    repeat
      line, err, meta = s:read(1)
      if line then
        assert.is_true(#line <= MiB, "a line of " .. #line .. " bytes, over max_answer")
      end
    until err or now() > deadline
    failed("decode", "consul: GET /v1/agent/monitor: ", line, err, meta)
    assert.matches("max_answer", err)
    s:close()
    x:close()
  end)

  it("agent:monitor over max_answer: after that failure the stream is over (read() returns nil, not the unread bytes)", function()
    local x = consul.new({ addr = server("endlessline").addr, timeout = 2, max_answer = MiB })
    local s = assert(x.agent:monitor())
    local deadline = now() + slack(10, 30)
    local err
    repeat
      local _
      _, err = s:read(1)
    until err or now() > deadline
    assert.is_string(err)
    for _ = 1, 3 do
      local line, rerr = s:read(0.2)
      assert.is_true(line == nil, "the stream went on after its failure, with a read of " ..
        (line and (#line .. " bytes") or "?"))
      assert.is_nil(rerr)
    end
    s:close()
    x:close()
  end)

  -- A 100 MB answer is read in a child process with a hard bound: a module that decodes it
  -- for tens of seconds (or grows by gigabytes) fails the spec without holding up the file.
  -- max_answer: "huge" (math.huge) or "default" (none given). Returns what the child says:
  -- elapsed (s), list (its length, or "nil"), code, err, and its whole output.
  local function list_big_in_child(max_answer)
    local fs = server("/big/104857600")
    local script = os.tmpname()
    util.write_file(script, [[
      local consul = require("consul")
      local system = require("system")
      local max = arg[2] == "huge" and math.huge or tonumber(arg[2])  -- "default": none
      local x = consul.new({ addr = arg[1], timeout = 2, max_answer = max })
      local t0 = system.monotime()
      local list, err, meta = x.kv:list("x")
      local dt = system.monotime() - t0
      io.stdout:write(string.format("elapsed=%.3f list=%s code=%s err=%s\n", dt,
        list and #list or "nil", tostring(meta and meta.code), tostring(err)))
    ]])
    local bound = slack(8, 60)
    local t0 = now()
    local p = assert(io.popen("timeout -s KILL " .. bound .. " " .. util.LUA .. " " .. script ..
      " " .. fs.addr .. " " .. max_answer .. " 2>&1; echo \"exit=$?\""))
    local out = p:read("*a")
    p:close()
    local wall = now() - t0
    os.remove(script)
    local elapsed = tonumber(out:match("elapsed=([%d.]+)"))
    assert.is_truthy(elapsed, "the child did not finish within " .. bound .. " s (" ..
      string.format("%.1f", wall) .. " s): " .. out)
    local list, code, err = out:match("list=(%S+) code=(%S+) err=([^\n]*)")
    return elapsed, list, code, err, out
  end

  it("kv:list of a 100 MB answer with the default max_answer (64 MiB): code decode saying max_answer, fast", function()
    local elapsed, list, code, err, out = list_big_in_child("default")
    assert.are.equal("nil", list, out)
    assert.are.equal("decode", code, out)
    assert.are.equal("consul: GET /v1/kv/x: ", err:sub(1, 22), out)
    assert.matches("max_answer", err)
    assert.is_true(elapsed < slack(1, 5), "took " .. elapsed .. " s: " .. out)
  end)

  -- cJSON parses without a clock to look at: what bounds its time and memory is the number of
  -- values an answer may hold (max_answer / 32, counted before parsing); math.huge lifts both.
  it("kv:list of a 100 MB answer of millions of values with max_answer = 256 MiB: code decode, fast", function()
    local elapsed, list, code, err, out = list_big_in_child(tostring(256 * 1024 * 1024))
    assert.are.equal("nil", list, out)
    assert.are.equal("decode", code, out)
    assert.matches("values %(max_answer / 32%)", err)
    assert.is_true(elapsed < 2 + slack(1.5, 8), "took " .. elapsed .. " s: " .. out)
  end)
end)

-------------------------------------------------------------------------------------------
describe("answers of the wrong shape (fake server: Consul's answers always have Consul's shapes)", function()
  local fs, c

  -- Every request to this server gets the answer last given to serve().
  local function serve(body, opts)
    fs:raw("answer", answer(body, opts))
  end

  setup(function()
    fs = fakeserver.start({ mode = "/raw/answer" })
    c = consul.new({ addr = fs.addr, timeout = 2 })
  end)
  teardown(function()
    if c then c:close() end
    if fs then fs:stop() end
  end)

  local BAD_RECORDS = {
    '[1]', '["x"]', '[null]', '{}',
    '[{"Key":"k","Flags":-1}]', '[{"Key":"k","Flags":1.5}]',
    '[{"Key":"k","Flags":18446744073709551616}]', '[{"Key":"k","Flags":1e400}]',
    '[{"Key":"k","Value":5}]', '[{"Key":"k","Value":"not base64!"}]', '[{"Key":"k","Value":{}}]',
  }

  for _, body in ipairs(BAD_RECORDS) do
    it("kv:record answered " .. body .. ": nil, err, code decode", function()
      serve(body)
      failed("decode", "consul: GET /v1/kv/k: ", c.kv:record("k"))
    end)
  end

  it("kv:record answered Flags 18446744073709551615 (2^64 - 1) and Value null: Flags exact, Value \"\"", function()
    serve('[{"Key":"k","Flags":18446744073709551615,"Value":null}]')
    local rec, err = c.kv:record("k")
    assert.is_nil(err)
    assert.are.equal("", rec.Value)
    assert.are.equal(0xffffffffffffffff, rec.Flags)  -- the literal wraps to -1 on 5.4
    if math.type then
      assert.are.equal("integer", math.type(rec.Flags))
      assert.are.equal(-1, rec.Flags)
    else
      assert.are.equal(2 ^ 64, rec.Flags)  -- the nearest double
    end
  end)

  it("kv:list answered [1]: code decode", function()
    serve('[1]')
    failed("decode", "consul: GET /v1/kv/p: ", c.kv:list("p"))
  end)

  it("kv:list answered good records with one bad one among them: code decode, no partial list", function()
    serve('[{"Key":"a","Value":"QQ=="},{"Key":"b","Flags":1.5,"Value":"Qg=="},{"Key":"c","Value":"Qw=="}]')
    failed("decode", "consul: GET /v1/kv/p: ", c.kv:list("p"))
    serve('[{"Key":"a","Value":"QQ=="},{"Key":"b","Value":"Qg=="},{"Key":"c","Value":"!!"}]')
    failed("decode", "consul: GET /v1/kv/p: ", c.kv:list("p"))
  end)

  it("kv:pairs over such an answer raises an error starting with \"consul: \"", function()
    for _, body in ipairs({ '[1]', '[{"Key":"a","Value":"QQ=="},{"Key":"b","Value":5}]' }) do
      serve(body)
      local seen = 0
      local ok, err = pcall(function()
        for _ in c.kv:pairs("p") do seen = seen + 1 end
      end)
      assert.is_false(ok, body .. ": no error")
      assert.are.equal(0, seen, body .. ": pairs yielded data")
      err = tostring(err):gsub("^[^:]*:%d+: ", "")  -- a position, if any
      assert.are.equal("consul: ", err:sub(1, 8), body .. ": " .. err)
    end
  end)

  it("kv:keys answered [1]: code decode", function()
    serve('[1]')
    failed("decode", "consul: GET /v1/kv/p: ", c.kv:keys("p"))
  end)

  it("kv:put answered `yes` (application/json, and text/plain): code decode", function()
    serve('yes')
    failed("decode", "consul: PUT /v1/kv/k: ", c.kv:put("k", "v"))
    serve('yes', { type = "text/plain" })
    failed("decode", "consul: PUT /v1/kv/k: ", c.kv:put("k", "v"))
  end)

  it("session:info answered {}: code decode; [] and null are absent (nil, nil, meta)", function()
    serve('{}')
    failed("decode", "consul: GET /v1/session/info/", c.session:info("11111111-2222-3333-4444-555555555555"))
    for _, body in ipairs({ '[]', 'null' }) do
      serve(body)
      local r, err, meta = c.session:info("11111111-2222-3333-4444-555555555555")
      assert.is_nil(r, body)
      assert.is_nil(err, body)
      assert.is_table(meta, body)
      assert.is_nil(meta.code, body)
    end
  end)

  for _, body in ipairs({ '{"ID":5}', '{"ID":"a\\"b"}', '{}' }) do
    it("session:create answered " .. body .. ": code decode", function()
      serve(body)
      failed("decode", "consul: PUT /v1/session/create: ", c.session:create({ Name = "n" }))
    end)
  end

  it("event:list answered a Payload that is not base64: code decode", function()
    serve('[{"ID":"e","Name":"n","Payload":"!!"}]')
    failed("decode", "consul: GET /v1/event/list: ", c.event:list())
  end)

  it("txn:apply answered a KV Value that is not base64: code decode", function()
    serve('{"Results":[{"KV":{"Key":"k","Value":"%%%"}}],"Errors":null}')
    failed("decode", "consul: PUT /v1/txn: ", c.txn:apply({ { KV = { Verb = "get", Key = "k" } } }))
  end)
end)

-------------------------------------------------------------------------------------------
describe("strings with NUL bytes, and kv:get's ?raw (fake server: chosen answers)", function()
  local fs, c

  setup(function()
    fs = fakeserver.start()
    c = consul.new({ addr = fs.addr, timeout = 2 })
  end)
  teardown(function()
    if c then c:close() end
    if fs then fs:stop() end
  end)

  it("\\u0000 in a JSON string comes back whole, in values and in keys", function()
    fs:raw("nul", answer('{"a":"127.0.0.1\\u0000:8300","b\\u0000c":"x"}'))
    local r, err = c:request("GET", "/v1/raw/nul")
    assert.is_nil(err)
    assert.are.equal("127.0.0.1\0:8300", r.a)
    assert.are.equal(15, #r.a)
    assert.are.equal("x", r["b\0c"])
    assert.is_nil(r.b)
  end)

  it("a raw NUL byte inside a JSON answer: code decode", function()
    fs:raw("rawnul", answer('{"a":"127.0.0.1\0:8300"}'))
    failed("decode", "consul: GET /v1/raw/rawnul: ", c:request("GET", "/v1/raw/rawnul"))
    fs:raw("rawnul2", answer('{"a":1}\0'))
    failed("decode", "consul: GET /v1/raw/rawnul2: ", c:request("GET", "/v1/raw/rawnul2"))
  end)

  it("kv:get reads ?raw: whatever body comes is the value's bytes ([1] is the string \"[1]\")", function()
    fs:forget_requests()
    fs:raw("getraw", answer('[1]'))
    local v, err = c.kv:get("raw/getraw")
    assert.is_nil(err)
    assert.are.equal("[1]", v)
    local reqs = fs:requests()
    assert.are.equal(1, #reqs)
    assert.are.equal("GET /v1/kv/raw/getraw?raw HTTP/1.1", reqs[1].line)
  end)
end)

-------------------------------------------------------------------------------------------
describe("lock answers that smuggle strings (fake server: Consul only ever hands out UUIDs)", function()
  local ID = "11111111-2222-3333-4444-555555555555"
  local LOCK_FLAGS = "3304740253564472344"  -- 0x2ddccbc058a50c18, consul lock's

  after_each(util.run_deferred)

  -- A fake server of its own for each spec (a failed attempt's clean-up may still be on its
  -- way after c:lock returned: it must not eat the next spec's answers), answering every
  -- request with the next of answers; and a client of it.
  local function scripted(answers)
    local fs = fakeserver.start({ mode = "/raw/lock" })
    util.defer(function() fs:stop() end)
    fs:script("lock", answers)
    local c = consul.new({ addr = fs.addr, timeout = 2 })
    util.defer(function() c:close() end)
    return fs, c
  end

  -- Every request received, once one matches pattern (or after 3 s).
  local function requests_after(fs, pattern)
    return util.wait_until(slack(3, 10), function()
      local reqs = fs:requests()
      for _, r in ipairs(reqs) do
        if r.line:find(pattern) then return reqs end
      end
    end, 0.05) or fs:requests()
  end

  local function all_text(reqs)
    local t = {}
    for _, r in ipairs(reqs) do t[#t + 1] = r.raw end
    return table.concat(t, "\n")
  end

  it("a holder's session in the key that is not a session ID (x\"y&z): c:lock fails with code decode and never sends it", function()
    local fs, c = scripted({
      answer('{"ID":"' .. ID .. '"}'),                                          -- session create
      answer('[{"Key":"k","Flags":' .. LOCK_FLAGS .. ',"Session":"x\\"y&z","Value":null}]'), -- the key
      answer('true'), answer('true'), answer('true'), answer('true'),           -- clean-up
    })
    local lock, err, meta = c:lock("k", { wait = 1 })
    failed("decode", "consul: ", lock, err, meta)
    local reqs = requests_after(fs, "/v1/session/destroy/")
    assert.is_true(#reqs >= 2, "the lock read no key")
    assert.matches("^PUT /v1/session/create ", reqs[1].line)
    assert.matches("^GET /v1/kv/k[ ?]", reqs[2].line)
    local text = all_text(reqs)
    for _, smuggled in ipairs({ 'x"y', "x%22y", "y&z", "y%26z", 'x\\"y', "x%5C" }) do
      assert.is_nil(text:find(smuggled, 1, true), "sent " .. smuggled .. ":\n" .. text)
    end
  end)

  local BAD_IDS = {
    { 'x\\"y&z', 'x"y&z' },
    { "../../v1/kv/x", "../" },
    { ID .. "&dc=x", "dc=x" },
    { ID .. "\\r\\nX-Evil: 1", "X-Evil" },
  }
  for _, case in ipairs(BAD_IDS) do
    local json, raw = case[1], case[2]
    it("a session create answering the ID " .. json .. ": c:lock fails with code decode and never sends it", function()
      local fs, c = scripted({
        answer('{"ID":"' .. json .. '"}'),
        answer('[]', { status = "404 Not Found" }), answer('true'), answer('true'), answer('true'),
      })
      local lock, err, meta = c:lock("k", { wait = 1 })
      failed("decode", "consul: PUT /v1/session/create: ", lock, err, meta)
      util.sleep(0.3)  -- room for anything sent after c:lock returned
      local reqs = fs:requests()
      assert.matches("^PUT /v1/session/create ", reqs[1].line)
      for i = 2, #reqs do
        assert.is_nil(reqs[i].raw:find(raw, 1, true), "sent the ID: " .. reqs[i].raw)
      end
    end)
  end

  it("control: a script of right answers takes the lock (the fake server's lock answers work)", function()
    local _, c = scripted({
      answer('{"ID":"' .. ID .. '"}'),                                                   -- create
      answer('[]', { status = "404 Not Found" }),                                        -- read: free
      answer('{"Results":[{"KV":{"Key":"good","Flags":' .. LOCK_FLAGS .. ',"Session":"' .. ID ..
        '","LockIndex":1,"CreateIndex":9,"ModifyIndex":9,"Value":null}}],"Errors":null}'), -- take
      answer('true'), answer('true'), answer('true'), answer('true'), answer('true'),
    })
    local lock, err = c:lock("good", { wait = 1 })
    assert.is_nil(err)
    assert.are.equal(ID, lock.session)
    assert.are.equal("good", lock.key)
    assert.is_true((lock:release()))
  end)
end)
