#!/usr/bin/env bash
# Crossover gateway benchmark: requests/s and latency added over a zero-latency upstream.
#
#   bash bench/run.sh                    # ~3 minutes with the defaults
#   BENCH_DURATION=3 bash bench/run.sh   # quick smoke run (noisy figures)
#   BENCH_LITELLM=1 bash bench/run.sh    # also LiteLLM's proxy (installed into a cache venv once)
#   BENCH_PIN=1 bash bench/run.sh        # also c=1 with every process pinned to one CPU (see README)
#   BENCH_ONLY=streams bash bench/run.sh # only the concurrent slow streams (bench/slow_streams.py, ~2 min)
#   BENCH_ONLY=limits bash bench/run.sh  # only crossover w1 (JSON) without and with keys' limits in Redis
#
# Targets, all on loopback, each driven by wrk (-t1, -c10 and -c1) with bench/chat.lua (JSON, or SSE
# with BENCH_MODE=sse):
#   nginx direct        bench/nginx.conf, static answers: the baseline (client + loopback cost)
#   crossover w1 / w2   `crossover serve` with bench/crossover.yaml, --workers 1 then 2
#   crossover w1 limits the same, one worker, JSON, every request with a key that has a rate limit and
#                       whose team has a budget and a token limit, counted in a redis-server on loopback
#   forwarder aiohttp   bench/forwarder.py: the floor for a Python forwarder on the same stack
#   forwarder httpx     the same with httpx as the upstream client (JSON, c=10 only)
#   forwarder http1     the same with the gateway's own client, providers/http1.py (JSON, c=10 only)
#   litellm             optional (BENCH_LITELLM=1), JSON only
# Prints a table and writes it as Markdown to bench/results/latest.md. Exits non-zero if a run saw
# a non-200 answer, an incomplete body or a socket error (LiteLLM's runs only warn).
#
# Environment: BENCH_DURATION (seconds per run, default 10), BENCH_WARMUP (seconds, default 1),
# BENCH_LITELLM (1 to include LiteLLM), BENCH_PIN (1 to add pinned c=1 runs, conc "1p"; BENCH_PIN_CPU,
# default 0, is the CPU), BENCH_CLASSIFIER (the router's classifier, default heuristic), PYTHON (default
# python3), PYTHON311 (for LiteLLM's venv), BENCH_STREAMS (0 to skip the slow streams), BENCH_ONLY
# (streams: only them; limits: only crossover w1 and its limits row), BENCH_STREAMS_ARGS (options for
# `slow_streams.py run`, e.g. "--steps 1000"), BENCH_LOG_LEVEL (the gateway's --log-level, default
# warning; info adds its line per request).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-1}"
PY="${PYTHON:-python3}"
PIN="${BENCH_PIN:-0}"
PIN_CPU="${BENCH_PIN_CPU:-0}"
ALL_CPUS="0-$(($(nproc) - 1))"
HOST=127.0.0.1
UPSTREAM_PORT=18080   # fixed in bench/nginx.conf and bench/crossover.yaml
GATEWAY_PORT=18081
FORWARDER_PORT=18082
LITELLM_PORT=18083
UPSTREAM="http://$HOST:$UPSTREAM_PORT"
JSON_BODY='{"model":"auto","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}'
SSE_BODY='{"model":"bench-sse","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"stream":true}'

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] FAILED: %s\n' "$*" >&2; exit 1; }

# ---- dependencies -------------------------------------------------------------------------------

nginx_bin() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }; }

if ! command -v wrk >/dev/null || [ -z "$(nginx_bin)" ] || ! command -v curl >/dev/null; then
    log "installing wrk, nginx-light and curl with apt-get"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk nginx-light curl
fi
NGINX="$(nginx_bin)"
[ -n "$NGINX" ] || die "nginx not found after install"

cd "$ROOT"   # so `python3 -m gateway.cli` runs this checkout's code
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import gateway.cli, starlette, uvicorn, uvloop, httptools, aiohttp, httpx, orjson, yaml' 2>/dev/null; then
    log "installing the gateway and httpx with pip"
    "$PY" -m pip install -q -e "$ROOT" httpx aiohttp
fi

# ---- slow streams: bench/slow_streams.py (its own upstream, gateway and forwarder on 18084-18086) --

STREAMS_MD="$HERE/results/streams.md"
slow_streams() {  # the concurrent slow-streams rows, as Markdown into $STREAMS_MD; ~2 minutes
    mkdir -p "$HERE/results"
    log "slow streams: bench/slow_streams.py run ${BENCH_STREAMS_ARGS:-}"
    # shellcheck disable=SC2086  # BENCH_STREAMS_ARGS is a list of options
    timeout 600 "$PY" "$HERE/slow_streams.py" run ${BENCH_STREAMS_ARGS:-} >"$STREAMS_MD"
}
if [ "${BENCH_ONLY:-}" = streams ]; then
    status=0
    slow_streams || status=$?
    cat "$STREAMS_MD"
    exit $status
fi

# ---- processes: each in its own session, so its whole group is stopped -------------------------

WORK="$(mktemp -d -t crossover-bench.XXXXXX)"
PIDS=()

group_alive() {  # process $1, or any process of its group, still running (zombies do not count)
    ps -e -o pid=,pgid=,stat= | awk -v g="$1" '($1 == g || $2 == g) && $3 !~ /^Z/ { found = 1 } END { exit !found }'
}

start_bg() {  # start_bg NAME CMD...; sets BG_PID; output goes to $WORK/NAME.log
    local name=$1
    shift
    setsid "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    BG_PID=$!
    PIDS+=("$BG_PID")
    # setsid runs in the child: until it has, the child is still in this script's process group.
    local i
    for i in $(seq 100); do
        [ "$(ps -o pgid= -p "$BG_PID" 2>/dev/null | tr -d ' ')" != "$BG_PID" ] || return 0
        group_alive "$BG_PID" || return 0
        sleep 0.01
    done
    log "$name did not start its own process group"
    return 1
}

stop_bg() {
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        group_alive "$pid" || break
        sleep 0.1
    done
    if group_alive "$pid"; then
        log "pid $pid still running 10s after SIGTERM; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    local kept=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    PIDS=(${kept[@]+"${kept[@]}"})
}

cleanup() {
    set +e
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do stop_bg "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

wait_http() {  # wait_http URL NAME PID SECONDS: until any HTTP answer arrives
    local url=$1 name=$2 pid=$3 seconds=$4 i code
    for i in $(seq $((seconds * 10))); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)
        if [ -n "$code" ] && [ "$code" != 000 ]; then return 0; fi
        if ! group_alive "$pid"; then
            log "$name exited during start-up; its log:"
            tail -n 40 "$WORK/$name.log" >&2
            return 1
        fi
        sleep 0.1
    done
    log "$name did not answer $url within ${seconds}s; its log:"
    tail -n 40 "$WORK/$name.log" >&2
    return 1
}

check_post() {  # check_post NAME URL BODY CONTENT_TYPE MUST_CONTAIN: one request, must be a good 200
    local name=$1 url=$2 body=$3 ctype=$4 needle=$5 code got
    code=$(curl -sS --max-time 10 -D "$WORK/check.headers" -o "$WORK/check.body" -w '%{http_code}' \
        -X POST -H 'Content-Type: application/json' ${BENCH_KEY:+-H "Authorization: Bearer $BENCH_KEY"} \
        --data-binary "$body" "$url" || echo 000)
    got=$(awk 'tolower($1) == "content-type:" { print $2 }' "$WORK/check.headers" | tr -d '\r;')
    if [ "$code" != 200 ] || [ "$got" != "$ctype" ] || ! grep -qF -- "$needle" "$WORK/check.body"; then
        log "$name: POST $url answered $code ($got), expected 200 ($ctype) containing '$needle':"
        cat "$WORK/check.headers" "$WORK/check.body" >&2
        echo >&2
        return 1
    fi
    log "$name: POST $url -> 200 $got ($(wc -c <"$WORK/check.body") bytes)"
}

# ---- measurements -------------------------------------------------------------------------------

RESULTS="$WORK/results.tsv"   # target mode conc rps p50_us p99_us non200 badbody errors in_handler_ms steal
: >"$RESULTS"
RUN=0



warmup() {  # warmup MODE URL [MODEL]
    local model=${3:-}
    timeout $((WARMUP + 30)) env BENCH_MODE="$1" ${model:+BENCH_MODEL=$model} \
        wrk -t1 -c10 -d"${WARMUP}s" --timeout 10s -s "$HERE/chat.lua" "$2" >/dev/null 2>&1 || true
}

cpu_snapshot() { awk '$1 == "cpu" { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }

steal_percent() {  # steal_percent BEFORE AFTER: CPU time the hypervisor gave to others, in %
    awk -v b="$1" -v a="$2" 'BEGIN {
        split(b, x, " "); split(a, y, " "); t = y[2] - x[2]
        if (t > 0) printf "%.0f", (y[1] - x[1]) / t * 100; else print "-" }'
}

overhead_snapshot() {  # sum and count of the gateway's own overhead histogram for stream=$1
    curl -s --max-time 5 "http://$HOST:$GATEWAY_PORT/metrics" | awk -v s="stream=\"$1\"" '
        index($0, "crossover_gateway_overhead_seconds_sum{") == 1 && index($0, s) { sum += $NF }
        index($0, "crossover_gateway_overhead_seconds_count{") == 1 && index($0, s) { n += $NF }
        END { printf "%.9f %d\n", sum, n }'
}

run_wrk() {  # run_wrk TARGET MODE CONC URL [MODEL]; CONC "1p": c=1 with wrk pinned (see run_pinned)
    local target=$1 mode=$2 conc=$3 url=$4 model=${5:-} out line before="" after="" handler=-
    local connections=${conc%p} prefix=()
    [ "$conc" = "$connections" ] || prefix=(taskset -c "$PIN_CPU")
    RUN=$((RUN + 1))
    out="$WORK/wrk-$RUN.log"
    if [[ $target == crossover* ]]; then
        before=$(overhead_snapshot "$([ "$mode" = sse ] && echo true || echo false)")
    fi
    log "run $RUN: $target $mode c=$conc for ${DURATION}s"
    local cpu_before cpu_after
    cpu_before=$(cpu_snapshot)
    if ! timeout $((DURATION + 30)) env BENCH_MODE="$mode" ${model:+BENCH_MODEL=$model} ${prefix[@]+"${prefix[@]}"} \
        wrk -t1 -c"$connections" -d"${DURATION}s" --timeout 10s -s "$HERE/chat.lua" "$url" >"$out" 2>&1; then
        cat "$out" >&2
        log "wrk failed against $target"
        return 1
    fi
    cpu_after=$(cpu_snapshot)
    if ! line=$(grep '^BENCH ' "$out"); then
        cat "$out" >&2
        log "wrk printed no BENCH line against $target"
        return 1
    fi
    if [ -n "$before" ]; then
        after=$(overhead_snapshot "$([ "$mode" = sse ] && echo true || echo false)")
        handler=$(awk -v b="$before" -v a="$after" 'BEGIN {
            split(b, x, " "); split(a, y, " "); n = y[2] - x[2]
            if (n > 0) printf "%.3f", (y[1] - x[1]) / n * 1000; else print "-" }')
    fi
    awk -v t="$target" -v m="$mode" -v c="$conc" -v h="$handler" -v st="$(steal_percent "$cpu_before" "$cpu_after")" '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t, m, c, v["rps"], v["p50_us"], v["p99_us"],
            v["non200"], v["badbody"], v["errors"], h, st }' <<<"$line" >>"$RESULTS"
}

pin_groups() {  # pin_groups CPUS PGID...: every thread of every process in these process groups
    local cpus=$1 pid
    shift
    for pid in $(ps -e -o pid=,pgid= | awk -v groups=" $* " 'index(groups, " " $2 " ") { print $1 }'); do
        taskset -apc "$cpus" "$pid" >/dev/null 2>&1 || true
    done
}

run_pinned() {  # run_pinned TARGET MODE URL MODEL PGID...: c=1 with wrk and the servers on one CPU
    local target=$1 mode=$2 url=$3 model=$4 status=0
    shift 4
    pin_groups "$PIN_CPU" "$@"
    run_wrk "$target" "$mode" 1p "$url" "$model" || status=$?
    pin_groups "$ALL_CPUS" "$@"
    return $status
}

bench_target() {  # bench_target TARGET MODE URL MODEL [PGID...]: warm up, then c=10 and c=1 (and pinned)
    local target=$1 mode=$2 url=$3 model=$4
    shift 4
    warmup "$mode" "$url" "$model"
    run_wrk "$target" "$mode" 10 "$url" "$model"
    run_wrk "$target" "$mode" 1 "$url" "$model"
    if [ "$PIN" = 1 ] && [ $# -gt 0 ]; then run_pinned "$target" "$mode" "$url" "$model" "$@"; fi
}

# ---- start --------------------------------------------------------------------------------------

ONLY="${BENCH_ONLY:-}"
REDIS_PORT=18087
for port in $UPSTREAM_PORT $GATEWAY_PORT $FORWARDER_PORT $LITELLM_PORT 18084 18085 18086 $REDIS_PORT; do
    if port_in_use "$port"; then die "port $port on $HOST is in use; stop whatever listens there"; fi
done
runs=19
[ "$ONLY" = limits ] && runs=4
[ "${BENCH_LITELLM:-0}" = 1 ] && runs=$((runs + 2))
[ "$PIN" = 1 ] && runs=$((runs + 6))
[ "$PIN" = 1 ] && [ "${BENCH_LITELLM:-0}" = 1 ] && runs=$((runs + 1))
log "work dir $WORK; $runs runs of ${DURATION}s, about $(((runs * DURATION + 6 * WARMUP + 30) / 60 + 1)) min"

# nginx: zero-latency upstream
mkdir -p "$WORK/nginx/tmp"
"$NGINX" -t -q -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$HERE/nginx.conf" -g 'daemon off;'
start_bg nginx "$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$HERE/nginx.conf" -g 'daemon off;'
NGINX_PID=$BG_PID
wait_http "$UPSTREAM/json/v1/models" nginx "$NGINX_PID" 10
check_post "nginx direct" "$UPSTREAM/json/v1/chat/completions" "$JSON_BODY" application/json '"usage"'
check_post "nginx direct" "$UPSTREAM/sse/v1/chat/completions" "$SSE_BODY" text/event-stream 'data: [DONE]'

if [ "$ONLY" != limits ]; then
    bench_target "nginx direct" json "$UPSTREAM/json/v1/chat/completions" "" "$NGINX_PID"
    bench_target "nginx direct" sse "$UPSTREAM/sse/v1/chat/completions" "" "$NGINX_PID"
fi

# Crossover, one worker then two
GATEWAY="http://$HOST:$GATEWAY_PORT"
CONFIG="$WORK/crossover.yaml"
sed "s/^    classifier: heuristic$/    classifier: ${BENCH_CLASSIFIER:-heuristic}/" "$HERE/crossover.yaml" > "$CONFIG"
for workers in $([ "$ONLY" = limits ] && echo 1 || echo 1 2); do
    metrics_env=(env -u PROMETHEUS_MULTIPROC_DIR)
    if [ "$workers" -gt 1 ]; then
        mkdir -p "$WORK/metrics-w$workers"
        metrics_env=(env "PROMETHEUS_MULTIPROC_DIR=$WORK/metrics-w$workers")
    fi
    start_bg "crossover-w$workers" "${metrics_env[@]}" "$PY" -m gateway.cli serve \
        --config "$CONFIG" --host "$HOST" --port "$GATEWAY_PORT" --workers "$workers" \
        --log-level "${BENCH_LOG_LEVEL:-warning}"
    GW_PID=$BG_PID
    wait_http "$GATEWAY/healthz" "crossover-w$workers" "$GW_PID" 30
    check_post "crossover w$workers" "$GATEWAY/v1/chat/completions" "$JSON_BODY" application/json '"usage"'
    log "crossover w$workers: $(grep -i '^x-crossover-\(route\|backend\|overhead-ms\)' "$WORK/check.headers" | tr -d '\r' | paste -sd' ')"
    check_post "crossover w$workers" "$GATEWAY/v1/chat/completions" "$SSE_BODY" text/event-stream 'data: [DONE]'
    pinned=()   # pinned c=1 runs: one worker only (a second one cannot help at c=1)
    [ "$workers" -gt 1 ] || pinned=("$NGINX_PID" "$GW_PID")
    bench_target "crossover w$workers" json "$GATEWAY/v1/chat/completions" auto ${pinned[@]+"${pinned[@]}"}
    if [ "$ONLY" != limits ]; then
        bench_target "crossover w$workers" sse "$GATEWAY/v1/chat/completions" bench-sse ${pinned[@]+"${pinned[@]}"}
    fi
    if grep -q 'Traceback\|ERROR' "$WORK/crossover-w$workers.log"; then
        log "crossover w$workers logged errors:"
        tail -n 40 "$WORK/crossover-w$workers.log" >&2
    fi
    stop_bg "$GW_PID"
done

# Crossover w1 with limits: a key with a rate limit, its team with a budget and a token limit (all far
# from reached), counted in Redis on loopback; the price makes the budget's sums real.
limits_row() {
    command -v redis-server >/dev/null || die "redis-server not found (scripts/setup-services.sh installs it)"
    start_bg redis redis-server --port "$REDIS_PORT" --bind "$HOST" --save '' --appendonly no
    local redis_pid=$BG_PID i
    for i in $(seq 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
    "$PY" - "$CONFIG" "$WORK/crossover-limits.yaml" "redis://$HOST:$REDIS_PORT/0" <<'PYEOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
price = {"usd_per_million_input_tokens": 0.15, "usd_per_million_output_tokens": 0.6}
for backend in config["backends"].values():
    for model in backend["models"]:
        model["price"] = price
config["server"].update({
    "api_keys": ["${BENCH_KEY}"],
    "key_limits": [{"key": "${BENCH_KEY}", "team": "bench", "requests_per_minute": 100_000_000}],
    "teams": {"bench": {"usd_per_day": 1_000_000.0, "tokens_per_minute": 1_000_000_000}},
})
config["redis"] = {"url": sys.argv[3]}
yaml.safe_dump(config, open(sys.argv[2], "w"))
PYEOF
    export BENCH_KEY=sk-bench-0123456789abcdef
    start_bg crossover-limits env -u PROMETHEUS_MULTIPROC_DIR "$PY" -m gateway.cli serve \
        --config "$WORK/crossover-limits.yaml" --host "$HOST" --port "$GATEWAY_PORT" --workers 1 \
        --log-level warning
    GW_PID=$BG_PID
    wait_http "$GATEWAY/healthz" crossover-limits "$GW_PID" 30
    check_post "crossover w1 limits" "$GATEWAY/v1/chat/completions" "$JSON_BODY" application/json '"usage"'
    grep -qi '^x-ratelimit-remaining-requests:' "$WORK/check.headers" || die "crossover w1 limits: no rate-limit headers"
    bench_target "crossover w1 limits" json "$GATEWAY/v1/chat/completions" auto
    if grep -q 'Traceback\|ERROR\|redis is unreachable' "$WORK/crossover-limits.log"; then
        log "crossover w1 limits logged errors:"
        tail -n 40 "$WORK/crossover-limits.log" >&2
    fi
    log "redis: $(redis-cli -p "$REDIS_PORT" info stats | grep -E '^total_commands_processed' | tr -d '\r')"
    stop_bg "$GW_PID"
    stop_bg "$redis_pid"
    unset BENCH_KEY
}
limits_row
if [ "$ONLY" = limits ]; then BENCH_STREAMS=0; fi

# Bare forwarder: aiohttp on both modes; httpx and the gateway's own client (providers/http1.py) on
# JSON at c=10 (the client comparison)
FORWARDER="http://$HOST:$FORWARDER_PORT/v1/chat/completions"
for spec in $([ "$ONLY" = limits ] || echo aiohttp:json aiohttp:sse httpx:json http1:json); do
    client=${spec%%:*}
    mode=${spec##*:}
    start_bg "forwarder-$client-$mode" "$PY" "$HERE/forwarder.py" --client "$client" \
        --upstream "$UPSTREAM/$mode/v1/chat/completions" --host "$HOST" --port "$FORWARDER_PORT"
    FW_PID=$BG_PID
    wait_http "$FORWARDER" "forwarder-$client-$mode" "$FW_PID" 30
    if [ "$mode" = json ]; then
        check_post "forwarder $client" "$FORWARDER" "$JSON_BODY" application/json '"usage"'
    else
        check_post "forwarder $client" "$FORWARDER" "$SSE_BODY" text/event-stream 'data: [DONE]'
    fi
    if [ "$client" = aiohttp ]; then
        bench_target "forwarder $client" "$mode" "$FORWARDER" "" "$NGINX_PID" "$FW_PID"
    else
        warmup "$mode" "$FORWARDER"
        run_wrk "forwarder $client" "$mode" 10 "$FORWARDER"
    fi
    stop_bg "$FW_PID"
done

# Optional: LiteLLM's proxy on the JSON upstream. Any failure here is reported and skipped.
litellm_bench() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/crossover/litellm-venv" py311="${PYTHON311:-python3.11}"
    if [ ! -x "$venv/bin/litellm" ]; then
        log "installing litellm[proxy] into $venv (once; takes a few minutes)"
        if ! command -v "$py311" >/dev/null; then
            log "LiteLLM: $py311 not found (set PYTHON311)"
            return 1
        fi
        mkdir -p "$(dirname "$venv")"
        "$py311" -m venv "$venv" || { log "LiteLLM: venv creation failed"; return 1; }
        if ! "$venv/bin/pip" install -q 'litellm[proxy]' >"$WORK/litellm-install.log" 2>&1; then
            log "LiteLLM: pip install failed:"
            tail -n 20 "$WORK/litellm-install.log" >&2
            return 1
        fi
    fi
    LITELLM_VERSION=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || echo unknown)
    cat >"$WORK/litellm.yaml" <<EOF
model_list:
  - model_name: bench-json
    litellm_params:
      model: openai/bench-json
      api_base: $UPSTREAM/json/v1
      api_key: x
EOF
    # The local cost map and no telemetry: nothing leaves loopback. No master key, like the gateway's
    # bench config (no api_keys): both skip client authentication; recent LiteLLM needs the flag.
    start_bg litellm env LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_LOG=ERROR \
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true \
        "$venv/bin/litellm" --config "$WORK/litellm.yaml" --host "$HOST" --port "$LITELLM_PORT" --num_workers 1
    local pid=$BG_PID url="http://$HOST:$LITELLM_PORT/v1/chat/completions"
    wait_http "http://$HOST:$LITELLM_PORT/health/liveliness" litellm "$pid" 120 || { stop_bg "$pid"; return 1; }
    local body=${JSON_BODY/\"auto\"/\"bench-json\"}
    check_post litellm "$url" "$body" application/json '"usage"' || { stop_bg "$pid"; return 1; }
    warmup json "$url" bench-json
    run_wrk litellm json 10 "$url" bench-json || { stop_bg "$pid"; return 1; }
    run_wrk litellm json 1 "$url" bench-json || { stop_bg "$pid"; return 1; }
    if [ "$PIN" = 1 ]; then
        run_pinned litellm json "$url" bench-json "$NGINX_PID" "$pid" || { stop_bg "$pid"; return 1; }
    fi
    stop_bg "$pid"
}
if [ "${BENCH_LITELLM:-0}" = 1 ] && [ "$ONLY" != limits ]; then
    litellm_bench || log "LiteLLM comparison skipped (see above); continuing"
fi
stop_bg "$NGINX_PID"
STREAMS_STATUS=0
if [ "${BENCH_STREAMS:-1}" = 1 ]; then slow_streams || STREAMS_STATUS=$?; fi

# ---- report -------------------------------------------------------------------------------------

mkdir -p "$HERE/results"
OUT="$HERE/results/latest.md"
commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain -- gateway classifier providers 2>/dev/null)" ]; then commit="$commit+dirty"; fi
cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"

table() {  # table console|md
    awk -F'\t' -v fmt="$1" '
        BEGIN {
            if (fmt == "md") {
                print "| target | mode | conc | req/s | p50 ms | p99 ms | non-200 | bad body | socket errors | in-handler ms | steal % |"
                print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            } else {
                printf "%-18s %-4s %4s %9s %8s %8s %7s %8s %6s %10s %6s\n", "target", "mode", "conc", "req/s",
                    "p50 ms", "p99 ms", "non-200", "bad body", "errors", "in-handler", "steal%"
            }
        }
        {
            p50 = sprintf("%.3f", $5 / 1000); p99 = sprintf("%.3f", $6 / 1000)
            if (fmt == "md") printf "| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, p50, p99, $7, $8, $9, $10, $11
            else printf "%-18s %-4s %4s %9.0f %8s %8s %7s %8s %6s %10s %6s\n", $1, $2, $3, $4, p50, p99, $7, $8, $9, $10, $11
        }' "$RESULTS"
}

added() {  # added MD CONC: p50 at CONC (1 or 1p) of each proxy minus nginx direct's, per mode
    awk -F'\t' -v md="$1" -v conc="$2" '
        $3 == conc { p50[$1 "|" $2] = $5 }
        END {
            split("json sse", modes, " ")
            for (i = 1; i <= 2; i++) {
                m = modes[i]; base = p50["nginx direct|" m]
                if (base == "" || p50["crossover w1|" m] == "") continue
                line = sprintf("%s: crossover w1 %+.3f ms", m, (p50["crossover w1|" m] - base) / 1000)
                if (p50["forwarder aiohttp|" m] != "")
                    line = line sprintf(", bare aiohttp forwarder %+.3f ms", (p50["forwarder aiohttp|" m] - base) / 1000)
                if (p50["litellm|" m] != "")
                    line = line sprintf(", litellm %+.3f ms", (p50["litellm|" m] - base) / 1000)
                print (md ? "- " : "  ") line
            }
        }' "$RESULTS"
}

limits_ratio() {  # crossover w1 limits' req/s at c=10 (JSON) as a share of crossover w1's
    awk -F'\t' '$2 == "json" && $3 == "10" { rps[$1] = $4 }
        END { if (rps["crossover w1"] > 0 && rps["crossover w1 limits"] != "")
            printf "limits: crossover w1 limits / crossover w1 (JSON, c=10) = %.2f\n", rps["crossover w1 limits"] / rps["crossover w1"] }' "$RESULTS"
}

{
    echo "# Crossover benchmark: latest figures"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $commit"
    echo "- machine: $(nproc) CPUs ($cpu), $(uname -sr); wrk, nginx, the proxy under test share them"
    echo "- $("$PY" --version 2>&1), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')"
    echo "- each run: wrk -t1 -c{10,1} -d${DURATION}s after a ${WARMUP}s warm-up; latencies from wrk's histogram"
    if [ -n "${LITELLM_VERSION:-}" ]; then echo "- litellm $LITELLM_VERSION (proxy, --num_workers 1)"; fi
    if [ "$PIN" = 1 ]; then
        echo "- conc 1p: c=1 with wrk, nginx and the proxy all pinned to CPU $PIN_CPU (no cross-CPU wake-ups)"
    fi
    echo "- in-handler ms: the gateway's own crossover_gateway_overhead_seconds (mean over the run): time in"
    echo "  its request handler not spent waiting on the upstream; excludes uvicorn's HTTP parsing and writing"
    echo "- steal %: share of CPU time the hypervisor gave to other guests during the run (/proc/stat);"
    echo "  rows with a high figure are slowed by the host, not by the target"
    echo
    table md
    echo
    echo "Added latency (p50 at c=1, minus nginx direct):"
    echo
    added 1 1
    echo
    limits_ratio
    if [ "$PIN" = 1 ]; then
        echo
        echo "Added latency (p50 at c=1 with wrk, nginx and the proxy pinned to CPU $PIN_CPU, minus nginx direct):"
        echo
        added 1 1p
    fi
    if [ "${BENCH_STREAMS:-1}" = 1 ]; then
        echo
        echo "## Concurrent slow streams (bench/slow_streams.py)"
        cat "$STREAMS_MD"
    fi
} >"$OUT"

echo
table console
echo
echo "Added latency (p50 at c=1, minus nginx direct):"
added 0 1
limits_ratio
if [ "$PIN" = 1 ]; then
    echo "Added latency (p50 at c=1 pinned to CPU $PIN_CPU, minus nginx direct):"
    added 0 1p
fi
echo
log "written to $OUT"

if [ "${BENCH_STREAMS:-1}" = 1 ]; then cat "$STREAMS_MD"; echo; fi
[ "$STREAMS_STATUS" = 0 ] || die "the slow-streams runs saw incomplete streams or socket errors (see above)"
bad=$(awk -F'\t' '$1 != "litellm" && ($7 + $8 + $9) > 0' "$RESULTS")
if [ -n "$bad" ]; then
    die "some runs saw non-200 answers, incomplete bodies or socket errors (see the table)"
fi
warn=$(awk -F'\t' '$1 == "litellm" && ($7 + $8 + $9) > 0' "$RESULTS")
[ -z "$warn" ] || log "warning: LiteLLM's runs saw non-200 answers or errors"
