"""Bad input through the real command lines: every case ends in ONE line `error: <cause>` on stderr
and exit status 2 (common.exit_on_user_error), never a traceback, and names what is wrong (the
file, the folder or the flag) and what was expected.

The three commands that read a dataset are run in-process: `python aea.py`, `python aaanet.py
stage1` and `python evaluate.py`. Flags checks that belong to one paper (R, omega, margin, ...)
are tested next to that paper (test_aea.py, test_aaanet.py); the dataset, device and output folder
checks are shared, so they are tested here once for all three commands.
"""
import os
import random
import shutil

import pytest
import torch
from PIL import Image

import aaanet
import aea
import common
import data
import evaluate
import synthetic
from conftest import run_python

# every case runs a whole command (python aea.py, aaanet.py, evaluate.py): system tests
pytestmark = pytest.mark.slow

# the small sizes every command gets here: no ImageNet file, 64x32 inputs, the CPU, one epoch
SMALL = ["--dataset", "synthetic", "--weights", "none", "--height", "64", "--width", "32",
         "--device", "cpu", "--epochs", "1"]


def run_aea(root, out, *flags):
    return common.exit_on_user_error(aea.main, ["--root", root, "--out", out, "--P", "4",
                                                "--K", "2", "--warmup-epochs", "0", *SMALL,
                                                *flags])


def run_aaanet(root, out, *flags):
    return aaanet.main(["stage1", "--root", root, "--out", out, "--batch-size", "4",
                        "--eval-metrics", *SMALL, *flags])


def run_evaluate(root, out, *flags):
    # evaluate.py takes no --epochs/--out: a plain ResNet-50 with random weights, Euclidean only
    flags = [f for f in flags if f not in ("--epochs", "1")]
    return evaluate.main(["--weights", "none", "--root", root, "--dataset", "synthetic",
                          "--height", "64", "--width", "32", "--device", "cpu", *flags])


COMMANDS = {"aea": run_aea, "aaanet": run_aaanet, "evaluate": run_evaluate}


def expect_error(capsys, command, root, out, *flags):
    """Run `command`; it must exit with status 2 and a single `error: ...` line; returns that
    line."""
    with pytest.raises(SystemExit) as exit_info:
        command(root, out, *flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small valid synthetic dataset (6 training identities), copied by the tests that spoil
    it."""
    return synthetic.make_synthetic(str(tmp_path_factory.mktemp("tiny")), seed=1, train_ids=6,
                                    test_ids=4, cameras=2, max_per_camera=2, junk=1,
                                    distractors=1)


def spoilt(tiny, tmp_path):
    """A fresh copy of the tiny dataset to break."""
    return shutil.copytree(tiny, tmp_path / "data")


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_root_and_missing_split_folders(command, tiny, tmp_path, capsys):
    line = expect_error(capsys, COMMANDS[command], str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert "dataset root" in line and "nowhere does not exist" in line
    root = spoilt(tiny, tmp_path)
    shutil.rmtree(root / "query")
    line = expect_error(capsys, COMMANDS[command], str(root), str(tmp_path / "out"))
    assert "expected the folders bounding_box_train, query, bounding_box_test" in line
    assert "missing: query" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_unparsable_name_and_corrupt_jpeg_name_the_file(command, tiny, tmp_path, capsys):
    run = COMMANDS[command]
    root = spoilt(tiny, tmp_path)
    first = sorted(os.listdir(root / "bounding_box_test"))[0]
    # a name without its camera: the error names the file and offers the flag
    shutil.copy(root / "bounding_box_test" / first, root / "bounding_box_test" / "0042_x1.jpg")
    line = expect_error(capsys, run, str(root), str(tmp_path / "out"))
    assert "0042_x1.jpg: image name does not parse" in line and "--skip-bad-files" in line
    os.remove(root / "bounding_box_test" / "0042_x1.jpg")
    # a truncated JPEG (the first 200 bytes of a real one), in the split each command decodes first
    split = "query" if command == "evaluate" else "bounding_box_train"
    victim = root / split / sorted(os.listdir(root / split))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    line = expect_error(capsys, run, str(root), str(tmp_path / "out"))
    assert f"cannot decode image {victim}" in line and "--skip-bad-files" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_split(command, tiny, tmp_path, capsys):
    root = spoilt(tiny, tmp_path)
    for f in os.listdir(root / "bounding_box_test"):
        os.remove(root / "bounding_box_test" / f)
    # ignored, as Market's Thumbs.db
    (root / "bounding_box_test" / "readme.txt").write_text("not an image")
    line = expect_error(capsys, COMMANDS[command], str(root), str(tmp_path / "out"))
    assert "bounding_box_test holds no images" in line


def test_fewer_identities_than_a_batch_needs(tiny, tmp_path, capsys):
    # AEA: P identities per PK batch; the tiny set has 6. AAA-Net: a batch larger than the images.
    line = expect_error(capsys, run_aea, str(tiny), str(tmp_path / "out"), "--P", "7")
    assert "--P 7" in line and "only 6" in line
    line = expect_error(capsys, run_aaanet, str(tiny), str(tmp_path / "out"), "--batch-size", "500")
    assert "--batch-size 500 is larger than the" in line


@pytest.mark.parametrize("command", ["aea", "aaanet"])
def test_unknown_dataset_device_and_unwritable_out(command, tiny, tmp_path, capsys):
    run = COMMANDS[command]
    # argparse's choices or our check: status 2 either way
    with pytest.raises(SystemExit) as exit_info:
        run(str(tiny), str(tmp_path / "out"), "--dataset", "market9000")
    assert exit_info.value.code == 2 and "market9000" in capsys.readouterr().err
    if not torch.cuda.is_available():
        line = expect_error(capsys, run, str(tiny), str(tmp_path / "out"), "--device", "cuda")
        assert "--device cuda was asked for, but PyTorch sees no CUDA GPU" in line
    (tmp_path / "a_file").write_text("x")
    line = expect_error(capsys, run, str(tiny), str(tmp_path / "a_file" / "run"))
    assert "cannot write there" in line and "a_file" in line


@pytest.mark.parametrize("command", ["aea", "aaanet"])
def test_an_out_folder_held_by_a_running_process_is_refused(command, tiny, tmp_path, capsys):
    # OUT/.lock names a live process (this test's parent): another run is there; nothing of its
    # folder is touched. aaanet.py's stage 1 writes into OUT/stage1.
    out = tmp_path / "out"
    folder = out if command == "aea" else out / "stage1"
    folder.mkdir(parents=True)
    (folder / ".lock").write_text(str(os.getppid()))
    (folder / "last.pt").write_bytes(b"the other run's checkpoint")
    line = expect_error(capsys, COMMANDS[command], str(tiny), str(out))
    assert f"--out {folder} is in use by another run (pid {os.getppid()})" in line
    assert (folder / "last.pt").read_bytes() == b"the other run's checkpoint"


@pytest.mark.parametrize("command", ["aea", "aaanet"])
def test_a_test_split_without_true_matches_is_refused_before_training(command, tiny, tmp_path,
                                                                      capsys):
    # every gallery image of a query identity removed: no query can be scored, which the final
    # evaluation would find only after training; the run stops before its first step
    root = spoilt(tiny, tmp_path)
    query_pids = {data.parse_name(f)[0] for f in os.listdir(root / "query")}
    for f in os.listdir(root / "bounding_box_test"):
        if data.parse_name(f)[0] in query_pids:
            os.remove(root / "bounding_box_test" / f)
    # (aaanet.py stage 1 checks it when it evaluates, as here)
    evaluates = ["--eval-metrics", "euclidean"] if command == "aaanet" else []
    line = expect_error(capsys, COMMANDS[command], str(root), str(tmp_path / "out"), *evaluates)
    assert f"{root}: none of the {len(os.listdir(root / 'query'))} queries has a true match" in line
    assert not any("last.pt" in files for _, _, files in os.walk(tmp_path / "out"))


def test_aea_keeps_its_last_epoch_when_the_evaluation_fails(tiny, tmp_path, capsys, monkeypatch):
    # last.pt is written before the evaluation: an evaluation that fails (here a stand-in that
    # raises) loses no trained epoch, and --resume trains nothing and evaluates it
    def failing_score(*args):
        raise common.UserError("the evaluation failed")
    monkeypatch.setattr(aea, "score", failing_score)
    out = tmp_path / "out"
    line = expect_error(capsys, run_aea, str(tiny), str(out), "--epochs", "2")
    assert line == "error: the evaluation failed"
    assert common.load_checkpoint(str(out / "last.pt"))["epoch"] == 2
    monkeypatch.undo()
    results = run_aea(str(tiny), str(out), "--epochs", "2", "--resume")
    printed = capsys.readouterr().out
    assert "iter" not in printed
    assert list(results) == ["epoch 2", "epoch 2, basic half", "epoch 2, complementary half"]
    assert "epoch 2 " in printed and "queries evaluated" in printed


def test_a_new_run_replaces_an_earlier_run_only_once_it_starts(tiny, tmp_path, capsys):
    # --out holds an earlier run: its last.pt, best.pt, log.csv, an epoch_5.pt (--keep-every) and
    # tools.py plot's curves.png. A new run that fails its checks (P=7 > the 6 identities)
    # leaves them all; one that starts replaces them, and no old file lies beside its own
    out = tmp_path / "out"
    run_aea(str(tiny), str(out), "--variant", "b1", "--arch", "resnet18", "--keep-every", "1")
    (out / "epoch_5.pt").write_bytes((out / "epoch_1.pt").read_bytes())
    (out / "curves.png").write_text("a figure")
    (out / "notes.txt").write_text("the user's own file")
    earlier = sorted(os.listdir(out))
    line = expect_error(capsys, run_aea, str(tiny), str(out), "--P", "7")
    # (in this process the failed run's OUT/.lock is released at exit; a command's, at its end)
    assert "--P 7" in line and sorted(os.listdir(out)) == [".lock"] + earlier
    run_aea(str(tiny), str(out), "--variant", "b1", "--arch", "resnet18")
    printed = capsys.readouterr().out
    assert (f"note: {out} holds an earlier run; its files (best.pt, curves.png, epoch_1.pt, "
            "epoch_5.pt, last.pt, log.csv) are replaced when this run starts") in printed
    assert sorted(os.listdir(out)) == ["best.pt", "last.pt", "log.csv", "notes.txt"]


@pytest.mark.parametrize("command", ["aea", "aaanet"])
def test_resume_refuses_a_changed_training_split_of_the_same_size(command, tiny, tmp_path,
                                                                  capsys):
    # one epoch of 2 trained, then a training image replaced by another file under another name:
    # as many images, the same identities, other files. --resume refuses before any pixel is read
    root = spoilt(tiny, tmp_path)
    out = str(tmp_path / "out")
    flags = ["--epochs", "2", "--arch", "resnet18"]
    stop_after_one = ["--epochs", "1", "--arch", "resnet18"]
    COMMANDS[command](str(root), out, *stop_after_one)
    last = os.path.join(out, "last.pt") if command == "aea" else os.path.join(out, "stage1",
                                                                              "last.pt")
    ckpt = common.load_checkpoint(last)
    ckpt["config"]["epochs"] = 2  # as if stopped after epoch 1 of 2
    common.save_checkpoint(last, ckpt)
    train = root / "bounding_box_train"
    first = sorted(os.listdir(train))[0]
    os.rename(train / first, train / first.replace(first[-6:-4], "99"))
    line = expect_error(capsys, COMMANDS[command], str(root), out, *flags, "--resume")
    assert line == (f"error: --resume {last}: the training split of {root} holds "
                    f"{ckpt['num_images']} images as the run's did, but other files or "
                    "identities (renamed, replaced or moved images); resume on the run's own data")


@pytest.mark.parametrize("command", ["aea.py", "aaanet.py stage1"])
def test_a_failed_run_leaves_no_empty_out_folder(command, tiny, tmp_path):
    # a run that fails before writing anything (too few identities for its batch) removes the
    # folders it created for --out: OUT/new/run and, for aaanet.py, OUT/new/run/stage1
    bad = (["--P", "7", "--K", "2", "--warmup-epochs", "0"] if command == "aea.py"
           else ["--batch-size", "500", "--eval-metrics"])
    result = run_python(*command.split(), "--root", str(tiny), "--out",
                        str(tmp_path / "new" / "run"), *SMALL, *bad)
    assert result.returncode == 2 and ("--P 7" in result.stderr
                                       or "--batch-size 500" in result.stderr), result.stderr
    assert os.listdir(tmp_path) == []


def random_name(rng):
    """A file name that may or may not parse: right pattern with random numbers, or noise."""
    kind = rng.randrange(4)
    if kind == 0:  # Market-1501's pattern: 0002_c1s1_000451_03.jpg
        pid, camera, sequence = rng.randrange(-1, 2000), rng.randrange(0, 9), rng.randrange(9)
        frame, box = rng.randrange(10**6), rng.randrange(9)
        return f"{pid:04d}_c{camera}s{sequence}_{frame:06d}_0{box}.jpg"
    if kind == 1:
        return f"{rng.randrange(10**4):04d}_c{rng.randrange(1, 9)}_f{rng.randrange(10**7):07d}.jpg"
    if kind == 2:
        return "".join(rng.choice("abc_-.0123456789") for _ in range(rng.randrange(1, 20))) + ".jpg"
    return f"{rng.randrange(10**4):04d}_c{rng.randrange(1, 9)}_{rng.randrange(99)}.png"


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_and_names_never_end_in_a_traceback(seed, tmp_path, capsys):
    # The right three folders, each holding 0-12 files with random names (some parse, some do not)
    # and random bytes (some start like a JPEG, none is one). Every command, with and without
    # --skip-bad-files, must end in one `error:` line: never a traceback, never a hang.
    rng = random.Random(seed)
    root = tmp_path / "fuzz"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(root / split)
        for _ in range(rng.randrange(13)):
            # a JPEG's first bytes, or not
            head = b"\xff\xd8\xff\xe0" if rng.random() < 0.5 else b""
            (root / split / random_name(rng)).write_bytes(head + rng.randbytes(rng.randrange(2000)))
    for command in COMMANDS.values():
        for flags in ((), ("--skip-bad-files",)):
            expect_error(capsys, command, str(root), str(tmp_path / "out"), *flags)


def test_skip_bad_files_trains_on_what_is_left(tiny, tmp_path, capsys):
    # one corrupt training image and one unparsable gallery name: with the flag, AEA warns about
    # both, trains its one epoch on the rest and writes its checkpoint
    root = spoilt(tiny, tmp_path)
    victim = root / "bounding_box_train" / sorted(os.listdir(root / "bounding_box_train"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    Image.new("RGB", (16, 32)).save(root / "bounding_box_test" / "not_a_market_name.jpg")
    with pytest.warns(UserWarning) as warned:
        run_aea(str(root), str(tmp_path / "out"), "--skip-bad-files")
    text = " ".join(str(w.message) for w in warned)
    assert victim.name in text and "not_a_market_name.jpg" in text
    assert common.load_checkpoint(str(tmp_path / "out" / "last.pt"))["epoch"] == 1
