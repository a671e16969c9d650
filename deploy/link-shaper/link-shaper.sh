#!/bin/sh
# link-shaper: the cross-datacenter link between dc-prfaas and dc-pd, emulated in one container.
#
# The container sits on both networks with fixed addresses (LINK_PRFAAS_IP on dc-prfaas, LINK_PD_IP on
# dc-pd). PrfaaS prefill workers resolve each decode worker's name to LINK_PRFAAS_IP (compose
# `extra_hosts`), so their KV streams (DecodeService.TransferKv) connect here:
#
#   prefill-prfaas --TCP--> LINK_PRFAAS_IP:PORT --DNAT--> decode:PORT (dc-pd), source rewritten to LINK_PD_IP
#
# DNAT sends each connection on to the decode worker; MASQUERADE makes the decode worker answer the
# shaper, so both directions of every flow (chunks one way, credits and acks the other) pass through
# this container and the kernel's conntrack undoes the rewrite on the way back.
#
# Shaping, on the egress of both interfaces, i.e. once per direction:
#   netem  delay LINK_DELAY (one-way; RTT = 2 x LINK_DELAY) and loss LINK_LOSS   (root qdisc 1:)
#   tbf    rate LINK_RATE                                                       (its child 10:)
# tbf is the link's capacity, netem its propagation delay and random loss (Linux netem docs, "rate
# control": netem root with a tbf child). netem's queue holds rate x delay of packets (`limit`).
# The veth offloads stay on (a software shaper cannot forward 10 Gbit/s of MTU-size packets), so netem
# sees GSO super-packets: LINK_LOSS drops whole super-packets, i.e. bursts of up to ~44 segments.
#
# Variables (compose passes them from `${LINK_RATE:-10gbit}` etc.):
#   LINK_RATE    tc rate, e.g. 10gbit, 800mbit            LINK_DELAY  one-way delay, e.g. 5ms
#   LINK_LOSS    random loss, e.g. 0%, 0.01%               LINK_FORWARD  "host:port ..." decode workers to forward
#   LINK_PRFAAS_IP / LINK_PD_IP  this container's fixed addresses (find the interfaces by them)
#   LINK_PRFAAS_IF / LINK_PD_IF  interface names instead of finding them; LINK_DRY_RUN=1 prints the commands
set -eu

LINK_RATE="${LINK_RATE:-10gbit}"
LINK_DELAY="${LINK_DELAY:-5ms}"
LINK_LOSS="${LINK_LOSS:-0%}"
LINK_FORWARD="${LINK_FORWARD:?LINK_FORWARD must list the decode workers to forward, e.g. decode:50061}"
READY_FILE="${LINK_READY_FILE:-/tmp/link-shaper.ready}"

run() {
    echo "+ $*"
    if [ "${LINK_DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

# The interface that holds address $1.
iface_of() {
    ip -o -4 addr show | awk -v ip="$1" '{ split($4, a, "/"); if (a[1] == ip) { sub(/@.*/, "", $2); print $2 } }'
}

# First IPv4 address of host name $1 (Docker's DNS on dc-pd), retried while the name is not up yet.
resolve() {
    for _ in $(seq 1 60); do
        addr="$(getent hosts "$1" | awk '$1 ~ /^[0-9.]+$/ { print $1; exit }')"
        if [ -n "$addr" ]; then echo "$addr"; return 0; fi
        sleep 1
    done
    echo "link-shaper: cannot resolve $1" >&2
    return 1
}

# tc rate (e.g. 10gbit, 800mbit, 1500kbit, 64kbps) in bits per second.
rate_bps() {
    echo "$1" | awk '{
        match($0, /^[0-9.]+/); n = substr($0, 1, RLENGTH) + 0; u = tolower(substr($0, RLENGTH + 1))
        if (u ~ /bps$/) { n *= 8; sub(/bps$/, "bit", u) }
        m = (u == "kbit") ? 1e3 : (u == "mbit") ? 1e6 : (u == "gbit") ? 1e9 : (u == "tbit") ? 1e12 : 1
        printf "%.0f\n", n * m }'
}

# Milliseconds in a tc time (5ms, 0.5ms, 1s, 200us).
delay_ms() {
    echo "$1" | awk '{ match($0, /^[0-9.]+/); n = substr($0, 1, RLENGTH) + 0; u = substr($0, RLENGTH + 1)
        f = (u == "s") ? 1000 : (u == "us") ? 0.001 : 1; printf "%.3f\n", n * f }'
}

shape() {  # $1: interface; egress shaping for the direction leaving through it
    bps="$(rate_bps "$LINK_RATE")"
    # netem must queue rate x delay (plus headroom) of MTU-size packets; tbf's bucket holds 4 ms at rate
    # (at least 64 KiB, a GSO super-packet), so bursts the kernel's timer granularity allows still pass.
    ms="$(delay_ms "$LINK_DELAY")"
    limit="$(awk -v b="$bps" -v ms="$ms" 'BEGIN { p = 2 * b / 8 * ms / 1000 / 1500; printf "%d\n", (p < 1000 ? 1000 : p) }')"
    burst="$(awk -v b="$bps" 'BEGIN { x = b / 8 * 0.004; printf "%d\n", (x < 65536 ? 65536 : x) }')"
    run tc qdisc replace dev "$1" root handle 1: netem delay "$LINK_DELAY" loss "$LINK_LOSS" limit "$limit"
    run tc qdisc replace dev "$1" parent 1:1 handle 10: tbf rate "$LINK_RATE" burst "$burst" latency 50ms
}

main() {
    prfaas_if="${LINK_PRFAAS_IF:-$(iface_of "${LINK_PRFAAS_IP:?}")}"
    pd_if="${LINK_PD_IF:-$(iface_of "${LINK_PD_IP:?}")}"
    [ -n "$prfaas_if" ] && [ -n "$pd_if" ] || { echo "link-shaper: no interface holds the fixed addresses" >&2; exit 1; }
    if [ "${LINK_DRY_RUN:-0}" != 1 ] && [ "$(cat /proc/sys/net/ipv4/ip_forward)" != 1 ]; then
        echo "link-shaper: IPv4 forwarding is off; run with sysctl net.ipv4.ip_forward=1" >&2; exit 1
    fi
    echo "link-shaper: dc-prfaas on $prfaas_if, dc-pd on $pd_if; rate $LINK_RATE, delay $LINK_DELAY, loss $LINK_LOSS"
    for target in $LINK_FORWARD; do
        host="${target%:*}"; port="${target##*:}"
        addr="$(resolve "$host")"
        run iptables -t nat -A PREROUTING -i "$prfaas_if" -p tcp --dport "$port" -j DNAT --to-destination "$addr:$port"
        run iptables -t nat -A POSTROUTING -o "$pd_if" -d "$addr" -p tcp --dport "$port" -j MASQUERADE
    done
    shape "$pd_if"      # PrfaaS -> PD: KV chunks
    shape "$prfaas_if"  # PD -> PrfaaS: credits and acks
    touch "$READY_FILE"
    echo "link-shaper: ready"
    [ "${LINK_DRY_RUN:-0}" = 1 ] && exit 0
    trap 'exit 0' TERM INT
    while :; do sleep 3600 & wait $!; done
}

main
