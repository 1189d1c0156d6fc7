#!/usr/bin/env python3
"""Per-event CPU budget of the relay from a `perf record --call-graph dwarf` profile.

    perf script -i perf.data -F comm,tid,period,ip,sym --no-inline | scripts/perf-stages.py EVENTS

Every sample is charged to one pipeline stage (the outermost relay frame on its stack, or the
thread it ran on: the sequencer, SQLite's worker threads, RocksDB's) and, inside the stage, to
the innermost frame that names a kind of work (signature check, MST, CBOR, SQL, allocation,
the kernel...). With the number of events the profiled run processed, each row becomes µs of
CPU per event; that is the budget table of docs/benchmarks.md. Stdlib only.
"""
import collections
import re
import sys

# Stage of a sample: the outermost frame matching one of these (root side wins), in order.
STAGES = [
    ("ingest (WebSocket read, frame decode)", r"relay::ingest::|relay_atproto::frame::decode"),
    ("validate", r"relay::validate::"),
    ("sequence (log write, fsync)", r"relay::sequence::"),
    ("state writer (repo state to SQL)", r"relay::wiring::write_state"),
    ("fan-out", r"relay::fanout::"),
    ("collections index", r"relay::collections::"),
    # The firehose handler lives in relay::server and calls into the fan-out: its samples are
    # the per-consumer work (framing, socket writes), with XRPC and admin requests beside it.
    ("HTTP handlers (firehose consumers, XRPC, admin)", r"relay::(xrpc|admin|server|summary|http)::|axum::"),
]
# Threads that are a stage of their own when no relay frame is on the stack.
THREADS = [
    ("SQLite worker threads", r"sqlx-sqlite"),
    ("RocksDB background threads", r"^rocksdb|^:"),
    ("sequence (log write, fsync)", r"^sequencer"),
]
# Kind of work: the innermost frame (leaf side wins) matching one of these.
KINDS = [
    ("kernel: timer ticks and IPIs (the machine's noise)", r"^KERNEL:asm_sysvec"),
    ("kernel (syscalls, scheduling, page faults)", r"^KERNEL"),
    ("signature check", r"ring::|k256::|ecdsa::|p256::|elliptic_curve::|crypto::PublicKey::verify|nistz256|_mont|bn_"),
    ("sha256", r"sha2::|sha256"),
    ("MST", r"relay_atproto::mst"),
    ("CAR", r"relay_atproto::car"),
    ("CBOR", r"relay_atproto::cbor|ciborium|serde_ipld"),
    ("SQL (sqlx, SQLite)", r"sqlx|sqlite3|libsqlite"),
    ("RocksDB", r"rocksdb"),
    ("WebSocket / TLS / HTTP", r"tungstenite|hyper|rustls|axum"),
    ("identity / accounts", r"relay::identity|relay::accounts|relay::cache"),
    ("memcpy / memset", r"mem(cpy|move|set)|__memmove|__memset"),
    ("allocation", r"^_?mi_|mimalloc|__rust_(alloc|dealloc|realloc)|malloc|^free$|^cfree"),
    ("tokio runtime / sync", r"tokio::|parking_lot|futex|flume|crossbeam"),
]


def frames_of(block):
    lines = block.strip().split("\n")
    head = lines[0].split()
    comm = head[0] if head else "?"
    period = int(head[-1]) if head and head[-1].isdigit() else 1
    frames = []
    for line in lines[1:]:
        parts = line.strip().split(" ", 1)
        ip, symbol = parts[0], parts[1] if len(parts) > 1 else ""
        frames.append(f"KERNEL:{symbol}" if ip.startswith("ffffffff") else symbol)
    # A kernel stack is named by how it was entered (its outermost kernel frame): an
    # interrupt that landed in user code is not work the relay asked for.
    kernel = [f for f in frames if f.startswith("KERNEL:")]
    if kernel:
        entry = kernel[-1]
        frames = [entry if f.startswith("KERNEL:") else f for f in frames]
    return comm, period, frames


def up_to_own_code(frames):
    """The leaf's frames up to the first of the relay's own: what the relay's code called."""
    for depth, frame in enumerate(frames):
        if frame.startswith("relay") or "relay::" in frame or "relay_atproto::" in frame:
            return frames[: depth + 1]
    return frames


def classify(patterns, candidates):
    for frame in candidates:
        for name, pattern in patterns:
            if re.search(pattern, frame):
                return name
    return None


def main():
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    table = collections.defaultdict(collections.Counter)
    total = 0
    for block in sys.stdin.read().split("\n\n"):
        if not block.strip():
            continue
        comm, period, frames = frames_of(block)
        stage = classify(STAGES, list(reversed(frames))) or classify(THREADS, [comm]) or "runtime, idle spinning, other"
        kind = classify(KINDS, up_to_own_code(frames)) or "other (the stage's own code)"
        table[stage][kind] += period
        total += period
    seconds = total / 1e9
    per_event = (lambda ns: ns / 1e3 / events) if events else (lambda ns: 0.0)
    print(f"profiled CPU: {seconds:.2f} s" + (f" over {events} events = {per_event(total):.1f} µs/event" if events else ""))
    print()
    print("| stage | kind of work | share | µs/event |")
    print("|---|---|---:|---:|")
    for stage, kinds in sorted(table.items(), key=lambda kv: -sum(kv[1].values())):
        stage_total = sum(kinds.values())
        print(f"| **{stage}** | all | **{stage_total * 100 / total:.1f} %** | **{per_event(stage_total):.1f}** |")
        for kind, ns in kinds.most_common():
            if ns * 100 / total >= 0.3:
                print(f"| | {kind} | {ns * 100 / total:.1f} % | {per_event(ns):.1f} |")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        pass
