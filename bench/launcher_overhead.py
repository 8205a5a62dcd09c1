"""Launcher overhead: seconds per trivial task, in-process vs child process vs container.

The task is ``fashion-mnist.fetch`` generating a tiny dataset (a few milliseconds of work),
so the times are the launchers' own costs: for ``docker`` that is creating the container,
copying the config in, starting Python and importing torch in it, reading the manifest back
and removing the container. Needs a Docker engine and the task image for this code
(``images/build-local-base.sh``). Prints medians and ratios vs ``local``.

    python -m bench.launcher_overhead [--repeats 5] [--store file:///tmp/x | s3://b/p]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile

from bench.common import print_ratios, race
from flows.launchers import launch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--store", default=None, help="default: a temporary file:// folder")
    ap.add_argument("--launchers", default="local,subprocess,docker")
    args = ap.parse_args()
    store = args.store or f"file://{tempfile.mkdtemp(prefix='vf-bench-launch-')}"
    seeds = itertools.count()

    def run(launcher: str):
        # a new seed each time: a new dataset prefix, so no run is skipped as already done
        return lambda: launch("fashion-mnist.fetch", {"source": "generate", "n_train": 20,
                                                      "n_test": 10, "seed": next(seeds)},
                              store, launcher)

    names = [n.strip() for n in args.launchers.split(",") if n.strip()]
    medians = race({name: run(name) for name in names}, repeats=args.repeats, warmup=1)
    print_ratios(f"seconds per trivial task ({store.split('://')[0]} store)", medians, "local")
    if "docker" in medians and "local" in medians:
        print(f"  docker overhead per task: {medians['docker'] - medians['local']:.2f} s")


if __name__ == "__main__":
    main()
