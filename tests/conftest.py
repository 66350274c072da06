"""Shared test fixtures. Puts the repository root on sys.path so tests can `import data`,
`import common`."""
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import data  # noqa: E402  (needs the sys.path line above)


def pytest_configure(config):
    """The `slow` marker: system tests (whole commands, subprocesses killed and resumed, fuzzing).
    `python -m pytest -q -m "not slow" tests` runs every paper and unit test without them."""
    config.addinivalue_line("markers", "slow: a system test; deselect with -m 'not slow'")


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
    return data.make_synthetic(str(tmp_path_factory.mktemp("synthetic")), **SYNTHETIC_SIZES)


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
