#!/usr/bin/env bash
# Daemon smoke test (CI runs it; so can you): start a daemon on temporary directories, run a flow
# detached, check that it succeeded and that the queue drained, stop the daemon. Any failure
# exits nonzero and prints the daemon log path and its last lines.
#
#   scripts/daemon_smoke.sh [--triggers FILE]
#
# `tm` comes from PATH, or from $TM_BIN. --triggers FILE also starts the trigger adapters
# (`--enable-triggers --triggers-config FILE`) and checks that ps lists them. Every TM_* directory
# variable is overridden, so the run never touches your data. On failure the temporary directory
# is kept for inspection; on success it is removed.
set -euo pipefail

usage() {
  echo "usage: $0 [--triggers FILE]" >&2
  exit 2
}

triggers=""
while [ $# -gt 0 ]; do
  case "$1" in
    --triggers)
      [ $# -ge 2 ] || usage
      triggers="$2"
      shift 2
      ;;
    --triggers=*)
      triggers="${1#--triggers=}"
      shift
      ;;
    -h | --help)
      sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) usage ;;
  esac
done

tm_bin="${TM_BIN:-tm}"
if ! command -v "$tm_bin" >/dev/null 2>&1; then
  echo "smoke: '$tm_bin' not found: put tm on PATH or set TM_BIN" >&2
  exit 2
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "smoke: python3 not found (used to read JSON)" >&2
  exit 2
fi
if [ -n "$triggers" ]; then
  [ -f "$triggers" ] || { echo "smoke: --triggers $triggers: no such file" >&2; exit 2; }
  triggers="$(cd "$(dirname "$triggers")" && pwd)/$(basename "$triggers")"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tm-smoke.XXXXXX")"
export TM_ENABLE_DAEMON=1
export TM_FILE_QUEUE_V2=1
export TM_DATA_DIR="$work/data"
export TM_QUEUE_DIR="$TM_DATA_DIR/queue"
export TM_IDEMPOTENCY_DIR="$TM_DATA_DIR/idempotency"
export TM_DLQ_DIR="$TM_DATA_DIR/dlq"
export TM_DAEMON_STATE_DIR="$work/state"
export XDG_CACHE_HOME="$work/cache"  # the flow cache, kept out of ~
log="$TM_DAEMON_STATE_DIR/daemon.log"
daemon_started=0

run_tm() { "$tm_bin" "$@"; }

finish() {
  local rc=$?
  trap - EXIT
  if [ "$daemon_started" = 1 ]; then
    run_tm daemon stop --timeout 15 >/dev/null 2>&1 || echo "smoke: could not stop the daemon" >&2
  fi
  if [ "$rc" -ne 0 ]; then
    echo "smoke: FAILED (exit $rc); daemon log: $log" >&2
    if [ -f "$log" ]; then
      echo "smoke: last lines of the daemon log:" >&2
      tail -n 30 "$log" >&2
    fi
    echo "smoke: temporary files kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { echo "smoke: $*"; }
fail() {
  echo "smoke: $*" >&2
  exit 1
}

# check FILE PYTHON-EXPRESSION: evaluate the expression with `doc` = the JSON in FILE.
check() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    ok = eval(sys.argv[2], {"doc": doc})
except Exception as exc:  # unreadable or unexpected output: the check fails, with the reason
    print(f"smoke: cannot check {sys.argv[1]}: {type(exc).__name__}: {exc}", file=sys.stderr)
    ok = False
sys.exit(0 if ok else 1)
EOF
}

flow="$work/smoke-flow.json"
cat >"$flow" <<'EOF'
{"flow": {"id": "smoke", "entry": "echo",
  "steps": [
    {"id": "echo", "kind": "task", "hooks": {"run": "tracemind.steps.echo"}},
    {"id": "greet", "kind": "task", "hooks": {"run": "tracemind.steps.greet"}},
    {"id": "end", "kind": "finish"}],
  "edges": [{"from": "echo", "to": "greet"}, {"from": "greet", "to": "end"}]}}
EOF

step "starting the daemon (state: $TM_DAEMON_STATE_DIR)"
start_args=(daemon start --workers 2)
if [ -n "$triggers" ]; then
  start_args+=(--enable-triggers --triggers-config "$triggers")
fi
daemon_started=1
run_tm "${start_args[@]}"

run_tm daemon ps --json >"$work/ps-start.json"
check "$work/ps-start.json" 'doc["running"] is True' || fail "ps does not say running after start"
if [ -n "$triggers" ]; then
  check "$work/ps-start.json" 'len(doc["triggers"]) >= 1' || fail "ps lists no trigger"
fi

step "running a flow detached"
task_id="$(run_tm run "$flow" --detached -i '{"name": "smoke"}')"
case "$task_id" in
  *[!0-9a-f]* | "") fail "tm run --detached printed no task id: '$task_id'" ;;
esac

step "waiting for task $task_id"
wait_rc=0
run_tm task wait "$task_id" --timeout 30 --json >"$work/task.json" || wait_rc=$?
[ "$wait_rc" -eq 0 ] || fail "tm task wait exited $wait_rc (1: dead, 3: timeout)"
check "$work/task.json" 'doc["status"] == "succeeded"' || fail "the task did not succeed"
check "$work/task.json" 'doc["result"].get("greeting") == "Hello, smoke!"' ||
  fail "unexpected result: $(cat "$work/task.json")"

step "checking that the queue drained"
drained=0
deadline=$((SECONDS + 10))  # the ack lands an instant after `task wait` saw the result
while [ "$SECONDS" -lt "$deadline" ]; do
  run_tm daemon ps --json >"$work/ps.json"
  if check "$work/ps.json" \
    'doc["running"] and doc["queue"]["pending"] == 0 and doc["queue"]["inflight"] == 0'; then
    drained=1
    break
  fi
  sleep 0.1
done
[ "$drained" = 1 ] || fail "the queue did not drain: $(cat "$work/ps.json")"
check "$work/ps.json" 'doc["dlq"]["pending"] == 0' || fail "the DLQ is not empty"

step "stopping the daemon"
run_tm daemon stop --timeout 15
daemon_started=0
ps_rc=0
run_tm daemon ps --json >"$work/ps-stop.json" || ps_rc=$?
[ "$ps_rc" -eq 3 ] || fail "ps exited $ps_rc after stop (3 means not running)"
check "$work/ps-stop.json" 'doc["running"] is False' || fail "ps says running after stop"

step "OK"
