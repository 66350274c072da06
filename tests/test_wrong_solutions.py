"""The exercises' checks reject the plausible wrong solutions of tests/wrong_solutions.py: each is
made by its edits from the repository's own code of its exercise, planted into a student copy
(tests/exercises.py make) in place of the exercise's raise line, and the exercise's tests must fail;
the repository's own code, planted the same way, must pass, so that the planting cannot make the
check fail by itself. A fast test applies every entry's edits alone: an edit whose text is no
longer in the code fails it, so the list cannot drift from the code."""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
import exercises
from wrong_solutions import WRONG

NUMBERS = sorted({w.exercise for w in WRONG})


def test_every_exercise_has_wrong_solutions():
    assert NUMBERS == [ex.number for ex in exercises.EXERCISES]
    assert all(len([w for w in WRONG if w.exercise == n]) >= 2 for n in NUMBERS)
    # the names tell the entries of one exercise apart
    assert len({(w.exercise, w.name) for w in WRONG}) == len(WRONG)


def module_of(ex):
    return ex.target.split(".")[0] + ".py"


def blanked_and_answer(ex):
    """(the module's text with ex blanked, the lines the raise replaced: the repository's answer,
    without the indentation of their place)."""
    with open(os.path.join(REPO, module_of(ex)), encoding="utf-8") as f:
        source = f.read()
    blanked = exercises.blank(source, ex)
    lines = source.splitlines(keepends=True)
    short = blanked.splitlines(keepends=True)
    at = next(i for i, line in enumerate(short) if line.strip() == exercises.raise_line(ex))
    answer = lines[at:at + len(lines) - len(short) + 1]
    return blanked, textwrap.dedent("".join(answer))


def plant(blanked, ex, body):
    """`blanked` with its raise line of ex replaced by `body`, at the raise line's indentation."""
    raise_line = exercises.raise_line(ex)
    lines = blanked.splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.strip() == raise_line]
    assert len(at) == 1, f"exercise {ex.number}: its raise line is not found once"
    indent = lines[at[0]][:len(lines[at[0]]) - len(lines[at[0]].lstrip())]
    planted = [indent + line if line.strip() else line
               for line in textwrap.dedent(body).strip("\n").splitlines(keepends=True)]
    planted[-1] = planted[-1].rstrip("\n") + "\n"
    lines[at[0]:at[0] + 1] = planted
    return "".join(lines)


def edited(answer, wrong):
    """`answer` (an exercise's code, as blanked_and_answer returns it) with the edits of `wrong`
    applied in order; an assertion names the entry and the text when an edit's old text is not in
    the code exactly once, or changes nothing."""
    where = f"wrong solution {wrong.exercise}/{wrong.name}"
    text = answer
    for old, new in wrong.edits:
        count = text.count(old)
        assert count != 0, (f"{where}: {old!r} not found in the reference of exercise "
                            f"{wrong.exercise}: update it")
        assert count == 1, (f"{where}: {old!r} found {count} times in the reference of exercise "
                            f"{wrong.exercise}: give it more of its line, so that it is found once")
        assert old != new, f"{where}: the edit of {old!r} changes nothing"
        text = text.replace(old, new)
    return text


def test_wrong_solutions_are_edits_of_the_code():
    # every entry, its edits applied to the repository's code (no copy, no training): each old
    # text found once, the result a different program, and one that parses where it is planted
    # (a wrong solution that failed its check by a SyntaxError would test nothing)
    for ex in exercises.EXERCISES:
        blanked, answer = blanked_and_answer(ex)
        for wrong in [w for w in WRONG if w.exercise == ex.number]:
            body = edited(answer, wrong)
            assert wrong.edits, f"wrong solution {ex.number}/{wrong.name}: no edit"
            assert body != answer, f"wrong solution {ex.number}/{wrong.name}: edits that cancel"
            try:
                ast.parse(plant(blanked, ex, body))
            except SyntaxError as e:
                raise AssertionError(f"wrong solution {ex.number}/{wrong.name}: planted, "
                                     f"{module_of(ex)} does not parse ({e.msg}, line "
                                     f"{e.lineno})") from None


def check(copy, ex):
    """Exercise ex's tests of its module's test file, run in the copy: True when they pass."""
    test_file = os.path.join("tests", "test_" + module_of(ex))
    # -x: a wrong solution is rejected at its first failing test
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "--rootdir", ".", f"--exercise={ex.number}", test_file],
                       cwd=copy, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: tests failed; else pytest broke
    return r.returncode == 0


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """(a student copy, {module: its text as make blanked it}). make blanks every exercise; the
    copy then gets the repository's modules back, so that a check planted with one exercise's
    answer never stops at another exercise (under --exercise N a blanked one fails the test)."""
    folder = str(tmp_path_factory.mktemp("wrong") / "course")
    exercises.make(folder, NUMBERS)
    made = {}
    for module in sorted({module_of(ex) for ex in exercises.EXERCISES}):
        with open(os.path.join(folder, module), encoding="utf-8") as f:
            made[module] = f.read()
        with open(os.path.join(REPO, module), encoding="utf-8") as f:
            original = f.read()
        with open(os.path.join(folder, module), "w", encoding="utf-8") as f:
            f.write(original)
    return folder, made


@pytest.mark.slow
@pytest.mark.parametrize("number", NUMBERS)
def test_wrong_solutions_fail_their_check(copy, number):
    folder, made = copy
    ex = exercises.exercise(number)
    assert exercises.raise_line(ex) in made[module_of(ex)]  # make blanked it
    path = os.path.join(folder, module_of(ex))
    with open(path, encoding="utf-8") as f:
        original = f.read()
    blanked, answer = blanked_and_answer(ex)
    assert plant(blanked, ex, answer) == original  # the answer planted back is the code itself
    passed = {}
    try:
        wrong = [(w.name, edited(answer, w)) for w in WRONG if w.exercise == number]
        for name, body in [("answer", answer)] + wrong:
            with open(path, "w", encoding="utf-8") as f:
                f.write(plant(blanked, ex, body))
            passed[name] = check(folder, ex)
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original)
    assert passed.pop("answer"), f"exercise {number}: the repository's own code fails its check"
    assert [name for name, ok in passed.items() if ok] == [], (
        f"exercise {number}: these wrong solutions pass the check")
