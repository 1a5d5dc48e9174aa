"""``python -m neuroforge_lit [--version]``: which package is installed, and what it runs on.
Hand-written."""

import argparse

from neuroforge_lit.about import about

parser = argparse.ArgumentParser(prog="python -m neuroforge_lit",
                                 description="Which neuroforge-lit is installed, and what it runs on.")
parser.add_argument("--version", action="store_true", help="print only the version and the commit")
args = parser.parse_args()
facts = about()
if args.version:
    print(f"neuroforge-lit {facts['version']} (commit {facts['commit']})")
else:
    print("\n".join(f"{name:<8} {value}" for name, value in facts.items()))
