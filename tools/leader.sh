# Sourced by the tools that start a three-member cluster (etcd's or
# edgeconf's: both answer etcdctl's `endpoint status`).
# leader_index PORT...: prints the index of the client port whose member
# says it leads (empty if none does yet).
leader_index() {
  local i=0 port st
  for port in "$@"; do
    st=$(ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$port endpoint status -w json)
    if python3 -c 'import json,sys; d=json.loads(sys.argv[1])[0]["Status"]; sys.exit(0 if d["header"]["member_id"]==d["leader"] else 1)' "$st"; then
      echo $i
    fi
    i=$((i + 1))
  done
}
