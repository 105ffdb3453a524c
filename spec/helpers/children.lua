-- spec/helpers/children.lua: child processes for specs. Each runs in the background with
-- its output, pid and exit status in files under one directory, and is stopped by its PID.
local agent = require("spec.helpers.agent")
local util = require("spec.helpers.util")

local M = {}
local Kids = {}
Kids.__index = Kids

-- A set of children whose files go under dir; worker() runs `script` with the interpreter
-- running us, the agent's address and a mode.
function M.new(dir, script, addr)
  return setmetatable({ dir = dir, script = script, addr = addr, seq = 0, list = {} }, Kids)
end

-- Runs `cmd` (a shell command line) in the background; returns a child table with pid, seq,
-- and files base.log (its output), base.rc (its exit status, once it ended).
function Kids:spawn(name, cmd)
  self.seq = self.seq + 1
  local base = self.dir .. "/" .. self.seq .. "-" .. name
  local inner = cmd .. " >" .. agent.quote(base .. ".log") .. " 2>&1 </dev/null & echo $! >" ..
    agent.quote(base .. ".pid") .. "; wait $!; echo $? >" .. agent.quote(base .. ".rc")
  os.execute("sh -c " .. agent.quote(inner) .. " </dev/null >/dev/null 2>&1 &")
  local child = { name = name, base = base, seq = self.seq }
  child.pid = util.wait_until(10, function()
    return tonumber((util.read_file(base .. ".pid") or ""):match("^(%d+)%s"))
  end)
  assert(child.pid, "no pid file for child " .. name)
  self.list[#self.list + 1] = child
  return child
end

function Kids:worker(name, mode, ...)
  local args = { util.LUA, self.script, self.addr, mode }
  for i = 1, select("#", ...) do args[#args + 1] = tostring((select(i, ...))) end
  for i, a in ipairs(args) do args[i] = agent.quote(a) end
  return self:spawn(name, table.concat(args, " "))
end

function M.exit_code(child)
  return tonumber((util.read_file(child.base .. ".rc") or ""):match("^(%d+)%s"))
end

function M.wait_exit(child, timeout)
  return util.wait_until(timeout, function() return M.exit_code(child) end, 0.02)
end

function M.log_of(child)
  return util.read_file(child.base .. ".log") or ""
end

function M.kill(child, sig)
  if not M.exit_code(child) then
    os.execute("kill -" .. (sig or "KILL") .. " " .. child.pid .. " 2>/dev/null")
  end
end

-- Every child still running, killed (teardown).
function Kids:kill_all()
  for _, child in ipairs(self.list) do
    M.kill(child, "KILL")
  end
end

-- A worker's OUT file, once written.
function M.out_of(path, timeout)
  return util.wait_until(timeout, function() return util.read_file(path) end, 0.02)
end

return M
