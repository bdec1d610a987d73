# scripts/bench's hub-tree part (issue 16), sourced by scripts/bench: the
# relay across branches, spoke-a → child hub A → root hub → child hub B →
# spoke-b (decrypted, checked and re-encrypted at each of the three hubs),
# with the same four tests as the single-hub relay rows: TCP 1 and 4
# streams, UDP 64 B and ping RTT.
# Namespaces: $P-ts (spoke-a), $P-ta (hub A), $P-tr (root), $P-tb (hub B),
# $P-tt (spoke-b): the spokes reach their hubs over point-to-point veths,
# the child hubs reach the root on a bridge in the root's namespace:
#   spoke-a 172.34.1.2 ── 172.34.1.1 A 172.34.0.2 ─┐
#                                      root 172.34.0.1 (br0)
#   spoke-b 172.34.2.2 ── 172.34.2.1 B 172.34.0.3 ─┘
# Tunnel networks: root 10.79.0.0/24, A 10.81.0.0/24, B 10.82.0.0/24.

TREE_NS=()

tree_down() {
  local ns
  for ns in "${TREE_NS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  TREE_NS=()
}

tree_link() { # tree_link NS1 ADDR1 NS2 ADDR2 NAME: a point-to-point veth
  local n1=$1 a1=$2 n2=$3 a2=$4 name=$5
  ip link add "${P}$name" netns "$n1" type veth peer name "${P}${name}p" netns "$n2"
  ip -n "$n1" addr add "$a1/32" peer "$a2/32" dev "${P}$name"
  ip -n "$n2" addr add "$a2/32" peer "$a1/32" dev "${P}${name}p"
  ip -n "$n1" link set "${P}$name" up
  ip -n "$n2" link set "${P}${name}p" up
}

tree_net_up() {
  local ns
  for ns in "$P-ts" "$P-ta" "$P-tr" "$P-tb" "$P-tt"; do
    ip netns add "$ns"
    TREE_NS+=("$ns")
    ip -n "$ns" link set lo up
  done
  tree_link "$P-ts" 172.34.1.2 "$P-ta" 172.34.1.1 tsa
  tree_link "$P-tb" 172.34.2.1 "$P-tt" 172.34.2.2 tbt
  ip -n "$P-tr" link add br0 type bridge
  ip -n "$P-tr" addr add 172.34.0.1/24 dev br0
  ip -n "$P-tr" link set br0 up
  local side host
  for side in a b; do
    if [ $side = a ]; then host=2; else host=3; fi
    ip link add "${P}tr$side" netns "$P-tr" type veth peer name "${P}tw" netns "$P-t$side"
    ip -n "$P-tr" link set "${P}tr$side" master br0 up
    ip -n "$P-t$side" addr add "172.34.0.$host/24" dev "${P}tw"
    ip -n "$P-t$side" link set "${P}tw" up
  done
  ip -n "$P-ts" route add default via 172.34.1.1
  ip -n "$P-tt" route add default via 172.34.2.1
  for ns in "$P-ta" "$P-tr" "$P-tb"; do
    in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1
  done
}

tree_hub() { # tree_hub NS NAME ENDPOINT NET: init and run a hub; its socket in $TREE_SOCK
  local ns=$1 name=$2 endpoint=$3 net=$4 d=$WORK/tree
  TREE_SOCK=$d/$name.sock
  in_ns "$ns" "$BIN/tasuki-hub" init --state-dir "$d/$name" --endpoint "$endpoint" \
    --tunnel-net "$net" --no-ipv6 >/dev/null
  start "$ns" "$d/$name.log" "$BIN/tasuki-hub" run --state-dir "$d/$name" --interface "${P}th" \
    --admin-socket "$TREE_SOCK" --log warn
  TREE_PID=$LAST_PID
  wait_for "tree hub $name" 15 "$BIN/tasuki-hub" status --admin-socket "$TREE_SOCK"
}

tree_spoke() { # tree_spoke NS NAME HUB_SOCK
  local ns=$1 name=$2 sock=$3 d=$WORK/tree inv
  inv=$("$BIN/tasuki-hub" spoke invite "$name" --pre-approved --service --expires 1h \
    --admin-socket "$sock" 2>/dev/null)
  in_ns "$ns" "$BIN/tasuki-spoke" enrol "$inv" --state-dir "$d/$name" >/dev/null
  start "$ns" "$d/$name.log" "$BIN/tasuki-spoke" run --state-dir "$d/$name" \
    --interface "${P}tt" --socket "$d/$name.sock"
}

tree_join() { # tree_join CHILD_SOCK ROOT_SOCK NAME
  local inv
  inv=$("$BIN/tasuki-hub" hub invite "$3" --admin-socket "$2" 2>/dev/null)
  "$BIN/tasuki-hub" join "$inv" --admin-socket "$1" >/dev/null
  "$BIN/tasuki-hub" hub approve "$3" --admin-socket "$2" >/dev/null
}

tree_iperf() { # tree_iperf TEST RUN ARGS...: spoke-a → spoke-b, one run
  local test=$1 run=$2 out rc=0
  shift 2
  out=$WORK/raw/tasuki-tree-branches-$test-$run.json
  mkdir -p "$WORK/raw"
  timeout --foreground $((DURATION + OMIT + 20)) ip netns exec "$P-ts" \
    iperf3 -c 10.82.0.2 -p 5201 -J --connect-timeout 3000 -t "$DURATION" "$@" >"$out" 2>&1 || rc=$?
  record setup='"tasuki-tree"' path='"branches"' test="$(jstr "$test")" run="$run" rc="$rc" \
    kind='"iperf3"' file="$(jstr "$out")"
}

tree_test() {
  local d=$WORK/tree root_sock a_sock b_sock run out rc
  say "tasuki hub tree: relay across branches (spoke-a → hub A → root → hub B → spoke-b)"
  rm -rf "$d"
  mkdir -p "$d"
  tree_net_up
  if ! { tree_hub "$P-tr" root 172.34.0.1:51820 10.79.0.0/24 && root_sock=$TREE_SOCK &&
    tree_hub "$P-ta" hub-a 172.34.1.1:51820 10.81.0.0/24 && a_sock=$TREE_SOCK &&
    tree_hub "$P-tb" hub-b 172.34.2.1:51820 10.82.0.0/24 && b_sock=$TREE_SOCK; }; then
    FAILED+=(tree)
    stop_all
    tree_down
    return 0
  fi
  tree_spoke "$P-ts" spoke-a "$a_sock"
  tree_spoke "$P-tt" spoke-b "$b_sock"
  tree_join "$a_sock" "$root_sock" hub-a
  tree_join "$b_sock" "$root_sock" hub-b
  if ! wait_for "spoke-a → spoke-b across the branches" 40 \
    ip netns exec "$P-ts" ping -c 1 -W 1 10.82.0.2; then
    FAILED+=(tree)
    stop_all
    tree_down
    return 0
  fi
  start "$P-tt" "$WORK/iperf-tree.log" iperf3 -s -B 10.82.0.2 -p 5201
  sleep 0.3
  for run in $(seq "$RUNS"); do
    note "run $run/$RUNS: TCP 1 stream, TCP 4 streams, UDP 64 B, ping across the branches"
    tree_iperf tcp1 "$run" -O "$OMIT"
    tree_iperf tcp4 "$run" -O "$OMIT" -P 4
    tree_iperf udp64 "$run" -u -l 64 -b 0
    out=$WORK/raw/tasuki-tree-branches-ping-$run.txt
    rc=0
    timeout --foreground 20 ip netns exec "$P-ts" ping -q -n -c 20 -i 0.05 -W 1 10.82.0.2 >"$out" 2>&1 || rc=$?
    record setup='"tasuki-tree"' path='"branches"' test='"ping"' run="$run" rc="$rc" \
      kind='"ping"' file="$(jstr "$out")"
  done
  record setup='"tasuki-tree"' kind='"tree"' runs="$RUNS"
  stop_all
  tree_down
}
