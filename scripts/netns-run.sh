#!/usr/bin/env bash
# Runs N `strata node` members (or, with --perf, N `strata perf` members, one
# per host), each in its own network namespace, joined by a Linux bridge; optionally drops a share of the incoming packets in every
# namespace (nftables `numgen random`) and SIGKILLs one member mid-stream.
# Leaves every node's log in an output directory and tears the namespaces
# down on exit. tests/netns.rs runs it and checks the logs; docs/testing-netns.md
# explains both.
#
#   sudo scripts/netns-run.sh --transport udp --nodes 4
#   sudo scripts/netns-run.sh --transport tcptree --nodes 6 -- --fanout 2
#   sudo scripts/netns-run.sh --transport ipmc --loss 15 --out /tmp/ipmc-loss
#   sudo scripts/netns-run.sh --transport ipmc --stack FRAG:NAK:VSYNC --no-peers \
#        --rate 100 --kill-rank 1 --kill-after 100
#
# Options (defaults in brackets):
#   --nodes N          members [4]
#   --transport T      udp | ipmc | tcptree [udp]
#   --stack SPEC       the stack string [FRAG:NAK]
#   --casts N          casts per member [300]
#   --size BYTES       payload size [1024]
#   --rate R           casts per second per member [as fast as accepted]
#   --linger SECS      the nodes' --linger [10]
#   --loss PCT         drop PCT% of the packets each namespace receives on
#                      eth0: UDP for udp and ipmc, TCP segments other than
#                      SYNs (data and acks) for tcptree [0: no rule]
#   --no-peers         start the nodes without --peers (membership stacks:
#                      ipmc then finds the group by multicast discovery)
#   --kill-rank R      SIGKILL the member of rank R (0 = coordinator) in the
#                      first view of all N members ...
#   --kill-node I      ... or member I (1..N) ...
#   --kill-after K     ... once its log has K deliveries [100]
#   --id ID            namespaces snID-1..snID-N, bridge sbrID, addresses
#                      10.77.ID.i/24 (ID 1..254); [auto: the first free ID,
#                      claimed atomically, so runs can go in parallel]
#   --port P           every member binds 10.77.ID.i:P [7000]
#   --timeout SECS     kill every node still running after this long [120]
#   --out DIR          output directory, emptied first [/tmp/strata-netns-ID]
#   --strata PATH      the binary [$STRATA, else target/{debug,release}/strata]
#   --perf             run `strata perf --members N --bind .. --peers ..`
#                      with --stack, --transport, --size, --casts, --rate,
#                      --linger and --json instead of `strata node`: each
#                      member's JSON result is in nodeI.out (no log, so no
#                      --kill-rank: --kill-node I kills member I once its
#                      progress lines show --kill-after deliveries)
#   -- ARGS...         passed on to every `strata node` (or `strata perf`)
#
# The output directory holds: nodeI.jsonl (logs), nodeI.out / nodeI.err
# (stdout, stderr), members (node I's address on line I), exits ("I STATUS"
# per node), id, killed ("I ADDRESS" of the member killed), nft-nodeI.txt
# (the loss table with its counters, at the end of the run).
#
# Exit status: 0 every node exited 0 (but the one killed); 2 bad arguments;
# 3 cannot run here (not root, a tool or the binary missing, namespaces not
# supported; the reason is on stderr, starting `netns-run: skip:`); 4 setting
# up the network failed; 5 a node exited non-zero; 6 the kill condition never
# held; 7 nodes still running after --timeout (killed).
set -uo pipefail

NODES=4 TRANSPORT=udp STACK=FRAG:NAK CASTS=300 SIZE=1024 RATE="" LINGER=10 LOSS=0
NO_PEERS=0 KILL_RANK="" KILL_NODE="" KILL_AFTER=100 ID=auto PORT=7000 TIMEOUT=120 PERF=0
OUT="" BIN=${STRATA:-}
EXTRA=()

usage() {
  echo "netns-run: $*" >&2
  echo "usage: $0 [--nodes N] [--transport udp|ipmc|tcptree] [--stack SPEC] [--casts N] [--size B] [--rate R] [--linger S] [--loss PCT] [--no-peers] [--kill-rank R | --kill-node I] [--kill-after K] [--id ID|auto] [--port P] [--timeout S] [--out DIR] [--strata PATH] [--perf] [-- NODE-ARGS...]" >&2
  exit 2
}
skip() {
  echo "netns-run: skip: $*" >&2
  exit 3
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

while [ $# -gt 0 ]; do
  case $1 in
    --nodes) NODES=${2:-} ;;
    --transport) TRANSPORT=${2:-} ;;
    --stack) STACK=${2:-} ;;
    --casts) CASTS=${2:-} ;;
    --size) SIZE=${2:-} ;;
    --rate) RATE=${2:-} ;;
    --linger) LINGER=${2:-} ;;
    --loss) LOSS=${2:-} ;;
    --no-peers) NO_PEERS=1; shift; continue ;;
    --perf) PERF=1; shift; continue ;;
    --kill-rank) KILL_RANK=${2:-} ;;
    --kill-node) KILL_NODE=${2:-} ;;
    --kill-after) KILL_AFTER=${2:-} ;;
    --id) ID=${2:-} ;;
    --port) PORT=${2:-} ;;
    --timeout) TIMEOUT=${2:-} ;;
    --out) OUT=${2:-} ;;
    --strata) BIN=${2:-} ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage "unknown option $1" ;;
  esac
  [ $# -ge 2 ] || usage "$1 needs a value"
  shift 2
done

is_uint "$NODES" && [ "$NODES" -ge 1 ] && [ "$NODES" -le 250 ] || usage "--nodes: 1 to 250"
case $TRANSPORT in udp | ipmc | tcptree) ;; *) usage "--transport: udp, ipmc or tcptree" ;; esac
is_uint "$LOSS" && [ "$LOSS" -le 100 ] || usage "--loss: a percentage"
is_uint "$KILL_AFTER" || usage "--kill-after: a number of deliveries"
is_uint "$PORT" && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || usage "--port: 1 to 65535"
is_uint "$TIMEOUT" || usage "--timeout: whole seconds"
[ -z "$KILL_RANK" ] || is_uint "$KILL_RANK" && [ "${KILL_RANK:-0}" -lt "$NODES" ] || usage "--kill-rank: 0 to N-1"
[ -z "$KILL_NODE" ] || is_uint "$KILL_NODE" && [ "${KILL_NODE:-1}" -ge 1 ] && [ "${KILL_NODE:-1}" -le "$NODES" ] || usage "--kill-node: 1 to N"
[ -z "$KILL_RANK" ] || [ -z "$KILL_NODE" ] || usage "--kill-rank and --kill-node exclude each other"
[ "$PERF" -eq 0 ] || [ -z "$KILL_RANK" ] || usage "--perf writes no log to find ranks in: use --kill-node"
[ "$ID" = auto ] || { is_uint "$ID" && [ "$ID" -ge 1 ] && [ "$ID" -le 254 ]; } || usage "--id: 1 to 254 or auto"

# What this machine must offer; a missing piece is a skip, not a failure.
[ "$(id -u)" -eq 0 ] || skip "not root (network namespaces need CAP_NET_ADMIN)"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
if [ "$LOSS" -gt 0 ]; then command -v nft >/dev/null || skip "nftables (nft) is not installed (needed for --loss)"; fi
if [ -z "$BIN" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  for b in "$root/target/debug/strata" "$root/target/release/strata"; do [ -x "$b" ] && BIN=$b && break; done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || skip "no strata binary (build it, or give --strata / STRATA)"

# Claim an ID: creating the bridge is atomic, so two runs never share one.
# A bridge whose alias names a dead process is a leftover of a run that was
# killed before its cleanup: it (and its namespaces) are removed and reused.
owner_alias() { echo "strata-netns pid=$$"; }
remove_id() {
  local id=$1 ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^sn$id-[0-9]+$"); do ip netns del "$ns" 2>/dev/null; done
  ip link del "sbr$id" 2>/dev/null
}
claim() {
  local id=$1 alias pid
  if ip link add "sbr$id" type bridge mcast_snooping 0 2>/dev/null; then
    ip link set "sbr$id" alias "$(owner_alias)" && return 0
    ip link del "sbr$id" 2>/dev/null
    return 1
  fi
  alias=$(ip -o link show "sbr$id" 2>/dev/null | sed -n 's/.* alias strata-netns pid=\([0-9]*\).*/\1/p')
  pid=${alias:-}
  if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
    remove_id "$id"
    ip link add "sbr$id" type bridge mcast_snooping 0 2>/dev/null && ip link set "sbr$id" alias "$(owner_alias)" && return 0
  fi
  return 1
}
if [ "$ID" = auto ]; then
  # Start at a place that depends on the process, so parallel runs rarely collide.
  start=$(($$ % 254))
  for step in $(seq 0 253); do
    id=$(((start + step) % 254 + 1))
    if claim "$id"; then ID=$id; break; fi
  done
  [ "$ID" != auto ] || {
    ip link add sbrprobe$$ type bridge 2>/dev/null && ip link del sbrprobe$$ && { echo "netns-run: no free ID (1..254)" >&2; exit 4; }
    skip "cannot create a bridge (no CAP_NET_ADMIN, or no bridge support)"
  }
else
  claim "$ID" || { ip link show "sbr$ID" >/dev/null 2>&1 && { echo "netns-run: ID $ID is in use (bridge sbr$ID exists)" >&2; exit 4; }; skip "cannot create a bridge (no CAP_NET_ADMIN, or no bridge support)"; }
fi

OUT=${OUT:-/tmp/strata-netns-$ID}
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  remove_id "$ID"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Only a directory of an earlier run (it has an `id` file) is emptied.
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/id" ]; then
  echo "netns-run: $OUT is not empty and not the output of an earlier run" >&2
  exit 4
fi
rm -rf "$OUT" && mkdir -p "$OUT" || { echo "netns-run: cannot create $OUT" >&2; exit 4; }
echo "$ID" >"$OUT/id"
: >"$OUT/exits"

ns() { echo "sn$ID-$1"; }
addr() { echo "10.77.$ID.$1"; }

# The network: one namespace per member, its eth0 a veth into the bridge.
# Multicast snooping is off on the bridge so multicast reaches every port
# without IGMP reports.
ip link set "sbr$ID" up || exit 4
for i in $(seq 1 "$NODES"); do
  if ! ip netns add "$(ns "$i")" 2>"$OUT/setup.err"; then
    [ "$i" -eq 1 ] && skip "cannot create a network namespace: $(cat "$OUT/setup.err")"
    cat "$OUT/setup.err" >&2
    exit 4
  fi
  { ip link add "sv$ID-$i" type veth peer name eth0 netns "$(ns "$i")" &&
    ip link set "sv$ID-$i" master "sbr$ID" &&
    ip link set "sv$ID-$i" up &&
    ip -n "$(ns "$i")" addr add "$(addr "$i")/24" dev eth0 &&
    ip -n "$(ns "$i")" link set eth0 up multicast on &&
    ip -n "$(ns "$i")" link set lo up; } || { echo "netns-run: setting up $(ns "$i") failed" >&2; exit 4; }
  echo "$(addr "$i"):$PORT" >>"$OUT/members"
done

# Loss: counted ("seen", "dropped") so a test can tell the rule did work.
if [ "$LOSS" -gt 0 ]; then
  if [ "$TRANSPORT" = tcptree ]; then
    # Not SYNs: a lost SYN is retried after a second, then three, ...; the
    # run is about the stream, and data and acks are all the rest.
    match='meta l4proto tcp tcp flags & syn == 0'
  else
    match='meta l4proto udp'
  fi
  for i in $(seq 1 "$NODES"); do
    ip netns exec "$(ns "$i")" nft -f - <<EOF || { echo "netns-run: nft failed in $(ns "$i")" >&2; exit 4; }
table inet strata_loss {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "eth0" $match counter comment "seen"
    iifname "eth0" $match numgen random mod 100 < $LOSS counter drop comment "dropped"
  }
}
EOF
  done
fi

# Start every member; peers are all the others (unless --no-peers).
mapfile -t MEMBERS <"$OUT/members"
for i in $(seq 1 "$NODES"); do
  if [ "$PERF" -eq 1 ]; then
    args=(perf --members "$NODES" --group "netns-$TRANSPORT" --stack "$STACK" --transport "$TRANSPORT" --bind "${MEMBERS[$((i - 1))]}"
      --casts "$CASTS" --size "$SIZE" --linger "$LINGER" --json)
  else
    args=(node --group "netns-$TRANSPORT" --stack "$STACK" --transport "$TRANSPORT" --bind "${MEMBERS[$((i - 1))]}"
      --casts "$CASTS" --size "$SIZE" --linger "$LINGER" --log "$OUT/node$i.jsonl")
  fi
  [ -z "$RATE" ] || args+=(--rate "$RATE")
  if [ "$NO_PEERS" -eq 0 ] && [ "$NODES" -gt 1 ]; then
    peers=$(grep -v -x -F "${MEMBERS[$((i - 1))]}" "$OUT/members" | paste -s -d, -)
    args+=(--peers "$peers")
  fi
  ip netns exec "$(ns "$i")" "$BIN" "${args[@]}" "${EXTRA[@]}" >"$OUT/node$i.out" 2>"$OUT/node$i.err" </dev/null &
  PIDS+=($!)
done

# A node has exited once its process is a zombie (or gone); then it is reaped.
declare -A STATUS=()
reap() {
  local i pid state
  for i in $(seq 1 "$NODES"); do
    [ -z "${STATUS[$i]:-}" ] || continue
    pid=${PIDS[$((i - 1))]}
    state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
    if [ -z "$state" ] || [ "$state" = Z ]; then
      wait "$pid" 2>/dev/null
      STATUS[$i]=$?
      echo "$i ${STATUS[$i]}" >>"$OUT/exits"
    fi
  done
}
running() { [ "${#STATUS[@]}" -lt "$NODES" ]; }
DEADLINE=$((SECONDS + TIMEOUT))
tick() {
  reap
  if [ "$SECONDS" -ge "$DEADLINE" ]; then
    echo "netns-run: nodes still running after ${TIMEOUT}s; killing them" >&2
    exit 7
  fi
  sleep 0.05
}
if [ "$PERF" -eq 1 ]; then
  # `strata perf` prints its progress on stderr as a share of what it
  # expects (N x casts): `perf: 1.0 s, 41% delivered ...`.
  deliveries() {
    local pct
    pct=$(grep -o '[0-9]*% delivered' "$OUT/node$1.err" 2>/dev/null | tail -n 1 | cut -d% -f1)
    echo $((${pct:-0} * NODES * CASTS / 100))
  }
else
  deliveries() { grep -c '"ev":"deliver"' "$OUT/node$1.jsonl" 2>/dev/null || true; }
fi
# The members of node I's latest view, one per line, in rank order.
view_members() {
  grep '"ev":"view"' "$OUT/node$1.jsonl" 2>/dev/null | tail -n 1 | sed -n 's/.*"members":\[\([^]]*\)\].*/\1/p' | tr ',' '\n' | tr -d '"'
}

KILLED=""
if [ -n "$KILL_RANK$KILL_NODE" ]; then
  victim=$KILL_NODE
  if [ -n "$KILL_RANK" ]; then
    # Every node must be in the view of all N; its rank R names the victim.
    full=0
    while running; do
      full=1
      for i in $(seq 1 "$NODES"); do [ "$(view_members "$i" | grep -c .)" -eq "$NODES" ] || full=0; done
      [ "$full" -eq 0 ] || break
      tick
    done
    if [ "$full" -eq 1 ]; then
      target=$(view_members 1 | sed -n "$((KILL_RANK + 1))p")
      victim=$(grep -n -x -F "$target" "$OUT/members" | cut -d: -f1)
    fi
  fi
  if [ -n "$victim" ]; then
    while running && [ -z "${STATUS[$victim]:-}" ] && [ "$(deliveries "$victim")" -lt "$KILL_AFTER" ]; do tick; done
    if [ -z "${STATUS[$victim]:-}" ] && [ "$(deliveries "$victim")" -ge "$KILL_AFTER" ]; then
      kill -9 "${PIDS[$((victim - 1))]}"
      KILLED=$victim
      echo "$victim ${MEMBERS[$((victim - 1))]}" >"$OUT/killed"
      echo "netns-run: killed node $victim (${MEMBERS[$((victim - 1))]}) after $(deliveries "$victim") deliveries" >&2
    fi
  fi
  [ -n "$KILLED" ] || { echo "netns-run: the kill condition never held (victim: ${victim:-none found})" >&2; exit 6; }
fi

while running; do tick; done

if [ "$LOSS" -gt 0 ]; then
  for i in $(seq 1 "$NODES"); do ip netns exec "$(ns "$i")" nft list table inet strata_loss >"$OUT/nft-node$i.txt" 2>&1; done
fi

failed=0
for i in $(seq 1 "$NODES"); do
  [ "$i" = "$KILLED" ] && continue
  if [ "${STATUS[$i]}" -ne 0 ]; then
    echo "netns-run: node $i exited with ${STATUS[$i]}: $(tail -n 3 "$OUT/node$i.err" | tr '\n' ' ')" >&2
    failed=1
  fi
done
for i in $(seq 1 "$NODES"); do
  echo "node $i (${MEMBERS[$((i - 1))]}): status ${STATUS[$i]}, $(deliveries "$i") deliveries; $(tail -n 1 "$OUT/node$i.jsonl" 2>/dev/null)"
done
[ "$failed" -eq 0 ] || exit 5
exit 0
