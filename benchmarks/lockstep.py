"""Two builds of prefixkv replay ``bench serve``'s workload in lockstep: a step of one, then a
step of the other, so that both see the same host. On this project's shared 2-core machine a
busy neighbour moves a served run by 10-20%, as much as most changes; alternating single
steps cancels that out.

Each side is a child process running the batch runner in-process (no HTTP) on its own
source tree and linear kernel: ``--a-src /tmp/old/src --b-src src`` compares two commits
(``git worktree add /tmp/old <commit>``), ``--a-kernel onednn --b-kernel native`` two
kernels of one tree. Clients follow ``bench serve``'s closed loop: each asks its next
question when its last one finishes. Per seed it prints each side's summed step time,
its decode-only steps' p50 and how many replies the two sides agree on.

``--runner serial`` replays the serial runner instead: one whole request (``Engine.generate``,
greedy) of one side, then the same request of the other, in the order the clients' closed
loop first sends them (every client's first question, then every second one).
Per seed it prints each side's summed request time, TTFT p50 and decode ms per token p50.

    python benchmarks/lockstep.py --a-src /tmp/old/src --b-src src --clients 16
    python benchmarks/lockstep.py --a-src /tmp/old/src --b-src src --runner serial
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any


def child(kernel: str, clients: int, per_client: int, sentences: int, max_tokens: int) -> None:
    """Serve the parent's commands on stdin: ``seed N`` (a fresh workload), ``step`` (one
    runner step; replies with its seconds, whether it only decoded, and whether all is
    done), ``replies`` (the token ids of every request, in order)."""
    answers, sys.stdout = sys.stdout, sys.stderr  # stdout carries answers only
    from prefixkv.bench.workloads import document_qa_workload
    from prefixkv.engine.batch.records import BatchLimits
    from prefixkv.engine.batch.runner import BatchRunner
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.request import Completion, SamplingParams

    engine = Engine.from_pretrained("smollm2", cache_bytes=2 << 30, linear_kernel=kernel)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    runner: Any = None
    work: list[Any] = []
    replies: dict[int, list[int]] = {}

    def submit(work: list[Any], index: int) -> None:
        class Sink:
            cancelled = False

            def deliver(self, item: object) -> None:
                if isinstance(item, Completion):
                    replies[index] = list(item.token_ids)

            def finish(self, outcome: object, error: BaseException | None = None) -> None:
                if error is not None:
                    raise error
                if index + clients < len(work):  # the client's next question
                    submit(work, index + clients)

        runner.submit(engine.request(work[index].chat(), params), Sink())

    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "seed":
            work = document_qa_workload(clients, per_client, sentences=sentences, seed=int(arg))
            runner, replies = BatchRunner(engine, BatchLimits()), {}
            for index in range(min(clients, len(work))):
                submit(work, index)
            answer: object = "ready"
        elif command == "step":
            start = time.perf_counter()
            report = runner.step()
            seconds = time.perf_counter() - start
            decode = report is not None and report.tokens == report.sequences
            done = not (runner.num_running or runner.num_waiting)
            answer = {"seconds": seconds, "decode": decode, "done": done}
        else:
            answer = [replies.get(i) for i in range(len(work))]
        print(json.dumps(answer), file=answers, flush=True)


def serial_child(kernel: str, clients: int, per_client: int, sentences: int, tokens: int) -> None:
    """As :func:`child`, for the serial runner: ``step`` runs the next request whole and
    replies with its seconds, TTFT, decode seconds per token and whether all is done."""
    answers, sys.stdout = sys.stdout, sys.stderr
    from prefixkv.bench.workloads import document_qa_workload
    from prefixkv.engine.engine import Engine

    engine = Engine.from_pretrained("smollm2", cache_bytes=2 << 30, linear_kernel=kernel)
    work: list[Any] = []
    replies: list[list[int]] = []
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "seed":
            work = document_qa_workload(clients, per_client, sentences=sentences, seed=int(arg))
            replies = []
            answer: object = "ready"
        elif command == "step":
            start = time.perf_counter()
            done = engine.generate(work[len(replies)].chat(), max_tokens=tokens, temperature=0)
            seconds = time.perf_counter() - start
            replies.append(list(done.token_ids))
            per_token = (done.total_time - done.ttft) / max(1, len(done.token_ids) - 1)
            answer = {
                "seconds": seconds,
                "ttft": done.ttft,
                "per_token": per_token,
                "done": len(replies) == len(work),
            }
        else:
            answer = replies
        print(json.dumps(answer), file=answers, flush=True)


def serial_replay(sides: list[Side], seed: int) -> None:
    """One seed's requests on both sides, a request of each in turn; prints one line."""
    steps: dict[Side, list[dict[str, Any]]] = {side: [] for side in sides}
    for side in sides:
        side.ask(f"seed {seed}")
    finished = False
    while not finished:
        for side in sides:
            step = side.ask("step")
            steps[side].append(step)
            finished = step["done"]
    a, b = (side.ask("replies") for side in sides)
    same = sum(x == y for x, y in zip(a, b, strict=True))

    def figures(side: Side) -> str:
        got = steps[side]
        ttft = statistics.median(s["ttft"] for s in got) * 1e3
        per_token = statistics.median(s["per_token"] for s in got) * 1e3
        total = sum(s["seconds"] for s in got)
        return f"{side.name.split()[0]} {total:.2f} s (TTFT p50 {ttft:.1f} ms, {per_token:.1f} ms/token)"

    total = [sum(s["seconds"] for s in steps[side]) for side in sides]
    print(
        f"seed {seed}: " + "  ".join(map(figures, sides)) + f"  b/a {total[1] / total[0] - 1:+.1%}"
        f"  same replies {same}/{len(a)}",
        flush=True,
    )


class Side:
    """A child process on one source tree and kernel."""

    def __init__(self, name: str, src: str, kernel: str, args: argparse.Namespace) -> None:
        self.name = f"{name} ({src}, {kernel})"
        env = dict(os.environ, PYTHONPATH=src)
        sizes = (args.clients, args.requests_per_client, args.sentences, args.max_tokens)
        self.process = subprocess.Popen(
            [sys.executable, __file__, f"--{args.runner}-child", kernel, *map(str, sizes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def ask(self, command: str) -> Any:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited (code {self.process.wait()})")
        return json.loads(line)


def replay(sides: list[Side], seed: int) -> None:
    """One seed's workload on both sides, a step of each in turn; prints one line."""
    spent = {side: 0.0 for side in sides}
    decode: dict[Side, list[float]] = {side: [] for side in sides}
    live = list(sides)
    for side in sides:
        side.ask(f"seed {seed}")
    while live:
        for side in list(live):
            step = side.ask("step")
            spent[side] += step["seconds"]
            if step["decode"]:
                decode[side].append(step["seconds"])
            if step["done"]:
                live.remove(side)
    a, b = (side.ask("replies") for side in sides)
    same = sum(x == y for x, y in zip(a, b, strict=True))
    parts = [
        f"{side.name.split()[0]} {spent[side]:.2f} s (decode steps p50 "
        f"{statistics.median(decode[side]) * 1e3:.1f} ms)"
        for side in sides
    ]
    change = spent[sides[1]] / spent[sides[0]] - 1
    print(
        f"seed {seed}: " + "  ".join(parts) + f"  b/a {change:+.1%}  same replies {same}/{len(a)}"
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--batch-child"]:
        child(argv[1], *map(int, argv[2:6]))
        return 0
    if argv[:1] == ["--serial-child"]:
        serial_child(argv[1], *map(int, argv[2:6]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a-src", default="src", help="side a's source tree (src)")
    parser.add_argument("--b-src", default="src", help="side b's source tree (src)")
    parser.add_argument("--a-kernel", default="auto", help="side a's --linear-kernel (auto)")
    parser.add_argument("--b-kernel", default="auto", help="side b's --linear-kernel (auto)")
    parser.add_argument("--runner", choices=("batch", "serial"), default="batch")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=36, help="per document (36)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seeds", default="0,1,2", help="workloads to replay (0,1,2)")
    args = parser.parse_args(argv)
    srcs = [os.path.abspath(args.a_src), os.path.abspath(args.b_src)]
    sides = [
        Side("a", srcs[0], args.a_kernel, args),
        Side("b", srcs[1], args.b_kernel, args),
    ]
    print(
        f"# a: {sides[0].name}\n# b: {sides[1].name}\n# {args.runner} runner, clients {args.clients}",
        flush=True,
    )
    run = replay if args.runner == "batch" else serial_replay
    try:
        print("# warm-up (first steps, kernels built):", flush=True)
        run(sides, 1000)
        for seed in args.seeds.split(","):
            run(sides, int(seed))
    finally:
        for side in sides:
            side.process.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
