-- consul.routes() against the list of Consul 1.8.7's HTTP routes (spec/consul-1.8.7-endpoints.tsv),
-- and a guard that every route is exercised somewhere in the spec suite.
--
-- Needs no agent.

local consul = require("consul")

-- The directory of this file ("spec/" when busted runs from the project root).
local HERE = (debug.getinfo(1, "S").source:match("^@(.*/)[^/]*$")) or "spec/"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- group method path notes, minus the header and the rows the module does not serve
local SKIP = { misc = true, internal = true, ["enterprise-only"] = true }

local function tsv_rows()
  local rows = {}
  local first = true
  for line in read(HERE .. "consul-1.8.7-endpoints.tsv"):gmatch("[^\n]+") do
    if first then
      first = false
      assert.are.equal("group\tmethod\tpath\tnotes", (line:gsub("\r$", "")))
    else
      local group, method, path = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)")
      assert(group, "bad TSV line: " .. line)
      if not SKIP[group] then
        rows[#rows + 1] = { group = (group:gsub("%-", "_")), method = method, path = path }
      end
    end
  end
  return rows
end

local function spec_files()
  local p = assert(io.popen("ls " .. HERE .. "*.lua 2>/dev/null"))
  local files = {}
  for name in p:lines() do files[#files + 1] = name end
  p:close()
  table.sort(files)
  return files
end

describe("consul.routes()", function()
  local routes = consul.routes()

  it("has 137 routes, each a {group=, name=, method=, path=[, body=]} of strings", function()
    assert.are.equal(137, #routes)
    for i, r in ipairs(routes) do
      for _, k in ipairs({ "group", "name", "method", "path" }) do
        assert.is_string(r[k], "route " .. i .. " field " .. k)
      end
      local n = 0
      for _ in pairs(r) do n = n + 1 end
      assert.is_true(r.body == nil or r.body == "required" or r.body == "optional",
        "route " .. i .. " body " .. tostring(r.body))
      assert.are.equal(r.body and 5 or 4, n, "route " .. i .. " has extra fields")
    end
  end)

  it("says which routes take a body: the writes that carry a definition", function()
    local by = {}
    for _, r in ipairs(routes) do by[r.group .. ":" .. r.name] = r end
    assert.are.equal("required", by["agent:service_register"].body)
    assert.are.equal("optional", by["kv:put"].body)
    assert.are.equal("optional", by["session:create"].body)
    assert.is_nil(by["kv:get"].body)
    assert.is_nil(by["session:destroy"].body)
    assert.are.equal("required", by["txn:apply"].body)
  end)

  it("returns a fresh table on each call", function()
    local a, b = consul.routes(), consul.routes()
    assert.are_not.equal(a, b)
    a[1].name = "changed"
    assert.are_not.equal("changed", consul.routes()[1].name)
  end)

  it("holds every documented route of the TSV exactly once, and nothing else", function()
    local rows = tsv_rows()
    assert.are.equal(137, #rows)
    local want, have = {}, {}
    for _, r in ipairs(rows) do
      local k = r.group .. " " .. r.method .. " " .. r.path
      assert.is_nil(want[k], "TSV lists " .. k .. " twice")
      want[k] = true
    end
    local missing, extra, dup = {}, {}, {}
    for _, r in ipairs(routes) do
      local k = r.group .. " " .. r.method .. " " .. r.path
      if have[k] then dup[#dup + 1] = k end
      have[k] = true
      if not want[k] then extra[#extra + 1] = k end
    end
    for k in pairs(want) do
      if not have[k] then missing[#missing + 1] = k end
    end
    table.sort(missing)
    table.sort(extra)
    assert.are.same({}, missing, "in the TSV, not in routes()")
    assert.are.same({}, extra, "in routes(), not in the TSV")
    assert.are.same({}, dup, "twice in routes()")
  end)

  it("names routes uniquely per group, in snake_case", function()
    local seen = {}
    for _, r in ipairs(routes) do
      for _, s in ipairs({ r.group, r.name }) do
        assert(s:find("^[a-z][a-z0-9_]*$") and not s:find("__", 1, true) and
          not s:find("_$"), "not snake_case: " .. s)
      end
      local k = r.group .. "." .. r.name
      assert.is_nil(seen[k], k .. " twice")
      seen[k] = true
    end
  end)

  it("uses the HTTP methods Consul has, and /v1/ paths with :params", function()
    local methods = { GET = true, PUT = true, POST = true, DELETE = true }
    for _, r in ipairs(routes) do
      assert.is_true(methods[r.method] == true, r.method)
      assert.matches("^/v1/[%w/:_%-]+$", r.path)
    end
  end)

  it("makes every route a method of its group on a client", function()
    local c = consul.new({ addr = "127.0.0.1:1" })  -- no I/O happens
    finally(function() c:close() end)
    for _, r in ipairs(routes) do
      local g = c[r.group]
      assert.is_table(g, "c." .. r.group)
      assert.is_function(g[r.name], "c." .. r.group .. ":" .. r.name)
    end
  end)

  it("is called somewhere in spec/*.lua, for every route", function()
    local text = {}
    for _, f in ipairs(spec_files()) do
      text[#text + 1] = read(f)
    end
    text = table.concat(text, "\n")
    local missing = {}
    for _, r in ipairs(routes) do
      -- c.group:name( or x.group:name( (also x.y.group:name( and a line break before the "(")
      local needle = "." .. r.group .. ":" .. r.name
      local found, from = false, 1
      while true do
        local s, e = text:find(needle, from, true)
        if not s then break end
        if text:find("^%s*%(", e + 1) then
          found = true
          break
        end
        from = e + 1
      end
      if not found then missing[#missing + 1] = r.group .. ":" .. r.name end
    end
    table.sort(missing)
    assert(#missing == 0, #missing .. " route(s) not called in any spec: " ..
      table.concat(missing, ", "))
  end)
end)
