#!/usr/bin/env bash
# Shared topology for scripts/demo and friends: a "wan" switch namespace with
# a bridge, the hub and two spokes on it, and a LAN host behind the hub.
#   wan bridge 172.30.0.0/24: hub .1, spoke-a .11, spoke-b .12
#   lan 192.168.77.0/24: hub .1, lan host .2 (routes the tunnel net via the hub)
# Namespaces are named with a prefix so several runs can coexist.

: "${NS_PREFIX:=tsk$$}"
NS_WAN="${NS_PREFIX}-wan"
NS_HUB="${NS_PREFIX}-hub"
NS_A="${NS_PREFIX}-a"
NS_B="${NS_PREFIX}-b"
NS_LAN="${NS_PREFIX}-lan"
TUNNEL_NET=10.77.0.0/24
LAN_NET=192.168.77.0/24
HUB_WAN=172.30.0.1
LAN_HOST=192.168.77.2

netns_up() {
  for ns in "$NS_WAN" "$NS_HUB" "$NS_A" "$NS_B" "$NS_LAN"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip -n "$NS_WAN" link add br0 type bridge
  ip -n "$NS_WAN" link set br0 up
  local i=0
  for pair in "$NS_HUB:1" "$NS_A:11" "$NS_B:12"; do
    local ns=${pair%%:*} host=${pair##*:}
    i=$((i + 1))
    ip link add "tskv$$w$i" netns "$NS_WAN" type veth peer name eth0 netns "$ns"
    ip -n "$NS_WAN" link set "tskv$$w$i" master br0 up
    ip -n "$ns" addr add "172.30.0.$host/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
  ip link add "tskv$$l" netns "$NS_HUB" type veth peer name eth0 netns "$NS_LAN"
  ip -n "$NS_HUB" link set "tskv$$l" name lan0
  ip -n "$NS_HUB" addr add 192.168.77.1/24 dev lan0
  ip -n "$NS_HUB" link set lan0 up
  ip -n "$NS_LAN" addr add "$LAN_HOST/24" dev eth0
  ip -n "$NS_LAN" link set eth0 up
  ip -n "$NS_LAN" route add "$TUNNEL_NET" via 192.168.77.1
  ip netns exec "$NS_HUB" sysctl -qw net.ipv4.ip_forward=1
}

netns_down() {
  for ns in "$NS_WAN" "$NS_HUB" "$NS_A" "$NS_B" "$NS_LAN"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
  return 0
}
