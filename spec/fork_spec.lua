-- fork(): what nginx does to a master that loaded the module (init_by_lua). A child must not
-- share the parent's kept-alive connection, must not renew nor release the parent's locks,
-- and must be able to take its own. Needs fork() from Lua: LuaJIT's ffi.
local consul = require("consul")
local agent = require("spec.helpers.agent")
local util = require("spec.helpers.util")

local P = "spec/fork/"

if not util.IS_JIT then
  describe("fork()", function()
    pending("calling fork() from Lua needs LuaJIT's ffi (this is " .. _VERSION .. ")")
  end)
  return
end

local ffi = require("ffi")
ffi.cdef([[
  int fork(void);
  void _exit(int status);
  int waitpid(int pid, int *status, int options);
]])

describe("fork()", function()
  local c

  setup(function()
    c = consul.new({ addr = agent.shared().addr })
  end)

  teardown(function()
    c.kv:delete(P, { recurse = true })
    c:close()
  end)

  local function holder(key)
    local rec = c.kv:record(key)
    return rec and rec.Session or ""
  end

  it("a child reconnects, takes its own locks, and leaves the parent's alone", function()
    local key = P .. "parent/.lock"
    local parent_lock = assert(c:lock(key, { ttl = 10 }))
    assert(c.kv:put(P .. "x", "before"))  -- the client's connection is kept alive now
    io.stdout:flush()
    io.stderr:flush()

    local pid = ffi.C.fork()
    if pid == 0 then
      -- the child: whatever happens, it ends with _exit (never back into busted)
      local ok, code = pcall(function()
        if parent_lock:held() then return 10 end  -- the parent's: lost here
        for _ = 1, 20 do  -- answers over a connection of its own, never the parent's
          if c.kv:get(P .. "x") ~= "before" then return 11 end
        end
        local mine = c:lock(P .. "child/.lock", { wait = 5 })
        if not mine or not mine:held() then return 12 end
        if mine:release() ~= true then return 13 end
        if parent_lock:release() ~= true then return 14 end  -- nothing of its own to release
        return 0
      end)
      ffi.C._exit(ok and code or 20)
    end
    assert.is_true(pid > 0, "fork failed")

    local status = ffi.new("int[1]")
    local done = util.wait_until(30, function()
      return ffi.C.waitpid(pid, status, 1 --[[WNOHANG]]) == pid
    end, 0.05)
    assert.is_truthy(done, "the child did not end (a release waiting for the parent's renewer?)")
    local code = math.floor(status[0] / 256) % 256
    assert.are.equal(0, code, "the child failed at step " .. code)

    -- the parent still holds its lock, untouched by the child, over its own connection
    assert.is_true(parent_lock:held())
    assert.are.equal(parent_lock.session, holder(key))
    for _ = 1, 20 do
      assert.are.equal("before", (c.kv:get(P .. "x")))
    end
    assert.is_true(parent_lock:release())
    assert.are.equal("", holder(key))
  end)
end)
