-- wrk script: a chat completion (bench/run.sh), non-streaming, or streaming with BENCH_MODE=sse
-- (then the whole SSE stream is one response).
-- Model from env BENCH_MODEL (default "auto", the gateway's router model; with sse "bench-sse", its
-- SSE model); targets that ignore the model (nginx, the bare forwarder) get the same body.
-- done() prints one machine-readable line:
--   BENCH requests=... rps=... p50_us=... p90_us=... p99_us=... non200=... badbody=... errors=...
-- (latencies in microseconds; errors = socket connect/read/write errors and timeouts)
local sse = os.getenv("BENCH_MODE") == "sse"
local model = os.getenv("BENCH_MODEL") or (sse and "bench-sse" or "auto")
-- Every good answer contains this: a complete stream ends with [DONE].
local expect = sse and 'data: [DONE]' or '"choices"'

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")  -- the gateway key, for the limits row
if key then wrk.headers["Authorization"] = "Bearer " .. key end
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16' .. (sse and ',"stream":true}' or '}')

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non200 = 0    -- globals of this thread's Lua state, read back in done() with thread:get
  badbody = 0
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  elseif not string.find(body, expect, 1, true) then
    badbody = badbody + 1
  end
end

function done(summary, latency, requests)
  local non, bad = 0, 0
  for _, t in ipairs(threads) do
    non = non + (t:get("non200") or 0)
    bad = bad + (t:get("badbody") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non200=%d badbody=%d errors=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    non, bad, e.connect + e.read + e.write + e.timeout))  -- socket errors; statuses are in non200
end
