-- spec/helpers/ngx_wire.lua: what a handler inside nginx saw, carried back to the spec exactly.
-- The specs of spec/nginx_*_spec.lua assert on results in the spec process; a handler sends
-- them as a Lua expression (nils, binary strings, booleans and numbers kept as they are).
--
--   In a handler (nginx's lua_package_path has the repository root):
--     local W = require("spec.helpers.ngx_wire")
--     ngx.print(W.dump({ leader = W.pack(C.status:leader()) }))
--   In the spec:
--     local t = W.load(body)     -- t.leader[1], t.leader[2], t.leader[3], t.leader.n
--
-- W.pack(...) keeps every result, nils too: { n = select("#", ...), ... }. Functions and
-- userdata (consul.null, a lock, a stream) travel as the string "<type: tostring(v)>".
-- Works on Lua 5.1 / LuaJIT and 5.4.

local M = {}

local format, concat, type, tostring, pairs = string.format, table.concat, type, tostring, pairs
local huge = math.huge

function M.pack(...)
  return { n = select("#", ...), ... }
end

local function num(v)
  if v ~= v then return "(0/0)" end
  if v == huge then return "math.huge" end
  if v == -huge then return "(-math.huge)" end
  if v == math.floor(v) and v > -2^53 and v < 2^53 then return format("%d", v) end
  return format("%.17g", v)
end

local function dump(v, out, seen)
  local t = type(v)
  if t == "nil" then
    out[#out + 1] = "nil"
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "number" then
    out[#out + 1] = num(v)
  elseif t == "string" then
    out[#out + 1] = format("%q", v)
  elseif t == "table" then
    if seen[v] then error("ngx_wire.dump: a table that holds itself", 0) end
    seen[v] = true
    out[#out + 1] = "{"
    for k, x in pairs(v) do
      out[#out + 1] = "["
      dump(k, out, seen)
      out[#out + 1] = "]="
      dump(x, out, seen)
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
    seen[v] = nil
  else
    out[#out + 1] = format("%q", "<" .. t .. ": " .. tostring(v) .. ">")
  end
end

function M.dump(v)
  local out = {}
  dump(v, out, {})
  return concat(out)
end

-- The value a handler dumped (raises, showing the start of body, when it is not one).
function M.load(body)
  local env = { math = { huge = huge } }
  local f, err
  if setfenv then
    f, err = loadstring("return " .. body, "=handler answer")
    if f then setfenv(f, env) end
  else
    f, err = load("return " .. body, "=handler answer", "t", env)
  end
  if not f then
    error("not a handler's dump (" .. tostring(err) .. "): " .. body:sub(1, 2000), 2)
  end
  return f()
end

return M
