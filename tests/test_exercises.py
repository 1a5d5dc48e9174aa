"""The exercise checker: every solution passes, and so does every other valid answer; every catalogued
mistake is named; a solution scaled, negated or perturbed is rejected; inputs are fresh at every call;
an answer runs positionally, on copies, in a process of its own, under a time limit; the command line
works, `check all` included.

The tests of the diagnoses pass ``time_limit=None`` (the answer runs in this process): they check
what is said, not the isolation, and a process per call would cost them a few seconds."""

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import neuroforge_lit.layers
from neuroforge_lit.exercises import UNIQUE, _as_tuple, _read, check, get, list_exercises, main, skeleton, solution

IDS = [e.id for e in list_exercises()]


def test_at_least_two_exercises_in_every_chapter_1_to_8():
    chapters = [e.chapter[:2] for e in list_exercises()]
    assert len(IDS) >= 16 and len(set(IDS)) == len(IDS)
    assert {c: chapters.count(c) for c in map("{:02d}".format, range(1, 9))} == \
        {c: max(2, chapters.count(c)) for c in map("{:02d}".format, range(1, 9))}


@pytest.mark.parametrize("exercise", IDS)
def test_the_solution_passes(exercise):
    result = check(exercise, solution(exercise))
    assert result.passed, result.diagnosis


@pytest.mark.parametrize("exercise", IDS)
def test_every_catalogued_mistake_gets_its_own_diagnosis(exercise):
    for mistake, wrong in get(exercise).mistakes.items():
        result = check(exercise, wrong, time_limit=None)
        assert not result.passed and mistake in result.diagnosis, (mistake, result.diagnosis)


CHANGES = {"scaled by 2": lambda t: 2 * t, "negated": lambda t: -t, "off by 1e-3 relative": lambda t: t * (1 + 1e-3)}


@pytest.mark.parametrize("exercise", IDS)
def test_a_slightly_wrong_solution_is_rejected_each_with_its_own_diagnosis(exercise):
    reference = solution(exercise)
    diagnoses = {}
    for how, change in CHANGES.items():
        def wrong(*args, change=change):
            return tuple(change(out) for out in _as_tuple(reference(*args)))

        result = check(exercise, wrong, seed=7, time_limit=None)
        assert not result.passed, f"{how} was accepted: {result.diagnosis}"
        diagnoses[how] = result.diagnosis
    assert len(set(diagnoses.values())) == 3, diagnoses


def test_a_skeleton_is_not_implemented_yet_and_names_itself():
    namespace = {}
    exec(skeleton("03.1"), namespace)
    result = check("03.1", namespace["batchnorm_backward"])
    assert not result.passed and result.diagnosis.startswith("not implemented yet: batchnorm_backward")


def test_inputs_are_fresh_at_every_call_so_a_hard_coded_answer_fails():
    seen = []
    reference = solution("02.2")

    def spy(dout, a):
        seen.append(a.clone())
        return reference(dout, a)

    for _ in range(3):
        check("02.2", spy, time_limit=None)                       # here, so that `seen` is this process's
    assert len({(tuple(a.shape), a.sum().item()) for a in seen}) == 3
    frozen = reference(**get("02.2").inputs(torch.Generator().manual_seed(0)))
    assert not check("02.2", lambda dout, a: frozen).passed


def test_shape_dtype_nan_in_place_and_exceptions_are_named():
    def shapes(dout, x, W):
        return dout @ W.T, x.T @ dout, dout                       # db not summed over the batch
    assert "(the sum over the batch is missing?)" in check("02.1", shapes).diagnosis

    def single_precision(dout, a):
        return (dout * (a > 0)).float()
    assert "dtype torch.float32, expected torch.float64" in check("02.2", single_precision).diagnosis

    def nan(dout, a):
        return dout * float("nan")
    assert "contains NaN" in check("02.2", nan).diagnosis

    def in_place(dout, a):
        dout.mul_(a > 0)
        return dout
    assert "changed its input dout in place" in check("02.2", in_place).diagnosis

    def raises(dout, a):
        return dout[len(dout)]                                     # one row past the end
    assert check("02.2", raises).diagnosis.startswith("relu_backward raised IndexError: index")

    def wrong_count(dout, x, W):
        return dout @ W.T, x.T @ dout
    assert "returned 2 value(s), expected 3: dx, dW, db" in check("02.1", wrong_count).diagnosis


def test_a_wrong_value_is_located_and_compared_with_finite_differences():
    def off(dout, a):
        da = dout * (a > 0)
        da[0, 0] += 1.0
        return da
    diagnosis = check("02.2", off).diagnosis
    assert "da is off by" in diagnosis and "index (0, 0)" in diagnosis and "finite differences" in diagnosis


def test_the_command_line_checks_a_function_in_a_file(tmp_path, capsys):
    answers = tmp_path / "answers.py"
    answers.write_text("def relu_backward(dout, a):\n    return dout * (a > 0)\n\n"
                       "def sloppy(dout, a):\n    return dout * (a < 0)\n")
    assert main(["check", "02.2", f"{answers}:relu_backward"]) == 0
    assert "passed" in capsys.readouterr().out
    assert main(["check", "02.2", f"{answers}:sloppy"]) == 1
    assert "a typical mistake, the gradient passes where a < 0" in capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "neuroforge_lit.exercises", "list"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and all(e in done.stdout for e in IDS)


def test_an_answer_is_called_positionally_so_its_parameters_may_have_other_names():
    def linear_backward(grad_out, inputs, weights):
        return grad_out @ weights.T, inputs.T @ grad_out, grad_out.sum(0)

    result = check("02.1", linear_backward)
    assert result.passed, result.diagnosis
    for e in list_exercises():                                    # the inputs, in the skeleton's order
        assert tuple(e.inputs(torch.Generator().manual_seed(0))) == e.parameters, e.id


SECOND_VALID_FORMS = {        # another right answer, for every exercise that accepts more than one
    "08.1": [lambda y, n_classes: (torch.log(torch.bincount(y, minlength=n_classes).double()),),  # + ln N
             lambda y, n_classes: (solution("08.1")(y, n_classes)[0] - 2.5,)],
}


@pytest.mark.parametrize("exercise", IDS)
def test_every_valid_answer_passes_and_a_unique_answer_is_declared_so(exercise):
    answers = get(exercise).answers
    if exercise not in SECOND_VALID_FORMS:                        # the reference's values are the only answer
        assert answers.canonical is None and answers.text.startswith("exactly the reference"), answers
        return
    assert answers.canonical is not None and answers is not UNIQUE
    for form in SECOND_VALID_FORMS[exercise]:
        result = check(exercise, form, time_limit=None)
        assert result.passed and answers.text in result.diagnosis, result.diagnosis
    assert f"Accepted: {answers.text}." in " ".join(skeleton(exercise).split())


def test_a_free_constant_frees_nothing_else():
    def prior_bias(y, n_classes):                                 # a different shift for every class
        return (solution("08.1")(y, n_classes)[0] + 0.1 * torch.arange(n_classes),)

    assert not check("08.1", prior_bias, time_limit=None).passed


def _ended(pid: int, within: float = 10.0) -> bool:
    """Whether the process is gone (or a zombie, waiting to be reaped), waiting at most `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc to see that the processes ended")
def test_a_hanging_answer_is_stopped_with_every_process_it_started(tmp_path):
    pids = tmp_path / "pids"

    def relu_backward(dout, a):
        helper = os.fork()                                        # it must not outlive the check either
        if helper == 0:
            time.sleep(60)
            os._exit(0)
        pids.write_text(f"{os.getpid()} {helper}")
        end = time.monotonic() + 30                               # bounded: a checker without a limit fails
        while time.monotonic() < end:
            pass
        return dout * (a > 0)

    threads, start = threading.active_count(), time.monotonic()
    result = check("02.2", relu_backward, time_limit=1.0)
    assert not result.passed and "relu_backward ran longer than 1 s" in result.diagnosis, result
    assert time.monotonic() - start < 10 and threading.active_count() == threads
    assert all(_ended(int(pid)) for pid in pids.read_text().split())


def test_an_answer_that_exits_or_dies_is_reported_and_the_checker_goes_on():
    def exits(dout, a):
        sys.exit(3)

    def ends(dout, a):
        os._exit(3)

    def dies(dout, a):
        os.kill(os.getpid(), 9)

    assert "raised SystemExit: 3" in check("02.2", exits, time_limit=10).diagnosis
    assert "ended its process without returning (exit status 3)" in check("02.2", ends, time_limit=10).diagnosis
    assert "ended its process without returning (killed by signal 9" in check("02.2", dies, time_limit=10).diagnosis


def test_an_answer_that_patches_the_package_reaches_neither_the_reference_nor_the_checker(monkeypatch):
    original = neuroforge_lit.layers.linear_backward
    monkeypatch.setattr(neuroforge_lit.layers, "linear_backward", original)     # restored, whatever happens

    def agrees_with_itself(dout, x, W):       # the reference calls layers.linear_backward: make it agree
        fake = (torch.zeros_like(x), torch.zeros_like(W), torch.zeros(W.shape[1], dtype=W.dtype))
        neuroforge_lit.layers.linear_backward = lambda dout, cache: fake
        return fake

    def breaks_it(dout, x, W):                # ... or make it fail, and answer right
        def broken(dout, cache):
            raise RuntimeError("patched")
        neuroforge_lit.layers.linear_backward = broken
        return original(dout, (x, W))

    assert not check("02.1", agrees_with_itself).passed
    result = check("02.1", breaks_it)
    assert result.passed, result.diagnosis
    assert neuroforge_lit.layers.linear_backward is original


def test_a_meta_or_sparse_tensor_gets_a_one_line_diagnosis():
    def meta(dout, a):
        return torch.empty(dout.shape, dtype=dout.dtype, device="meta")

    def sparse(dout, a):
        return (dout * (a > 0)).to_sparse()

    for answer, what in ((meta, "da is a meta tensor"), (sparse, "da is a tensor of layout torch.sparse_coo")):
        for time_limit in (10, None):                             # in a process of its own, and here
            diagnosis = check("02.2", answer, time_limit=time_limit).diagnosis
            assert what in diagnosis and "expected a dense tensor of shape" in diagnosis, diagnosis
            assert "\n" not in diagnosis
    with pytest.raises(TypeError, match="fn must be the function to check, got a Tensor"):
        check("02.2", torch.zeros(3))


def test_the_command_line_reads_3_1_as_03_1_and_refuses_a_mistake_in_one_line(tmp_path, capsys):
    assert main(["skeleton", "3.1"]) == 0
    assert capsys.readouterr().out.startswith("def batchnorm_backward(dout, x, gamma):")
    answers, broken = tmp_path / "answers.py", tmp_path / "broken.py"
    answers.write_text("def relu_backward(dout, a):\n    return dout * (a > 0)\n")
    broken.write_text("def relu_backward(dout, a:\n")
    mistakes = {("skeleton", "13.1"): "no exercise '13.1'; there are 01.1, 01.2",
                ("skeleton", "x"): "no exercise 'x'",
                ("check", "99.1", f"{answers}:relu_backward"): "no exercise '99.1'",
                ("check", "02.2", f"{answers}:nope"): "defines no function 'nope'",
                ("check", "02.2", str(answers)): "expected FILE.py:FUNCTION",
                ("check", "02.2", f"{tmp_path / 'missing.py'}:f"): "no such file",
                ("check", "02.2", f"{broken}:relu_backward"): "broken.py:1: cannot be read as Python",
                ("check", "02.2", f"{answers}:relu_backward", "--repeat", "0"): "--repeat must be at least 1"}
    for argv, message in mistakes.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("python -m neuroforge_lit.exercises: error: ") and message in err, (argv, err)
        assert err.count("\n") == 1, err


def test_check_all_checks_every_function_named_as_an_exercise(tmp_path, capsys):
    answers = tmp_path / "answers.py"
    answers.write_text("import torch\n\n"
                       "def relu_backward(dout, a):\n    return dout * (a > 0)\n\n"
                       "def linear_backward(dout, x, W):\n    return dout @ W.T, x.T @ dout, dout.mean(0)\n\n"
                       "def helper(t):\n    return t\n\n"
                       "tanh_backward = lambda dout, x: dout * (1 - torch.tanh(x) ** 2)\n")
    assert main(["check", "all", str(answers), "--repeat", "1"]) == 1
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["id", "function", "verdict"] and rows[-1] == "2 of 3 passed"
    assert [row.split()[:3] for row in rows[1:-1]] == [["02.1", "linear_backward", "not"],
                                                       ["02.2", "relu_backward", "passed"],
                                                       ["05.2", "tanh_backward", "passed"]]
    assert "db is averaged over the batch" in rows[1]
    assert len({e.function_name for e in list_exercises()}) == len(IDS)   # a name says which exercise
    answers.write_text("def relu_backward(dout, a):\n    return dout * (a > 0)\n")
    assert main(["check", "all", str(answers), "--repeat", "1"]) == 0
    assert main(["check", "all", str(tmp_path / "nothing.py")]) == 2
    (tmp_path / "nothing.py").write_text("def helper(t):\n    return t\n")
    assert main(["check", "all", str(tmp_path / "nothing.py")]) == 2
    assert "defines none of the exercises' functions" in capsys.readouterr().err


def test_the_command_line_runs_the_file_itself_in_the_answer_s_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(neuroforge_lit.layers, "linear_backward", neuroforge_lit.layers.linear_backward)
    answers = tmp_path / "answers.py"
    answers.write_text("import time\nimport neuroforge_lit.layers\n\n"
                       "neuroforge_lit.layers.linear_backward = None      # patched as the file loads\n\n\n"
                       "def linear_backward(dout, x, W):\n    end = time.monotonic() + 30\n"
                       "    while time.monotonic() < end:\n        pass\n")
    assert main(["check", "02.1", f"{answers}:linear_backward", "--time-limit", "0.5"]) == 1
    assert "linear_backward ran longer than 0.5 s" in capsys.readouterr().out
    assert callable(neuroforge_lit.layers.linear_backward)


def test_a_report_sent_in_time_counts_however_late_the_checker_reads_it():
    read_end, write_end = os.pipe()                   # the reference may take longer than the answer's limit
    os.write(write_end, b"report")
    os.close(write_end)
    try:
        assert _read(read_end, deadline=time.monotonic() - 1) == b"report"
    finally:
        os.close(read_end)


def test_a_report_that_started_in_time_is_read_to_its_end():
    """The answer's time limit bounds the wait for its report's first byte, not the reading of a large
    report the child is still writing when the limit passes."""
    read_end, write_end = os.pipe()

    def child():
        os.write(write_end, b"start ")
        time.sleep(0.4)                           # past the deadline below, mid-report
        for _ in range(10):
            os.write(write_end, b"x" * 20_000)
        os.close(write_end)

    writer = threading.Thread(target=child)
    writer.start()
    try:
        data = _read(read_end, deadline=time.monotonic() + 0.2)
    finally:
        writer.join(timeout=10)
        os.close(read_end)
    assert data == b"start " + b"x" * 200_000
