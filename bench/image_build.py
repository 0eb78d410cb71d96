#!/usr/bin/env python3
"""Time a cold (forced) build of a guest image and a cached lookup.

    .venv/bin/python bench/image_build.py                    # force build, then cached lookups
    .venv/bin/python bench/image_build.py --no-deb-cache     # also drop the downloaded .debs first
    .venv/bin/python bench/image_build.py --cached-only      # just the cached lookup

Prints the time of each build phase and the totals; never asserts.  Needs root
(mmdebstrap --mode=root) and deb.debian.org.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import image, paths  # noqa: E402
from orchestrator.errors import DdcError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="debian-bookworm")
    parser.add_argument("--cached-only", action="store_true")
    parser.add_argument("--no-deb-cache", action="store_true",
                        help="delete the .deb download cache first: a first-ever build")
    parser.add_argument("--lookups", type=int, default=5, help="cached lookups to time")
    args = parser.parse_args()

    try:
        if not args.cached_only:
            if args.no_deb_cache:
                shutil.rmtree(paths.image_cache() / ".debs", ignore_errors=True)
            start = time.monotonic()
            marks: list[tuple[float, str]] = []

            def progress(message: str) -> None:
                now = time.monotonic() - start
                marks.append((now, message))
                print(f"[{now:6.1f} s] {message}", flush=True)

            img = image.build_image(args.recipe, force=True, progress=progress)
            total = time.monotonic() - start
            print("phases:")
            for (t0, message), (t1, _) in zip(marks, marks[1:], strict=False):
                print(f"  {t1 - t0:6.1f} s  {message.split(':')[0]}")
            size = sum(p.stat().st_blocks * 512 for p in img.directory.iterdir()) / 2**20
            print(f"cold build ({'no' if args.no_deb_cache else 'with'} .deb cache): {total:.1f} s; "
                  f"{img.directory} holds {size:.0f} MiB")
        times = []
        for _ in range(args.lookups):
            start = time.monotonic()
            img = image.build_image(args.recipe)
            times.append(time.monotonic() - start)
        print(f"cached build_image(): median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {len(times)} lookups -> {img.directory.name}")
    except DdcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
