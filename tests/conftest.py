"""Shared test fixtures. Puts the repository root on sys.path so tests can `import data`, `import common`."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402  (needs the sys.path line above)

# A small synthetic dataset: 8 training and 6 test identities in 3 cameras, 1-3 images per
# identity and camera (about 80 images, ~0.1 s to write), 3 junk and 3 distractor images.
SYNTHETIC_SIZES = dict(seed=0, train_ids=8, test_ids=6, cameras=3, max_per_camera=3, junk=3, distractors=3)


@pytest.fixture(scope="session")
def synthetic_sizes():
    """The make_synthetic arguments behind `synthetic_root` (a copy: tests may not change them)."""
    return dict(SYNTHETIC_SIZES)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Folder holding bounding_box_train / query / bounding_box_test of SYNTHETIC_SIZES; read it
    with data.load_dataset(synthetic_root, "synthetic")."""
    return data.make_synthetic(str(tmp_path_factory.mktemp("synthetic")), **SYNTHETIC_SIZES)
