"""Tests of tests/exercises.py: the table, the blanking on a module worked by hand and on every
real target, the refusals, the copy; and (slow) the exercises kept honest: the reference passes
every check, a copy with every exercise blanked imports and fails each check on its own
NotImplementedError."""
import ast
import errno
import os
import re
import shutil
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


def needs_a_checkout():
    """Skip a test that makes a copy of this repository in a student copy: make copies the files
    git tracks, and a copy has no .git."""
    if not os.path.exists(os.path.join(REPO, ".git")):
        pytest.skip("a student copy (no .git): make copies a git checkout only")


def test_make_copies_the_repository_with_one_exercise_blanked(tmp_path, capsys):
    needs_a_checkout()
    out = tmp_path / "copy"
    assert exercises.main(["make", str(out), "--only", "6"]) == 0
    printed = capsys.readouterr().out
    assert "check 6" in printed
    tracked = exercises.tracked_files(REPO)
    # the copy holds the tracked files but the lecturer's: nothing untracked, no environment, no
    # data, no wrong solutions
    files = [rel for rel in tracked if rel not in exercises.LEFT_OUT]
    copied = sorted(os.path.relpath(os.path.join(folder, name), out)
                    for folder, _, names in os.walk(out) for name in names)
    assert copied == files and "tests/exercises.py" in files
    assert not any(f.startswith((".venv/", "data/", "runs/")) for f in files)
    for rel in files:
        with open(os.path.join(REPO, rel), "rb") as a, open(os.path.join(out, rel), "rb") as b:
            original = a.read()
            copy = b.read()
        if rel == "aea.py":
            assert copy.decode() == exercises.blank(original.decode(), exercises.exercise(6))
        elif rel == exercises.ANSWERS:
            assert copy.decode() == exercises.ANSWERS_PLACEHOLDER
        else:
            assert copy == original, rel
    # the summary says what stayed with the lecturer
    left_out = f"without the answers (--with-answers keeps them): {exercises.ANSWERS} (a page"
    assert left_out in printed


# -----------------------------------------------------------------------------
# make: where a copy may go, what it copies, and a copy that fails midway

# Paths under the repository that do not exist: a refusal must leave them so
PROBE = "_exercises_probe_never_written"


@pytest.mark.parametrize("folder", [".", "tests", f"tests/{PROBE}", f"./{PROBE}",
                                    f"tests/../{PROBE}/copy", REPO, os.path.join(REPO, PROBE)])
def test_make_refuses_a_folder_inside_the_repository(folder, capsys, monkeypatch):
    # relative paths are read from the repository's root, the way a student types them there
    monkeypatch.chdir(REPO)
    assert exercises.main(["make", folder, "--only", "6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {folder} is ")
    assert "inside the repository" in err or f"{folder} is the repository" in err
    assert "the next copy of the repository would carry this copy" in err
    assert "expected a folder outside the repository" in err
    assert not os.path.lexists(os.path.join(REPO, PROBE))
    assert not os.path.lexists(os.path.join(REPO, "tests", PROBE))


def test_make_refuses_a_symlink_outside_that_points_inside(tmp_path, capsys):
    # a link outside the repository to a folder inside it that does not exist yet, and a link to
    # the repository itself with a new folder below it: both resolve inside
    (tmp_path / "link").symlink_to(os.path.join(REPO, PROBE))
    (tmp_path / "repo").symlink_to(REPO)
    for folder in [tmp_path / "link", tmp_path / "repo" / PROBE]:
        assert exercises.main(["make", str(folder), "--only", "6"]) == 2
        assert "is inside the repository" in capsys.readouterr().err
    assert not os.path.lexists(os.path.join(REPO, PROBE))


def test_make_refuses_a_folder_that_holds_the_repository(tmp_path, capsys):
    # the repository's parent and the filesystem's root: the copy would land among its sources
    for folder in [os.path.dirname(REPO), os.path.abspath(os.sep)]:
        assert exercises.main(["make", folder, "--only", "6"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {folder} holds the repository" in err
    # a new folder above a repository (a toy one here), and that folder is empty
    repo = tmp_path / "above" / "repo"
    repo.mkdir(parents=True)
    with pytest.raises(exercises.ExerciseError, match="holds the repository"):
        exercises.make(str(tmp_path / "above"), [6], root=str(repo))
    assert os.listdir(repo) == []


def test_make_refuses_a_dangling_symlink(tmp_path, capsys):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert exercises.main(["make", str(tmp_path / "dangling"), "--only", "6"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def toy_repo(tmp_path, monkeypatch):
    """A git checkout in tmp_path/repo: toy.py (the module TOY above, its one exercise `total`),
    three more tracked files, an ignored one and two untracked ones (a scratch file and a solved
    copy left inside). The ladder is monkeypatched to that one exercise."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    root = tmp_path / "repo"
    for rel, text in [("toy.py", TOY), ("README.txt", "read me\n"), ("sub/a.txt", "a\n"),
                      ("sub/b.txt", "b\n"), (".gitignore", "ignored.txt\n"),
                      ("ignored.txt", "i\n"), ("scratch.py", "s\n"), ("solved/toy.py", TOY)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "init", "-q")
    git(root, "add", "toy.py", "README.txt", "sub", ".gitignore")
    monkeypatch.setattr(exercises, "EXERCISES", [exercises.Exercise(1, "Sum", "Eq. (2)",
                                                                    "toy.total", 5)])
    return root


def files_under(folder):
    """Every file below `folder`, relative to it, sorted."""
    return sorted(os.path.relpath(os.path.join(d, n), folder)
                  for d, _, names in os.walk(folder) for n in names)


def test_tracked_files_leave_out_untracked_ignored_and_deleted_ones(toy_repo):
    tracked = [".gitignore", "README.txt", "sub/a.txt", "sub/b.txt", "toy.py"]
    assert exercises.tracked_files(str(toy_repo)) == tracked
    # a tracked file deleted from the working tree has nothing to copy
    (toy_repo / "sub" / "b.txt").unlink()
    assert exercises.tracked_files(str(toy_repo)) == tracked[:3] + ["toy.py"]


def test_make_copies_only_tracked_files(toy_repo, tmp_path, capsys):
    out = tmp_path / "copy"
    exercises.make(str(out), [1], root=str(toy_repo))
    assert "wrote" in capsys.readouterr().out
    # no scratch.py, no solved/, no ignored.txt; toy.py blanked
    assert files_under(out) == [".gitignore", "README.txt", "sub/a.txt", "sub/b.txt", "toy.py"]
    assert (out / "toy.py").read_text() == exercises.blank(TOY, exercises.exercise(1))


def test_make_keeps_the_answers_with_the_lecturer(toy_repo, tmp_path, capsys):
    # the answers page and the wrong solutions, tracked: a student copy gets a page saying where
    # the answers are and no wrong solutions; --with-answers (a lecturer's copy) gets them as
    # they are
    for rel in [exercises.ANSWERS, *exercises.LEFT_OUT]:
        (toy_repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (toy_repo / rel).write_text(f"{rel}: the solutions\n")
    git(toy_repo, "add", "docs", "tests")
    student = tmp_path / "student"
    exercises.make(str(student), [1], root=str(toy_repo))
    assert files_under(student) == [".gitignore", "README.txt", exercises.ANSWERS, "sub/a.txt",
                                    "sub/b.txt", "toy.py"]
    assert (student / exercises.ANSWERS).read_text() == exercises.ANSWERS_PLACEHOLDER
    # the placeholder: a title and two lines; it links back to the questions beside it
    assert len(exercises.ANSWERS_PLACEHOLDER.splitlines()) == 4
    assert "(exercises_questions.md) are with your lecturer" in exercises.ANSWERS_PLACEHOLDER
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {student}: 6 files, exercises 1 blanked.")
    assert printed[1] == ("without the answers (--with-answers keeps them): "
                          f"{exercises.ANSWERS} (a page saying the answers are with the "
                          "lecturer), tests/test_wrong_solutions.py, tests/wrong_solutions.py")
    lecturer = tmp_path / "lecturer"
    exercises.make(str(lecturer), [1], root=str(toy_repo), with_answers=True)
    for rel in [exercises.ANSWERS, *exercises.LEFT_OUT]:
        assert (lecturer / rel).read_text() == f"{rel}: the solutions\n"
    assert capsys.readouterr().out.splitlines()[1] == (
        "with the answers (a lecturer's copy, not for students): "
        f"{exercises.ANSWERS}, tests/test_wrong_solutions.py, tests/wrong_solutions.py")


def test_make_with_answers_from_the_command_line(tmp_path, capsys):
    needs_a_checkout()
    out = tmp_path / "lecturer"
    assert exercises.main(["make", str(out), "--only", "6", "--with-answers"]) == 0
    assert f"with the answers (a lecturer's copy, not for students): {exercises.ANSWERS}" in (
        capsys.readouterr().out)
    with open(os.path.join(REPO, exercises.ANSWERS), encoding="utf-8") as f:
        assert (out / exercises.ANSWERS).read_text() == f.read()


def test_tracked_files_refuse_a_folder_that_is_not_a_git_checkout(toy_repo, tmp_path,
                                                                  monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "toy.py").write_text(TOY)
    with pytest.raises(exercises.ExerciseError, match="is not a git checkout"):
        exercises.tracked_files(str(plain))
    # and make writes nothing then
    with pytest.raises(exercises.ExerciseError, match="is not a git checkout"):
        exercises.make(str(tmp_path / "copy"), [1], root=str(plain))
    assert not (tmp_path / "copy").exists()
    # git not on PATH
    monkeypatch.setenv("PATH", str(tmp_path / "no_programs_here"))
    with pytest.raises(exercises.ExerciseError, match="git is not installed"):
        exercises.tracked_files(str(toy_repo))


def copy2_failing_at(monkeypatch, call, error):
    """Make shutil.copy2 copy for real `call - 1` times, then raise `error` (an exception, or a
    function of the source and destination paths returning one)."""
    real = shutil.copy2
    calls = []

    def copy2(src, dst):
        calls.append(dst)
        if len(calls) == call:
            raise error(src, dst) if callable(error) else error
        return real(src, dst)
    monkeypatch.setattr(exercises.shutil, "copy2", copy2)
    return calls


def no_space(src, dst):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)


def test_a_failed_copy_removes_the_folders_it_created_and_nothing_else(toy_repo, tmp_path,
                                                                       monkeypatch):
    # the copy goes to a/b/copy where only a/ exists (with a file of its own): copy2 fails on
    # its third file (sub/a.txt) with a full disk, after .gitignore and README.txt and sub/
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mine.txt").write_text("mine\n")
    out = tmp_path / "a" / "b" / "copy"
    calls = copy2_failing_at(monkeypatch, 3, no_space)
    with pytest.raises(exercises.ExerciseError) as e:
        exercises.make(str(out), [1], root=str(toy_repo))
    assert len(calls) == 3
    assert str(e.value) == (f"cannot write {out} (No space left on device); nothing of the copy "
                            "is left; expected a folder you can write, with room for the 5 files "
                            "of the repository")
    # b/ was created by make: gone with the copy; a/ and its file were there before: kept
    assert os.listdir(tmp_path / "a") == ["mine.txt"]


def test_a_failed_copy_into_an_empty_folder_leaves_it_empty(toy_repo, tmp_path, monkeypatch):
    out = tmp_path / "empty"
    out.mkdir()
    copy2_failing_at(monkeypatch, 4, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    with pytest.raises(exercises.ExerciseError, match=r"cannot write .*\(Read-only file system\)"):
        exercises.make(str(out), [1], root=str(toy_repo))
    assert out.is_dir() and os.listdir(out) == []


def test_a_file_that_cannot_be_read_is_named(toy_repo, tmp_path, monkeypatch):
    # copy2 names the source when it cannot open it: a read failure, not a write one
    copy2_failing_at(monkeypatch, 2, lambda src, dst: PermissionError(
        errno.EACCES, os.strerror(errno.EACCES), src))
    with pytest.raises(exercises.ExerciseError, match=re.escape(
            f"cannot read {os.path.join(toy_repo, 'README.txt')} (Permission denied); nothing "
            "of the copy is left")):
        exercises.make(str(tmp_path / "copy"), [1], root=str(toy_repo))
    assert not (tmp_path / "copy").exists()


def test_a_partial_copy_that_cannot_be_removed_is_said_so(toy_repo, tmp_path, monkeypatch):
    copy2_failing_at(monkeypatch, 2, no_space)

    def rmtree(path):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
    monkeypatch.setattr(exercises.shutil, "rmtree", rmtree)
    with pytest.raises(exercises.ExerciseError, match=re.escape(
            "(No space left on device); the partial copy could not all be removed (Device or "
            "resource busy): remove it by hand")):
        exercises.make(str(tmp_path / "copy"), [1], root=str(toy_repo))


def test_an_interrupted_copy_is_removed_and_the_interrupt_goes_on(toy_repo, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "copy"
    copy2_failing_at(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt, match="nothing of the copy is left"):
        exercises.make(str(out), [1], root=str(toy_repo))
    assert not out.exists()


def test_the_command_line_ends_a_failed_copy_in_one_line(tmp_path, capsys, monkeypatch):
    # the real repository, through main: a full disk -> status 2, an interrupt -> 130; one line
    # each on stderr, and no copy left
    needs_a_checkout()
    out = tmp_path / "copy"
    copy2_failing_at(monkeypatch, 5, no_space)
    assert exercises.main(["make", str(out), "--only", "6"]) == 2
    written = [f for f in exercises.tracked_files(REPO) if f not in exercises.LEFT_OUT]
    assert capsys.readouterr().err == (
        f"error: cannot write {out} (No space left on device); nothing of the copy is left; "
        f"expected a folder you can write, with room for the {len(written)} files of the "
        "repository\n")
    assert not out.exists()
    copy2_failing_at(monkeypatch, 5, KeyboardInterrupt())
    assert exercises.main(["make", str(out), "--only", "6"]) == 130
    assert capsys.readouterr().err == "error: interrupted; nothing of the copy is left\n"
    assert not out.exists()


def test_a_mistyped_command_is_named_in_one_line():
    # the real command line: argparse would print its usage above the error
    r = subprocess.run([sys.executable, os.path.join(REPO, "tests", "exercises.py"), "chek", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("error: unknown command 'chek'; expected one of list, make, check, "
                        "reveal (python tests/exercises.py -h)\n")


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
# reveal: the repository's code back into a student copy

# Two exercises on TOY: a block of total, and Box.area's body
TOY_LADDER = [exercises.Exercise(1, "Sum", "Eq. (2)", "toy.total", 5, ("for x in xs:", "s += x")),
              exercises.Exercise(2, "Area", "Eq. (1)", "toy.Box.area", 5)]


@pytest.fixture
def toy_copy(toy_repo, tmp_path, monkeypatch, capsys):
    """A student copy of toy_repo in tmp_path/course, the two exercises of TOY_LADDER blanked."""
    monkeypatch.setattr(exercises, "EXERCISES", TOY_LADDER)
    out = tmp_path / "course"
    exercises.make(str(out), [1, 2], root=str(toy_repo))
    capsys.readouterr()
    return out


def test_reveal_puts_the_code_back_in_place_of_the_raise(toy_repo, toy_copy, capsys):
    exercises.reveal(1, str(toy_copy), root=str(toy_repo))
    # the loop's two lines are back where they were; Exercise 2 is still blanked
    assert (toy_copy / "toy.py").read_text() == exercises.blank(TOY, TOY_LADDER[1])
    assert capsys.readouterr().out == (
        f"revealed Exercise 1, Sum, in {toy_copy}/toy.py: total, its lines 'for x in xs:' .. "
        f"'s += x' (2 lines) in place of its raise. Its check: cd {toy_copy} && python "
        "tests/exercises.py check 1\n")
    exercises.reveal(2, str(toy_copy), root=str(toy_repo))
    assert (toy_copy / "toy.py").read_text() == TOY
    assert "toy.py: Box.area, its body (2 lines) in place" in capsys.readouterr().out


@pytest.mark.parametrize("student, message", [
    # solved the same way as the repository, or revealed already
    (lambda text: text.replace(exercises.raise_line(TOY_LADDER[0]),
                               "for x in xs:\n        s += x"),
     "Exercise 1 is not blanked in {copy}/toy.py: total already holds the code of the repository "
     "(revealed, or solved the same way); nothing was changed; expected its raise "
     'NotImplementedError("Exercise 1: ...") there, as make writes it'),
    # the student's own code in place of the raise
    (lambda text: text.replace(exercises.raise_line(TOY_LADDER[0]), "s = sum(xs)"),
     "Exercise 1 is not blanked in {copy}/toy.py: total holds code of its own (the student's, "
     "solved or in progress) or is not a student copy; nothing was changed"),
    # the raise twice (pasted again by hand)
    (lambda text: text.replace(exercises.raise_line(TOY_LADDER[1]),
                               exercises.raise_line(TOY_LADDER[1]) + "\n        " +
                               exercises.raise_line(TOY_LADDER[1])),
     "{copy}/toy.py holds the raise of Exercise 2 2 times; nothing was changed"),
    # the raise indented otherwise than the repository's code: another version of toy.py
    (lambda text: text.replace("    " + exercises.raise_line(TOY_LADDER[0]),
                               "    if xs:\n        " + exercises.raise_line(TOY_LADDER[0])),
     "{copy}/toy.py: the raise of Exercise 1 is indented by 8 spaces, the code in toy.py by 4: "
     "the copy comes from another version of toy.py; nothing was changed"),
])
def test_reveal_refuses_a_copy_where_the_exercise_is_not_blanked(toy_repo, toy_copy, student,
                                                                 message):
    path = toy_copy / "toy.py"
    path.write_text(student(path.read_text()))
    before = path.read_text()
    number = int(re.search(r"Exercise (\d)", message).group(1))
    with pytest.raises(exercises.ExerciseError, match=re.escape(message.format(copy=toy_copy))):
        exercises.reveal(number, str(toy_copy), root=str(toy_repo))
    assert path.read_text() == before


def test_reveal_refuses_unknown_numbers_the_repository_and_other_folders(toy_repo, toy_copy,
                                                                         tmp_path):
    before = (toy_copy / "toy.py").read_text()
    cases = [
        (3, toy_copy, toy_repo, "no exercise 3; the exercises are 1-2"),
        # the repository and a folder inside it: the reference itself, never a student copy
        (1, toy_repo, toy_repo, f"{toy_repo} is the repository ("),
        (1, toy_repo / "sub", toy_repo, f"{toy_repo / 'sub'} is inside the repository ("),
        # a folder without the exercise's module
        (1, tmp_path, toy_repo, f"{tmp_path} holds no toy.py: expected a student copy"),
        # the code taken from a student copy: there is none to take
        (1, toy_repo, toy_copy, f"{toy_copy}/toy.py has Exercise 1 blanked too"),
    ]
    for number, folder, root, message in cases:
        with pytest.raises(exercises.ExerciseError, match=re.escape(message)):
            exercises.reveal(number, str(folder), root=str(root))
    assert (toy_copy / "toy.py").read_text() == before
    assert (toy_repo / "toy.py").read_text() == TOY


def test_reveal_notes_a_function_that_differs_beyond_the_exercise(toy_repo, toy_copy, capsys):
    # the copy's docstring of Box.area is not the repository's: the code goes back all the same,
    # with a note that it may not fit its place
    path = toy_copy / "toy.py"
    path.write_text(path.read_text().replace('"""w * h, Eq. (1)."""', '"""w times h."""'))
    exercises.reveal(2, str(toy_copy), root=str(toy_repo))
    assert "        # the product\n        return w * h\n" in path.read_text()
    assert capsys.readouterr().out.splitlines()[1] == (
        f"note: Box.area in {toy_copy}/toy.py differs from toy.py of {toy_repo} beyond the "
        "exercise's lines (the copy comes from another version, or the student changed it): "
        "run its check")


def test_reveal_from_the_command_line(tmp_path, capsys, monkeypatch):
    # the real repository: a folder inside it is refused in one line; --dir is required
    monkeypatch.chdir(REPO)
    assert exercises.main(["reveal", "6", "--dir", "tests"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: tests is inside the repository (")
    with pytest.raises(SystemExit) as e:
        exercises.main(["reveal", "6"])
    assert e.value.code == 2 and "--dir" in capsys.readouterr().err


def test_revealing_every_exercise_gives_back_the_repository_modules(tmp_path, capsys):
    # a copy with all exercises blanked, then every one revealed: each module is the repository's
    # again, byte for byte
    needs_the_reference()
    out = tmp_path / "course"
    assert exercises.main(["make", str(out)]) == 0
    for ex in exercises.EXERCISES:
        assert exercises.main(["reveal", str(ex.number), "--dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("revealed Exercise ") == len(exercises.EXERCISES)
    assert "note:" not in printed
    # a block of one line is named by its line
    line = exercises.exercise(8).block[0]
    assert f"aea.py: training_step, its line {line!r} (1 line) in place of its raise" in printed
    for module in sorted({ex.target.split(".")[0] + ".py" for ex in exercises.EXERCISES}):
        with open(os.path.join(REPO, module), encoding="utf-8") as f:
            assert (out / module).read_text() == f.read(), module


# -----------------------------------------------------------------------------
# check all: one pytest run, one line per exercise

def test_result_of_an_exercise_from_its_tests():
    ex = exercises.Exercise(5, "T", "A", "toy.f", 1)

    def test(numbers, outcome, reason=""):
        return {"exercises": numbers, "outcome": outcome, "reason": reason, "seconds": 0.1}
    passed = test([5], "passed")
    # a test of exercise 4 that failed is not exercise 5's
    other = test([4], "failed")
    assert exercises.result(ex, [passed, other], blanked=False) == "pass"
    # blanked in the folder: to do, whatever its tests say
    assert exercises.result(ex, [passed], blanked=True) == "to do"
    # one failed test of it (one marked 4 and 5 counts for both) -> fail
    assert exercises.result(ex, [passed, test([4, 5], "failed")], blanked=False) == "fail"
    # skipped by conftest on the way to blanked exercises: the lowest is named
    needs = [test([5], "skipped", "needs Exercise 9"), test([5], "skipped", "needs Exercise 2")]
    assert exercises.result(ex, [passed, *needs], blanked=False) == "needs 2"
    # a skip for another reason holds nothing back, as in `check 5`
    assert exercises.result(ex, [test([5], "skipped", "Skipped: no GPU")], False) == "pass"
    # none of its tests ran
    assert exercises.result(ex, [other], blanked=False) == "no test"


# A folder as check all sees it: toy.py with exercise 4 blanked, and tests of exercises 1-4
LAB_TESTS = '''\
import pytest


@pytest.mark.exercise(1)
def test_one():
    assert 2 + 2 == 4


@pytest.mark.exercise(1)
def test_one_without_a_gpu():
    pytest.skip("no GPU")


# only the second parameter is marked: the first is not an exercise's test, and not run
@pytest.mark.parametrize("x", [1, pytest.param(2, marks=pytest.mark.exercise(2))])
def test_two(x):
    assert x == 1


@pytest.mark.exercise(3)
def test_three():
    pytest.skip("needs Exercise 4")


@pytest.mark.exercise(4)
def test_four():
    raise NotImplementedError("Exercise 4: ...")


def test_not_an_exercise():
    assert False
'''


def lab(folder, ladder):
    """`folder` with toy.py (ladder's Exercise 4 blanked), tests/conftest.py declaring the
    exercise marker, and LAB_TESTS as tests/test_lab.py."""
    (folder / "tests").mkdir(parents=True)
    (folder / "toy.py").write_text(f"def four():\n    {exercises.raise_line(ladder[3])}\n")
    (folder / "tests" / "conftest.py").write_text(
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'exercise(n): checks exercise n')\n")
    (folder / "tests" / "test_lab.py").write_text(LAB_TESTS)
    return folder


def test_check_all_prints_one_line_per_exercise(tmp_path, capsys, monkeypatch):
    ladder = [exercises.Exercise(n, title, "Eq. (1)", "toy.f", 5)
              for n, title in enumerate(["One", "Two", "Three", "Four", "Five"], 1)]
    monkeypatch.setattr(exercises, "EXERCISES", ladder)
    folder = lab(tmp_path / "lab", ladder)
    assert exercises.main(["check", "all", "--dir", str(folder)]) == 1
    out = capsys.readouterr().out
    # Five has no test: pytest's own lines come first, then the table
    assert "FAILED tests/test_lab.py::test_two[2]" in out
    table = out[out.index(" #  exercise"):].splitlines()
    # the title column as wide as its heading, the longest here
    assert table[0] == " #  exercise  result   seconds"
    words = ["pass", "fail", "needs 4", "to do", "no test"]
    for n, (line, word) in enumerate(zip(table[1:6], words), 1):
        title = ladder[n - 1].title
        assert re.fullmatch(rf" {n}  {title:<8}  {word:<8} +\d+\.\d\d", line), line
    assert table[6].startswith("5 exercises: 1 pass, 1 to do, 1 fail, 1 need another exercise "
                               "first, 1 with no test run; ")
    assert table[6].endswith(f" s in all (one pytest run in {folder})")
    assert table[7] == ("the failing tests and their hints: python tests/exercises.py check 2 "
                        f"--dir {folder}")
    assert len(table) == 8
    # all pass: exit status 0, no pytest lines, no pointer to a check
    monkeypatch.setattr(exercises, "EXERCISES", ladder[:1])
    assert exercises.check_all(str(folder)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == " #  exercise  result   seconds"
    assert out[1].startswith(" 1  One       pass    ")
    assert out[2].startswith("1 exercises: 1 pass; ") and len(out) == 3


def test_check_all_refusals(tmp_path, capsys):
    # a folder without the tests, and an argument that is neither a number nor all
    assert exercises.main(["check", "all", "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} holds no tests/conftest.py: not a copy "
                                       "of this repository\n")
    with pytest.raises(SystemExit) as e:
        exercises.main(["check", "alll"])
    assert e.value.code == 2
    assert "expected an exercise number or all, got 'alll'" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# The exercises kept honest (slow: two pytest runs per exercise)

@pytest.mark.slow
def test_reference_passes_every_check(capsys):
    needs_the_reference()
    for ex in exercises.EXERCISES:
        status = exercises.check(ex.number)
        out = capsys.readouterr().out
        assert status == 0 and "its tests pass" in out, out


@pytest.mark.slow
def test_check_all_passes_here_and_waits_for_a_blanked_exercise_in_a_copy(tmp_path, capsys):
    # the reference: every line "pass", exit status 0
    needs_the_reference()

    def words(printed):
        """Each exercise's word in the table printed by check all."""
        found = {}
        for ex in exercises.EXERCISES:
            line = rf"{ex.number:2d}  {re.escape(ex.title)} +(pass|fail|to do|needs \d+|no test) "
            found[ex.number] = re.search(line, printed).group(1)
        return found
    assert exercises.main(["check", "all"]) == 0
    assert set(words(capsys.readouterr().out).values()) == {"pass"}
    # a copy with Exercise 9 (the grid masks) blanked: 9 is to do; the others pass, or wait for
    # 9 when their tests reach it (conftest skips them, "needs Exercise 9")
    out = tmp_path / "course"
    assert exercises.main(["make", str(out), "--only", "9"]) == 0
    assert exercises.main(["check", "all", "--dir", str(out)]) == 1
    found = words(capsys.readouterr().out)
    assert found.pop(9) == "to do"
    assert set(found.values()) <= {"pass", "needs 9"}


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
    # and check all says: every exercise to do
    r = subprocess.run([sys.executable, "tests/exercises.py", "check", "all"], cwd=out,
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{len(exercises.EXERCISES)} exercises: {len(exercises.EXERCISES)} to do; " in r.stdout
