-- POSTs the JSON bodies of $BENCH_BODIES (one document per line) to $BENCH_PATH, each wrk
-- thread cycling through them from its own offset, with $BENCH_API_KEY as X-API-Key when set.
-- done() prints one line "BENCH_JSON {...}": throughput, latency percentiles (microseconds)
-- and error counts, for bench/run.py to parse.

local bodies = {}
local index = 1
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
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
end

function request()
  local body = bodies[index]
  index = index % #bodies + 1
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f, "errors_connect": %d, '
      .. '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
