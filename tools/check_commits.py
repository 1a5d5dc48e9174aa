"""Check the commit messages of this checkout: a subject of at most 72 characters, a blank line,
then a body that says why. `make lint` runs it over every commit made since the project adopted
the rule (RULE_SINCE; a shallow clone checks the part of that history it has); pass a revision
range to check others, e.g. your branch:

    python tools/check_commits.py origin/main..HEAD

Merge commits are left out (their message is written by the tool that merges). Outside a git
checkout (an unpacked source archive: no .git in the working directory or above it) there are no
commits to check, and it says so; a checkout that git cannot read (git missing, a "dubious
ownership" refusal) fails. A shallow clone checks what it has, and says that it is shallow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUBJECT_MAX = 72
# The commit date of the first commit written under the rule (2e0c70b); the 80 before it are
# subject lines only. (A commit dated earlier by a wrong clock would escape; CI's clocks are right.)
RULE_SINCE = "2026-12-07T15:58:26+00:00"


def problems(message: str) -> list[str]:
    """What is wrong with one commit message (empty if nothing)."""
    lines = message.rstrip("\n").split("\n")
    subject, found = lines[0], []
    if not subject.strip():
        found.append("the subject line is empty")
    if len(subject) > SUBJECT_MAX:
        found.append(f"the subject has {len(subject)} characters (at most {SUBJECT_MAX})")
    if len(lines) > 1 and lines[1].strip():
        found.append("the second line is not blank (subject, blank line, then the body)")
    if not any(line.strip() for line in lines[2:]):
        found.append("there is no body: say why, below a blank line")
    return found


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def main(argv: list[str]) -> int:
    if not any((folder / ".git").exists() for folder in (Path.cwd(), *Path.cwd().parents)):
        print("check_commits: not a git checkout (no .git), so there are no commit messages to check")
        return 0
    try:
        shallow = _git("rev-parse", "--is-shallow-repository").strip() == "true"
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"check_commits: git cannot read this checkout: {getattr(error, 'stderr', None) or error}",
              file=sys.stderr)
        return 2
    if shallow:
        print("check_commits: this clone is shallow: only the commits it has are checked "
              "(git fetch --unshallow for all)")
    revisions = argv[1] if len(argv) > 1 else f"HEAD, commits since {RULE_SINCE}"
    selection = [argv[1]] if len(argv) > 1 else [f"--since={RULE_SINCE}", "HEAD"]
    try:
        shas = _git("rev-list", "--no-merges", *selection, "--").split()
    except subprocess.CalledProcessError as error:
        print(f"check_commits: git cannot list {revisions!r}: {error.stderr.strip()}", file=sys.stderr)
        return 2
    bad = 0
    for sha in shas:
        message = _git("log", "-1", "--format=%B", sha)
        for problem in problems(message):
            print(f"{sha[:10]} {message.splitlines()[0][:60]!r}: {problem}", file=sys.stderr)
            bad += 1
    if bad:
        print(f"check_commits: {bad} problem(s) in the messages of {revisions}; reword them "
              f"(git rebase -i, 'reword') before they land", file=sys.stderr)
        return 1
    if not shas:
        print(f"check_commits: no commits (merges left out) in {revisions}: nothing to check")
        return 0
    print(f"check_commits: {len(shas)} commit message(s) in {revisions}: subject <= {SUBJECT_MAX}, blank line, body")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
