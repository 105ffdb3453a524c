-- The streaming routes: agent:monitor (an iterator of log lines that can be stopped) against
-- the shared agent, and snapshot:save / snapshot:restore (to and from a file or a string)
-- against a throwaway agent of their own (a restore reshapes an agent's whole state).
local consul = require("consul")
local agent = require("spec.helpers.agent")
local util = require("spec.helpers.util")

local P = "spec/stream/"

describe("consul streams", function()
  local c

  setup(function()
    c = consul.new({ addr = agent.shared().addr })
  end)

  teardown(function()
    c.kv:delete(P, { recurse = true })
    c:close()
  end)

  describe("agent:monitor", function()
    it("yields the agent's log lines as they are written", function()
      local marker = P .. "monitor-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e6))
      local stream = assert(c.agent:monitor({ loglevel = "debug" }))
      local seen, n = false, 0
      local deadline = util.now() + util.slack(10, 30)
      repeat
        -- something for the agent to log: its debug log names every request (a quiet agent
        -- may log nothing else for a while, so each round makes one more)
        assert(c.kv:put(marker, "x"))
        local line = stream:read(1)
        while line do
          n = n + 1
          assert.is_nil(line:find("\n", 1, true), "one line at a time")
          if line:find(marker, 1, true) then
            seen = true
            break
          end
          line = stream:read(0.2)
        end
      until seen or util.now() > deadline
      stream:close()
      assert.is_true(seen, "the requests made while monitoring were not logged (" .. n ..
        " lines)")
    end)

    it("read(timeout) returns a line, or a timeout and stays usable; close() ends it", function()
      local s = assert(c.agent:monitor({ loglevel = "trace" }))
      assert.matches("^consul.Stream", tostring(s))
      local marker = P .. "read-" .. tostring(math.random(1e9))
      assert(c.kv:put(marker, "y"))
      local got
      local deadline = util.now() + util.slack(10, 30)
      repeat
        local line = s:read(1)
        if line and line:find(marker, 1, true) then got = line end
      until got or util.now() > deadline
      assert.is_string(got)
      -- with nothing to log at the error level, a short read times out
      local quiet = assert(c.agent:monitor({ loglevel = "err" }))
      local line, err, meta = quiet:read(0.3)
      assert.is_nil(line)
      assert.matches("no line within", err)
      assert.are.equal("timeout", meta.code)
      assert(c.kv:put(marker, "z"))  -- still usable: another read, another timeout, no crash
      assert.is_nil((quiet:read(0.1)))
      quiet:close()
      assert.is_nil(quiet:read(0.1))  -- the end, after close
      s:close()
      s:close()  -- twice is harmless
    end)

    it("a refused monitor is an error from monitor() itself", function()
      local s, err, meta = c.agent:monitor({ loglevel = "bogus" })
      assert.is_nil(s)
      assert.matches("^consul: GET /v1/agent/monitor: 400", err)
      assert.are.equal("http", meta.code)
      assert.are.equal(400, meta.status)
    end)

    it("an unreferenced stream is collected without a crash", function()
      assert(c.agent:monitor())
      collectgarbage()
      collectgarbage()
      assert.is_string((c.status:leader()))
    end)

    it("bad arguments raise", function()
      assert.has_error(function() c.agent:monitor("debug") end)
      assert.has_error(function() c.agent:monitor({ bogus = 1 }) end)
      assert.has_error(function() c.agent:monitor({}, {}) end)
    end)

    if _VERSION == "Lua 5.4" then
      it("a break out of a generic for closes the stream (its 4th value is to-be-closed)", function()
        local it_fn, _, _, closing = c.agent:monitor({ loglevel = "debug" })
        assert.are.equal(it_fn, closing)
        local chunk = assert(load([[
          local c = ...
          local s
          local f, st, ctl, closing = c.agent:monitor({ loglevel = "debug" })
          c.status:leader()  -- at debug level the agent logs it: a line to read
          for line, _ in f, st, ctl, closing do s = true break end
          return s
        ]]))
        assert.is_true(chunk(c))
        it_fn:close()
      end)
    else
      pending("a break closing the stream needs Lua 5.4's to-be-closed variables (this is " ..
        _VERSION .. ")")
    end
  end)

  describe("snapshot:save and snapshot:restore (a throwaway agent)", function()
    local a, s

    setup(function()
      a = agent.start({ name = "stream-snap" })
      s = consul.new({ addr = a.addr })
    end)

    teardown(function()
      if s then s:close() end
      if a then a:stop() end
    end)

    it("restores a key written before the save, from a file and from the bytes", function()
      assert(s.kv:put("snap/before", "written before the save"))
      local path = agent.tmpdir() .. "/consul.snap"

      -- to a path: the bytes stream to the file
      local ok, err, meta = s.snapshot:save(path)
      assert.is_nil(err)
      assert.is_true(ok)
      assert.are.equal(200, meta.status)
      assert.is_number(meta.index)
      local saved = assert(util.read_file(path))
      assert.is_true(#saved > 100)
      assert.are.equal("\31\139", saved:sub(1, 2), "a gzip stream")

      -- as a string, and to an open file
      local bytes = assert(s.snapshot:save())
      assert.are.equal("\31\139", bytes:sub(1, 2))
      local fh = assert(io.open(path .. ".2", "wb"))
      assert.is_true((s.snapshot:save(fh)))
      fh:close()
      assert.is_true(#assert(util.read_file(path .. ".2")) > 100)

      -- changes after the save...
      assert(s.kv:delete("snap/before"))
      assert(s.kv:put("snap/after", "written after the save"))
      assert.is_nil((s.kv:get("snap/before")))

      -- ...are undone by restoring it, here from an open file
      local rf = assert(io.open(path, "rb"))
      local r, rerr = s.snapshot:restore(rf)
      rf:close()
      assert.is_nil(rerr)
      assert.is_true(r)
      assert.are.equal("written before the save", util.wait_until(5, function()
        return (s.kv:get("snap/before"))
      end))
      assert.is_nil((s.kv:get("snap/after")))

      -- and from the bytes
      assert(s.kv:delete("snap/before"))
      assert.is_true((s.snapshot:restore(bytes)))
      assert.are.equal("written before the save", util.wait_until(5, function()
        return (s.kv:get("snap/before"))
      end))
    end)

    it("a restore of bytes that are no snapshot is Consul's error; the agent keeps its data", function()
      assert(s.kv:put("snap/keep", "kept"))
      local r, err, meta = s.snapshot:restore("not a snapshot")
      assert.is_nil(r)
      assert.matches("^consul: PUT /v1/snapshot: 500", err)
      assert.are.equal("http", meta.code)
      assert.are.equal("kept", (s.kv:get("snap/keep")))
    end)

    it("bad arguments raise", function()
      local closed = assert(io.open(agent.tmpdir() .. "/closed.snap", "wb"))
      closed:close()
      assert.has_error(function() s.snapshot:save(closed) end)  -- its FILE* is gone
      assert.has_error(function() s.snapshot:restore(closed) end)
      assert.has_error(function() s.snapshot:save(42) end)
      assert.has_error(function() s.snapshot:save("/nonexistent-dir/x/y.snap") end)
      assert.has_error(function() s.snapshot:restore(42) end)
      assert.has_error(function() s.snapshot:restore() end)
      assert.has_error(function() s.snapshot:save(nil, { bogus = true }) end)
    end)
  end)
end)
