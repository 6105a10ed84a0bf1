#!/usr/bin/env python3
"""Where the gateway's heap goes per subscriber, from two heaptrack runs.

Each run is `heaptrack_print -f FILE --flamegraph-cost-type peak -F STACKS` output: one line per
call stack (outermost frame first, `;`-separated) with the bytes it held at the process's
highest total heap. Given the stacks of a run with fewer subscribers and of one with more, every
stack is put in the first part whose pattern one of its frames matches (innermost frame first),
and the difference between the runs, divided by the difference in subscribers, is each part's
heap per subscriber; fixed costs (the simulator, the inventory, the runtime) cancel out.

    heap_by_part.py SMALL_STACKS SMALL_N LARGE_STACKS LARGE_N
"""

import collections
import sys

# (part, substrings of a frame), tried from the innermost frame outwards; first match wins.
# heaptrack's stacks name frames by function and file (`channel<> (bounded.rs)`), with module
# paths only inside generic arguments, so the patterns are mostly function/file names.
PARTS = [
    ("hyper: read buffer", ["poll_read_from_io", "read_buf_mut"]),
    ("hyper: write buffer and connection", ["serve_connection<> (http1.rs)", "(dispatch.rs)", "(conn.rs)"]),
    ("hyper: connection future (boxed)", ["{async_block#0}<> (serve.rs)"]),
    ("tracing: request span", ["tracing_subscriber", "sharded_slab", "(sharded.rs)", "(registry"]),
    ("subscriber queue (tokio mpsc)", ["(bounded.rs)", "(block.rs)", "find_block"]),
    ("task: the connection future (tokio)", ["bind_new_task"]),
    ("socket registration (tokio I/O driver)", ["(registration_set.rs)"]),
    ("response body (boxed stream, layers)", ["(box_body.rs)", "from_stream"]),
    ("pump: subscriber list and subscription", ["(pump.rs)", "(stream.rs)"]),
]


def load(path):
    parts = collections.Counter()
    unmatched = collections.Counter()
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, cost = line.rpartition(" ")
        try:
            cost = int(cost)
        except ValueError:
            continue
        frames = stack.split(";")
        part = None
        for frame in reversed(frames):
            for name, patterns in PARTS:
                if any(p in frame for p in patterns):
                    part = name
                    break
            if part:
                break
        if part is None:
            part = "other"
            inner = [f for f in reversed(frames) if "alloc::" not in f and "malloc" not in f][:2]
            unmatched[" <- ".join(inner)[:160]] += cost
        parts[part] += cost
    return parts, unmatched


def main():
    small, small_n, large, large_n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    a, a_other = load(small)
    b, b_other = load(large)
    n = large_n - small_n
    print(f"heap at the peak, per subscriber ({small_n} -> {large_n} subscribers)")
    total = 0.0
    for name in [p for p, _ in PARTS] + ["other"]:
        per = (b[name] - a[name]) / n
        total += per
        print(f"  {name:45s} {per:8.0f} B")
    print(f"  {'total':45s} {total:8.0f} B ({total / 1024:.1f} KiB)")
    print("largest 'other' stacks (per subscriber):")
    diff = {k: (b_other[k] - a_other.get(k, 0)) / n for k in b_other}
    for key, per in sorted(diff.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {per:8.0f} B  {key}")


if __name__ == "__main__":
    main()
