#!/usr/bin/env python3
"""Where the CPU goes while the agent bench runs: by process role and by kind
of work, from `perf script` output. See docs/benchmarks.md ("Where the time
goes") for how it is used:

    perf record -a -g -F 799 -o perf.data -- sleep 6      # during a bench phase
    perf script -i perf.data -F pid,tid,ip,sym > perf.txt
    python3 perf_breakdown.py perf.txt WRITER_PID RECEIVER_PID,... [CLIENT_PID]

Each sample is put in the first category whose marker appears in its stack
(innermost frames first), so the order of CATEGORIES matters.
"""

import collections
import sys

# (category, markers): a sample whose stack holds any marker belongs to it.
CATEGORIES = [
    ("SQLite: commit (WAL write)", ["walWriteOneFrame", "walChecksumBytes", "walIndexAppend"]),
    ("SQLite: fsync", ["fsync", "fdatasync"]),
    ("SQLite: checkpoint", ["sqlite3WalCheckpoint"]),
    ("SQLite: locks, cache refill", ["sqlite3PagerSharedLock", "btreeBeginTrans", "readDbPage", "fcntl"]),
    ("SQLite: statements", ["sqlite3_step", "sqlite3_prepare", "sqlite3VdbeExec", "sqlite3_reset"]),
    ("HTTP", ["hyper", "axum", "ureq", "tcp_sendmsg", "tcp_recvmsg", "tcp_v4", "writev"]),
    ("QUIC and crypto", ["quinn", "rustls", "ring_core", "ring::", "aes_gcm", "udp_sendmsg", "udp_recvmsg", "recvmmsg"]),
    ("encoding (MessagePack, JSON)", ["rmp", "serde_json", "serde::"]),
    ("protocol cores", ["litemesh_sync", "litemesh_core", "litemesh_membership"]),
    ("threads: wakeups, scheduling", ["futex", "epoll_wait", "finish_task_switch", "schedule", "park", "Condvar"]),
    ("memory allocation", ["malloc", "free", "realloc"]),
]


def main() -> None:
    path, writer, receivers = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
    client = sys.argv[4] if len(sys.argv) > 4 else None
    role_of = {writer: "writer"}
    role_of.update({r: "receivers" for r in receivers})
    if client:
        role_of[client] = "client"
    per_role = collections.Counter()
    per_cat = collections.defaultdict(collections.Counter)
    total = 0
    for block in open(path, encoding="utf-8", errors="replace").read().split("\n\n"):
        lines = block.strip().split("\n")
        if not lines or not lines[0].strip():
            continue
        total += 1
        pid = lines[0].split()[0].split("/")[0]
        role = role_of.get(pid, "idle" if pid == "0" else "other")
        per_role[role] += 1
        stack = "\n".join(lines[1:])
        for name, markers in CATEGORIES:
            if any(m in stack for m in markers):
                per_cat[role][name] += 1
                break
        else:
            per_cat[role]["other"] += 1
    print(f"{total} samples")
    for role, n in per_role.most_common():
        print(f"\n{role}: {n} samples, {100 * n / total:.1f}% of all")
        for name, k in per_cat[role].most_common():
            print(f"  {100 * k / n:5.1f}%  {name}")


if __name__ == "__main__":
    main()
