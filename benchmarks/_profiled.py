"""Run ``python -m mailvault ARGS`` with cProfile on in every thread; merge into one file.

    python -m benchmarks._profiled OUT.prof -q --vault DIR fetch --json

``python -m cProfile`` sees only the main thread, and ``mailvault fetch`` fetches each
account in a worker thread, so the plain profiler shows nothing but the main thread waiting.
Here every ``threading.Thread.run`` gets its own profiler and all are merged at exit (the
main thread's wait for the workers shows up as ``acquire`` of ``_thread.lock``).
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
from typing import Any


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    profiles: list[cProfile.Profile] = []
    original = threading.Thread.run

    def profiled_run(self: threading.Thread, *a: Any, **kw: Any) -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()
        try:
            original(self, *a, **kw)
        finally:
            prof.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    sys.argv = ["mailvault", *args]
    main_prof = cProfile.Profile()
    main_prof.enable()
    code: str | int | None = 0
    try:
        runpy.run_module("mailvault", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    finally:
        main_prof.disable()
        stats = pstats.Stats(main_prof)
        for prof in profiles:
            stats.add(prof)
        stats.dump_stats(out)
    sys.exit(code)


if __name__ == "__main__":
    main()
