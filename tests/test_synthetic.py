"""Tests of synthetic.py: the dataset it writes (names, splits, labels, families), its
determinism, its refusals and clean failures, ensure_synthetic and the `python synthetic.py`
command. CPU only, a few seconds (the command run as a subprocess: slow)."""
import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import data
import synthetic
from common import UserError, exit_on_user_error
from conftest import run_python

MARKET_NAME = re.compile(r"^(-1|\d{4})_c\d+s\d+_\d{6}_\d{2}\.jpg$")


def files(root):
    """{path relative to root: bytes} of every file under root."""
    return {os.path.relpath(os.path.join(dp, f), root): open(os.path.join(dp, f), "rb").read()
            for dp, _, fs in os.walk(root) for f in fs}


# -----------------------------------------------------------------------------
# The dataset

def test_synthetic_round_trip(synthetic_root, synthetic_sizes):
    n = synthetic_sizes
    d = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    # every name in exact Market style, every image a 128x64 (H x W) JPEG
    for split in (d.train, d.query, d.gallery):
        assert all(MARKET_NAME.match(os.path.basename(p)) for p in split.paths)
        assert all(0 <= c < n["cameras"] for c in split.cams)   # c1..c3 -> 0..2
    with Image.open(d.gallery.paths[0]) as im:
        assert im.format == "JPEG" and im.size == (64, 128)
    # train: all train_ids identities, labels exactly 0..7, order-preserving w.r.t. the raw pids
    assert d.num_train_pids == n["train_ids"]
    assert set(d.train.pids.tolist()) == set(range(n["train_ids"]))
    raw = np.array([data.parse_name(p)[0] for p in d.train.paths])
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(d.train.pids, kind="stable"))
    assert raw.min() > 0                                    # no junk or distractor in training
    # query: the test_ids identities, none in training (Market-1501's disjoint protocol), no junk
    q_ids = set(d.query.pids.tolist())
    assert len(q_ids) == n["test_ids"] and min(q_ids) > 0 and not q_ids & set(raw.tolist())
    # gallery: the same people, plus exactly `junk` pid -1 and `distractors` pid 0 images
    assert set(d.gallery.pids[d.gallery.pids > 0].tolist()) == q_ids
    assert (d.gallery.pids == -1).sum() == n["junk"]
    assert (d.gallery.pids == 0).sum() == n["distractors"]
    # every query has a true match in another camera (else the Market protocol would skip it)
    for pid, cam in zip(d.query.pids, d.query.cams):
        assert ((d.gallery.pids == pid) & (d.gallery.cams != cam)).any()


def test_synthetic_deterministic(tmp_path):
    small = dict(train_ids=2, test_ids=2, cameras=2, max_per_camera=2, junk=2, distractors=2)
    a = files(synthetic.make_synthetic(str(tmp_path / "a"), seed=3, **small))
    b = files(synthetic.make_synthetic(str(tmp_path / "b"), seed=3, **small))
    c = files(synthetic.make_synthetic(str(tmp_path / "c"), seed=4, **small))
    # same names, same bytes; at least 4 identities x 2 cameras x 1 image + 2 junk + 2 distractors
    assert a == b and len(a) >= 4 * 2 + 2 + 2
    assert a != c


def test_detector_framing_fills_half_the_frame():
    # the person's share of the 128x64 frame over 100 renders: a median of about half in a
    # detector's crop (the figure 0.94 of the height, 1.3 times wider), about a quarter in the
    # loose framing (0.86 of the height, scaled by the camera's 0.85-1 and the person's 0.9-1.05)
    detector = synthetic.person_shares("detector", n=100)
    loose = synthetic.person_shares("loose", n=100)
    assert 0.45 < np.median(detector) < 0.53
    assert 0.22 < np.median(loose) < 0.30
    # the same people in the same cameras: the detector's crop is the larger in every render
    assert (detector > loose).all()
    # the mask is the person's: none without a person, and the background stays where it is
    rng = np.random.default_rng(0)
    cam = synthetic._camera(rng)
    image, covered = synthetic._render(rng, cam)
    assert image.shape == (128, 64, 3) and covered.shape == (128, 64) and not covered.any()
    # R = 10% of the image is about 20% of a detector-framed person, 40% of a loose one
    assert 0.18 < 0.10 / np.median(detector) < 0.22 and 0.10 / np.median(loose) > 0.33


def test_framing_is_recorded_and_checked(tmp_path):
    small = dict(train_ids=2, test_ids=2, cameras=2, max_per_camera=1, junk=0, distractors=0)
    root = synthetic.make_synthetic(str(tmp_path / "loose"), framing="loose", **small)
    assert open(os.path.join(root, "synthetic.txt")).read().endswith(" framing=loose\n")
    # the default framing asked of a loose dataset: refused, naming both
    with pytest.raises(UserError, match="framing=detector"):
        synthetic.ensure_synthetic(root, **small)
    with pytest.raises(UserError, match="--framing 'tight': expected one of detector, loose"):
        synthetic.make_synthetic(str(tmp_path / "x"), framing="tight", **small)


def test_lookalikes_share_the_upper_garment_only():
    # a family member copies the first one's upper garment (colours, pattern, period, sleeves)
    # and draws the rest itself: with a fixed seed its lower garment and shoes differ
    rng = np.random.default_rng(0)
    first = synthetic._identity(rng)
    twin = synthetic._identity(rng, family=first)
    for k in ("upper", "upper2", "pattern", "period", "long_sleeves"):
        assert np.array_equal(twin[k], first[k]), k
    assert not np.array_equal(twin["lower"], first["lower"])
    assert not np.array_equal(twin["shoes"], first["shoes"])


def test_synthetic_families_stay_inside_a_split(tmp_path, monkeypatch):
    # 5 training and 4 test identities, families of 2: training's 3rd family is one identity,
    # and the first test identity starts a family of its own (no test identity copies a
    # training one): families start at draws 0, 2, 4 (training), 5, 7 (test)
    calls = []
    real = synthetic._identity

    def spy(rng, family=None):
        person = real(rng, family)
        calls.append((id(person), None if family is None else id(family)))
        return person
    monkeypatch.setattr(synthetic, "_identity", spy)
    synthetic.make_synthetic(str(tmp_path / "s"), train_ids=5, test_ids=4, cameras=2,
                             max_per_camera=1, junk=0, distractors=0, lookalikes=2)
    people = calls[:9]  # the 9 identities, in draw order (no distractors drawn)
    firsts = [n for n, (_, fam) in enumerate(people) if fam is None]
    assert firsts == [0, 2, 4, 5, 7]
    for n, (_, fam) in enumerate(people):
        if fam is not None:
            assert fam == people[n - 1][0]


# -----------------------------------------------------------------------------
# Refusals and failures

def test_synthetic_refuses_bad_input(tmp_path):
    # each size named with its range; 10**20: an integer argparse takes, beyond int64
    for size, value, interval in (("cameras", 1, "[2, 99]"), ("lookalikes", 0, "[1, 9999]"),
                                  ("max_per_camera", 10**20, "[1, 99]"),
                                  ("junk", 10**20, "[0, 99999]"), ("cameras", 100, "[2, 99]")):
        flag = "--" + size.replace("_", "-")
        with pytest.raises(UserError, match=re.escape(f"{flag} must lie in {interval}, got "
                                                      f"{value}")):
            synthetic.make_synthetic(str(tmp_path / "x"), **{size: value})
    with pytest.raises(UserError, match="--train-ids 5000 [+] --test-ids 5000: expected at most "
                       "9999 identities"):
        synthetic.make_synthetic(str(tmp_path / "x"), train_ids=5000, test_ids=5000)
    assert not (tmp_path / "x").exists()
    (tmp_path / "y" / "query").mkdir(parents=True)  # never mix with what is there
    (tmp_path / "y" / "query" / "0001_c1s1_000001_01.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="not empty"):
        synthetic.make_synthetic(str(tmp_path / "y"))
    (tmp_path / "file").write_text("")  # a root that cannot be a folder: its parent is a file
    with pytest.raises(UserError, match="cannot create .*file/z for the synthetic dataset"):
        synthetic.make_synthetic(str(tmp_path / "file" / "z"))
    with pytest.raises(UserError, match="file is not a folder"):   # the root is a file
        synthetic.make_synthetic(str(tmp_path / "file"))
    # a seed numpy refuses: named before anything is written
    for seed in (-1, 2**32):
        with pytest.raises(UserError, match=r"--seed must lie in \[0, 2\*\*32 - 1\]"):
            synthetic.make_synthetic(str(tmp_path / "s"), seed=seed)
        assert not (tmp_path / "s").exists()


SMALL = dict(train_ids=2, test_ids=2, cameras=2, max_per_camera=1, junk=1, distractors=1)


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt()])
def test_synthetic_failure_leaves_nothing(tmp_path, monkeypatch, fault):
    # the 4th image save fails (disk full, or Ctrl-C): the temporary folder is removed and so is
    # the root this call created, so tmp_path is empty again; a full disk is one error naming
    # the root
    save = Image.Image.save
    calls = [0]

    def failing_save(im, path, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise fault
        return save(im, path, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "save", failing_save)
    expected = UserError if isinstance(fault, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as e:
        synthetic.make_synthetic(str(tmp_path / "DS"), **SMALL)
    if expected is UserError:
        assert str(e.value) == (f"no space left on device writing the synthetic dataset into "
                                f"{tmp_path / 'DS'} (nothing of it was kept)")
    assert os.listdir(tmp_path) == []


def test_synthetic_fills_empty_root_and_removes_dead_temporaries(tmp_path, monkeypatch):
    # an empty root with empty split folders (nothing to lose) is filled; the temporary folder
    # of a finished process goes; the root's folder itself is kept (an empty mount point, or
    # the current folder given as ".")
    (tmp_path / "DS" / "query").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (tmp_path / "DS" / f".tmp{dead.pid}" / "query").mkdir(parents=True)
    inode = os.stat(tmp_path / "DS").st_ino
    monkeypatch.chdir(tmp_path / "DS")
    synthetic.make_synthetic(".", **SMALL)
    assert sorted(os.listdir(tmp_path / "DS")) == sorted([*data._SPLITS.values(), "synthetic.txt"])
    assert os.stat(tmp_path / "DS").st_ino == inode
    assert len(data.load_dataset(str(tmp_path / "DS"), "synthetic", verbose=False).query) > 0


# -----------------------------------------------------------------------------
# ensure_synthetic and the command line

def test_ensure_synthetic_writes_once(tmp_path):
    root = str(tmp_path / "syn")
    sizes = dict(train_ids=2, test_ids=2, cameras=2, max_per_camera=1, junk=0, distractors=0)
    assert synthetic.ensure_synthetic(root, **sizes) == root
    first = sorted(os.listdir(os.path.join(root, "bounding_box_train")))
    assert first
    # ROOT/synthetic.txt: the version and every argument, defaults included
    assert open(os.path.join(root, "synthetic.txt")).read() == (
        "make_synthetic version 3: seed=0 train_ids=2 test_ids=2 cameras=2 max_per_camera=1 "
        "junk=0 distractors=0 lookalikes=3 framing=detector\n")
    # there already with the same arguments: used as it is, nothing rewritten
    synthetic.ensure_synthetic(root, **sizes)
    assert sorted(os.listdir(os.path.join(root, "bounding_box_train"))) == first
    # other arguments, or no synthetic.txt (not written by this synthetic.py): refused, naming
    # what it expects
    with pytest.raises(UserError, match=r"syn holds a dataset not written .* train_ids=3 .* "
                                        r"delete .*syn and run again"):
        synthetic.ensure_synthetic(root, **dict(sizes, train_ids=3))
    os.remove(os.path.join(root, "synthetic.txt"))
    with pytest.raises(UserError, match="not written by this synthetic.py"):
        synthetic.ensure_synthetic(root, **sizes)
    # any_dataset (bench.py): whatever dataset is there is used, nothing rewritten
    assert synthetic.ensure_synthetic(root, any_dataset=True, **dict(sizes, train_ids=3)) == root
    assert sorted(os.listdir(os.path.join(root, "bounding_box_train"))) == first
    # half there (the query folder emptied): refused, not patched
    for f in os.listdir(os.path.join(root, "query")):
        os.remove(os.path.join(root, "query", f))
    with pytest.raises(UserError, match=r"syn is not empty \(it holds bounding_box_test\)"):
        synthetic.ensure_synthetic(root, **sizes)


def test_cli_writes_then_finds_then_refuses(tmp_path, monkeypatch, capsys):
    # `python synthetic.py` without --root: data/synthetic under the current folder. The first
    # run writes it (saying so, then how long it took), then prints the table; a second run
    # with the same sizes says it is there and rewrites nothing; another seed for the same
    # root, or a root holding a dataset that synthetic.py did not write, is one line
    # "error: ...", exit status 2, nothing touched
    monkeypatch.chdir(tmp_path)
    root = os.path.join("data", "synthetic")
    sizes = ["--train-ids", "3", "--test-ids", "2", "--junk", "1", "--distractors", "0"]
    synthetic.main(sizes)
    out = capsys.readouterr().out
    assert out.startswith("writing the synthetic dataset to data/synthetic\nwrote a synthetic "
                          "dataset in ")
    # the table's train row starts "train 3": 3 training identities
    assert any(line.split()[:2] == ["train", "3"] for line in out.splitlines())
    written = files(root)
    synthetic.main(sizes)
    out = capsys.readouterr().out
    assert out.startswith(f"the synthetic dataset is already at {root} "
                          f"({os.path.join(root, 'synthetic.txt')} records these arguments)\n")
    assert any(line.split()[:2] == ["train", "3"] for line in out.splitlines())
    assert files(root) == written
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(synthetic.main, sizes + ["--seed", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {root} holds a dataset not written by this synthetic.py")
    assert files(root) == written
    # a Market-style dataset (names only) in the root: refused the same way
    for split in data._SPLITS.values():
        os.makedirs(os.path.join("market", split))
        open(os.path.join("market", split, "0002_c1s1_000451_03.jpg"), "wb").close()
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(synthetic.main, ["--root", "market"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: market holds a dataset not written")


@pytest.mark.slow
def test_command_writes_once_then_refuses_another(tmp_path):
    # the command as a user runs it: written (exit 0), there already (exit 0), another seed for
    # the same root refused (one error line, exit 2, no traceback)
    root = str(tmp_path / "DS")
    small = ["--root", root, "--train-ids", "2", "--test-ids", "2", "--cameras", "2",
             "--max-per-camera", "1", "--junk", "0", "--distractors", "0"]
    first = run_python("synthetic.py", *small)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"writing the synthetic dataset to {root}\n")
    second = run_python("synthetic.py", *small)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"the synthetic dataset is already at {root} ")
    third = run_python("synthetic.py", *small, "--seed", "1")
    assert third.returncode == 2 and "Traceback" not in third.stderr
    assert third.stderr.startswith(f"error: {root} holds a dataset not written")


@pytest.mark.slow
def test_cli_bad_seed(tmp_path):
    # the command line: one line "error: --seed ...", exit status 2, no traceback, nothing written
    root = tmp_path / "DS"
    r = run_python("synthetic.py", "--root", str(root), "--seed", "-1")
    assert r.returncode == 2 and r.stderr.startswith("error: --seed must lie in")
    assert "Traceback" not in r.stderr and not root.exists()
