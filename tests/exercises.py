"""Exercises: re-write one function of the code (or one block of lines) from its docstring and the
paper, and check it against the tests that work its numbers by hand.

  python tests/exercises.py list                      # the ladder, one exercise per line
  python tests/exercises.py make DIR [--only N ...] [--with-answers]
                                                      # a copy of the repository, exercises blanked
  python tests/exercises.py check N [--dir DIR]       # exercise N's tests; on failure, the hints
  python tests/exercises.py check all [--dir DIR]     # every exercise: pass, fail or to do, a table
  python tests/exercises.py reveal N --dir DIR        # put exercise N's code back into a copy

`make` copies the files git tracks (never untracked ones) to DIR and replaces each chosen
exercise's function body, or its block of lines, by `raise NotImplementedError("Exercise N: ...")`;
the docstring stays: it states the exercise, with the paper's formula. It refuses, writing nothing,
a DIR inside the repository or holding it (symlinks resolved), a DIR that is not a new or empty
folder, and a repository that is not a git checkout (a student copy has no .git); a copy that fails
midway (a full disk, a read-only folder) or is interrupted (Ctrl-C: one line, exit status 130) is
removed, and only what it wrote. The files that give solutions away stay with the lecturer unless
`--with-answers` (a lecturer's own copy): docs/exercises_answers.md, the answers to the question
sheet, becomes a short page saying so (the docs' links to it still lead somewhere), and
tests/wrong_solutions.py with its test tests/test_wrong_solutions.py (each exercise's solution
with one mistake) is left out. In DIR the modules still import, and `python -m pytest -q -m "not
slow" tests` passes but for the blanked exercises' own tests: a test that only reaches a blanked
function on its way is skipped, "needs Exercise N" (tests/conftest.py). `check N` runs the tests
marked `@pytest.mark.exercise(N)`; when one fails it prints the comment lines at the top of that
test, the case worked by hand, and never the code. `check all` runs every exercise's tests in one
pytest process and prints one line per exercise: pass, fail, to do (still blanked in DIR), needs M
(its tests reach exercise M, still blanked) or no test (none ran: pytest's lines say why), with
the seconds its tests took; exit status 0 iff all pass. `reveal N --dir DIR` puts this
repository's code of exercise N back in place of its raise in the student copy DIR, for a student
who is stuck; it refuses a DIR inside the repository and a copy where exercise N is not blanked
(saying whether it holds the reference code already or code of its own), and changes nothing then.

The table below names each target by its text (a function's name, a block's first and last line),
never by line numbers or markers in the code: when the code changes so that a target is no longer
found, `make` refuses, and the test of this tool (tests/test_exercises.py) fails.
"""
import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Exercise(NamedTuple):
    number: int
    title: str
    anchor: str  # where in the papers (or the protocol both papers use) the exercise comes from
    target: str  # module.function or module.Class.method
    minutes: int  # rough time for a student who has read the paper's section
    block: Optional[tuple] = None  # (first line, last line) of a block inside the function


# The ladder: the data, the metrics, the losses both papers share, then each paper's core. The
# tests of exercise N carry @pytest.mark.exercise(N); each fails while N is blanked.
EXERCISES = [
    Exercise(1, "Market-1501 image names", "AEA Sec. IV-A", "data.parse_name", 10),
    # the class docstring states it (__iter__ has none)
    Exercise(2, "The PK sampler", "AEA Sec. IV-B", "data.PKSampler.__iter__", 25),
    # a block: step 3 of the docstring, the walk down one query's valid ranking
    Exercise(3, "CMC and both mAPs", "AAA-Net Sec. 4.1", "evaluate.rank_metrics", 40,
             ("cmc = np.zeros(max_rank)", "break")),
    Exercise(4, "Softmax cross-entropy", "AEA Eq. (2)-(4)", "common.cross_entropy", 10),
    Exercise(5, "Batch-hard triplet loss", "AEA Eq. (5)-(7)", "common.batch_hard_triplet_loss",
             25),
    Exercise(6, "The attention map", "AEA Eq. (1)", "aea.attention_map", 5),
    Exercise(7, "Top-R% salient pixels", "AEA Sec. III-B, Fig. 4", "aea.salient_pixels", 20),
    # a block of one line: Eq. (8), its three terms computed just above it
    Exercise(8, "AEA's total loss", "AEA Eq. (8)", "aea.training_step", 5,
             ("L = L_I1 + cfg.alpha1 * L_I2 + cfg.alpha2 * L_T",) * 2),
    Exercise(9, "The 16 grid masks", "AAA-Net Algorithm 1 steps 1-2", "aaanet.grid_masks", 20),
    Exercise(10, "The difficult sample", "AAA-Net Algorithm 1 steps 3-4",
             "aaanet.hardest_occlusion", 25),
    Exercise(11, "The target map M_occ", "AAA-Net Sec. 3.2", "aaanet.occlusion_map", 15),
    Exercise(12, "The data term L_att", "AAA-Net Eq. (2)", "aaanet.attention_loss", 10),
    Exercise(13, "The regularisation term L_r", "AAA-Net Eq. (3)", "aaanet.regularization_loss",
             10),
    Exercise(14, "The omega gate", "AAA-Net Eq. (4)", "aaanet.adversarial_loss", 15),
    Exercise(15, "KISSME on training features", "AAA-Net Tables 1-5",
             "evaluate.KISSME.fit", 45),
]


class ExerciseError(Exception):
    """A refusal: printed as one line `error: ...`, exit status 2."""


def exercise(number):
    """The exercise numbered `number` (a clear refusal for any other number)."""
    for ex in EXERCISES:
        if ex.number == number:
            return ex
    raise ExerciseError(f"no exercise {number}; the exercises are 1-{len(EXERCISES)} "
                        "(python tests/exercises.py list)")


def raise_line(ex):
    """The statement that takes the place of the exercise's code in a student copy."""
    return (f'raise NotImplementedError("Exercise {ex.number}: {ex.title} ({ex.anchor}); '
            f'run: python tests/exercises.py check {ex.number}")')


# -----------------------------------------------------------------------------
# Blanking: the function body (or the block) -> one raise, the docstring and signature kept

def find_function(tree, qualname):
    """The ast node of `qualname` ("function" or "Class.method") in a parsed module, or None."""
    node = None
    scope = tree.body
    for name in qualname.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                     and n.name == name), None)
        if node is None:
            return None
        scope = node.body
    return node if isinstance(node, ast.FunctionDef) else None


def target_lines(source, ex):
    """Where exercise ex's code is in `source` (a module's text): (first, last, indent), its first
    and last line (1-based, inclusive) and the indentation of its first statement. ExerciseError
    when the function or the block's lines are not found."""
    module, qualname = ex.target.split(".", 1)
    where = f"Exercise {ex.number} ({ex.target})"
    node = find_function(ast.parse(source), qualname)
    if node is None:
        raise ExerciseError(f"{where}: {module}.py has no function {qualname}")
    lines = source.splitlines(keepends=True)
    # the docstring, when the body opens with one, is the exercise's statement: it stays
    body = node.body
    has_doc = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
               and isinstance(body[0].value.value, str))
    if ex.block is None:
        if has_doc and len(body) == 1:
            raise ExerciseError(f"{where}: the function holds only its docstring")
        # from just after the docstring (comments included) to the function's last line
        first = body[0].end_lineno + 1 if has_doc else body[0].lineno  # 1-based line numbers
        last = node.end_lineno
        indent = body[1 if has_doc else 0].col_offset
        return first, last, indent
    # the block: the one line of the function whose text is block[0], down to the first line
    # from there whose text is block[1] (the same line for a one-line block)
    inside = range(body[0].lineno, node.end_lineno + 1)
    starts = [i for i in inside if lines[i - 1].strip() == ex.block[0]]
    if len(starts) != 1:
        raise ExerciseError(f"{where}: the line {ex.block[0]!r} is in {qualname} "
                            f"{len(starts)} times, expected once")
    first = starts[0]
    last = next((i for i in range(first, node.end_lineno + 1)
                 if lines[i - 1].strip() == ex.block[1]), None)
    if last is None:
        raise ExerciseError(f"{where}: no line {ex.block[1]!r} after {ex.block[0]!r}")
    indent = len(lines[first - 1]) - len(lines[first - 1].lstrip())
    return first, last, indent


def blank(source, ex):
    """`source` (a module's text) with exercise ex's code replaced by its raise, at the code's
    indentation. ExerciseError when the function or the block's lines are not found."""
    first, last, indent = target_lines(source, ex)
    lines = source.splitlines(keepends=True)
    lines[first - 1:last] = [" " * indent + raise_line(ex) + "\n"]
    blanked = "".join(lines)
    try:  # a block that cut a statement in two would leave a module that does not parse
        ast.parse(blanked)
    except SyntaxError as e:
        raise ExerciseError(f"Exercise {ex.number} ({ex.target}): the blanked module does not "
                            f"parse ({e.msg}, line {e.lineno}): the block must hold whole "
                            "statements") from None
    return blanked


def raise_lines(source, ex):
    """The 0-based numbers of the lines of `source` that are exercise ex's raise (a student copy
    holds one per exercise still blanked)."""
    return [i for i, line in enumerate(source.splitlines()) if line.strip() == raise_line(ex)]


# -----------------------------------------------------------------------------
# make: the copy

# The files that give exercises away, kept for a lecturer's copy (make --with-answers). Without
# it the answers to the question sheet become a short page saying where they are, so that the
# links to them from the docs still lead somewhere; the wrong solutions (each exercise's code with
# one mistake) and their test, which reads them, are left out.
ANSWERS = "docs/exercises_answers.md"
ANSWERS_PLACEHOLDER = """# Answers to the questions with experiments

The answers to [exercises_questions.md](exercises_questions.md) are with your lecturer: this copy of
the repository was made without them (`python tests/exercises.py make`).
"""
LEFT_OUT = ["tests/wrong_solutions.py", "tests/test_wrong_solutions.py"]


def place(folder, root):
    """Where `folder` lies against the repository at root, once symlinks and `..` are resolved (so
    `.`, `tests/x` and a link to either are all caught): "is the repository", "is inside the
    repository", "holds the repository", or None when apart from it."""
    target = os.path.realpath(folder)
    repo = os.path.realpath(root)
    shared = os.path.commonpath([target, repo])
    if target == repo:
        return "is the repository"
    if shared == repo:
        return "is inside the repository"
    if shared == target:
        return "holds the repository"
    return None


def refuse_folder(folder, root):
    """ExerciseError when `folder` cannot take the copy: the repository itself, a folder inside
    it, a folder that holds it, or anything there already but an empty folder."""
    repo = os.path.realpath(root)
    where = place(folder, root)
    # inside: the repository's tests would collect the copy's, and a `git add` would carry it
    if where in ("is the repository", "is inside the repository"):
        raise ExerciseError(f"{folder} {where} ({repo}): the next copy of the repository would "
                            "carry this copy, solutions and all; expected a folder outside the "
                            "repository, e.g. ../course")
    # a parent: the copy would be written into a folder that holds the files being copied
    if where == "holds the repository":
        raise ExerciseError(f"{folder} holds the repository ({repo}): the copy would be written "
                            "among the files it copies; expected a new folder outside the "
                            "repository, e.g. ../course")
    # lexists: a dangling symlink is something there already, not a new folder
    if os.path.lexists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise ExerciseError(f"{folder} exists and is not an empty folder; give a new one")


def tracked_files(root):
    """The files git tracks in the checkout at root, relative to root. Only tracked ones: a
    solved copy or a scratch file left untracked in the repository stays out of every copy.
    ExerciseError when root is not a git checkout or git cannot list it."""
    # root's own .git: in a folder that is not a checkout, git would list an enclosing one's
    if not os.path.exists(os.path.join(root, ".git")):
        raise ExerciseError(f"{root} is not a git checkout (no .git): make copies the files git "
                            "tracks; expected to run from a clone of the repository")
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.split("\0")
    except FileNotFoundError:
        raise ExerciseError("git is not installed (not found on PATH): make copies the files "
                            "git tracks; expected git on PATH") from None
    except subprocess.CalledProcessError as e:
        said = e.stderr.strip().splitlines()[-1] if e.stderr.strip() else f"status {e.returncode}"
        raise ExerciseError(f"git ls-files failed in {root} ({said}): make copies the files "
                            "git tracks; expected a git checkout that git can read") from None
    # a tracked file deleted from the working tree is listed too; it has nothing to copy
    return sorted({p for p in listed if p and os.path.isfile(os.path.join(root, p))})


def first_missing(folder):
    """The outermost folder on `folder`'s path that does not exist yet (the first one the copy
    creates), or None when `folder` exists."""
    path = os.path.abspath(folder)
    if os.path.lexists(path):
        return None
    while not os.path.lexists(os.path.dirname(path)):
        path = os.path.dirname(path)
    return path


def remove_partial_copy(folder, created):
    """Remove what a failed copy wrote, and only that: the folders it created (`created`, the
    outermost), or, when `folder` was there already (and empty), everything now inside it.
    -> what is left, in words, for the error line."""
    try:
        if created is not None:
            # a copy that failed on its first folder (a read-only parent) created nothing
            if os.path.lexists(created):
                shutil.rmtree(created)
        else:
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
    except OSError as e:
        reason = e.strerror or str(e)
        return f"the partial copy could not all be removed ({reason}): remove it by hand"
    return "nothing of the copy is left"


def make(folder, numbers, root=REPO, with_answers=False):
    """Copy the files git tracks in the repository at root to `folder`, with the exercises
    `numbers` blanked, and (unless with_answers) without the files that give them away (ANSWERS
    and LEFT_OUT above). Every refusal comes before anything is written. A failed copy (an
    OSError: a full disk, a read-only folder; or Ctrl-C) is removed before the error goes on: an
    ExerciseError for an OSError, the KeyboardInterrupt itself, its message saying what is left."""
    refuse_folder(folder, root)
    chosen = [exercise(n) for n in sorted(set(numbers))]
    # every blanked module in memory first: a target that cannot be found stops it all
    texts = {}
    for ex in chosen:
        path = ex.target.split(".")[0] + ".py"
        if not os.path.isfile(os.path.join(root, path)):
            raise ExerciseError(f"Exercise {ex.number} ({ex.target}): no {path} in {root}")
        if path not in texts:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                texts[path] = f.read()
        texts[path] = blank(texts[path], ex)
    files = tracked_files(root)
    # the lecturer's files among them: kept with --with-answers, else replaced or left out
    lecturers = [rel for rel in files if rel == ANSWERS or rel in LEFT_OUT]
    if not with_answers:
        files = [rel for rel in files if rel not in LEFT_OUT]
        if ANSWERS in files:
            texts[ANSWERS] = ANSWERS_PLACEHOLDER
    # what the copy creates, known before it starts: a failed copy removes that and no more
    created = first_missing(folder)
    try:
        for rel in files:  # rel: in the except below, the file being copied when it failed
            os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
            if rel in texts:
                with open(os.path.join(folder, rel), "w", encoding="utf-8") as f:
                    f.write(texts[rel])
            else:
                shutil.copy2(os.path.join(root, rel), os.path.join(folder, rel))
    except OSError as e:
        left = remove_partial_copy(folder, created)
        reason = e.strerror or str(e)
        # a repository file that cannot be read is named as such, not as a write failure
        if e.filename == os.path.join(root, rel):
            raise ExerciseError(f"cannot read {e.filename} ({reason}); {left}; expected every "
                                "file git tracks to be readable") from None
        raise ExerciseError(f"cannot write {folder} ({reason}); {left}; expected a folder you "
                            f"can write, with room for the {len(files)} files of the "
                            "repository") from None
    except KeyboardInterrupt:
        # the interrupt goes on (a caller or pytest sees it as usual), saying what is left
        raise KeyboardInterrupt(remove_partial_copy(folder, created)) from None
    print(f"wrote {folder}: {len(files)} files, exercises "
          f"{', '.join(str(ex.number) for ex in chosen)} blanked. Start with the lowest: "
          f"cd {folder} && python tests/exercises.py check {chosen[0].number}")
    if lecturers and with_answers:
        print(f"with the answers (a lecturer's copy, not for students): {', '.join(lecturers)}")
    elif lecturers:
        said = [f"{rel} (a page saying the answers are with the lecturer)" if rel == ANSWERS
                else rel for rel in lecturers]
        print(f"without the answers (--with-answers keeps them): {', '.join(said)}")


# -----------------------------------------------------------------------------
# check: the exercise's tests, and on failure the cases worked by hand

def hint_lines(path, name):
    """The `#` lines at the top of test function `name`'s body in the file `path` (where the
    test's first lines are code: every comment line of its body), without their indentation."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    node = next((n for n in ast.walk(ast.parse(source))
                 if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        return []
    # the lines between the `def` line and the first statement, then the whole body
    top = [s.strip() for s in lines[node.lineno:node.body[0].lineno - 1]]
    inside = [s.strip() for s in lines[node.lineno:node.end_lineno]]
    return [s for s in top if s.startswith("#")] or [s for s in inside if s.startswith("#")]


def check(number, folder=REPO):
    """Run exercise `number`'s tests in `folder` with pytest -> 0 if they pass, else 1 after the
    hints of the failing tests."""
    ex = exercise(number)
    if not os.path.isfile(os.path.join(folder, "tests", "conftest.py")):
        raise ExerciseError(f"{folder} holds no tests/conftest.py: not a copy of this repository")
    # -rfE: one line per failing test (FAILED/ERROR node id, relative to --rootdir), read below
    # for the hints; short tracebacks; no cache provider: a check writes nothing into the folder
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p",
                        "no:cacheprovider", "--rootdir", ".", f"--exercise={number}", "tests"],
                       cwd=folder, capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    if r.returncode == 0:
        print(f"Exercise {number}, {ex.title} ({ex.anchor}): its tests pass.")
        return 0
    if r.returncode == 5:  # pytest: no test collected
        print(f"no test is marked exercise({number}) in {folder}/tests")
        return 1
    # the failing tests' files and function names (parameters cut off), each once
    failed = dict.fromkeys(re.findall(r"^(?:FAILED|ERROR) ([^:\s]+)::(?:\w+::)*(\w+)", r.stdout,
                                      re.MULTILINE))
    print(f"\nExercise {number}, {ex.title} ({ex.anchor}), in {ex.target}: not yet. "
          "The cases the failing tests work by hand:")
    for path, name in failed:
        print(f"\n{path}::{name}")
        for line in hint_lines(os.path.join(folder, path), name):
            print(f"    {line}")
    return 1


# -----------------------------------------------------------------------------
# check all: every exercise's tests in one pytest process, one line per exercise

class Outcomes:
    """A pytest plugin, loaded into `check all`'s pytest process: for each test run, its exercise
    numbers, its outcome (failed if its setup, call or teardown failed, else skipped if one was
    skipped, else passed), the reason of a skip, and the seconds its three phases took."""

    def __init__(self):
        self.tests = {}  # node id -> the test's entry

    def pytest_collection_finish(self, session):
        for item in session.items:  # the tests selected, after -m
            numbers = sorted({m.args[0] for m in item.iter_markers("exercise")})
            self.tests[item.nodeid] = {"exercises": numbers, "outcome": "passed", "reason": "",
                                       "seconds": 0.0}

    def pytest_runtest_logreport(self, report):
        test = self.tests[report.nodeid]
        test["seconds"] += report.duration
        if report.failed:
            test["outcome"] = "failed"
        elif report.skipped and test["outcome"] == "passed":
            test["outcome"] = "skipped"
            # a skip's report holds (file, line, reason): conftest's "needs Exercise M" among them
            longrepr = report.longrepr
            test["reason"] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(list(self.tests.values()), f)


# The pytest process of `check all`: argv = this file, the JSON file to write, pytest's arguments.
# Outcomes is loaded from this file under a name of its own, so that a test's `import exercises`
# still finds the file of the folder tested.
CHECK_ALL_PROCESS = """
import importlib.util
import sys
import pytest
spec = importlib.util.spec_from_file_location("exercises_outcomes", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
outcomes = tool.Outcomes()
status = pytest.main(sys.argv[3:], plugins=[outcomes])
outcomes.save(sys.argv[2])
sys.exit(status)
"""


def result(ex, tests, blanked):
    """Exercise ex's word in `check all`'s table, from the entries of Outcomes (all the tests
    run) and whether ex is still blanked in the folder: "to do", "pass", "fail", "needs M" (its
    tests were skipped because they reach exercise M, still blanked) or "no test" (none of its
    tests ran: their file did not import, or none is marked)."""
    if blanked:
        return "to do"
    mine = [t for t in tests if ex.number in t["exercises"]]
    if not mine:
        return "no test"
    if any(t["outcome"] == "failed" for t in mine):
        return "fail"
    reasons = " ".join(t["reason"] for t in mine)
    needs = sorted(int(m) for m in re.findall(r"needs Exercise (\d+)", reasons))
    if needs:
        return f"needs {needs[0]}"
    # a test skipped for another reason (no GPU, no git) holds nothing back, as in `check N`
    return "pass"


def check_all(folder=REPO):
    """Run every exercise's tests in `folder` in one pytest process and print a table: number,
    title, result (`result` above), seconds of its tests -> 0 if all pass, else 1."""
    if not os.path.isfile(os.path.join(folder, "tests", "conftest.py")):
        raise ExerciseError(f"{folder} holds no tests/conftest.py: not a copy of this repository")
    # without --exercise: a test that reaches another exercise still blanked is skipped, "needs
    # Exercise M" (tests/conftest.py), so each line says which exercise holds it back. One pytest
    # process for all: starting one per exercise would pay the imports fifteen times.
    # --tb=no: the table reads the outcomes only; `check N` prints the tracebacks and the hints
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "outcomes.json")
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-c", CHECK_ALL_PROCESS, os.path.abspath(__file__),
                            saved, "-q", "-rfE", "--tb=no", "-p", "no:cacheprovider", "--rootdir",
                            ".", "--continue-on-collection-errors", "-m", "exercise", "tests"],
                           cwd=folder, capture_output=True, text=True)
        seconds = time.monotonic() - start
        tests = []
        if os.path.isfile(saved):
            with open(saved, encoding="utf-8") as f:
                tests = json.load(f)
    words = {}
    for ex in EXERCISES:
        path = os.path.join(folder, ex.target.split(".")[0] + ".py")
        source = ""
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                source = f.read()
        words[ex.number] = result(ex, tests, bool(raise_lines(source, ex)))
    # pytest's own lines when a test file did not import or pytest stopped: the reason is there
    if r.returncode not in (0, 1) or "no test" in words.values():
        print(r.stdout + r.stderr, end="")
    width = max([len("exercise")] + [len(ex.title) for ex in EXERCISES])
    print(f" #  {'exercise':<{width}}  {'result':<8} seconds")
    for ex in EXERCISES:
        mine = sum(t["seconds"] for t in tests if ex.number in t["exercises"])
        print(f"{ex.number:2d}  {ex.title:<{width}}  {words[ex.number]:<8} {mine:7.2f}")
    kinds = ["needs" if word.startswith("needs") else word for word in words.values()]
    labels = {"pass": "pass", "to do": "to do", "fail": "fail",
              "needs": "need another exercise first", "no test": "with no test run"}
    counts = {kind: kinds.count(kind) for kind in labels}
    said = ", ".join(f"{n} {labels[kind]}" for kind, n in counts.items() if n)
    print(f"{len(EXERCISES)} exercises: {said}; {seconds:.1f} s in all (one pytest run in "
          f"{folder})")
    stuck = [n for n, word in words.items() if word in ("fail", "no test")]
    if stuck:
        where = "" if os.path.realpath(folder) == os.path.realpath(REPO) else f" --dir {folder}"
        print(f"the failing tests and their hints: python tests/exercises.py check {stuck[0]}"
              f"{where}")
    return 0 if counts["pass"] == len(EXERCISES) else 1


# -----------------------------------------------------------------------------
# reveal: the reference code back into a student copy

def code_of(source, ex):
    """Exercise ex's code in `source` (the lines `make` blanks), or None where they cannot be
    found: the module does not parse, or the function or the block's lines are gone."""
    try:
        first, last, _ = target_lines(source, ex)
    except (SyntaxError, ExerciseError):
        return None
    return "".join(source.splitlines(keepends=True)[first - 1:last])


def function_text(source, qualname):
    """The text of function `qualname` in `source`, or None when it does not parse or is gone."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    node = find_function(tree, qualname)
    return None if node is None else ast.get_source_segment(source, node)


def reveal(number, folder, root=REPO):
    """Put exercise `number`'s code from the repository at root back into the student copy at
    `folder`, in place of its raise, and print what was put back. ExerciseError, writing nothing,
    for an unknown number, a folder that is the repository or inside it, a folder without the
    exercise's module, and a copy where the exercise is not blanked."""
    ex = exercise(number)
    module, qualname = ex.target.split(".", 1)
    where = place(folder, root)
    if where in ("is the repository", "is inside the repository"):
        raise ExerciseError(f"{folder} {where} ({os.path.realpath(root)}): reveal writes into a "
                            "student copy, which make puts outside the repository; expected the "
                            "copy's folder, e.g. ../course")
    path = os.path.join(folder, module + ".py")
    if not os.path.isfile(path):
        raise ExerciseError(f"{folder} holds no {module}.py: expected a student copy made by "
                            "python tests/exercises.py make")
    with open(os.path.join(root, module + ".py"), encoding="utf-8") as f:
        reference = f.read()
    with open(path, encoding="utf-8") as f:
        copy = f.read()
    # the code comes from a reference checkout: run from a student copy there is none
    if raise_lines(reference, ex):
        raise ExerciseError(f"{os.path.join(root, module)}.py has Exercise {number} blanked too: "
                            "expected the tool of the repository the copy was made from")
    first, last, indent = target_lines(reference, ex)
    code = reference.splitlines(keepends=True)[first - 1:last]
    at = raise_lines(copy, ex)
    if not at:
        if code_of(copy, ex) == "".join(code):
            held = "already holds the code of the repository (revealed, or solved the same way)"
        else:
            held = ("holds code of its own (the student's, solved or in progress) or is not a "
                    "student copy")
        raise ExerciseError(f"Exercise {number} is not blanked in {path}: {qualname} {held}; "
                            f"nothing was changed; expected its raise NotImplementedError("
                            f'"Exercise {number}: ...") there, as make writes it')
    if len(at) > 1:
        raise ExerciseError(f"{path} holds the raise of Exercise {number} {len(at)} times; "
                            "nothing was changed; expected it once, as make writes it")
    lines = copy.splitlines(keepends=True)
    found = lines[at[0]]
    # make writes the raise at the code's indentation; another one means another version
    if len(found) - len(found.lstrip()) != indent:
        raise ExerciseError(f"{path}: the raise of Exercise {number} is indented by "
                            f"{len(found) - len(found.lstrip())} spaces, the code in "
                            f"{module}.py by {indent}: the copy comes from another version of "
                            f"{module}.py; nothing was changed; copy {qualname}'s code by hand")
    lines[at[0]:at[0] + 1] = code
    revealed = "".join(lines)
    # written to a temporary file, then renamed over the student's: never half a module
    temporary = path + ".reveal"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(revealed)
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except OSError as e:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise ExerciseError(f"cannot write {path} ({e.strerror or e}); nothing was changed; "
                            "expected a copy you can write") from None
    if ex.block is None:
        what = f"{qualname}, its body"
    elif ex.block[0] == ex.block[1]:
        what = f"{qualname}, its line {ex.block[0]!r}"
    else:
        what = f"{qualname}, its lines {ex.block[0]!r} .. {ex.block[1]!r}"
    count = "1 line" if len(code) == 1 else f"{len(code)} lines"
    print(f"revealed Exercise {number}, {ex.title}, in {path}: {what} ({count}) in place of its "
          f"raise. Its check: cd {folder} && python tests/exercises.py check {number}")
    # the rest of the function as in the repository: else the code may not fit its place
    if function_text(revealed, qualname) != function_text(reference, qualname):
        print(f"note: {qualname} in {path} differs from {module}.py of {root} beyond the "
              "exercise's lines (the copy comes from another version, or the student changed "
              "it): run its check")


# -----------------------------------------------------------------------------
# Command line

def exercise_or_all(text):
    """`check`'s argument: an exercise number, or "all"."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an exercise number or all, got {text!r}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tests/exercises.py", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises: number, title, paper, function, minutes")
    m = sub.add_parser("make", help="copy the files git tracks to DIR with the exercises blanked")
    m.add_argument("dir", metavar="DIR", help="a new (or empty) folder outside the repository")
    m.add_argument("--only", type=int, nargs="+", metavar="N",
                   help="blank only these exercises (default: all)")
    m.add_argument("--with-answers", action="store_true",
                   help=f"a lecturer's copy: keep {ANSWERS} and {', '.join(LEFT_OUT)} (default: "
                   "the answers page says they are with the lecturer, the others are left out)")
    c = sub.add_parser("check", help="run exercise N's tests; on failure, their hand-worked "
                       "hints. check all: every exercise, one line each")
    c.add_argument("number", type=exercise_or_all, metavar="N|all")
    c.add_argument("--dir", default=REPO, help="the copy to test (default: this repository)")
    r = sub.add_parser("reveal", help="put exercise N's code from this repository back into "
                       "the student copy DIR")
    r.add_argument("number", type=int, metavar="N")
    r.add_argument("--dir", required=True, help="the student copy (made by make)")
    argv = sys.argv[1:] if argv is None else argv
    # a mistyped command in one line (argparse would print its usage line above the error)
    commands = list(sub.choices)
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        print(f"error: unknown command {argv[0]!r}; expected one of {', '.join(commands)} "
              "(python tests/exercises.py -h)", file=sys.stderr)
        return 2
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            # the columns as wide as their longest entry
            t = max(len(ex.title) for ex in EXERCISES)
            a = max(len(ex.anchor) for ex in EXERCISES)
            f = max(len(ex.target) for ex in EXERCISES)
            for ex in EXERCISES:
                print(f"{ex.number:2d}  {ex.title:<{t}} {ex.anchor:<{a}} {ex.target:<{f}} "
                      f"{ex.minutes:2d} min")
            return 0
        if args.command == "make":
            try:
                make(args.dir, args.only or [ex.number for ex in EXERCISES],
                     with_answers=args.with_answers)
            except KeyboardInterrupt as e:
                # Ctrl-C: one line (make has removed its partial copy) and the shell's status
                # for an interrupt, 128 + SIGINT
                left = e.args[0] if e.args else "nothing was written"
                print(f"error: interrupted; {left}", file=sys.stderr)
                return 130
            return 0
        if args.command == "reveal":
            reveal(args.number, args.dir)
            return 0
        if args.number == "all":
            return check_all(os.path.abspath(args.dir))
        return check(args.number, os.path.abspath(args.dir))
    except ExerciseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
