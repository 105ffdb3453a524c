-- Prints the README's endpoint table from consul.routes(): one row per route, with the Lua
-- call that reaches it. `make readme` writes it into README.md, `make check-readme` fails
-- when the README's copy differs.
local consul = require("consul")

local lines = {
  "| group | method | path | Lua call |",
  "|---|---|---|---|",
}
for _, r in ipairs(consul.routes()) do
  local args = {}
  for p in r.path:gmatch(":([%w_]+)") do
    args[#args + 1] = p
  end
  if r.body == "required" then
    args[#args + 1] = "body"
  elseif r.body == "optional" then
    args[#args + 1] = "[body]"
  end
  args[#args + 1] = "[opts]"
  lines[#lines + 1] = string.format("| %s | %s | `%s` | `c.%s:%s(%s)` |", r.group, r.method,
    r.path, r.group, r.name, table.concat(args, ", "))
end
io.write(table.concat(lines, "\n"), "\n")
