#!/usr/bin/env python
"""Where the server spends a StreamReWrap's time: py-spy on the bench server while streams run.

    .venv/bin/python scripts/bench/profile_rewrap.py [--keys 20000] [--streams 1] [--duration 20]
        [--python-only]

Starts the bench server, issues ``--keys`` wrapped keys under version 1 of a key and rotates it,
then keeps ``--streams`` StreamReWrap streams busy re-wrapping them (over and over: an item
already current is opened and returned unchanged, which costs the server one unwrap instead of
unwrap+wrap, so the first pass is the one that matters; ``--keys`` should cover the sampled
time) while ``py-spy record`` samples the server. Prints and writes what profile_service.py
does for a unary method (same classification, same tables), plus the items per second and the
server CPU microseconds per item while sampled.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from _harness import RESULTS_DIR, BenchServer, _cpu_seconds, write_json
from profile_service import (
    PY_SPY,
    RUNNING,
    classify,
    gil_waits,
    percentages,
    read_stacks,
    report,
    self_and_total,
    state_of,
)

from kms_client import KmsClient, RetryPolicy

KEY_ID = "profile"
CONTEXT = {"tenant": "acme"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"profile-streamrewrap-s{args.streams}"
    RESULTS_DIR.mkdir(exist_ok=True)
    stacks_path = RESULTS_DIR / f"{name}.collapsed.partial"
    env = {"KMS_MAX_STREAMS_PER_IDENTITY": str(max(2, args.streams))}
    with BenchServer(env=env) as server, KmsClient(server.target, retry=RetryPolicy(max_attempts=3)) as client:
        client.create_key(KEY_ID)
        wrapped: list[bytes] = []
        while len(wrapped) < args.keys:
            batch = min(1000, args.keys - len(wrapped))
            wrapped += [d.wrapped_key for d in client.generate_data_keys([(KEY_ID, CONTEXT)] * batch)]
        client.rotate_key(KEY_ID)
        stop = threading.Event()
        done = [0] * args.streams

        def run(index: int) -> None:
            share = wrapped[index :: args.streams]
            while not stop.is_set():
                for _ in client.stream_rewrap((w, CONTEXT) for w in share):
                    done[index] += 1

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(args.streams)]
        for thread in threads:
            thread.start()
        time.sleep(args.warmup)
        items_before, cpu_before, started = sum(done), _cpu_seconds(server.pid, True), time.perf_counter()
        record(server.pid, stacks_path, args)
        items, cpu = sum(done) - items_before, (_cpu_seconds(server.pid, True) or 0) - (cpu_before or 0)
        elapsed = time.perf_counter() - started
        stop.set()
        for thread in threads:
            thread.join()
    stacks = read_stacks(stacks_path)
    states = Counter() if args.python_only else classify(stacks)
    running = stacks if args.python_only else Counter({s: n for s, n in stacks.items() if state_of(s) == RUNNING})
    own, anywhere = self_and_total(running, python_only=not args.python_only)
    summary = {
        "method": f"StreamReWrap x{args.streams}",
        "concurrency": args.streams,
        "calls_per_second_while_sampled": round(items / elapsed, 1),
        "server_cpu_us_per_item": round(1e6 * cpu / max(items, 1), 1),
        "samples": sum(stacks.values()),
        "py_spy": {"rate": args.rate, "native": not args.python_only},
        "states": percentages(states, sum(states.values()), len(states)),
        "running_self": percentages(own, sum(running.values()), args.top),
        "running_total": percentages(anywhere, sum(running.values()), args.top),
        "gil_waits": percentages(gil_waits(stacks), sum(states.values()), args.top),
    }
    report(summary, args.top)
    print(f"\nserver CPU per item while sampled: {summary['server_cpu_us_per_item']:.0f} us (items/s above)")
    path = write_json(name, summary)
    stacks_path = stacks_path.rename(path.with_suffix(".collapsed"))
    print(f"wrote {path.relative_to(path.parents[1])} and {stacks_path.name}")
    return 0


def record(pid: int, output: Path, args: argparse.Namespace) -> None:
    command = [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    command += ["--duration", str(args.duration), "--rate", str(args.rate)]
    command += ["--nonblocking"] if args.python_only else ["--native"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--duration", type=int, default=20, help="seconds sampled (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=20, help="samples per second (default 20)")
    parser.add_argument("--python-only", action="store_true", help="no native frames, server not paused")
    parser.add_argument("--top", type=int, default=30)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
