# shellcheck shell=bash
# Helpers shared by the package tests (scripts/test-deb.sh, scripts/test-deb-arm.sh).
# Source it after defining say() and die().

# A TCP port nothing listens on at 127.0.0.1.
free_port() {
    local p _
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    die "no free port"
}

wait_for() { # DESCRIPTION TIMEOUT_S COMMAND...
    local what="$1" timeout="$2" deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
        sleep 0.2
    done
}

check() { # DESCRIPTION COMMAND...
    local what="$1"
    shift
    "$@" || die "$what"
    say "ok: $what"
}
