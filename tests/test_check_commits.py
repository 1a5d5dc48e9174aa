"""tools/check_commits.py, the commit-message rule that `make lint` applies: subject <= 72
characters, a blank line, a body."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_commits.py"
sys.path.insert(0, str(TOOL.parent))
import check_commits  # noqa: E402

GOOD = "Layers: say why in the body\n\nThe body explains the change.\n"


@pytest.mark.parametrize("message,expected", [
    (GOOD, []),
    ("x" * 73 + "\n\nbody\n", ["the subject has 73 characters (at most 72)"]),
    ("Subject only\n", ["there is no body: say why, below a blank line"]),
    ("Subject\nbody glued to it\n", ["the second line is not blank (subject, blank line, then the body)",
                                     "there is no body: say why, below a blank line"]),
    ("\n\nbody\n", ["the subject line is empty"]),
    ("Subject\n\n\n  \n", ["there is no body: say why, below a blank line"]),
])
def test_problems_names_each_breach(message, expected):
    assert check_commits.problems(message) == expected


def _run(cwd, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}   # as inside a git hook
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=env)


def test_a_bad_commit_fails_the_check_and_is_named(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=tmp_path,
                       check=True, capture_output=True, timeout=60)

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "Start")
    git("commit", "-q", "--allow-empty", "-m", "Good: a subject\n\nand a body that says why")
    assert _run(tmp_path, "HEAD~1..HEAD").returncode == 0
    git("commit", "-q", "--allow-empty", "-m", "A subject that runs on and on " * 4)
    bad = _run(tmp_path, "HEAD~2..HEAD")
    assert bad.returncode == 1
    assert "the subject has 119 characters" in bad.stderr   # git drops the trailing space and "no body" in bad.stderr
    assert _run(tmp_path, "no-such-branch..HEAD").returncode == 2
    merges_only = _run(tmp_path, "HEAD..HEAD")
    assert merges_only.returncode == 0 and "nothing to check" in merges_only.stdout


def test_outside_a_checkout_it_says_there_is_nothing_to_check(tmp_path):
    result = _run(tmp_path)
    assert result.returncode == 0 and "not a git checkout" in result.stdout


def test_this_checkout_keeps_the_rule():
    result = _run(TOOL.parents[1])
    assert result.returncode == 0, result.stderr
