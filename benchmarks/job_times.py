"""Job count, job-seconds and wall time per rule from a Snakemake log (the main job's cost, before and after).

    python benchmarks/job_times.py .snakemake/log/<timestamp>.snakemake.log [more logs...]

A job's seconds run from the timestamp of its ``rule``/``localrule`` block to that of its ``Finished jobid``
line; wall time from the first to the last timestamp. Jobs run in parallel, so job-seconds exceed wall time
by up to the number of cores. Print this next to ``benchmarks/cpu_matmul.py`` to scale a time to another CPU.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from datetime import datetime

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_DONE = re.compile(r"^Finished jobid: (\d+)")


def parse(lines):
    """{jobid: (rule, start, end)} and (first, last) timestamp of one log."""
    jobs, now, pending_rule, first, last = {}, None, None, None, None
    starts = {}
    for line in lines:
        line = line.rstrip("\n")
        m = _STAMP.match(line)
        if m:
            now = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or now
            last = now
            continue
        m = _RULE.match(line)
        if m:
            pending_rule = m.group(1)
            continue
        m = _JOBID.match(line)
        if m and pending_rule:
            starts[m.group(1)] = (pending_rule, now)
            pending_rule = None
            continue
        m = _DONE.match(line)
        if m and m.group(1) in starts:
            rule, start = starts.pop(m.group(1))
            jobs[m.group(1)] = (rule, start, now)
    return jobs, first, last


def main(argv=None) -> None:
    paths = (argv if argv is not None else sys.argv[1:])
    if not paths:
        raise SystemExit(__doc__)
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            jobs, first, last = parse(fh)
        per_rule = defaultdict(lambda: [0, 0.0])
        for rule, start, end in jobs.values():
            per_rule[rule][0] += 1
            per_rule[rule][1] += (end - start).total_seconds()
        total_n = sum(n for n, _ in per_rule.values())
        total_s = sum(s for _, s in per_rule.values())
        wall = (last - first).total_seconds() if first and last else 0.0
        print(f"{path}: {total_n} jobs, {total_s:.0f} job-seconds, wall {wall:.0f} s ({wall / 60:.1f} min)")
        for rule, (n, s) in sorted(per_rule.items(), key=lambda kv: -kv[1][1]):
            print(f"  {rule:28s} {n:4d} jobs {s:8.0f} job-s  ({s / n:6.1f} s/job)")


if __name__ == "__main__":
    main()
