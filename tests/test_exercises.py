"""Tests of tests/exercises.py: the table, the blanking on a module worked by hand and on every
real target, the refusals, the copy; and (slow) the exercises kept honest: the reference passes
every check, a copy with every exercise blanked imports and fails each check on its own
NotImplementedError."""
import ast
import os
import re
import subprocess
import sys

import pytest

import exercises
from conftest import REPO


def blanked_here():
    """The exercises already blanked in this repository's code: none in the reference; in a
    student copy (tests/exercises.py make), the ones still to do."""
    texts = {}
    for ex in exercises.EXERCISES:
        module = ex.target.split(".")[0]
        if module not in texts:
            with open(os.path.join(REPO, module + ".py"), encoding="utf-8") as f:
                texts[module] = f.read()
    return [ex.number for ex in exercises.EXERCISES
            if exercises.raise_line(ex) in texts[ex.target.split(".")[0]]]


def needs_the_reference(number=None):
    """Skip a test of the targets' text (exercise `number`'s, or all) in a student copy: there a
    target holds its raise ("needs Exercise N"), or the student's own code once written (a
    copy has no .git)."""
    blanked = [n for n in blanked_here() if number in (None, n)]
    if blanked:
        pytest.skip(f"needs Exercise {blanked[0]}")
    if not os.path.exists(os.path.join(REPO, ".git")):
        pytest.skip("a student copy (no .git): the targets hold the student's code")


# -----------------------------------------------------------------------------
# The table

def test_list_is_one_line_per_exercise(capsys):
    assert exercises.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(exercises.EXERCISES) >= 12
    for i, (line, ex) in enumerate(zip(lines, exercises.EXERCISES)):
        # "N  title  anchor  module.function  M min", N counting up from 1
        assert ex.number == i + 1 and re.match(rf" ?{ex.number}  ", line)
        assert ex.title in line and ex.anchor in line and f" {ex.target} " in line
        assert line.endswith(f"{ex.minutes:2d} min")
        assert ex.anchor.startswith(("AEA ", "AAA-Net "))
        # the title and anchor go inside a "..." string of the raise: no quote, no backslash
        assert not set(ex.title + ex.anchor) & {'"', "\\"}


def test_every_exercise_has_marked_tests_and_every_marker_an_exercise():
    marked = set()
    for name in os.listdir(os.path.join(REPO, "tests")):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(REPO, "tests", name), encoding="utf-8") as f:
                marked |= {int(n) for n in re.findall(r"mark\.exercise\((\d+)\)", f.read())}
    assert marked == {ex.number for ex in exercises.EXERCISES}


# -----------------------------------------------------------------------------
# Blanking, worked by hand on a small module

TOY = '''\
class Box:
    def area(self, w,
             h):
        """w * h, Eq. (1)."""
        # the product
        return w * h

    def side(self):
        return 1


def total(xs):
    """Twice the sum."""
    s = 0
    for x in xs:
        s += x
    return 2 * s
'''


def test_blank_keeps_docstring_signature_and_indentation():
    # Box.area: everything after the docstring (the comment too) becomes one raise at the body's
    # indentation (8 spaces); the two-line signature, the docstring and Box.side stay as they are
    area = exercises.Exercise(1, "Area", "Eq. (1)", "toy.Box.area", 5)
    raise_area = ('raise NotImplementedError("Exercise 1: Area (Eq. (1)); run: python '
                  'tests/exercises.py check 1")')
    assert exercises.raise_line(area) == raise_area
    assert exercises.blank(TOY, area) == TOY.replace(
        "        # the product\n        return w * h\n", f"        {raise_area}\n")
    # a block: from the line "for x in xs:" to the line "s += x", at the first line's indentation
    loop = exercises.Exercise(2, "Sum", "Eq. (2)", "toy.total", 5, ("for x in xs:", "s += x"))
    assert exercises.blank(TOY, loop) == TOY.replace(
        "    for x in xs:\n        s += x\n", f"    {exercises.raise_line(loop)}\n")


@pytest.mark.parametrize("target, block, message", [
    ("toy.Box.volume", None, "toy.py has no function Box.volume"),
    ("toy.Box", None, "toy.py has no function Box"),          # a class, not a function
    ("toy.total", ("while True:", "s += x"), "the line 'while True:' is in total 0 times"),
    ("toy.total", ("for x in xs:", "return 3 * s"), "no line 'return 3 * s' after"),
    # the block ends inside the loop: `s += x` would be left alone, indented under nothing
    ("toy.total", ("for x in xs:", "for x in xs:"), "the blanked module does not parse"),
])
def test_blank_refuses_a_target_it_cannot_find(target, block, message):
    with pytest.raises(exercises.ExerciseError, match=re.escape(message)):
        exercises.blank(TOY, exercises.Exercise(7, "T", "A", target, 1, block))


@pytest.mark.parametrize("ex", exercises.EXERCISES, ids=lambda ex: str(ex.number))
def test_every_target_blanks_in_the_code(ex):
    # on the real module: it still parses; the function keeps its signature and docstring (the
    # exercise's statement) and now raises the exercise's NotImplementedError
    needs_the_reference(ex.number)
    module, qualname = ex.target.split(".", 1)
    with open(os.path.join(REPO, module + ".py"), encoding="utf-8") as f:
        source = f.read()
    blanked = exercises.blank(source, ex)
    before = exercises.find_function(ast.parse(source), qualname)
    after = exercises.find_function(ast.parse(blanked), qualname)
    doc = ast.get_docstring(before)
    assert ast.get_docstring(after) == doc
    # everything down to the docstring's last line (the signature, the docstring) is unchanged
    old_lines, new_lines = source.splitlines(), blanked.splitlines()
    head = before.body[0].end_lineno if doc else before.lineno
    assert new_lines[:head] == old_lines[:head]
    # one raise of this exercise's message, where the code it replaces began
    raises = [n for n in ast.walk(after) if isinstance(n, ast.Raise)
              and ast.get_source_segment(blanked, n) == exercises.raise_line(ex)]
    assert len(raises) == 1
    if ex.block is None:  # the whole body: the docstring (if any), then the raise
        assert after.body[-1] is raises[0] and len(after.body) == 1 + bool(doc)
        assert raises[0].col_offset == before.body[1 if doc else 0].col_offset
    else:
        first = next(i for i, line in enumerate(old_lines) if line.strip() == ex.block[0])
        assert new_lines[first] == old_lines[first].split(ex.block[0])[0] + exercises.raise_line(ex)
    # the lines below the function are untouched
    below = len(old_lines) - before.end_lineno
    assert below == 0 or new_lines[-below:] == old_lines[-below:]


# -----------------------------------------------------------------------------
# make and check: the refusals, the copy, the hints

def test_make_refuses_and_writes_nothing(tmp_path, capsys, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.py").write_text("x = 1\n")
    assert exercises.main(["make", str(full)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert os.listdir(full) == ["mine.py"]
    new = tmp_path / "new"
    assert exercises.main(["make", str(new), "--only", "3", "99"]) == 2
    assert "error: no exercise 99; the exercises are 1-" in capsys.readouterr().err
    assert exercises.main(["check", "0"]) == 2
    assert "error: no exercise 0" in capsys.readouterr().err
    # an exercise whose function was renamed in the code: refused before anything is written
    gone = exercises.Exercise(99, "Gone", "AEA Eq. (9)", "aea.no_such_function", 5)
    monkeypatch.setattr(exercises, "EXERCISES", [*exercises.EXERCISES, gone])
    assert exercises.main(["make", str(new), "--only", "99"]) == 2
    assert "aea.py has no function no_such_function" in capsys.readouterr().err
    assert not new.exists()


def test_make_copies_the_repository_with_one_exercise_blanked(tmp_path, capsys):
    out = tmp_path / "copy"
    assert exercises.main(["make", str(out), "--only", "6"]) == 0
    assert "check 6" in capsys.readouterr().out
    files = exercises.repository_files(REPO)
    copied = exercises.repository_files(str(out))  # no .git there: the walk
    assert copied == files and "tests/exercises.py" in files
    assert not any(f.startswith((".venv/", "data/", "runs/")) for f in files)
    for rel in files:
        with open(os.path.join(REPO, rel), "rb") as a, open(os.path.join(out, rel), "rb") as b:
            original, copy = a.read(), b.read()
        if rel == "aea.py":
            assert copy.decode() == exercises.blank(original.decode(), exercises.exercise(6))
        else:
            assert copy == original, rel


def test_hints_are_the_comments_at_the_top_of_a_test(tmp_path):
    (tmp_path / "test_x.py").write_text('''\
def test_by_hand(a,
                 b):
    # 2 + 3 = 5
    #   by hand
    x = 2 + 3  # not a hint
    # nor this
    assert x == 5


def test_comments_later():
    x = 1
    # the only comment
    assert x
''')
    path = str(tmp_path / "test_x.py")
    assert exercises.hint_lines(path, "test_by_hand") == ["# 2 + 3 = 5", "#   by hand"]
    # no comment at the top: every comment line of the body
    assert exercises.hint_lines(path, "test_comments_later") == ["# the only comment"]
    assert exercises.hint_lines(path, "test_missing") == []


# -----------------------------------------------------------------------------
# The exercises kept honest (slow: two pytest runs per exercise)

@pytest.mark.slow
def test_reference_passes_every_check(capsys):
    needs_the_reference()
    for ex in exercises.EXERCISES:
        status, out = exercises.check(ex.number), capsys.readouterr().out
        assert status == 0 and "its tests pass" in out, out


@pytest.mark.slow
def test_blanked_copy_imports_and_fails_every_check_on_its_own_exercise(tmp_path):
    needs_the_reference()
    out = tmp_path / "student"
    assert exercises.main(["make", str(out)]) == 0
    # no blanked function runs at import time
    r = subprocess.run([sys.executable, "-c", "import common, data, evaluate, aea, aaanet"],
                       cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for ex in exercises.EXERCISES:
        r = subprocess.run([sys.executable, "tests/exercises.py", "check", str(ex.number)],
                           cwd=out, capture_output=True, text=True)
        assert r.returncode == 1, r.stdout + r.stderr
        # at least one of its tests reaches its own raise first, and the hints follow
        assert f"NotImplementedError: Exercise {ex.number}: {ex.title}" in r.stdout, r.stdout
        assert "The cases the failing tests work by hand" in r.stdout
