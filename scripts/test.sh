#!/usr/bin/env bash
# The test command of semaphored: vet, every test with the race detector
# against a real throwaway Redis, then a short run of every fuzz target.
#
#   bash scripts/test.sh
#
# Needs Go. Installs redis-server, jq, curl, Node.js (with npm, for the
# TypeScript SDK's and the console's tests) and Chromium (for the console's
# browser tests) with apt-get when missing (sudo only when not root). Starts its own redis-server on a free loopback port (never
# 6379), AOF on, in a temporary directory, killed on exit.
#
# Environment: FUZZTIME (default 20000x: executions, not seconds; go1.26's
# fuzz coordinator can fail a wall-clock -fuzztime with "context deadline
# exceeded" at its end on a busy machine, golang/go#75804) per fuzz target;
# TEST_TIMEOUT (default
# 8m) for go test; SEMAPHORED_TEST_REDIS_URL, when set, is used instead of
# starting a Redis.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZTIME="${FUZZTIME:-20000x}"
TEST_TIMEOUT="${TEST_TIMEOUT:-8m}"
export DEBIAN_FRONTEND=noninteractive

step="setup"
fuzz_count=0
tmp="$(mktemp -d "${TMPDIR:-/tmp}/semaphored-test.XXXXXX")"
redis_pid=""

cleanup() {
	local status=$?
	if [[ -n "$redis_pid" ]]; then
		kill "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
	if [[ $status -eq 0 ]]; then
		echo "test.sh: PASS (go vet, go test -race, ${fuzz_count} fuzz targets x ${FUZZTIME})"
	else
		echo "test.sh: FAIL in step: ${step} (exit ${status})" >&2
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "==> $*"; }

# ---- Redis ----
step="install test tools"
# redis-server for the store tests; jq and curl for the README walkthrough
# test. Each is installed only when missing.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Chromium for the console's browser tests (tests/console_test.go). Set
# CHROMIUM to use another Chromium or Chrome binary.
if [[ -z "${CHROMIUM:-}" ]] && ! command -v chromium >/dev/null 2>&1; then
	missing+=(chromium fonts-liberation)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
	log "not found: ${missing[*]}: installing with apt-get"
	sudo=""
	if [[ "$(id -u)" -ne 0 ]]; then
		sudo="sudo -n"
	fi
	$sudo apt-get update </dev/null
	$sudo apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
fi

# redis_ping PORT: true when a Redis answers PONG on 127.0.0.1:PORT.
redis_ping() {
	local reply=""
	{ exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
	printf 'PING\r\n' >&3
	IFS= read -r -t 1 reply <&3 || true
	exec 3<&- 3>&-
	[[ "$reply" == "+PONG"* ]]
}

if [[ -z "${SEMAPHORED_TEST_REDIS_URL:-}" ]]; then
	step="start redis-server"
	# A free port on the loopback interface, chosen by the kernel.
	mkdir -p "$tmp/freeport"
	cat >"$tmp/freeport/main.go" <<'GO'
package main

import (
	"fmt"
	"net"
)

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
}
GO
	port="$(cd "$tmp/freeport" && GO111MODULE=off GOFLAGS= go run main.go)"
	mkdir -p "$tmp/redis"
	redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp/redis" \
		--appendonly yes --appendfsync everysec --save '' \
		--protected-mode no --daemonize no \
		--logfile "$tmp/redis/redis.log" </dev/null &
	redis_pid=$!
	for _ in $(seq 1 200); do
		if redis_ping "$port"; then
			break
		fi
		if ! kill -0 "$redis_pid" 2>/dev/null; then
			echo "redis-server exited; log:" >&2
			tail -n 20 "$tmp/redis/redis.log" >&2 || true
			exit 1
		fi
		sleep 0.05
	done
	if ! redis_ping "$port"; then
		echo "redis-server did not answer on port $port; log:" >&2
		tail -n 20 "$tmp/redis/redis.log" >&2 || true
		exit 1
	fi
	export SEMAPHORED_TEST_REDIS_URL="redis://127.0.0.1:${port}/0"
	log "redis-server $(redis-server --version | awk '{print $3}' | sed 's/^v=//') on 127.0.0.1:${port} (AOF on, dir $tmp/redis)"
fi

# ---- Go ----
step="go vet"
log "go vet ./..."
go vet ./...

step="go test"
log "go test -race -count=1 -timeout ${TEST_TIMEOUT} ./..."
go test -race -count=1 -timeout "$TEST_TIMEOUT" ./... </dev/null

step="sdk/js"
# The TypeScript SDK: built with tsc, tested with Node's own runner against
# semaphored binaries it starts (memory store, and this Redis).
log "sdk/js: npm ci, tsc, node --test (Node $(node --version))"
go build -o "$tmp/semaphored" ./cmd/semaphored
(
	cd sdk/js
	npm ci --no-audit --no-fund --loglevel=error </dev/null
	npx --no-install tsc -p tsconfig.json
	SEMAPHORED_BIN="$tmp/semaphored" timeout 600 node --test test/*.test.mjs </dev/null
)

step="console"
# The web console: type-checked, and its committed build (console/dist,
# embedded in the binary) compared with a fresh build of its sources. The
# browser tests ran above with go test (tests/console_test.go).
log "console: npm ci, tsc, node --test"
(
	cd console
	npm ci --no-audit --no-fund --loglevel=error </dev/null
	npx --no-install tsc -p tsconfig.json
	timeout 300 node --test test/*.test.mjs </dev/null
)

step="fuzz"
# Every func FuzzXxx(f *testing.F) in a _test.go file, as "dir name" lines.
targets="$(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . 2>/dev/null |
	grep -v '/testdata/' |
	sed -E 's#^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\($#\1 \2#' | sort -u || true)"
while read -r dir name; do
	[[ -z "${dir:-}" ]] && continue
	log "fuzz ${dir} ${name} (${FUZZTIME})"
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$dir" </dev/null
	fuzz_count=$((fuzz_count + 1))
done <<<"$targets"
step="done"
