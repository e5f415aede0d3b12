#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run_fuzzer.sh FUZZER SEEDS WORK ARTIFACTS SECONDS MAX_LEN: runs FUZZER for SECONDS on a
# fresh copy of the seed corpus SEEDS in WORK (new inputs stay in the build dir, never in
# the source tree) and prints the executions. Fails on any crash, leak or UBSan report.
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 artifacts=$4 seconds=$5 max_len=$6
name=$(basename "$fuzzer")
rm -rf "$work"
mkdir -p "$work" "$artifacts"
cp "$seeds"/* "$work"/
log=$work.log
rc=0
"$fuzzer" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$name-" "$work" >"$log" 2>&1 || rc=$?
# Keep the interesting part of libFuzzer's output: the seeds' summary, any report, totals.
grep -E 'INITED|ERROR|SUMMARY|runtime error|Test unit written|==[0-9]+==|^Done|stat::' "$log" |
    grep -v -E 'stat::(peak_rss|slowest|new_units)' | head -n 60 || true
runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$log")
if [ "$rc" -ne 0 ] || [ -z "$runs" ]; then
    echo "$name: FAILED (exit $rc); full log: $log; crashing input in $artifacts/"
    tail -n 40 "$log"
    exit 1
fi
read -r n secs <<<"$runs"
echo "$name: $n executions in $secs s, corpus $(find "$work" -type f | wc -l) inputs, no crash"
