-- place-order.lua: wrk load script for the place-order flow (see BENCHMARKS.md).
--
-- Drives any server that implements the spec: POST /v1/orders with a bearer
-- token, a unique Idempotency-Key per request, a random seeded restaurant and
-- 1-3 distinct items of that restaurant (quantity 1-3), and a delivery address.
--
-- Inputs (environment variables, read by every wrk thread):
--   MENU_FILE    required. One line per restaurant, whitespace-separated:
--                  <restaurant_id> <menu_item_id> [<menu_item_id> ...]
--                written by the seeding step of the implementation under test.
--   TOKENS_FILE  one access token per line, obtained BEFORE the run through
--                POST /v1/auth/login, one login per wrk connection (so logins
--                are not part of the measured requests). wrk gives a script no
--                per-connection hook, so tokens are used round-robin per
--                request, each thread starting at a different offset.
--   TOKEN        alternative to TOKENS_FILE: one token for every request.
--   RUN_ID       prefix of the Idempotency-Key (default: time + random).
--                Keys are "<RUN_ID>-<thread>-<n>", unique within a run and
--                across runs with distinct RUN_IDs.
--   ORDERS_PATH  request path (default /v1/orders).
--
-- Usage:
--   MENU_FILE=menu.txt TOKENS_FILE=tokens.txt RUN_ID=run1 \
--     wrk -t2 -c64 -d20s --latency -s place-order.lua http://127.0.0.1:PORT
--
-- At the end it prints the status-code breakdown (only 201 counts as a placed
-- order) and one machine-readable line starting with "PLACE_ORDER_JSON ".

local function read_lines(path)
  local f = io.open(path, "r")
  if not f then error("cannot open " .. path) end
  local lines = {}
  for line in f:lines() do
    if line:match("%S") then lines[#lines + 1] = line end
  end
  f:close()
  return lines
end

-- main state: number the threads and keep them for done()
local threads = {}
local next_id = 1
local main_run_id = os.getenv("RUN_ID")
  or string.format("%d%06d", os.time(), math.floor((os.clock() * 1e6) % 1e6))

function setup(thread)
  thread:set("id", next_id)
  thread:set("run_id", main_run_id)
  next_id = next_id + 1
  threads[#threads + 1] = thread
end

-- per-thread state
-- (globals id and run_id are set by setup; statuses is global so that
-- done() can read it through thread:get)
local menu, tokens, token_idx, counter, path

function init(args)
  local menu_file = os.getenv("MENU_FILE")
  if not menu_file then error("MENU_FILE is required") end
  menu = {}
  for _, line in ipairs(read_lines(menu_file)) do
    local ids = {}
    for w in line:gmatch("%S+") do ids[#ids + 1] = w end
    if #ids >= 2 then
      menu[#menu + 1] = { restaurant = ids[1], items = { unpack(ids, 2) } }
    end
  end
  if #menu == 0 then error("MENU_FILE has no restaurants") end

  local tokens_file = os.getenv("TOKENS_FILE")
  if tokens_file then
    tokens = read_lines(tokens_file)
  elseif os.getenv("TOKEN") then
    tokens = { os.getenv("TOKEN") }
  else
    error("TOKENS_FILE or TOKEN is required")
  end
  token_idx = ((id - 1) * 7919) % #tokens

  path = os.getenv("ORDERS_PATH") or "/v1/orders"
  math.randomseed(os.time() + id * 104729)
  counter = 0
  statuses = {}
end

function request()
  counter = counter + 1
  token_idx = token_idx % #tokens + 1

  local r = menu[math.random(#menu)]
  local n_items = math.min(math.random(3), #r.items)
  -- pick n_items distinct items (partial Fisher-Yates over indices)
  local idx = {}
  for i = 1, #r.items do idx[i] = i end
  local parts = {}
  for i = 1, n_items do
    local j = math.random(i, #idx)
    idx[i], idx[j] = idx[j], idx[i]
    parts[i] = string.format('{"menu_item_id":"%s","quantity":%d}', r.items[idx[i]], math.random(3))
  end

  local body = string.format(
    '{"restaurant_id":"%s","items":[%s],"delivery_address":' ..
    '{"line1":"%d Bench Street","city":"Berlin","lat":%.6f,"lon":%.6f}}',
    r.restaurant, table.concat(parts, ","), math.random(1, 999),
    52.45 + math.random() * 0.1, 13.30 + math.random() * 0.2)

  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[token_idx],
    ["Idempotency-Key"] = string.format("%s-%d-%d", run_id, id, counter),
  }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for code, n in pairs(s) do total[code] = (total[code] or 0) + n end
  end
  local created, other, codes = total[201] or 0, 0, {}
  for code, n in pairs(total) do
    if code ~= 201 then other = other + n end
    codes[#codes + 1] = string.format("%d=%d", code, n)
  end
  table.sort(codes)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("place-order: %d responses, %d x 201, %d other [%s]; socket errors connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, created, other, table.concat(codes, " "), e.connect, e.read, e.write, e.timeout))
  io.write(string.format("place-order: %.1f orders/s (201s), HTTP latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms\n",
    created / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
  io.write(string.format('PLACE_ORDER_JSON {"duration_s":%.3f,"responses":%d,"created":%d,"other":%d,' ..
    '"orders_per_s":%.2f,"http_p50_ms":%.3f,"http_p90_ms":%.3f,"http_p99_ms":%.3f,"http_p999_ms":%.3f,"http_max_ms":%.3f,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d}\n',
    secs, summary.requests, created, other, created / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout))
end
