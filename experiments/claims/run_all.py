"""Runs every claim experiment (experiments/claims/[0-9][0-9]_*.py), each in its own process, then writes REPORT.md.

python experiments/claims/run_all.py                 # default sizes: a 2-core CPU
python experiments/claims/run_all.py --only 01,05    # some of them
python experiments/claims/run_all.py --full          # accelerator sizes, recorded in results_full/
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--only", default="", help="comma list of experiment numbers, e.g. 01,05")
    args = parser.parse_args()
    scripts = sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]_*.py")))
    if args.only:
        wanted = set(args.only.split(","))
        scripts = [s for s in scripts if os.path.basename(s)[:2] in wanted]
    failed = []
    for script in scripts:
        print(f"== {os.path.basename(script)}", flush=True)
        # Full-size records go to their own folder: they never replace the default (CPU) ones.
        extra = ["--full", "--out", os.path.join(HERE, "results_full")] if args.full else []
        if subprocess.run([sys.executable, script, *extra]).returncode:
            failed.append(os.path.basename(script))
    subprocess.run([sys.executable, os.path.join(HERE, "report.py")], check=True)
    if failed:
        raise SystemExit(f"Failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
