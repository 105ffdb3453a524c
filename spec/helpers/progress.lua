-- busted --helper: writes the name of the spec that is running to $CONSUL_TEST_PROGRESS, so a
-- run that dies without busted's summary (a signal, an abort) can say where it was.
-- scripts/run-suite.sh sets the variable and reads the file back; without it this only makes
-- sure busted's summary is out before the process exits.
local busted = require("busted")

-- busted writes its summary without flushing, then exits closing the Lua state: whatever goes
-- wrong in the finalizers or at exit would take the summary with it.
busted.subscribe({ "exit" }, function()
  io.stdout:flush()
  return nil, true
end)

local file = os.getenv("CONSUL_TEST_PROGRESS")
if not file or file == "" then return end

local function fullname(element)
  local names = { element.name or element.descriptor }
  local parent = busted.parent(element)
  while parent and (parent.name or parent.descriptor) and parent.descriptor ~= "file" do
    table.insert(names, 1, parent.name or parent.descriptor)
    parent = busted.parent(parent)
  end
  return table.concat(names, " ")
end

local function record(what)
  local f = io.open(file, "w")
  if f then f:write(what, "\n"); f:close() end
end

busted.subscribe({ "file", "start" }, function(element)
  record("loading " .. tostring(element.name))
  return nil, true
end)
busted.subscribe({ "test", "start" }, function(element)
  local trace = element.trace or {}
  record(string.format("%s (%s:%s)", fullname(element), tostring(trace.short_src or "?"),
    tostring(trace.currentline or "?")))
  return nil, true
end)
busted.subscribe({ "test", "end" }, function(element)
  record("after " .. fullname(element))
  return nil, true
end)
busted.subscribe({ "exit" }, function()
  record("exiting (busted's summary is written; the Lua state is being closed)")
  return nil, true
end)
