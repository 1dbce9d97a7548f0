#!/usr/bin/env bash
# A three-member cluster on loopback under puts to the leader: prints the
# put rate and latency, and the CPU each member spent per put. Meanwhile
# PERF_CMD (default: perf record of the leader for SECONDS_REC seconds;
# `true` for none) runs against the leader's pid.
#   BIN=target/dist/edgeconf CLIENTS=64 TOTAL=30000 PERF_CMD=true tools/profile-puts.sh
# WORKLOAD=get for linearizable gets (`bench get` first writes the 1,100
# keys it reads, and that CPU counts too), CONNECTIONS=8 for clients
# sharing 8 connections, SPREAD=1 for clients spread over all three
# members (as `cargo bench --bench cluster`), FOLLOWER=1 for clients of
# one follower only, AGENT_ENV="VAR=value" for the
# members' environment only, CONSISTENCY=s for serializable reads. After
# the run it prints each member's context switches per request (its raft
# thread's, and its other threads' together), and its count and mean time
# of store applies, WAL fsyncs and store syncs (with curl, if installed).
# Needs etcdctl (./setup.sh installs it) and, for profiles, perf.
set -euo pipefail
source "$(dirname "$0")/leader.sh"
bin=$(realpath "${BIN:-target/release/edgeconf}")
run=/tmp/prof-run; rm -rf $run; mkdir -p $run; cd $run
ports=(21479 22479 23479); peers=(21480 22480 23480)
initial="n1=quic://127.0.0.1:${peers[0]},n2=quic://127.0.0.1:${peers[1]},n3=quic://127.0.0.1:${peers[2]}"
keys=()
for i in 0 1 2; do keys+=("\"$($bin node-key --data-dir n$((i+1)).data)\""); done
trust=$(IFS=,; echo "${keys[*]}")
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT
for i in 0 1 2; do
  cat > n$((i+1)).toml <<T
name = "n$((i+1))"
data_dir = "n$((i+1)).data"
listen_client_urls = ["http://127.0.0.1:${ports[$i]}"]
listen_peer_urls = ["quic://127.0.0.1:${peers[$i]}"]
initial_cluster = "$initial"
log_level = "warn"
listen_metrics_url = "http://127.0.0.1:$((ports[$i]+10))"
[peer_trust]
keys = [$trust]
T
  env ${AGENT_ENV:-} $bin agent --config n$((i+1)).toml 2> n$((i+1)).log & pids+=($!)
done
sleep 3
leader=$(leader_index "${ports[@]}")
[ -n "$leader" ] || { echo "no member leads yet" >&2; exit 1; }
echo "leader: n$((leader+1)) pid ${pids[$leader]}"
$bin --endpoints 127.0.0.1:${ports[$leader]} bench put --clients 1 --total 500 >/dev/null
${PERF_CMD:-perf record -F 1999 -g -o $run/perf.data} -p "${pids[$leader]}" -- sleep ${SECONDS_REC:-8} &> $run/perf.out &
perfpid=$!
sleep 0.5
snap() { for p in "${pids[@]}"; do awk '{printf "%s ", ($14+$15)/100}' /proc/$p/stat; done; echo; }
# Context switches (voluntary and not) of each member's raft thread and of
# its other threads together: how often each sleeps and is woken.
switches() {
  for p in "${pids[@]}"; do
    for t in /proc/$p/task/*; do
      # A blocking-pool thread may exit meanwhile: skip it.
      comm=$(cat $t/comm 2>/dev/null) || continue
      n=$(awk '/ctxt_switches/ {s += $2} END {print s}' $t/status 2>/dev/null) || continue
      [ "$comm" = edgeconf-raft ] && echo "r $n" || echo "o $n"
    done | awk '{s[$1] += $2} END {printf "%d %d ", s["r"], s["o"]}'
  done
  echo
}
before=$(snap)
switched=$(switches)
endpoints=127.0.0.1:${ports[$leader]}
if [ -n "${SPREAD:-}" ]; then endpoints=127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}; fi
if [ -n "${FOLLOWER:-}" ]; then endpoints=127.0.0.1:${ports[$(( (leader + 1) % 3 ))]}; fi
/usr/bin/time -f "client cpu s: %U user %S sys" $bin --endpoints $endpoints bench ${WORKLOAD:-put} --clients ${CLIENTS:-1} --connections ${CONNECTIONS:-0} --total ${TOTAL:-4000} --consistency ${CONSISTENCY:-l}
after=$(snap)
python3 -c "import sys; b=list(map(float,sys.argv[1].split())); a=list(map(float,sys.argv[2].split())); d=[x-y for x,y in zip(a,b)]; print('member cpu s:', ' '.join('%.2f'%x for x in d), 'total %.2f'%sum(d), 'per request us %.0f'%(sum(d)/${TOTAL:-4000}*1e6))" "$before" "$after"
python3 -c "import sys; b=list(map(int,sys.argv[1].split())); a=list(map(int,sys.argv[2].split())); d=[(x-y)/${TOTAL:-4000} for x,y in zip(a,b)]; print('context switches per request, raft thread / other threads:', ', '.join('n%d %.1f / %.1f'%(i+1,d[2*i],d[2*i+1]) for i in range(3)))" "$switched" "$(switches)"
command -v curl >/dev/null && for i in 0 1 2; do
  curl -s http://127.0.0.1:$((ports[$i]+10))/metrics | awk -v n=n$((i+1)) '
    /^edgeconf_(apply|wal_fsync|store_sync)_duration_seconds_(sum|count)/ {v[$1]=$2}
    /^edgeconf_commits_inferred_total/ {inferred=$2}
    END {
      count = split("apply wal_fsync store_sync", names, " ")
      line = n ":"
      for (i = 1; i <= count; i++) {
        c = v["edgeconf_" names[i] "_duration_seconds_count"]
        line = line sprintf(" %s %d x %.1f us,", names[i], c, c ? v["edgeconf_" names[i] "_duration_seconds_sum"] / c * 1e6 : 0)
      }
      print line " commits inferred " inferred
    }'
done
wait $perfpid || true
