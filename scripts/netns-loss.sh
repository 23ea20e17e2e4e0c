#!/usr/bin/env bash
# Runs N `strata node` members in their own network namespaces on a bridge,
# with an nftables rule in each namespace dropping LOSS% of incoming UDP, and
# prints each member's last log line and delivery count. Needs root, iproute2
# and nftables. Not run by CI (issue 7 adds the checked version).
#
#   cargo build --release
#   sudo scripts/netns-loss.sh                      # 3 members, 20% loss
#   sudo LOSS=30 SIZE=20000 CASTS=500 scripts/netns-loss.sh
#   sudo KILL=0.3 CASTS=20000 SIZE=500 LINGER=3 scripts/netns-loss.sh   # SIGKILL the last member after 0.3 s
set -eu
B=${STRATA:-$(dirname "$0")/../target/release/strata}
N=${MEMBERS:-3}
OUT=${OUT:-/tmp/strata-netns}
cleanup() {
  for i in $(seq 1 "$N"); do ip netns del "sn$i" 2>/dev/null || true; done
  ip link del sbr0 2>/dev/null || true
}
cleanup
trap cleanup EXIT
ip link add sbr0 type bridge
ip link set sbr0 up
for i in $(seq 1 "$N"); do
  ip netns add "sn$i"
  ip link add "sv$i" type veth peer name eth0 netns "sn$i"
  ip link set "sv$i" master sbr0
  ip link set "sv$i" up
  ip -n "sn$i" addr add "10.77.0.$i/24" dev eth0
  ip -n "sn$i" link set eth0 up
  ip -n "sn$i" link set lo up
  ip netns exec "sn$i" nft add table inet loss
  ip netns exec "sn$i" nft add chain inet loss in '{ type filter hook input priority 0; }'
  ip netns exec "sn$i" nft add rule inet loss in udp dport 7000 numgen random mod 100 '<' "${LOSS:-20}" drop
done
PEERS=$(seq -s, 1 "$N" | sed 's/\([0-9]\+\)/10.77.0.\1:7000/g')
rm -rf "$OUT" && mkdir -p "$OUT"
pids=()
for i in $(seq 1 "$N"); do
  ip netns exec "sn$i" "$B" node --group g --stack "${STACK:-FRAG:NAK}" --bind "10.77.0.$i:7000" --peers "$PEERS" \
    --casts "${CASTS:-1000}" --size "${SIZE:-2000}" --log "$OUT/$i.jsonl" --linger "${LINGER:-5}" &
  pids+=($!)
done
if [ -n "${KILL:-}" ]; then
  sleep "$KILL"
  kill -9 "${pids[$((N - 1))]}"
  echo "killed member $N"
fi
for i in $(seq 1 "$N"); do wait "${pids[$((i - 1))]}" || echo "member $i exited with $?"; done
for i in $(seq 1 "$N"); do
  # Per-sender order: the k of "id":"M:k" must be 0, 1, 2, ... for every M.
  order=$(grep '"ev":"deliver"' "$OUT/$i.jsonl" | sed 's/.*"id":"\([^"]*\)".*/\1/' |
    awk '{ m = $0; sub(/:[0-9]+$/, "", m); k = substr($0, length(m) + 2) + 0;
           if (k != next_k[m] + 0) { bad++ } next_k[m] = k + 1 }
         END { print (bad ? bad " out of order" : "in order") }')
  echo "member $i: $(grep -c '"ev":"deliver"' "$OUT/$i.jsonl") deliveries, $order; $(tail -n1 "$OUT/$i.jsonl")"
done
