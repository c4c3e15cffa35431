# Sourced by scripts/instructions and scripts/profile: how both start-up
# checks, addresses, serving processes and clients of a
# `target/release/bench --plain|--graceful` server are found and run, so
# that the two tools measure the same servers under the same loads.

# The benchmark whose servers are measured: the release build, or another
# build of it named by BENCH (scripts/pgo's: BENCH=target/pgo/use/release/bench).
bench=${BENCH:-target/release/bench}

# Checks that $1, the command-line argument named $2, is a whole number
# above 0 without a leading zero; exits 2 naming it otherwise.
bench_whole() {
    case $1 in *[!0-9]* | "" | 0*) echo "$2: a whole number above 0 (no leading zero), not $1" >&2; exit 2 ;; esac
}

# The h2load command the clients run; a caller may put a prefix before it
# (scripts/profile pins it: taskset -c 1 h2load).
h2load=(h2load)

# Waits up to $3 seconds for the server of mode $1 (plain or graceful)
# writing its log to $2: listening (the address is whole once what follows
# it is written, as a line may be written in pieces) and, for graceful, a
# worker ready. On failure says so with the log, and fails.
bench_server_wait() {
    local mode=$1 log=$2 seconds=$3
    ready() { grep -qE "listening on [^ ]+ \(" "$log" && { [ "$mode" = plain ] || grep -q "ready in" "$log"; }; }
    for _ in $(seq $((seconds * 10))); do ready && return 0; sleep 0.1; done
    ready || { echo "the $mode server did not start within $seconds s:" >&2; cat "$log" >&2; return 1; }
}

# The address the server whose log is $1 listens on.
bench_server_addr() {
    grep -o "listening on [0-9.:]*" "$1" | head -1 | awk '{print $3}'
}

# The process that serves, for mode $1 with log $2 and process $3: the
# process itself for plain, worker 1 for graceful.
bench_server_pid() {
    if [ "$1" = graceful ]; then
        grep -o "worker 1 (pid [0-9]*" "$2" | head -1 | grep -o "[0-9]*$"
    else
        echo "$3"
    fi
}

# Sends $2 requests to address $3 as client $1: h2 (h2c, 32 connections,
# 10 streams each), h1 (HTTP/1.1 keep-alive, 32 connections) or close (a
# connection per request).
bench_client() {
    case $1 in
    h2) "${h2load[@]}" -t1 -c32 -m10 -n "$2" "http://$3/" ;;
    h1) "${h2load[@]}" --h1 -t1 -c32 -n "$2" "http://$3/" ;;
    close) "${h2load[@]}" --h1 -t1 -c32 -n "$2" -H 'Connection: close' "http://$3/" ;;
    esac
}
