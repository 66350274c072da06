"""Tests of data.py: the name parser and both layouts, demo_dataset and the command line, the PK
sampler, the decode-once image cache and the on-device augmentation. CPU only, a few seconds."""
import errno
import gc
import os
import re
import warnings
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
from common import UserError, exit_on_user_error


def touch(folder, *names):
    """Empty files: the parser reads names only, never pixels."""
    os.makedirs(folder, exist_ok=True)
    for n in names:
        open(os.path.join(folder, n), "wb").close()


def hand_layout(root):
    """A dataset worked by hand (the expected results are in test_load_dataset_by_hand)."""
    touch(os.path.join(root, "bounding_box_train"),
          "0007_c1s1_000100_01.jpg", "0007_c2s1_000200_01.jpg", "0002_c3s2_000300_02.jpg",
          "0150_c6s1_000400_01.jpg", "-1_c1s1_000500_00.jpg", "0000_c2s1_000600_00.jpg",
          "Thumbs.db")
    touch(os.path.join(root, "query"), "0011_c1s1_000700_01.jpg", "0012_c2s1_000800_01.jpg")
    touch(os.path.join(root, "bounding_box_test"),
          "0011_c2s1_000900_01.jpg", "0012_c3s1_001000_01.jpg", "0000_c1s1_001100_00.jpg",
          "-1_c4s1_001200_00.jpg")
    return str(root)


# -----------------------------------------------------------------------------
# parse_name and load_dataset

@pytest.mark.parametrize("name, expected", [
    ("0002_c1s1_000451_03.jpg", (2, 0)),        # Market-1501: pid 0002, camera c1 -> 0
    ("-1_c3s2_012345_00.jpg", (-1, 2)),         # Market junk: pid -1, not zero-padded, c3 -> 2
    ("0000_c6s4_002102_01.jpg", (0, 5)),        # Market distractor: pid 0000, c6 -> 5
    ("0005_c2_f0046985.jpg", (5, 1)),           # DukeMTMC-reID: pid 0005, c2 -> 1, frame f0046985
    ("0001_c2_10.png", (1, 1)),                 # CUHK03-NP: pid 0001, c2 -> 1, image number 10, PNG
    ("/data/Market/query/1501_c5s3_065187_02.jpg", (1501, 4)),  # a full path: only the name counts
])
@pytest.mark.exercise(1)
def test_parse_name(name, expected):
    assert data.parse_name(name) == expected


@pytest.mark.parametrize("name", ["0002_c1s1.jpg",            # Market name cut short
                                  "0002_c0s1_000451_03.jpg",  # no camera 0: c1 is the first
                                  "abcd_c1s1_000451_03.jpg",  # pid not a number
                                  "0002_c1s1_000451_03.bmp",  # not .jpg/.png
                                  # numbers no dataset has: an identity of 10 digits (beyond
                                  # MAX_PID = 999999999), a camera c10000 (MAX_CAMERA = 9999), and
                                  # one of 20 digits, beyond int64
                                  "1000000000_c1s1_000451_03.jpg",
                                  "0002_c10000s1_000451_03.jpg",
                                  "0002_c99999999999999999999s1_000451_03.jpg"])
@pytest.mark.exercise(1)
def test_parse_name_rejects(name):
    with pytest.raises(UserError, match=re.escape(name)):
        data.parse_name(name)


@pytest.mark.exercise(1)
def test_parse_name_at_the_limits():
    # The largest numbers a name may carry are names, not errors: identity MAX_PID = 999999999
    # and camera c9999 (MAX_CAMERA) -> camera 9998. One more of either is refused (above).
    assert data.parse_name("999999999_c1s1_000451_03.jpg") == (999999999, 0)
    assert data.parse_name("0002_c9999s1_000451_03.jpg") == (2, 9998)


@pytest.mark.exercise(1)
def test_parse_name_by_hand():
    # A Market-1501 name is PPPP_cCsS_FFFFFF_BB.jpg: identity PPPP, camera C, sequence S, frame
    # FFFFFF, box BB; only PPPP and C are labels, and the folder around the name is not read:
    #   0002_c1s1_000451_03.jpg      -> pid 2, camera c1 -> 0 (0-based, to index arrays)
    #   -1_c3s2_012345_00.jpg        -> pid -1 (junk, not zero-padded), camera c3 -> 2
    #   0000_c6s4_002102_01.jpg      -> pid 0 (distractor), camera c6 -> 5
    #   0005_c2_f0046985.jpg (Duke)  -> pid 5, camera 1;  0001_c2_10.png (CUHK03-NP) -> 1, 1
    # Anything else (a short name, camera c0, another extension) is a UserError naming the file.
    assert data.parse_name(os.path.join("market", "query", "0002_c1s1_000451_03.jpg")) == (2, 0)
    assert data.parse_name("-1_c3s2_012345_00.jpg") == (-1, 2)
    assert data.parse_name("0000_c6s4_002102_01.jpg") == (0, 5)
    assert data.parse_name("0005_c2_f0046985.jpg") == (5, 1)
    assert data.parse_name("0001_c2_10.png") == (1, 1)
    with pytest.raises(UserError, match="0002_c0s1_000451_03.jpg"):
        data.parse_name("0002_c0s1_000451_03.jpg")


def test_load_dataset_by_hand(tmp_path, capsys):
    d = data.load_dataset(hand_layout(tmp_path), "market1501")
    # train, sorted by name ('-' < '0'): -1_c1 (junk), 0000_c2 (distractor), 0002_c3, 0007_c1,
    # 0007_c2, 0150_c6; Thumbs.db ignored. Junk and distractor dropped -> 4 images. Raw pids 2,
    # 7, 150 -> labels 0, 1, 2, so pids [0, 1, 1, 2]; cameras c3, c1, c2, c6 -> [2, 0, 1, 5].
    assert [os.path.basename(p) for p in d.train.paths] == [
        "0002_c3s2_000300_02.jpg", "0007_c1s1_000100_01.jpg", "0007_c2s1_000200_01.jpg",
        "0150_c6s1_000400_01.jpg"]
    assert d.train.pids.tolist() == [0, 1, 1, 2] and d.train.pids.dtype == np.int64
    assert d.train.cams.tolist() == [2, 0, 1, 5] and d.train.cams.dtype == np.int64
    assert d.num_train_pids == 3
    # query keeps raw pids: 0011 c1, 0012 c2
    assert d.query.pids.tolist() == [11, 12] and d.query.cams.tolist() == [0, 1]
    # gallery keeps junk and distractors, sorted by name: -1_c4, 0000_c1, 0011_c2, 0012_c3
    assert d.gallery.pids.tolist() == [-1, 0, 11, 12] and d.gallery.cams.tolist() == [3, 0, 1, 2]
    # table: train 3 ids, 4 images, 4 cameras {0,1,2,5}; query 2 ids, 2 images, 2 cameras;
    # gallery 2 people (11, 12), 4 images, 4 cameras, 1 junk, 1 distractor
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:5]}
    assert rows == {"train": ["3", "4", "4", "0", "0"], "query": ["2", "2", "2", "0", "0"],
                    "gallery": ["2", "4", "4", "1", "1"]}


def test_a_query_named_as_junk_or_distractor_is_refused(tmp_path):
    # the hand layout with its first query copied as 0000_... (a distractor's name) and as -1_...
    # (junk's): either query would count the gallery's distractors (junk) as its true matches
    for name in ("0000_c1s1_000100_01.jpg", "-1_c1s1_000100_01.jpg"):
        root = hand_layout(tmp_path / name[:2])
        touch(os.path.join(root, "query"), name)
        with pytest.raises(UserError, match=re.escape(name) + ": a query named as junk .-1. or a "
                           "distractor .0000.; these are gallery images only"):
            data.load_dataset(root, "market1501", verbose=False)


def test_load_dataset_finds_release_folders(tmp_path):
    # ROOT may be the parent of the folder the dataset unpacks to
    hand_layout(tmp_path / "Market-1501-v15.09.15")
    d = data.load_dataset(str(tmp_path), "market1501", verbose=False)
    assert d.root == os.path.join(str(tmp_path), "Market-1501-v15.09.15")
    # CUHK03-NP: cuhk03-np/labeled, PNG names PPPP_cC_N.png; 0003 -> label 0, 0009 -> label 1
    for split, names in [("bounding_box_train", ["0003_c1_1.png", "0009_c2_4.png"]),
                         ("query", ["0020_c1_1.png"]), ("bounding_box_test", ["0020_c2_2.png"])]:
        touch(tmp_path / "cuhk03-np" / "labeled" / split, *names)
    d = data.load_dataset(str(tmp_path), "cuhk03-labeled", verbose=False)
    assert d.train.pids.tolist() == [0, 1] and d.train.cams.tolist() == [0, 1]
    assert d.gallery.cams.tolist() == [1]


def test_load_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="unknown dataset 'market'"):
        data.load_dataset(str(tmp_path), "market")
    # a folder with only bounding_box_train: the error names the folder, what is missing and
    # where else it looked
    touch(tmp_path / "bounding_box_train", "0002_c1s1_000451_03.jpg")
    with pytest.raises(UserError) as e:
        data.load_dataset(str(tmp_path), "market1501")
    assert str(tmp_path) in str(e.value) and "missing: query, bounding_box_test" in str(e.value)
    assert "Market-1501-v15.09.15" in str(e.value)
    # all three folders, but query empty
    touch(tmp_path / "bounding_box_test", "0003_c1s1_000451_03.jpg")
    touch(tmp_path / "query")
    with pytest.raises(UserError, match="query holds no images"):
        data.load_dataset(str(tmp_path), verbose=False)


def test_folder_layout_by_hand(tmp_path, capsys):
    # ROOT/<split>/<identity>/<image>: identities are folder names, any name; "-1" is junk and
    # "0000" a distractor, as in Market-1501 names. Sorted names: "alice" < "bob" < "carol", so
    # alice -> pid 1, bob -> 2, carol -> 3 in every split; train relabels 1, 2 -> labels 0, 1.
    touch(tmp_path / "train" / "alice", "a_c1_1.jpg", "a_c2_2.png", "notes.txt")
    touch(tmp_path / "train" / "bob", "img_c3.bmp")
    touch(tmp_path / "train" / "-1", "x_c1.jpg")
    touch(tmp_path / "query" / "carol", "q_c1.jpg")
    touch(tmp_path / "gallery" / "carol", "g_c2.webp", "g2_c1.jpg")
    touch(tmp_path / "gallery" / "0000", "d_c3.jpg")
    d = data.load_dataset(str(tmp_path), "folder")
    assert [os.path.basename(p) for p in d.train.paths] == ["a_c1_1.jpg", "a_c2_2.png",
                                                            "img_c3.bmp"]
    assert d.train.pids.tolist() == [0, 0, 1] and d.num_train_pids == 2
    # cameras: the c<digits> token of each name (c1 -> 1, kept as written)
    assert d.train.cams.tolist() == [1, 2, 3] and d.cameras
    assert d.query.pids.tolist() == [3] and d.query.cams.tolist() == [1]
    # gallery sorted by identity folder, then file: 0000/d_c3, carol/g2_c1, carol/g_c2
    assert d.gallery.pids.tolist() == [0, 3, 3] and d.gallery.cams.tolist() == [3, 1, 2]
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:5]}
    assert rows == {"train": ["2", "3", "3", "0", "0"], "query": ["1", "1", "1", "0", "0"],
                    "gallery": ["1", "3", "3", "0", "1"]}


def test_folder_layout_without_cameras(tmp_path, capsys):
    # one name without a c<digits> token ("photo.jpg"; "abc1" is no token): no camera ids at all,
    # each image its own camera, so no gallery image shares a query's camera
    touch(tmp_path / "train" / "7", "photo.jpg", "b_c1.jpg")
    touch(tmp_path / "query" / "8", "abc1.jpg")
    touch(tmp_path / "gallery" / "8", "x_c1.jpg", "y_c1.jpg")
    with pytest.warns(UserWarning, match="2 file names .* carry no camera id"):
        d = data.load_dataset(str(tmp_path), "folder")
    assert not d.cameras
    cams = np.concatenate([d.train.cams, d.query.cams, d.gallery.cams])
    assert len(np.unique(cams)) == 5
    out = capsys.readouterr().out
    assert "same-camera rule is off" in out and out.splitlines()[3].split()[3] == "-"


def test_folder_layout_details(tmp_path):
    # identities numbered from 0: "0" is a person (only "0000" is a distractor); an identity's
    # images may lie in subfolders (per camera); hidden folders and files (.ipynb_checkpoints,
    # macOS's ._ copies) and files PIL cannot decode (.h5: only identified) are not images
    touch(tmp_path / "train" / "0", "a_c1.jpg")
    touch(tmp_path / "train" / "1" / "cam2", "b_c2.jpg", "._b_c2.jpg")
    touch(tmp_path / "train" / ".ipynb_checkpoints", "x_c1.jpg")
    touch(tmp_path / "query" / "2", "q_c1.jpg", "feats.h5")
    touch(tmp_path / "gallery" / "2", "g_c2.jpg")
    d = data.load_dataset(str(tmp_path), "folder", verbose=False)
    assert d.num_train_pids == 2 and d.train.pids.tolist() == [0, 1]
    assert d.train.paths[1] == str(tmp_path / "train" / "1" / "cam2" / "b_c2.jpg")
    assert len(d.query) == 1 and d.cameras
    # one name without a camera among named ones: a warning naming it, cameras off
    touch(tmp_path / "gallery" / "2", "nocam.jpg")
    with pytest.warns(UserWarning, match=r"1 file names of .* carry no camera id .*nocam.jpg"):
        assert not data.load_dataset(str(tmp_path), "folder", verbose=False).cameras


def test_folder_layout_errors(tmp_path):
    touch(tmp_path / "train" / "1", "a_c1.jpg")
    with pytest.raises(UserError, match=r"not a folder dataset.*missing: query, gallery"):
        data.load_dataset(str(tmp_path), "folder")
    touch(tmp_path / "query", "loose_c1.jpg")  # an image beside the identity folders
    touch(tmp_path / "gallery" / "1")
    with pytest.raises(UserError, match=r"loose_c1.jpg: an image outside an identity folder"):
        data.load_dataset(str(tmp_path), "folder")
    os.remove(tmp_path / "query" / "loose_c1.jpg")
    touch(tmp_path / "query" / "1", "q_c2.jpg")
    with pytest.raises(UserError, match=r"gallery holds no images"):
        data.load_dataset(str(tmp_path), "folder")
    # a camera number no dataset has (MAX_CAMERA = 9999), here beyond int64 too
    touch(tmp_path / "gallery" / "1", "g_c99999999999999999999.jpg")
    with pytest.raises(UserError, match=r"g_c99999999999999999999.jpg: camera "
                       r"c99999999999999999999 in its name; expected c1..c9999"):
        data.load_dataset(str(tmp_path), "folder")


def test_to_folders_round_trip(synthetic_root, tmp_path):
    # the synthetic set copied into the folder layout reads back in the same order (the folders
    # are the 4-digit pids the Market names start with) with the same identities: train labels
    # equal; query/gallery pids renumbered one to one, junk (-1) and distractors (0) kept
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    for cameras in (True, False):
        out = data.to_folders(ds, str(tmp_path / str(cameras)), cameras=cameras)
        back = data.load_dataset(out, "folder", verbose=False)
        assert back.cameras == cameras and back.num_train_pids == ds.num_train_pids
        assert back.train.pids.tolist() == ds.train.pids.tolist()
        for a, b in [(ds.query, back.query), (ds.gallery, back.gallery)]:
            pairs = set(zip(a.pids.tolist(), b.pids.tolist()))
            assert len(pairs) == len(set(a.pids.tolist())) == len(set(b.pids.tolist()))
            assert all((x == y) if min(x, y) <= 0 else True for x, y in pairs)
            if cameras:  # the files keep their names, the cameras their numbers (c1 -> 1)
                assert [os.path.basename(p) for p in a.paths] == [
                    os.path.basename(p) for p in b.paths]
                assert (b.cams == a.cams + 1).all()
    with pytest.raises(UserError, match="not empty"):
        data.to_folders(ds, out)
    # the training identities are relabelled, so their folders are named train0001, ...: never
    # the name of a test identity (another person), which would give both one pid
    names = {s: set(os.listdir(os.path.join(out, s))) for s in ("train", "query", "gallery")}
    assert all(n.startswith("train") for n in names["train"])
    assert not names["train"] & (names["query"] | names["gallery"])


def deny(monkeypatch, name, inside):
    """os.<name> (listdir or stat) raises PermissionError for every path inside `inside`, as for
    a user without the folder's read / search permission (tests run as root, where chmod 000
    does not stop reading)."""
    real = getattr(os, name)

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(inside)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(os, name, denied)


def test_load_dataset_permission_denied(tmp_path, monkeypatch):
    # a split folder that cannot be listed, and a root that cannot be looked into: each error
    # says permission denied and names the folder (not "missing: bounding_box_train, ...")
    root = hand_layout(tmp_path / "ds")
    with monkeypatch.context() as m:
        deny(m, "listdir", tmp_path / "ds" / "query")
        with pytest.raises(UserError, match=r"cannot read the folder .*query: Permission denied"):
            data.load_dataset(root, verbose=False)
    deny(monkeypatch, "stat", os.path.join(root, ""))   # the paths below root, not root itself
    with pytest.raises(UserError, match=f"cannot look into the folder {re.escape(root)}: "
                                        "Permission denied"):
        data.load_dataset(root, verbose=False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="chmod 000 does not stop root from reading")
@pytest.mark.parametrize("locked", ["query", "."])
def test_load_dataset_chmod_000(tmp_path, locked):
    # the same two cases with real permissions: a split folder, then the root itself, mode 000
    root = hand_layout(tmp_path / "ds")
    folder = os.path.join(root, locked)
    os.chmod(folder, 0)
    try:
        with pytest.raises(UserError, match="Permission denied"):
            data.load_dataset(root, verbose=False)
    finally:
        os.chmod(folder, 0o755)


def real_pictures(root):
    """Turn every empty .jpg of a hand layout into a real 8x4 JPEG (for the decoding checks)."""
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".jpg"):
                Image.new("RGB", (4, 8), (120, 60, 30)).save(os.path.join(folder, f))


def test_load_dataset_bad_names(tmp_path):
    root = hand_layout(tmp_path)
    real_pictures(root)
    touch(tmp_path / "query", "0011_c1.jpg")
    with pytest.raises(UserError, match="0011_c1.jpg"):
        data.load_dataset(root, verbose=False)
    # skipped with a warning naming the file; the other 2 query images remain
    with pytest.warns(UserWarning, match="0011_c1.jpg"):
        d = data.load_dataset(root, verbose=False, skip_bad_files=True)
    assert len(d.query) == 2


def test_skip_bad_files_drops_corrupt_images_with_their_labels(tmp_path):
    # The hand layout's query holds 0011_c1s1_000700_01.jpg and 0012_c2s1_000800_01.jpg; the second
    # is cut to its first 100 bytes (a truncated download). Without the flag the dataset still loads
    # (names only) and load_images names the file; with it, the file and its pid 12 / camera 1 go.
    root = hand_layout(tmp_path)
    real_pictures(root)
    cut = tmp_path / "query" / "0012_c2s1_000800_01.jpg"
    cut.write_bytes(cut.read_bytes()[:100])
    d = data.load_dataset(root, verbose=False)
    with pytest.raises(UserError,
                       match="cannot decode image .*0012_c2s1_000800_01.jpg.*--skip-bad-files"):
        data.load_images(d.query.paths, 8, 4)
    with pytest.warns(UserWarning, match="skipping .*0012_c2s1_000800_01.jpg: cannot decode"):
        d = data.load_dataset(root, verbose=False, skip_bad_files=True)
    assert [os.path.basename(p) for p in d.query.paths] == ["0011_c1s1_000700_01.jpg"]
    assert d.query.pids.tolist() == [11] and d.query.cams.tolist() == [0]
    assert data.load_images(d.query.paths, 8, 4).shape == (1, 3, 8, 4)
    # a split whose every image is corrupt is an error naming the folder, flag or not
    (tmp_path / "query" / "0011_c1s1_000700_01.jpg").write_bytes(os.urandom(64))
    with pytest.warns(UserWarning):
        with pytest.raises(UserError, match="query holds no readable images"):
            data.load_dataset(root, verbose=False, skip_bad_files=True)


def test_train_with_only_junk(tmp_path):
    touch(tmp_path / "bounding_box_train", "-1_c1s1_000100_01.jpg", "0000_c1s1_000200_01.jpg")
    touch(tmp_path / "query", "0011_c1s1_000700_01.jpg")
    touch(tmp_path / "bounding_box_test", "0011_c2s1_000900_01.jpg")
    with pytest.raises(UserError, match="only junk/distractor"):
        data.load_dataset(str(tmp_path), verbose=False)


# -----------------------------------------------------------------------------
# The demos' dataset and the command line

def test_demo_dataset(synthetic_root, tmp_path, monkeypatch):
    # a complete synthetic dataset (three filled split folders and synthetic.txt): its root
    assert data.demo_dataset(synthetic_root) == synthetic_root
    # no such folder: the error says how to write it, with --root for a root not the default
    missing = str(tmp_path / "none")
    with pytest.raises(UserError) as e:
        data.demo_dataset(missing)
    assert str(e.value) == (f"{missing} holds no synthetic dataset: write it first with "
                            f"`python synthetic.py --root {missing}`")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        data.demo_dataset()
    assert str(e.value) == ("data/synthetic holds no synthetic dataset: write it first with "
                            "`python synthetic.py`")
    # three filled split folders without synthetic.txt (a Market-style dataset, or a synthetic
    # one cut short before its last move): not a demo dataset
    root = hand_layout(tmp_path / "market")
    with pytest.raises(UserError, match=f"{re.escape(root)} holds no synthetic dataset"):
        data.demo_dataset(root)
    # synthetic.txt there but a split folder empty: not one either
    (tmp_path / "market" / "synthetic.txt").write_text("")
    assert data.demo_dataset(root) == root
    for f in os.listdir(tmp_path / "market" / "query"):
        os.remove(tmp_path / "market" / "query" / f)
    with pytest.raises(UserError, match=f"{re.escape(root)} holds no synthetic dataset"):
        data.demo_dataset(root)


def test_cli(tmp_path, capsys):
    # summary: the table of the hand layout, whose gallery holds 2 people (0011, 0012)
    root = hand_layout(tmp_path / "ds")
    data.main(["summary", "--root", root, "--dataset", "market1501"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["gallery", "2"] for line in lines)
    # folders: the same dataset copied into the folder layout, then its table: train 3 ids
    data.main(["folders", "--root", root, "--out", str(tmp_path / "folders")])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["train", "3", "4"] for line in lines)
    assert os.path.isdir(tmp_path / "folders" / "gallery" / "0011")
    # a wrong root: one line "error: ...", exit status 2, no traceback
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(data.main, ["summary", "--root", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: dataset root")
    # a mistyped command: named as unknown, with the known ones, in one line
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(data.main, ["sumary", "--root", root])
    assert e.value.code == 2 and capsys.readouterr().err == (
        "error: unknown command 'sumary'; expected one of summary, folders (python data.py -h)\n")


# -----------------------------------------------------------------------------
# PK sampler

# 5 identities: id 0 has 5 images (indices 0-4), id 1 has 4 (5-8), id 2 has 2 (9, 10), id 3 has
# 1 (11), id 4 has 4 (12-15). With P=2, K=4: ceil(5/2) = 3 batches of 8 indices; the last batch
# holds the 5th identity plus one identity drawn from the other four.
PIDS = np.array([0] * 5 + [1] * 4 + [2] * 2 + [3] + [4] * 4)


@pytest.mark.exercise(2)
def test_pk_sampler_batches():
    s = data.PKSampler(PIDS, P=2, K=4, seed=0)
    assert len(s) == 3
    for epoch in range(5):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == 3
        seen = []
        for b in batches:
            assert len(b) == 8                                  # P*K
            ids = PIDS[b]
            assert len(set(ids.tolist())) == 2                  # exactly P distinct identities
            for i in set(ids.tolist()):
                picked = [j for j in b if PIDS[j] == i]
                assert len(picked) == 4                         # K each
                if i == 3:
                    assert picked == [11] * 4                   # 1 image: repeated 4 times
                elif i == 2:
                    assert set(picked) == {9, 10}               # both images, 2 repeats
                else:
                    assert len(set(picked)) == 4                # >= K images: no repeat
            seen += sorted(set(ids.tolist()))
        # every identity at least once; 6 slots for 5 identities -> exactly one appears twice
        assert set(seen) == {0, 1, 2, 3, 4} and len(seen) == 6


@pytest.mark.exercise(2)
def test_pk_sampler_by_hand():
    # 3 identities, P = 2, K = 2: id 0 has images 0, 1, 2; id 1 has image 3 alone; id 2 has 4, 5.
    # An epoch: ceil(3 / 2) = 2 batches of P * K = 4 indices. The identities in a random order,
    # cut into groups of P = 2; the last group, one short, takes an identity drawn from the other
    # group, so both batches hold 2 distinct identities and one identity comes twice (4 slots).
    # Each identity's K = 2 indices sit next to each other in its batch:
    #   id 0: 2 of its 3 images, no repeat
    #   id 1: [3, 3] (its one image, then drawn again with replacement)
    #   id 2: 4 and 5, in either order
    pids = np.array([0, 0, 0, 1, 2, 2])
    s = data.PKSampler(pids, P=2, K=2, seed=0)
    batches = list(s)
    assert len(s) == len(batches) == 2
    slots = []
    for b in batches:
        assert len(b) == 4
        pairs = [b[:2], b[2:]]
        assert pids[pairs[0][0]] != pids[pairs[1][0]]       # 2 distinct identities
        for pair in pairs:
            i = int(pids[pair[0]])
            assert pids[pair[1]] == i                       # K of one identity, side by side
            if i == 0:
                assert len(set(pair)) == 2 and set(pair) <= {0, 1, 2}
            elif i == 1:
                assert pair == [3, 3]
            else:
                assert sorted(pair) == [4, 5]
            slots.append(i)
    assert sorted(set(slots)) == [0, 1, 2] and len(slots) == 4
    # the same (seed, epoch), the same batches
    s.set_epoch(0)
    assert list(s) == batches


@pytest.mark.exercise(2)
def test_pk_sampler_fill_is_distinct_and_few_images_all_come():
    # PIDS with P = 4, K = 4: ceil(5 / 4) = 2 batches. The last group holds one identity and is
    # short by 3: it takes 3 distinct identities of the 4 others, so both batches hold exactly 4
    # distinct identities. Identity 2 has 2 images (9, 10) < K: each time it is drawn both come
    # (each once, then 2 drawn again), never only one of them; identity 3 has one image: [11] * 4.
    s = data.PKSampler(PIDS, P=4, K=4, seed=0)
    for epoch in range(20):
        s.set_epoch(epoch)
        for b in s:
            ids = PIDS[b]
            assert len(b) == 16 and len(set(ids.tolist())) == 4
            if 2 in ids:
                assert set(np.array(b)[ids == 2].tolist()) == {9, 10}
            if 3 in ids:
                assert np.array(b)[ids == 3].tolist() == [11] * 4


@pytest.mark.exercise(2)
def test_pk_sampler_replays_seed_and_epoch():
    a, b = data.PKSampler(PIDS, 2, 4, seed=1), data.PKSampler(PIDS, 2, 4, seed=1)
    a.set_epoch(7)
    b.set_epoch(7)
    assert list(a) == list(b) == list(a)         # same (seed, epoch): the same epoch, every time
    epochs = []
    for e in range(4):
        a.set_epoch(e)
        epochs.append(list(a))
    assert any(x != epochs[0] for x in epochs[1:])   # epochs differ
    assert list(data.PKSampler(PIDS, 2, 4, seed=2)) != list(data.PKSampler(PIDS, 2, 4, seed=1))


def test_pk_sampler_too_few_identities():
    with pytest.raises(UserError, match=r"--P 6: a PK batch needs P distinct identities, but the "
                       r"training split has only 5"):
        data.PKSampler(PIDS, P=6, K=4)


def test_pk_sampler_batch_must_not_exceed_the_training_images():
    # PIDS: 5 identities, 16 images; P x K = 5 x 4 = 20 > 16 (K as large as int64 cannot hold,
    # too): refused; 5 x 3 = 15 is fine
    data.PKSampler(PIDS, P=5, K=3)
    for K in (4, 10**20):
        with pytest.raises(UserError, match=f"--P 5 --K {K}: a batch of P x K = {5 * K} images "
                           "is more than the 16 training images"):
            data.PKSampler(PIDS, P=5, K=K)


def test_decoding_more_than_the_memory_is_refused_before_allocating():
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    data.check_memory(memory, "all of it")
    with pytest.raises(UserError, match=r"decoding 9 train images at 100000x50000 takes .* GiB, "
                       r"more than this machine's .* GiB of memory: give a smaller --height"):
        data.load_images(["a.jpg"] * 9, 100000, 50000, desc="train")


def test_pk_sampler_refuses_a_negative_seed():
    # numpy's generators take seeds >= 0: refused when the sampler is made, not at its first epoch
    with pytest.raises(UserError, match="seed must be >= 0"):
        data.PKSampler([0, 1], P=1, K=1, seed=-1)


def test_train_batches_follow_the_sampler():
    # images whose pixels all equal their dataset index: each yielded batch must be the sampler's
    # batch, in order, its labels the pids of those indices, and with augment's flip/pad/erasing
    # off, x must be exactly normalize(images[idx])
    images = torch.arange(len(PIDS), dtype=torch.uint8).view(-1, 1, 1, 1)   # [N, 1, 1, 1]
    images = images.expand(-1, 3, 4, 2).contiguous()                         # [N, 3, 4, 2]
    labels = torch.as_tensor(PIDS)
    s = data.PKSampler(PIDS, P=2, K=4, seed=3)
    s.set_epoch(1)
    g = torch.Generator().manual_seed(0)
    batches = list(data.train_batches(images, labels, s, g, flip=False, pad=0))
    assert len(batches) == len(s) == 3
    for (x, y), idx in zip(batches, s):
        assert x.shape == (8, 3, 4, 2) and x.dtype == torch.float32
        assert torch.equal(y, labels[idx])
        assert torch.equal(x, data.normalize(images[idx]))


# -----------------------------------------------------------------------------
# normalize and augment

def test_normalize_by_hand():
    # x_norm = (x / 255 - mean) / std:
    # R 255: (1 - 0.485) / 0.229 = 2.248908;   R 0: -0.485 / 0.229 = -2.117904
    # G 128: (0.501961 - 0.456) / 0.224 = 0.205182;   B 102: (0.4 - 0.406) / 0.225 = -0.026667
    x = torch.tensor([[[[255, 0]], [[128, 128]], [[102, 102]]]], dtype=torch.uint8)   # [1, 3, 1, 2]
    y = data.normalize(x)
    assert y.dtype == torch.float32 and y.shape == (1, 3, 1, 2)
    expected = torch.tensor([[[[2.248908, -2.117904]],
                              [[0.205182, 0.205182]],
                              [[-0.026667, -0.026667]]]])
    assert torch.allclose(y, expected, atol=1e-5)


def test_statistics_made_once_and_batches_not_kept():
    # normalize's MEAN / STD tensors are made once per device; a batch copied by to_device is
    # not held after its caller drops it (a cache there would keep every batch alive)
    assert data._mean_std(torch.device("cpu")) is data._mean_std(torch.device("cpu"))
    batch = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    alive = weakref.ref(batch)
    assert data.to_device(batch, "cpu") is batch  # already there: the same tensor
    del batch
    gc.collect()
    assert alive() is None


def ramp(B, H, W):
    """uint8 [B, 3, H, W] whose value grows along the width (and height), so a mirror is visible."""
    img = (torch.arange(H)[:, None] * 3 + torch.arange(W)[None, :] * 7) % 256
    return img.to(torch.uint8).expand(B, 3, H, W).clone()


def test_augment_shapes_and_determinism():
    x = ramp(5, 32, 16)
    y = data.augment(x, torch.Generator().manual_seed(0), random_erasing=0.5)
    assert y.shape == (5, 3, 32, 16) and y.dtype == torch.float32 and y.device == x.device
    # the same generator seed gives the same batch; another seed a different one
    assert torch.equal(y, data.augment(x, torch.Generator().manual_seed(0), random_erasing=0.5))
    assert not torch.equal(y, data.augment(x, torch.Generator().manual_seed(1), random_erasing=0.5))


def test_augment_flip_mirrors():
    x = ramp(32, 8, 6)
    ref = data.normalize(x)
    y = data.augment(x, torch.Generator().manual_seed(0), flip=True, pad=0)
    same = [torch.equal(y[i], ref[i]) for i in range(32)]
    mirrored = [torch.equal(y[i], ref[i].flip(2)) for i in range(32)]   # column j <- column W-1-j
    # each sample is the image or its mirror (never both: the ramp is not symmetric); with p = 0.5
    # both kinds appear among 32 samples (this seed: checked, the chance otherwise is 2^-31)
    assert all(s != m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)
    assert torch.equal(data.augment(x, torch.Generator().manual_seed(0), flip=False, pad=0), ref)


def test_augment_pad_crop_is_a_shift():
    # pad 2 + crop back to 8 x 6: each sample is a window of the zero-padded normalised image,
    # top-left corner (oy, ox) in {0..4} x {0..4} = 25 possible shifts; the size never changes
    B, H, W, pad = 200, 8, 6, 2
    x = ramp(B, H, W)
    y = data.augment(x, torch.Generator().manual_seed(0), flip=False, pad=pad)
    assert y.shape == (B, 3, H, W)
    padded = F.pad(data.normalize(x), (pad,) * 4)                       # 0 = the mean colour
    shifts = []
    for i in range(B):
        hits = [(oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                if torch.equal(y[i], padded[i, :, oy:oy + H, ox:ox + W])]
        assert len(hits) == 1
        shifts.append(hits[0])
    # the shift is drawn per sample and all 25 occur among 200 samples (this seed: checked; each
    # is missed with chance (24/25)^200 = 3e-4)
    assert len(set(shifts)) == 25


def test_augment_random_erasing():
    B, H, W = 16, 64, 32
    x = torch.full((B, 3, H, W), 200, dtype=torch.uint8)
    # 200 normalises to (1.307, 1.466, 1.681), never 0, so zeros are exactly the erased pixels
    y = data.augment(x, torch.Generator().manual_seed(0), flip=False, pad=0, random_erasing=1.0)
    # the same seed gives the same draws: columns 3..7 of the table are the rectangles
    draws = data._draws(B, H, W, 0, 1.0, torch.Generator().manual_seed(0))      # [B, 8]
    erase, y0, x0, h, w = draws[:, 3:].unbind(1)
    assert erase.all()                                                   # p = 1: every sample
    for i in range(B):
        # the zeros are exactly rows y0..y0+h-1, columns x0..x0+w-1, in all three channels
        box = torch.zeros(H, W, dtype=torch.bool)
        box[y0[i]:y0[i] + h[i], x0[i]:x0[i] + w[i]] = True
        assert torch.equal(y[i] == 0, box.expand(3, H, W))
        # inside the image; area S_e in [0.02, 0.4] * 64 * 32 = [41, 819] px and aspect h / w in
        # [0.3, 3.33], both widened a little because h and w are rounded to whole pixels
        assert y0[i] >= 0 and x0[i] >= 0 and y0[i] + h[i] <= H and x0[i] + w[i] <= W
        assert 0.015 * H * W <= h[i] * w[i] <= 0.43 * H * W and 0.25 <= h[i] / w[i] <= 4.0
    # random_erasing = 0 (and no pad): nothing erased
    assert (data.augment(x, torch.Generator().manual_seed(0), flip=False, pad=0) != 0).all()


def literal_augment(x, generator, flip, pad, random_erasing):
    """augment as its docstring says it in words, one step at a time on the float image: normalise,
    mirror, pad with zeros, crop the window at (oy, ox), zero the erasing rectangle."""
    B, _, H, W = x.shape
    # the same draws as augment's, in the same order
    draws = data._draws(B, H, W, pad, random_erasing, generator)
    out = []
    for (mirror, oy, ox, erase, y0, x0, h, w), img in zip(draws.tolist(), data.normalize(x)):
        if flip and mirror:
            img = img.flip(2)
        img = F.pad(img, (pad, pad, pad, pad))[:, oy:oy + H, ox:ox + W].clone()
        if erase:
            img[:, y0:y0 + h, x0:x0 + w] = 0
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("shape,pad", [((6, 3, 16, 8), 3), ((5, 3, 16, 8), 10),
                                       ((4, 3, 9, 13), 0), ((3, 3, 64, 32), 10)])
def test_augment_equals_the_literal_steps(shape, pad):
    # augment's slice copies and strips must give the very bits of the step-by-step version, pad
    # wider than the image (10 > 8 columns: a sample can be all padding) included, and the same
    # batch when it is cut out of a larger cache by `index` (here the rows in reverse order)
    torch.manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    for seed in range(4):
        for flip, erasing in ((True, 0.5), (False, 1.0), (True, 0.0)):
            expected = literal_augment(x, torch.Generator().manual_seed(seed), flip, pad, erasing)
            got = data.augment(x, torch.Generator().manual_seed(seed), flip, pad, erasing)
            assert torch.equal(got, expected)
            cache = torch.cat([torch.zeros_like(x[:1]), x.flip(0)])  # row 0 unused, then x reversed
            index = list(range(len(x), 0, -1))                       # rows len(x)..1 = x in order
            g = torch.Generator().manual_seed(seed)
            assert torch.equal(data.augment(cache, g, flip, pad, erasing, index), expected)


def test_erasing_boxes_ranges():
    # many draws on a small 16 x 8 image, where the limits are often hit: a rectangle must be
    # strictly smaller than the image (h < H, w < W, as in Zhong et al.'s code) and may sit
    # anywhere it fits, from row 0 to row H - h and column 0 to W - w, both ends included
    B, H, W = 4000, 16, 8
    erase, y0, x0, h, w = data._erasing_boxes(B, H, W, 0.5, torch.Generator().manual_seed(0))
    assert abs(erase.float().mean().item() - 0.5) < 0.03        # p = 0.5; std of the mean 0.008
    y0, x0, h, w = y0[erase], x0[erase], h[erase], w[erase]
    assert ((h >= 1) & (h < H) & (w >= 1) & (w < W)).all()
    assert ((y0 >= 0) & (y0 <= H - h) & (x0 >= 0) & (x0 <= W - w)).all()
    assert (y0 == 0).any() and (y0 == H - h).any() and (x0 == 0).any() and (x0 == W - w).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_same_on_cuda():
    # random numbers come from the CPU generator, so CPU and CUDA give the same batch
    x = ramp(8, 32, 16)
    cpu = data.augment(x, torch.Generator().manual_seed(0), random_erasing=0.5)
    gpu = data.augment(x.cuda(), torch.Generator().manual_seed(0), random_erasing=0.5)
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-6)


# -----------------------------------------------------------------------------
# load_images

def test_load_images(tmp_path, capsys):
    red = str(tmp_path / "red.jpg")
    Image.new("RGB", (20, 40), (255, 0, 0)).save(red, quality=95)       # 40 x 20 pure red JPEG
    halves = np.zeros((128, 64, 3), dtype=np.uint8)
    halves[:, 32:] = 255                                                 # left black, right white
    step = str(tmp_path / "step.png")
    Image.fromarray(halves).save(step)
    grey = str(tmp_path / "grey.jpg")
    Image.new("L", (64, 128), 90).save(grey)                             # one channel -> RGB
    x = data.load_images([red, step, grey], height=16, width=8, desc="test")
    assert x.shape == (3, 3, 16, 8) and x.dtype == torch.uint8
    # red survives JPEG and resizing up to a few levels
    assert (x[0, 0].int() - 255).abs().max() <= 3 and x[0, 1:].int().max() <= 3
    # 64 -> 8 columns, bilinear widened for shrinking: output column j is centred at 8j + 4 and
    # weighs input column k (centre k + 0.5) by 1 - |k + 0.5 - (8j + 4)| / 8 (weights sum to 8).
    # Columns 0-2 see only black, 5-7 only white. Column 3 (centre 28) sees white 32..35 with
    # weights 7/16, 5/16, 3/16, 1/16 = 1 -> 255 / 8 = 31.9; column 4 is its mirror:
    # 255 * 7/8 = 223.1
    assert (x[1, :, :, :3] == 0).all() and (x[1, :, :, 5:] == 255).all()
    assert (x[1, :, :, 3].int() - 32).abs().max() <= 1
    assert (x[1, :, :, 4].int() - 223).abs().max() <= 1
    assert (x[2] == x[2, :1]).all() and abs(int(x[2, 0, 0, 0]) - 90) <= 2  # grey copied to R, G, B
    err = capsys.readouterr().err
    assert "decoded 3 images" in err and "images/s" in err


def test_load_images_names_corrupt_file(tmp_path):
    good = str(tmp_path / "0001_c1s1_000001_01.jpg")
    Image.new("RGB", (64, 128), (10, 200, 30)).save(good)
    raw = open(good, "rb").read()
    cut = str(tmp_path / "0001_c1s1_000002_01.jpg")
    open(cut, "wb").write(raw[:len(raw) // 2])                           # truncated JPEG
    with pytest.raises(UserError, match="cannot decode image .*0001_c1s1_000002_01.jpg"):
        data.load_images([good, cut], 16, 8)
    text = str(tmp_path / "0001_c1s1_000003_01.jpg")
    open(text, "w").write("not a picture")                               # not an image at all
    with pytest.raises(UserError, match="0001_c1s1_000003_01.jpg"):
        data.load_images([text], 16, 8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_never_opened(tmp_path, monkeypatch):
    # a named pipe named like an image would block its reader forever: it is refused before it
    # is opened (the stand-in Image.open fails the test instead of hanging on the pipe), as a
    # file that does not decode, and --skip-bad-files drops it with a warning
    root = hand_layout(tmp_path)
    real_pictures(root)
    pipe = str(tmp_path / "query" / "0013_c1s1_000001_00.jpg")
    os.mkfifo(pipe)
    real_open = Image.open

    def guarded_open(fp, *args, **kwargs):
        assert str(fp) != pipe, "the named pipe was opened"
        return real_open(fp, *args, **kwargs)
    monkeypatch.setattr(Image, "open", guarded_open)
    d = data.load_dataset(root, verbose=False)
    with pytest.raises(UserError, match=f"cannot decode image {re.escape(pipe)}: not a regular"):
        data.load_images(d.query.paths, 8, 4)
    with pytest.warns(UserWarning, match=f"skipping {re.escape(pipe)}: cannot decode it"):
        d = data.load_dataset(root, verbose=False, skip_bad_files=True)
    assert pipe not in d.query.paths and len(d.query) == 2


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    # a 16x8 image (128 pixels) under a limit of 100 pixels: PIL's warning, which names no file,
    # becomes one warning naming it; under a limit of 50 (128 > 2 * 50) PIL refuses the image,
    # and the error (or with --skip-bad-files the warning) names it too
    root = hand_layout(tmp_path)
    real_pictures(root)                                                  # 8x4: 32 pixels each
    big = str(tmp_path / "query" / "0011_c1s1_000700_01.jpg")
    Image.new("RGB", (8, 16)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    d = data.load_dataset(root, verbose=False)
    for load in (lambda: data.load_images(d.query.paths, 8, 4),
                 lambda: data.load_dataset(root, verbose=False, skip_bad_files=True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load()
        bombs = [str(w.message) for w in caught
                 if issubclass(w.category, Image.DecompressionBombWarning)]
        assert len(bombs) == 1 and bombs[0].startswith(f"{big}: 8x16 = 128 pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(UserError, match=f"cannot decode image {re.escape(big)}: Image size"):
        data.load_images(d.query.paths, 8, 4)
    with pytest.warns(UserWarning, match=f"skipping {re.escape(big)}: cannot decode it"):
        assert len(data.load_dataset(root, verbose=False, skip_bad_files=True).query) == 1

