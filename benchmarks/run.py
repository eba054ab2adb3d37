"""Run the side-by-side benchmarks and write their results into docs/benchmarks.md.

    python -m benchmarks.run                 # every available benchmark (make bench)
    python -m benchmarks.run fetch --quick   # one benchmark, 1,000 messages, docs untouched
    python -m benchmarks.run --list

A benchmark is a module ``benchmarks/<name>.py`` registered in :data:`BENCHMARKS`.  It has
``NAME``, ``TITLE``, ``available() -> str | None`` (why it cannot run here, or None) and
``run(Options) -> Section``.  Its Markdown goes into docs/benchmarks.md between the markers
``<!-- results:<name>:begin -->`` and ``<!-- results:<name>:end -->``: the prose above
them is kept, and running one benchmark only replaces its own section.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType

from benchmarks._common import Options, Section, remove_tree

# name -> module; add search (vs notmuch, mu) and export (vs cp) here as they land.
BENCHMARKS: dict[str, str] = {
    "fetch": "benchmarks.fetch",
    "search": "benchmarks.search",
    "export": "benchmarks.export",
}

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
DEFAULT_COUNT = 10_000
QUICK_COUNT = 1_000

DEFAULT_HEADER = """# Benchmarks

`make bench` (= `python -m benchmarks.run`) measures mailvault against the established tools
in one run on one machine and rewrites the results sections below.  See benchmarks/run.py.
"""


def _module(name: str) -> ModuleType:
    return importlib.import_module(BENCHMARKS[name])


def _begin(name: str) -> str:
    return f"<!-- results:{name}:begin -->"


def _end(name: str) -> str:
    return f"<!-- results:{name}:end -->"


def write_docs(path: Path, sections: list[tuple[str, Section]]) -> None:
    """Replace (or append) each benchmark's results section; keep everything else."""
    text = path.read_text(encoding="utf-8") if path.exists() else DEFAULT_HEADER
    for title, section in sections:
        block = f"{_begin(section.name)}\n## {title}\n\n{section.markdown.rstrip()}\n{_end(section.name)}"
        begin, end = _begin(section.name), _end(section.name)
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = head + block + tail
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--count", type=int, help=f"messages in the mailbox (default {DEFAULT_COUNT:,})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_COUNT:,} messages, one run each, docs not written (development)",
    )
    parser.add_argument("--seed", type=int, default=2024, help="generator seed")
    parser.add_argument("--repeat", type=int, help="runs of the fast tools, best reported")
    parser.add_argument("--only", default="", help="comma-separated tools to run (fetch)")
    parser.add_argument("--skip", default="", help="comma-separated tools to skip (fetch)")
    parser.add_argument(
        "--rtt-lockstep-count",
        type=int,
        default=1000,
        help="messages fetchmail and getmail6 fetch at 20 ms RTT (0: the whole mailbox)",
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument("--keep-workdir", action="store_true", help="do not delete scratch")
    parser.add_argument("--profile", type=Path, help="also profile one mailvault run here")
    parser.add_argument(
        "--wait-others",
        type=float,
        default=30,
        metavar="MIN",
        help="wait up to MIN minutes for other benchmark runs on this machine to end",
    )
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", dest="docs", action="store_true", default=None)
    docs.add_argument("--no-docs", dest="docs", action="store_false")
    return parser.parse_args(argv)


def _other_runs() -> list[int]:
    """PIDs of other ``benchmarks.run`` processes on this machine (they would skew ours)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), os.getppid()):
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"benchmarks.run" in argv and b"-m" in argv:
            found.append(int(entry))
    return found


def _wait_for_others(limit: float) -> None:
    """Two benchmark runs on one 2-core machine spoil each other's numbers: wait a while."""
    deadline = time.monotonic() + limit
    others = _other_runs()
    if others:
        print(f"waiting up to {limit / 60:.0f} min for other benchmark runs {others} to end")
    while others and time.monotonic() < deadline:
        time.sleep(5)
        others = _other_runs()
    if others:
        print(f"warning: other benchmark runs {others} still going; numbers will be skewed")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # Stop cleanly (the private Dovecot, the proxy, the running tool) on SIGTERM, and on
    # SIGINT even when started in the background, where SIGINT is inherited as ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    args = _parse(argv)
    if args.list:
        for name in BENCHMARKS:
            mod = _module(name)
            why = mod.available()
            print(f"{name:10} {mod.TITLE}" + (f"  [unavailable: {why}]" if why else ""))
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    names = args.names or list(BENCHMARKS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mailvault-bench-"))
    opts = Options(
        count=args.count or (QUICK_COUNT if args.quick else DEFAULT_COUNT),
        seed=args.seed,
        quick=args.quick or bool(args.count and args.count < DEFAULT_COUNT),
        repeat=args.repeat or (1 if args.quick else 3),
        workdir=workdir,
        keep_workdir=args.keep_workdir,
        profile=args.profile,
        rtt_lockstep_count=args.rtt_lockstep_count,
        only_tools=[t for t in args.only.split(",") if t],
        skip_tools=[t for t in args.skip.split(",") if t],
    )
    write = args.docs if args.docs is not None else not opts.quick
    _wait_for_others(args.wait_others * 60)
    done: list[tuple[str, Section]] = []
    crashed: list[str] = []
    try:
        for name in names:
            mod = _module(name)
            why = mod.available()
            if why:
                print(f"== {name}: skipped, {why}")
                continue
            print(f"== {name}: {mod.TITLE} ({opts.count:,} messages, scratch in {workdir})")
            started = time.monotonic()
            try:
                section: Section = mod.run(opts)
            except Exception:  # one broken benchmark must not cost the results of the others
                traceback.print_exc()
                print(f"== {name}: FAILED, results not written")
                crashed.append(name)
                continue
            print(
                f"\n{section.console}\n== {name} took {(time.monotonic() - started) / 60:.1f} min"
            )
            done.append((mod.TITLE, section))
            if write:  # after each benchmark, so a later crash or interrupt loses nothing
                write_docs(DOCS, [(mod.TITLE, section)])
                print(f"results written to {DOCS.relative_to(ROOT)}")
    finally:
        if not args.keep_workdir:
            remove_tree(workdir)
    return 0 if all(s.ok for _, s in done) and not crashed else 1


if __name__ == "__main__":
    sys.exit(main())
