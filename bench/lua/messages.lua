-- wrk script for POST /v1/messages (JSON or a short SSE stream).
-- Reads the body, bearer token and path from the environment so one script
-- serves every target; prints a JSON summary with a dense percentile list
-- (enough to draw a latency CDF) on the last line.
local body = os.getenv("BENCH_BODY") or '{}'
local token = os.getenv("BENCH_TOKEN") or ''
local path = os.getenv("BENCH_PATH") or '/v1/messages'

wrk.method = "POST"
wrk.path = path
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
if token ~= '' then
  wrk.headers["Authorization"] = "Bearer " .. token
end

-- No response() callback: defining one makes wrk run Lua on every reply,
-- which would spend load-side CPU; summary.errors.status counts status >= 400.
local points = {1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 92, 94, 95, 96, 97, 98, 99, 99.5, 99.9, 99.99, 100}

function done(summary, latency, requests)
  local parts = {}
  for _, p in ipairs(points) do
    -- wrk reports microseconds
    table.insert(parts, string.format('["%s", %d]', tostring(p), latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d, ' ..
    '"mean_us": %f, "percentiles_us": [%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout, latency.mean, table.concat(parts, ", ")))
end
