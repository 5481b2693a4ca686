#!/usr/bin/env python
"""Where the server spends its time under load: py-spy on the bench server's process.

    .venv/bin/python scripts/bench/profile_service.py [--method GenerateDataKey] [--concurrency 16]
        [--duration 15] [--python-only]

Starts the bench server, loads it closed-loop with one method as bench_service.py does, and
samples every thread of the server with ``py-spy record --native`` meanwhile. Writes the
collapsed stacks (for any flame graph tool, e.g. speedscope.app) and a JSON summary to
bench-results/ under one name, and prints:

- what the sampled threads were doing: running, waiting for the GIL (or a C mutex), or idle
  (blocked on a Python lock or queue, or in poll). py-spy drops most idle threads itself but
  not all, so the native frame at the top of each stack decides;
- the functions with the most *running* samples, "self" where the sample was taken and "total"
  anywhere on the stack, as a percentage of running samples;
- where threads wait for the GIL (the Python function that asked for it back).

``--python-only`` samples without pausing the server (less overhead, no native frames, no
classification: every sample counts).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from _harness import RESULTS_DIR, BenchServer, LoadGenerator, print_table, write_json
from bench_service import prepare

PY_SPY = Path(sys.executable).with_name("py-spy")
_LINE_NUMBER = re.compile(r":\d+\)$")
_ANONYMOUS_NATIVE = re.compile(r"0x[0-9a-f]+ \(")

RUNNING = "running"
GIL_WAIT = "waiting for the GIL (or a C mutex)"
LOCK_WAIT = "idle: blocked on a Python lock or queue"
POLL_WAIT = "idle: in poll"
# The first named native frame from the top of a stack tells what the thread is doing. CPython
# 3.11 waits for the GIL in pthread_cond_timedwait straight under the function that wants it
# back; Python locks and queues wait in PyThread_acquire_lock_timed (semaphores on glibc).
_STATE_OF_FRAME = {
    "PyThread_acquire_lock_timed": LOCK_WAIT,
    "epoll_wait": POLL_WAIT,
    "epoll_pwait": POLL_WAIT,
    "poll": POLL_WAIT,
    "pthread_cond_timedwait": GIL_WAIT,
    "pthread_cond_wait": GIL_WAIT,
    "pthread_mutex_lock": GIL_WAIT,
}

Stacks = Counter[tuple[str, ...]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"profile-{args.method.lower()}-c{args.concurrency}"
    RESULTS_DIR.mkdir(exist_ok=True)
    stacks_path = RESULTS_DIR / f"{name}.collapsed.partial"
    with BenchServer() as server:
        rpcs = prepare(server.target)
        rpc = rpcs[args.method]
        with LoadGenerator(server.target, processes=args.client_processes) as load:
            load.run(args.method, rpc, args.concurrency, duration=args.warmup, warmup=0)
            measured = []
            loader = threading.Thread(
                target=lambda: measured.append(load.run(args.method, rpc, args.concurrency, args.duration + 1, 0.5))
            )
            loader.start()
            try:
                time.sleep(1.0)
                record(server.pid, stacks_path, args)
            finally:
                loader.join()
    stacks = read_stacks(stacks_path)
    states = Counter() if args.python_only else classify(stacks)
    running = stacks if args.python_only else Counter({s: n for s, n in stacks.items() if state_of(s) == RUNNING})
    own, anywhere = self_and_total(running, python_only=not args.python_only)
    waits = gil_waits(stacks)
    summary = {
        "method": args.method,
        "concurrency": args.concurrency,
        "calls_per_second_while_sampled": round(measured[0].rate, 1),
        "samples": sum(stacks.values()),
        "py_spy": {"rate": args.rate, "native": not args.python_only},
        "states": percentages(states, sum(states.values()), len(states)),
        "running_self": percentages(own, sum(running.values()), args.top),
        "running_total": percentages(anywhere, sum(running.values()), args.top),
        "gil_waits": percentages(waits, sum(states.values()), args.top),
    }
    report(summary, args.top)
    path = write_json(name, summary)
    stacks_path = stacks_path.rename(path.with_suffix(".collapsed"))
    print(f"wrote {path.relative_to(path.parents[1])} and {stacks_path.name}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="GenerateDataKey", choices=["Empty", "GenerateDataKey", "Decrypt"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=40, help="seconds sampled (default 40)")
    parser.add_argument("--warmup", type=float, default=2.0)
    # Each native sample pauses the server: at 100 per second it served 1/3 of its calls.
    parser.add_argument("--rate", type=int, default=20, help="samples per second (default 20)")
    parser.add_argument("--python-only", action="store_true", help="no native frames, server not paused")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--client-processes", type=int, default=2)
    return parser.parse_args(argv)


def record(pid: int, output: Path, args: argparse.Namespace) -> None:
    command = [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    command += ["--duration", str(args.duration), "--rate", str(args.rate)]
    command += ["--nonblocking"] if args.python_only else ["--native"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def read_stacks(path: Path) -> Stacks:
    """py-spy's raw output: ``frame;frame;... count`` per line, outermost frame first. Frames
    lose their line numbers here, so a function counts once however many lines it spans."""
    stacks: Stacks = Counter()
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames:
            stacks[tuple(_LINE_NUMBER.sub(")", frame) for frame in frames.split(";"))] += int(count)
    return stacks


def _named(frames: tuple[str, ...]) -> list[str]:
    """The frames from the top of the stack down, without anonymous native addresses."""
    return [frame for frame in reversed(frames) if not _ANONYMOUS_NATIVE.match(frame)]


def state_of(frames: tuple[str, ...]) -> str:
    named = _named(frames)
    return _STATE_OF_FRAME.get(named[0].split(" (")[0], RUNNING) if named else RUNNING


def classify(stacks: Stacks) -> Counter[str]:
    states: Counter[str] = Counter()
    for frames, count in stacks.items():
        states[state_of(frames)] += count
    return states


def gil_waits(stacks: Stacks) -> Counter[str]:
    """GIL waits by the nearest Python (or Cython) function below the wait."""
    waits: Counter[str] = Counter()
    for frames, count in stacks.items():
        if state_of(frames) == GIL_WAIT:
            caller = next((f for f in _named(frames)[1:] if not f.endswith(".so)") and ".so." not in f), "?")
            waits[caller] += count
    return waits


def self_and_total(stacks: Stacks, *, python_only: bool) -> tuple[Counter[str], Counter[str]]:
    """Samples per function where taken ("self") and anywhere on the stack ("total"). With
    ``python_only``, a sample taken in native code counts for the nearest Python frame."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    for frames, count in stacks.items():
        kept = [f for f in frames if f.endswith(".py)")] if python_only else list(frames)
        if not kept:
            continue
        own[kept[-1]] += count
        for frame in set(kept):
            anywhere[frame] += count
    return own, anywhere


def percentages(counts: Counter[str], total: int, top: int) -> list[dict[str, object]]:
    return [{"frame": frame, "percent": round(100 * count / total, 1)} for frame, count in counts.most_common(top)]


def report(summary: dict, top: int) -> None:
    print(
        f"\n{summary['method']} at concurrency {summary['concurrency']} while sampled: "
        f"{summary['calls_per_second_while_sampled']:.0f} calls/s; {summary['samples']} samples"
    )
    kind = "running" if summary["states"] else "all (python-only: idle included)"
    for key, title in (
        ("states", "thread states, % of the samples py-spy kept"),
        ("running_self", f"top {top} Python functions by {kind} samples taken in them (self)"),
        ("running_total", f"top {top} Python functions by {kind} samples anywhere below them (total)"),
        ("gil_waits", "GIL waits by the function that wants the GIL back, % of the samples kept"),
    ):
        if summary[key]:
            print_table(title, ["", "%"], [[row["frame"], f"{row['percent']:.1f}"] for row in summary[key]])


if __name__ == "__main__":
    sys.exit(main())
