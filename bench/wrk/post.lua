-- POSTs the JSON bodies of $BENCH_BODIES (one document per line) to $BENCH_PATH, each wrk
-- thread cycling through them from its own offset, with $BENCH_API_KEY as X-API-Key and
-- $BENCH_DEADLINE_MS as X-Deadline-Ms when set. With BENCH_STATUS=1 every answer's status is
-- counted, and 503 answers by their error code (the bench checks overload answers with it).
-- done() prints one line "BENCH_JSON {...}": throughput, latency percentiles (microseconds),
-- error counts and, when counted, statuses, for bench/run.py to parse.

local bodies = {}
local index = 1
local threads = {}
counts = {} -- global: done() reads each thread's copy with thread:get

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    bodies[#bodies + 1] = line
  end
  index = ((thread_id or 1) * 7919) % #bodies + 1
  wrk.method = "POST"
  wrk.path = os.getenv("BENCH_PATH") or "/"
  wrk.headers["Content-Type"] = "application/json"
  local key = os.getenv("BENCH_API_KEY")
  if key and key ~= "" then
    wrk.headers["X-API-Key"] = key
  end
  local deadline = os.getenv("BENCH_DEADLINE_MS")
  if deadline and deadline ~= "" then
    wrk.headers["X-Deadline-Ms"] = deadline
  end
end

function request()
  local body = bodies[index]
  index = index % #bodies + 1
  return wrk.format(nil, nil, nil, body)
end

-- Defined only when asked for: wrk buffers every answer's headers and body for it.
if os.getenv("BENCH_STATUS") == "1" then
  function response(status, headers, body)
    local key = tostring(status)
    if status == 503 then
      key = key .. ":" .. (string.match(body, '"code":%s*"([%w_]+)"') or "?")
    end
    counts[key] = (counts[key] or 0) + 1
  end
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    local seen = thread:get("counts") or {}
    for key, n in pairs(seen) do
      statuses[#statuses + 1] = string.format('["%s", %d]', key, n)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f, "errors_connect": %d, '
      .. '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d, '
      .. '"statuses": [%s]}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(statuses, ", ")))
end
