"""The exercise checker: every solution passes; every catalogued mistake is named; a solution
scaled, negated or perturbed is rejected; inputs are fresh at every call; the command line works."""

import subprocess
import sys

import pytest
import torch

from neuroforge_lit.exercises import _as_tuple, check, get, list_exercises, main, skeleton, solution

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
        result = check(exercise, wrong)
        assert not result.passed and mistake in result.diagnosis, (mistake, result.diagnosis)


CHANGES = {"scaled by 2": lambda t: 2 * t, "negated": lambda t: -t, "off by 1e-3 relative": lambda t: t * (1 + 1e-3)}


@pytest.mark.parametrize("exercise", IDS)
def test_a_slightly_wrong_solution_is_rejected_each_with_its_own_diagnosis(exercise):
    reference = solution(exercise)
    diagnoses = {}
    for how, change in CHANGES.items():
        def wrong(change=change, **kwargs):
            return tuple(change(out) for out in _as_tuple(reference(**kwargs)))

        result = check(exercise, wrong, seed=7)
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
        check("02.2", spy)
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
