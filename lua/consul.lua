-- consul: the module users require. The C core (consul.core) does the work; this file is the
-- place for the little that reads better in Lua.
local core = require("consul.core")

local _M = core

return _M
