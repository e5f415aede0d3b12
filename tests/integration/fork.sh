#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fork safety: a process handshakes through the provider (its pool then holds connections
# to p11pskd), forks, and parent and child both handshake again at the same time. The child
# must open its own connections: p11pskd's audit line (pid from SO_PEERCRED, taken when a
# connection is accepted) shows the child's pid for the child's requests.
. "$(dirname "$0")/lib.sh"
setup_token
start_daemon

raw=$(rand_hex_importable 32)
import_aes fkey "$raw"
h=$(handle_of fkey)

# fork_case NAME hsloop-args...
fork_case() {
    local name=$1 ppid cpid n_parent n_child c_ok c_all
    shift
    hsloop "$T/openssl.cnf" "$T/hs.out" --fork -v --client-psk "$h" --server-psk "$raw" "$@"
    sleep 0.2 # the daemon logs a request as it answers it
    ppid=$(sed -n 's/^pid=\([0-9]*\) forked child pid=[0-9]*$/\1/p' "$T/hs.out")
    cpid=$(sed -n 's/^pid=[0-9]* forked child pid=\([0-9]*\)$/\1/p' "$T/hs.out")
    n_parent=$(grep -c " role=parent .* ok$" "$T/hs.out" || true)
    n_child=$(grep -c "^hs pid=$cpid role=child .* ok$" "$T/hs.out" || true)
    c_ok=$(grep -c " pid=$cpid uid=.* result=ok" "$T/p11pskd.log" || true)
    c_all=$(grep -c " pid=$cpid uid=" "$T/p11pskd.log" || true)
    log "  $name: handshakes=$HS_TOTAL ok=$HS_OK failed=$HS_FAILED (parent $ppid: $n_parent ok," \
        "child $cpid: $n_child ok); p11pskd: $c_ok of $c_all requests from the child ok"
    if [ "$HS_RC" -ne 0 ] || [ "$HS_FAILED" -ne 0 ] || [ -z "$cpid" ] || [ "$n_child" -eq 0 ]; then
        fail "$name: exit $HS_RC, $HS_FAILED failed: $(grep -m1 'fail:' "$T/hs.out"; tail -n 2 "$T/hs.out.err")"
    elif [ "$cpid" = "$ppid" ] || [ "$c_ok" -lt "$n_child" ] || [ "$c_ok" -ne "$c_all" ]; then
        fail "$name: p11pskd saw $c_ok ok of $c_all requests from child pid $cpid for $n_child handshakes"
    elif ! grep -q " pid=$ppid uid=.* result=ok" "$T/p11pskd.log"; then
        fail "$name: no request from the parent pid $ppid in the p11pskd log"
    else
        pass "$name: $HS_OK/$HS_TOTAL ok; the child's $c_ok requests came from pid $cpid, not $ppid"
    fi
}

fork_case "tls13 fork, 1 thread" --tls13 --count 20
fork_case "tls12 fork, 1 thread" --tls12 --count 20
# Several threads before the fork leave several idle connections for the child to drop;
# then both processes run threads of their own.
fork_case "tls13 fork, 4 threads each side" --tls13 --threads 4 --count 25
fork_case "tls12 fork, 4 threads each side" --tls12 --threads 4 --count 25
finish
