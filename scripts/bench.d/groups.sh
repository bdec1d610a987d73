# scripts/bench's keyed-groups part (issue 15), sourced by scripts/bench:
#   key messages: what one rotation costs the hub for 50 members keyed as
#     one group and with a pair epoch per member pair (tasuki-benchtool
#     key-messages, on the hub's own schedules);
#   multicast: one member streams 64-byte datagrams into the group's range
#     for DURATION seconds; 10 members each count the distinct ones they
#     got (tasuki-nettool mcast-recv), through the hub's fan-out.
# Namespaces: $P-g (hub, a bridge) and $P-g0 … $P-g10 (g0 sends).

GROUP_MEMBERS=10
GROUP_OFFERED_PPS=${GROUP_OFFERED_PPS:-20000}
GROUP_NS=()

groups_down() {
  local ns
  for ns in "${GROUP_NS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  GROUP_NS=()
}

groups_net_up() { # a bridge in the hub's namespace, one veth per spoke
  local i ns hub=$P-g
  ip netns add "$hub"
  GROUP_NS+=("$hub")
  ip -n "$hub" link set lo up
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" addr add 172.33.0.1/24 dev br0
  ip -n "$hub" link set br0 up
  for i in $(seq 0 "$GROUP_MEMBERS"); do
    ns=$P-g$i
    ip netns add "$ns"
    GROUP_NS+=("$ns")
    ip -n "$ns" link set lo up
    ip link add "${P}gv$i" netns "$hub" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "${P}gv$i" master br0 up
    ip -n "$ns" addr add "172.33.0.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

groups_test() {
  local d=$WORK/groups hub=$P-g i ns inv res secs=$DURATION members=() sock
  say "tasuki keyed groups: key messages per rotation for 50 members; multicast to $GROUP_MEMBERS members"
  if res=$("$BIN/tasuki-benchtool" key-messages --members 50 2>>"$WORK/benchtool.log"); then
    record setup='"tasuki"' kind='"group-keys"' result="$res"
  else
    FAILED+=(group-keys)
  fi
  mkdir -p "$d"
  groups_net_up
  sock=$d/hub.sock
  in_ns "$hub" "$BIN/tasuki-hub" init --state-dir "$d/hub" --endpoint 172.33.0.1:51820 \
    --tunnel-net 10.78.0.0/24 >/dev/null
  start "$hub" "$d/hub.log" "$BIN/tasuki-hub" run --state-dir "$d/hub" --interface "${P}gh" \
    --admin-socket "$sock" --log warn
  wait_for "the tasuki hub (groups)" 15 "$BIN/tasuki-hub" status --admin-socket "$sock" || {
    FAILED+=(group-multicast)
    groups_down
    return 0
  }
  for i in $(seq 0 "$GROUP_MEMBERS"); do
    ns=$P-g$i
    inv=$("$BIN/tasuki-hub" spoke invite "m$i" --pre-approved --service --expires 1h --admin-socket "$sock" 2>/dev/null)
    in_ns "$ns" "$BIN/tasuki-spoke" enrol "$inv" --state-dir "$d/m$i" >/dev/null
    start "$ns" "$d/m$i.log" "$BIN/tasuki-spoke" run --state-dir "$d/m$i" --interface "${P}gt" \
      --socket "$d/m$i.sock"
    members+=("spoke:m$i")
  done
  "$BIN/tasuki-hub" group add board --admin-socket "$sock" >/dev/null
  "$BIN/tasuki-hub" group add-member board "${members[@]}" --admin-socket "$sock" >/dev/null
  "$BIN/tasuki-hub" group key board on --admin-socket "$sock" >/dev/null
  "$BIN/tasuki-hub" group multicast board 239.77.1.0/24 --rate 1000000 --admin-socket "$sock" >/dev/null
  for i in $(seq 0 "$GROUP_MEMBERS"); do
    wait_for "member m$i routes the group's range" 30 \
      sh -c "ip -n $P-g$i route show 239.77.1.0/24 | grep -q dev" || {
      FAILED+=(group-multicast)
      stop_all
      groups_down
      return 0
    }
  done
  local run addr
  for run in $(seq "$RUNS"); do
    local outs=() recv=()
    for i in $(seq 1 "$GROUP_MEMBERS"); do
      addr=10.78.0.$((2 + i)) # enrolment order: m0 .2, m1 .3, …
      outs+=("$d/recv-$run-$i.json")
      in_ns "$P-g$i" "$BIN/tasuki-nettool" mcast-recv 239.77.1.9 5000 "$addr" $((secs + 3)) \
        --ready "$d/ready-$run-$i" >"$d/recv-$run-$i.json" 2>>"$d/nettool.log" &
      recv+=($!)
    done
    for i in $(seq 1 "$GROUP_MEMBERS"); do
      wait_for "receiver $i" 10 test -e "$d/ready-$run-$i" || true
    done
    in_ns "$P-g0" "$BIN/tasuki-nettool" mcast-send 239.77.1.9 5000 10.78.0.2 \
      $((GROUP_OFFERED_PPS * secs)) "$GROUP_OFFERED_PPS" 64 >"$d/send-$run.json" 2>>"$d/nettool.log" || true
    wait "${recv[@]}" || true
    local got
    got=$("$PY" -c '
import json, sys
counts = []
for p in sys.argv[1:]:
    try:
        r = json.load(open(p))["received"]
    except Exception:
        r = []
    counts.append([len(set(r)), len(r) - len(set(r))])
print(json.dumps(counts))' "${outs[@]}")
    note "run $run: distinct/duplicate datagrams per member: $got"
    record setup='"tasuki"' kind='"group-multicast"' run="$run" members="$GROUP_MEMBERS" \
      offered_pps="$GROUP_OFFERED_PPS" seconds="$secs" sent="$(cat "$d/send-$run.json" 2>/dev/null || echo null)" \
      received="$got"
  done
  stop_all
  groups_down
}
