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
    assert "check 6" in capsys.readouterr().out
    files = exercises.tracked_files(REPO)
    # the copy holds exactly the tracked files: nothing untracked, no environment, no data
    copied = sorted(os.path.relpath(os.path.join(folder, name), out)
                    for folder, _, names in os.walk(out) for name in names)
    assert copied == files and "tests/exercises.py" in files
    assert not any(f.startswith((".venv/", "data/", "runs/")) for f in files)
    for rel in files:
        with open(os.path.join(REPO, rel), "rb") as a, open(os.path.join(out, rel), "rb") as b:
            original, copy = a.read(), b.read()
        if rel == "aea.py":
            assert copy.decode() == exercises.blank(original.decode(), exercises.exercise(6))
        else:
            assert copy == original, rel


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
    assert capsys.readouterr().err == (
        f"error: cannot write {out} (No space left on device); nothing of the copy is left; "
        f"expected a folder you can write, with room for the {len(exercises.tracked_files(REPO))}"
        " files of the repository\n")
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
    assert r.stderr == ("error: unknown command 'chek'; expected one of list, make, check "
                        "(python tests/exercises.py -h)\n")


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
