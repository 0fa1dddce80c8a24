#!/usr/bin/env bash
# A 3-member etcd cluster on loopback, for `tessera-bench --target etcd://...`.
#
#   bench/scripts/etcd-cluster.sh start [DIR]   # installs etcd-server if missing
#   bench/scripts/etcd-cluster.sh stop [DIR]
#
# Members listen for clients on 127.0.0.1:2379, :22379, :32379 (peers on 2380, 22380,
# 32380), with fsync on (etcd's default), data and logs in DIR (default
# /tmp/tessera-etcd). Then:
#   cargo run --release -p tessera-bench --features etcd -- \
#       --target etcd://127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
set -euo pipefail

cmd=${1:-}
dir=${2:-/tmp/tessera-etcd}
names=(m1 m2 m3)
client_ports=(2379 22379 32379)
peer_ports=(2380 22380 32380)

case "$cmd" in
start)
    # etcdctl (Debian's etcd-client) is what the health check below uses.
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null
    fi
    # Debian's package may start a default single-member etcd on 2379: stop it.
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
        systemctl stop etcd
    fi
    mkdir -p "$dir"
    cluster=""
    for i in 0 1 2; do
        cluster+="${cluster:+,}${names[$i]}=http://127.0.0.1:${peer_ports[$i]}"
    done
    for i in 0 1 2; do
        name=${names[$i]}
        if [ -f "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
            echo "$name already running (pid $(cat "$dir/$name.pid"))"
            continue
        fi
        nohup etcd --name "$name" --data-dir "$dir/$name.data" \
            --listen-client-urls "http://127.0.0.1:${client_ports[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${client_ports[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token tessera-bench \
            >"$dir/$name.log" 2>&1 &
        echo $! >"$dir/$name.pid"
    done
    endpoints="127.0.0.1:${client_ports[0]},127.0.0.1:${client_ports[1]},127.0.0.1:${client_ports[2]}"
    for _ in $(seq 1 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then
            echo "etcd cluster up: --target etcd://$endpoints (data and logs in $dir)"
            exit 0
        fi
        sleep 0.1
    done
    echo "etcd cluster did not become healthy; see $dir/*.log" >&2
    exit 1
    ;;
stop)
    pids=()
    for name in "${names[@]}"; do
        if [ -f "$dir/$name.pid" ]; then
            pids+=("$(cat "$dir/$name.pid")")
            rm -f "$dir/$name.pid"
        fi
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # Wait up to 5 s for the members to exit, then force them.
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
                alive=1
            fi
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
    echo "etcd cluster stopped"
    ;;
*)
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
    ;;
esac
