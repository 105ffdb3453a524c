-- Test helper: RS256 JSON Web Tokens for the `jwt` ACL auth method, signed with openssl.
--
-- Works on Lua 5.1 / LuaJIT 2.1 and Lua 5.2-5.4 (no bit ops, no //), shells out to the
-- openssl command line (Debian's `openssl`), independent of the module under test.
--
--   local jwt = require("spec.helpers.acl_jwt")
--   local keys = jwt.keypair(dir)       -- { key = "dir/jwt-key.pem", pub = "dir/jwt-pub.pem",
--                                       --   pub_pem = "-----BEGIN PUBLIC KEY-----\n..." }
--   local token = jwt.sign(keys, { iss = "spec", sub = "u1", ... })  -- "header.payload.sig"
--   jwt.b64url("bytes")                 -- base64url without padding

local agent = require("spec.helpers.agent")
local json = require("dkjson")

local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

-- base64url (RFC 4648 section 5) without "=" padding
function M.b64url(s)
  local out, n = {}, #s
  local i = 1
  while i <= n do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(v / 262144) % 64
    local c2 = math.floor(v / 4096) % 64
    local c3 = math.floor(v / 64) % 64
    local c4 = v % 64
    out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1)
    if b then out[#out + 1] = B64:sub(c3 + 1, c3 + 1) end
    if c then out[#out + 1] = B64:sub(c4 + 1, c4 + 1) end
    i = i + 3
  end
  return table.concat(out)
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local write_file = require("spec.helpers.util").write_file

local function run(cmd)
  local out, rc = agent.sh(cmd .. " </dev/null 2>&1")
  if rc ~= 0 then
    error("acl_jwt: `" .. cmd .. "` failed (exit " .. tostring(rc) .. "):\n" .. out, 3)
  end
  return out
end

-- a fresh 2048-bit RSA key pair in dir
function M.keypair(dir)
  local q = agent.quote
  local key, pub = dir .. "/jwt-key.pem", dir .. "/jwt-pub.pem"
  run("openssl genrsa -out " .. q(key) .. " 2048")
  run("openssl rsa -in " .. q(key) .. " -pubout -out " .. q(pub))
  return { key = key, pub = pub, pub_pem = read_file(pub), dir = dir }
end

-- claims: a table, encoded with dkjson; returns the compact JWS
function M.sign(keys, claims, header)
  local q = agent.quote
  local h = M.b64url(json.encode(header or { alg = "RS256", typ = "JWT" }))
  local p = M.b64url(json.encode(claims))
  local input = h .. "." .. p
  local inf, sigf = keys.dir .. "/jwt-input.txt", keys.dir .. "/jwt-sig.bin"
  write_file(inf, input)
  run("openssl dgst -sha256 -sign " .. q(keys.key) .. " -out " .. q(sigf) .. " " .. q(inf))
  local sig = read_file(sigf)
  os.remove(inf)
  os.remove(sigf)
  return input .. "." .. M.b64url(sig)
end

return M
