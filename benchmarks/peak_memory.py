"""Peak memory of a command's whole process tree (the command and every process it starts, such as data
loader workers), sampled from /proc every 0.2 s (Linux only).

Prints the wall time, the peak of the summed resident set sizes (RSS: pages shared between the processes,
such as the torch libraries, counted once per process) and the peak of the summed proportional set sizes
(PSS: shared pages divided among the processes that share them, the honest total) with each process's
share at that peak, then the command's exit code. Usage::

    python benchmarks/peak_memory.py -- convzoo train --data /tmp/stream20k --pipeline stream ...
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids += tree(int(child))
    return pids


def field_kib(path: str, name: str) -> int:
    with open(path) as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name))


def memory(pid: int) -> tuple[int, int, list[int]]:
    """Summed RSS and PSS of ``pid``'s tree, in bytes, and the PSS of each process (the tree's order)."""
    rss, each = 0, []
    for p in tree(pid):
        try:
            rss += field_kib(f"/proc/{p}/status", "VmRSS:") * 1024
            each.append(field_kib(f"/proc/{p}/smaps_rollup", "Pss:") * 1024)
        except (OSError, StopIteration):
            continue
    return rss, sum(each), each


def main(argv: list[str]) -> int:
    command = argv[1:] if argv[:1] == ["--"] else argv
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    peak: list = [0, 0, []]

    def sample() -> None:
        while proc.poll() is None:
            rss, pss, each = memory(proc.pid)
            peak[0] = max(peak[0], rss)
            if pss > peak[1]:
                peak[1], peak[2] = pss, each
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    sampler.join()
    gib = 1 << 30
    each = " + ".join(f"{p / gib:.2f}" for p in peak[2])
    print(f"peak_memory: wall {time.perf_counter() - started:.1f} s, peak RSS sum {peak[0] / gib:.2f} GiB, "
          f"peak PSS {peak[1] / gib:.2f} GiB ({each}: the command, then the processes it started), exit {code}",
          file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
