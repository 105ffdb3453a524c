-- spec/helpers/sessions.lua: what specs ask of a Consul agent's sessions.
local agent = require("spec.helpers.agent")
local json = require("dkjson")
local luassert = require("luassert")
local system = require("system")

local M = {}

-- The session as the agent has it (read over raw HTTP, not the module), or nil.
function M.raw(addr, id)
  local status, body = agent.http(addr, "GET", "/v1/session/info/" .. id)
  luassert.are.equal(200, status, body)
  local t = json.decode(body)
  return type(t) == "table" and t[1] or nil
end

-- How many sessions are named `name`.
function M.named(c, name)
  local n = 0
  for _, s in ipairs(assert(c.session:list())) do
    if s.Name == name then n = n + 1 end
  end
  return n
end

-- How many sessions named `name` are left once the renewer's clean-up had its time: a
-- failed attempt hands its session to the background (the caller never waits for that), so
-- this polls up to `timeout` seconds (default 3) for none to be left.
function M.left(c, name, timeout)
  local deadline = system.monotime() + (timeout or 3)
  while M.named(c, name) > 0 and system.monotime() < deadline do system.sleep(0.02) end
  return M.named(c, name)
end

-- The IDs of all sessions, to their names. (A count alone is no measure: sessions of earlier
-- tests, such as a killed holder's, may end meanwhile.)
function M.ids(c)
  local ids = {}
  for _, s in ipairs(assert(c.session:list())) do ids[s.ID] = s.Name or "" end
  return ids
end

-- Fails naming every session that is not in `before` (an ids() table), once the
-- background clean-up had up to 3 s.
function M.assert_no_new(c, before)
  local new = {}
  local deadline = system.monotime() + 3
  local function count()
    local n = 0
    for id in pairs(M.ids(c)) do if not before[id] then n = n + 1 end end
    return n
  end
  while count() > 0 and system.monotime() < deadline do system.sleep(0.02) end
  for id, name in pairs(M.ids(c)) do
    if not before[id] then new[#new + 1] = id .. " (" .. name .. ")" end
  end
  luassert.are.equal(0, #new, "sessions left behind: " .. table.concat(new, ", "))
end

return M
