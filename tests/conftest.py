"""Shared test fixtures. Puts the repository root on sys.path so tests can `import data`,
`import common`."""
import os
import re
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import common  # noqa: E402  (needs the sys.path line above)
import data  # noqa: E402
import synthetic  # noqa: E402


def pytest_configure(config):
    """The `slow` marker: system tests (whole commands, subprocesses killed and resumed, fuzzing).
    `python -m pytest -q -m "not slow" tests` runs every paper and unit test without them.
    The `exercise(N)` marker: the test checks exercise N of tests/exercises.py (a test may carry
    two); `--exercise N` runs only those (pytest's -m cannot select by a marker's argument)."""
    config.addinivalue_line("markers", "slow: a system test; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "exercise(n): checks exercise n (python tests/exercises.py "
                            "check n)")


def pytest_addoption(parser):
    parser.addoption("--exercise", type=int, metavar="N",
                     help="run only the tests marked exercise(N) (tests/exercises.py check N)")


def exercises_of(item):
    """The numbers of a test's exercise markers (its parameters' markers included)."""
    return {m.args[0] for m in item.iter_markers("exercise")}


def pytest_collection_modifyitems(config, items):
    """--exercise N: keep the tests marked exercise(N), report the others as deselected."""
    n = config.getoption("exercise")
    if n is not None:
        config.hook.pytest_deselected(items=[i for i in items if n not in exercises_of(i)])
        items[:] = [i for i in items if n in exercises_of(i)]


# The message of the NotImplementedError a blanked exercise raises in a student copy
# (tests/exercises.py make)
BLANKED = re.compile(r"Exercise (\d+): ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """In a student copy, a test that fails (or whose fixture fails) only because it reaches a
    blanked exercise M on the way, and is not marked exercise(M) itself, is skipped: "needs
    Exercise M". So the suite is green but for the exercises still to do. Under --exercise N
    nothing is skipped: the check fails and names the exercise it needs first."""
    report = yield
    if not report.failed or call.excinfo is None or item.config.getoption("exercise") is not None:
        return report
    # the exception, or one it was raised from or while handling. Only a NotImplementedError
    # raised in this process counts: a test that quotes one in its message (a subprocess's
    # output, tests/test_exercises.py's checks of a student copy) fails as it should
    e, m = call.excinfo.value, None
    for _ in range(10):
        if e is None or m:
            break
        m = isinstance(e, NotImplementedError) and BLANKED.match(str(e))
        e = e.__cause__ or e.__context__
    if m and int(m.group(1)) not in exercises_of(item):
        report.outcome = "skipped"
        line = (item.location[1] or 0) + 1  # the test's line, 1-based, as pytest's own skips
        report.longrepr = (str(item.path), line, f"needs Exercise {m.group(1)}")
    return report


# A small synthetic dataset: 8 training and 6 test identities in 3 cameras, 1-3 images per
# identity and camera (about 80 images, ~0.1 s to write), 3 junk and 3 distractor images.
SYNTHETIC_SIZES = dict(seed=0, train_ids=8, test_ids=6, cameras=3, max_per_camera=3, junk=3,
                       distractors=3)


@pytest.fixture(scope="session")
def synthetic_sizes():
    """The make_synthetic arguments behind `synthetic_root` (a copy: tests may not change them)."""
    return dict(SYNTHETIC_SIZES)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Folder holding bounding_box_train / query / bounding_box_test of SYNTHETIC_SIZES; read it
    with data.load_dataset(synthetic_root, "synthetic")."""
    return synthetic.make_synthetic(str(tmp_path_factory.mktemp("synthetic")), **SYNTHETIC_SIZES)


def run_python(*argv, env=None):
    """`python <argv>` in a subprocess from the repository root, as a user runs it."""
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def assert_same_weights(a, b):
    """Two state dicts hold bit-identical tensors under the same names (else: the first name)."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def stop_at_step_script(module, step_function):
    """Python source of a stand-in for `python <module>.py ...` that, just before the training step
    number $STOP_AT (counted over the whole run, through `<module>.<step_function>`), either sends
    itself the real signal $STOP_SIGNAL (SIGINT, SIGTERM: that step still runs) or, with
    STOP_SIGNAL=PAUSE, writes the file $PAUSED_FILE and sleeps inside the step, so that a test can
    SIGKILL it from outside at a known point of an epoch, on a fast machine as on a slow one.
    sys.argv[0] is set to <module>.py so that the printed resume command is the user's."""
    return f"""
import os, signal, sys, time
sys.path.insert(0, os.getcwd())
import common, {module}
stop_at, how = int(os.environ["STOP_AT"]), os.environ["STOP_SIGNAL"]
calls, step = [0], {module}.{step_function}
def stopping_step(*args):
    calls[0] += 1
    if calls[0] == stop_at and how == "PAUSE":
        open(os.environ["PAUSED_FILE"], "w").close()
        time.sleep(300)
    elif calls[0] == stop_at:
        os.kill(os.getpid(), getattr(signal, how))
    return step(*args)
{module}.{step_function} = stopping_step
sys.argv[0] = "{module}.py"
common.exit_on_user_error({module}.main)
"""


def pool_model():
    """A stand-in network: a 4 x 2 average pool, 24-d features from any image size."""
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((4, 2)), torch.nn.Flatten())


@pytest.fixture
def pool_weights(monkeypatch):
    """--weights none builds a 4 x 2 average pool (24-d features, any input size): the commands
    run end to end in a second. Returns the flags that choose it."""
    pool = pool_model()
    monkeypatch.setattr(common, "Backbone", lambda weights, last_stride: pool)
    return ["--weights", "none", "--height", "64", "--width", "32", "--device", "cpu"]


def pooled(paths):
    """The stand-in's features of image files, computed here step by step: decode at 64 x 32,
    normalise, average each 16 x 16 block of each channel."""
    x = data.normalize(data.load_images(paths, 64, 32, quiet=True))
    return torch.nn.functional.adaptive_avg_pool2d(x, (4, 2)).flatten(1)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A plain random ResNet-50 saved as a "backbone" checkpoint of 64x32 inputs."""
    path = str(tmp_path_factory.mktemp("ckpt") / "backbone.pt")
    torch.manual_seed(0)
    model = common.Backbone(weights="none")
    common.save_checkpoint(path, {"paper": "backbone", "model": model.state_dict(),
                                  "config": {"height": 64, "width": 32, "last_stride": 2}})
    return path
