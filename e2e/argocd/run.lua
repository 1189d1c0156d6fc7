-- Runs the Argo CD health check (first argument) against Relay objects saved as JSON
-- (the other arguments). The expected health is the file name's first word:
-- healthy-*.json, progressing-*.json, degraded-*.json, suspended-*.json. Exits 1 when any
-- answer differs. Also checks two objects derived from the first healthy one (a newer
-- generation the operator has not seen, and no status at all): both must be Progressing.

-- A small JSON decoder (objects, arrays, strings with escapes, numbers, true/false/null).
local json = {}

local function fail(at, what)
  error(string.format("JSON: %s at byte %d", what, at), 0)
end

local function skip(text, at)
  return text:find("[^ \t\r\n]", at) or #text + 1
end

local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function decode_string(text, at)
  local parts = {}
  local i = at + 1
  while true do
    local c = text:sub(i, i)
    if c == "" then fail(i, "unterminated string") end
    if c == '"' then return table.concat(parts), i + 1 end
    if c == "\\" then
      local e = text:sub(i + 1, i + 1)
      if e == "u" then
        local code = tonumber(text:sub(i + 2, i + 5), 16) or fail(i, "bad \\u escape")
        parts[#parts + 1] = utf8.char(code)
        i = i + 6
      else
        parts[#parts + 1] = escapes[e] or fail(i, "bad escape")
        i = i + 2
      end
    else
      parts[#parts + 1] = c
      i = i + 1
    end
  end
end

local decode_value

local function decode_array(text, at)
  local array, i = {}, skip(text, at + 1)
  if text:sub(i, i) == "]" then return array, i + 1 end
  while true do
    array[#array + 1], i = decode_value(text, i)
    i = skip(text, i)
    local c = text:sub(i, i)
    if c == "]" then return array, i + 1 end
    if c ~= "," then fail(i, "expected , or ]") end
    i = skip(text, i + 1)
  end
end

local function decode_object(text, at)
  local object, i = {}, skip(text, at + 1)
  if text:sub(i, i) == "}" then return object, i + 1 end
  while true do
    if text:sub(i, i) ~= '"' then fail(i, "expected a key") end
    local key
    key, i = decode_string(text, i)
    i = skip(text, i)
    if text:sub(i, i) ~= ":" then fail(i, "expected :") end
    object[key], i = decode_value(text, skip(text, i + 1))
    i = skip(text, i)
    local c = text:sub(i, i)
    if c == "}" then return object, i + 1 end
    if c ~= "," then fail(i, "expected , or }") end
    i = skip(text, i + 1)
  end
end

decode_value = function(text, at)
  local i = skip(text, at)
  local c = text:sub(i, i)
  if c == "{" then return decode_object(text, i) end
  if c == "[" then return decode_array(text, i) end
  if c == '"' then return decode_string(text, i) end
  if text:sub(i, i + 3) == "true" then return true, i + 4 end
  if text:sub(i, i + 4) == "false" then return false, i + 5 end
  -- null becomes nil: an absent field, which is what the health check tests for.
  if text:sub(i, i + 3) == "null" then return nil, i + 4 end
  local number = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if number == nil or number == "" then fail(i, "unexpected character") end
  return math.tointeger(tonumber(number)) or tonumber(number), i + #number
end

function json.decode(text)
  local value, i = decode_value(text, 1)
  if skip(text, i) <= #text then fail(i, "trailing characters") end
  return value
end

-- ------------------------------------------------------------------ the checks

local function read(path)
  local file = assert(io.open(path, "r"))
  local text = file:read("a")
  file:close()
  return text
end

local check_path = arg[1]
local check_source = read(check_path)

-- Runs the check as Argo CD does: a chunk with `obj` as a global, returning a table.
local function health(object)
  local env = setmetatable({ obj = object }, { __index = _G })
  local chunk = assert(load(check_source, "@" .. check_path, "t", env))
  return chunk()
end

local function copy(value)
  if type(value) ~= "table" then return value end
  local out = {}
  for k, v in pairs(value) do out[k] = copy(v) end
  return out
end

local failures, cases = 0, 0
local function expect(name, object, wanted)
  cases = cases + 1
  local ok, hs = pcall(health, object)
  if not ok then
    print(string.format("FAIL %-48s the check raised: %s", name, hs))
    failures = failures + 1
  elseif type(hs) ~= "table" or hs.status ~= wanted then
    print(string.format("FAIL %-48s %s, expected %s (%s)", name, tostring(hs and hs.status), wanted, tostring(hs and hs.message)))
    failures = failures + 1
  else
    print(string.format("ok   %-48s %-11s %s", name, hs.status, hs.message))
  end
end

local names = { healthy = "Healthy", progressing = "Progressing", degraded = "Degraded", suspended = "Suspended" }
local seen, first_healthy = {}, nil
for i = 2, #arg do
  local path = arg[i]
  local base = path:match("([^/]+)%.json$") or path
  local wanted = names[base:match("^(%a+)")]
  if wanted == nil then
    print("FAIL " .. base .. ": the file name does not start with healthy/progressing/degraded/suspended")
    failures = failures + 1
  else
    local object = json.decode(read(path))
    seen[wanted] = true
    if wanted == "Healthy" and first_healthy == nil then first_healthy = object end
    expect(base, object, wanted)
  end
end
for _, wanted in ipairs({ "Healthy", "Progressing", "Degraded" }) do
  if not seen[wanted] then
    print("FAIL no " .. wanted .. " fixture")
    failures = failures + 1
  end
end
if first_healthy ~= nil then
  local newer = copy(first_healthy)
  newer.metadata.generation = newer.metadata.generation + 1
  expect("(derived) healthy object, newer generation", newer, "Progressing")
  local fresh = copy(first_healthy)
  fresh.status = nil
  expect("(derived) healthy object without status", fresh, "Progressing")
end
print(string.format("%d cases, %d failed", cases, failures))
os.exit(failures == 0 and 0 or 1)
