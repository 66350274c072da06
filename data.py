"""Re-ID data, the part a training loop reads: the Market-1501 layout (names parsed into person
and camera labels), a folder layout for your own images, a data path that decodes every image
once into one uint8 tensor and augments batches on the training device, and the PK sampler.

Layout (Market-1501, DukeMTMC-reID and CUHK03-NP all ship this way):
    ROOT/bounding_box_train/  training images
    ROOT/query/               query images
    ROOT/bounding_box_test/   gallery images
    file name  PPPP_cCsS_FFFFFF_BB.jpg  (Market: person id, camera C, sequence S, frame, box)
               PPPP_cC_fFFFFFFF.jpg     (DukeMTMC-reID)       PPPP_cC_N.png  (CUHK03-NP)
    pid -1 = junk (a bad detection: dropped from training, never a match in the gallery),
    pid 0000 = distractor (not a person of the query set; gallery only).
Your own images (--dataset folder): ROOT/train/<identity>/<image>, ROOT/query/<identity>/<image>,
ROOT/gallery/<identity>/<image>, any image format PIL opens; the identity is the folder name
("-1" junk, "0000" distractor; images may lie in its subfolders), the camera a c<digits> token
of the file name when every file has one, else every image is a camera of its own
(`_read_folders`).

Use (the training loop of a paper module, one line each):
    root = demo_dataset()                                    # the demos: data/synthetic
    data = load_dataset(root, "synthetic")                   # parse names, print the table
    images = load_images(data.train.paths, 256, 128).to(device)  # [N, 3, H, W] uint8, decoded once
    labels = torch.as_tensor(data.train.pids).to(device)
    sampler = PKSampler(data.train.pids, P=8, K=4, seed=0)   # sampler.set_epoch(e) each epoch
    for x, y in train_batches(images, labels, sampler, g, random_erasing=0.5): ...  # x augmented
Indexing one in-memory tensor and augmenting on the device replaces DataLoader workers: JPEG
decoding happens once, not once per epoch, and the per-sample work runs as a few batched ops.
On a GPU the uint8 cache can live on the GPU itself (Market-1501 at 256x128: 1.27 GB), so a batch
costs one small copy of indices and one of random numbers, neither of which waits for the GPU.

Commands:
    python data.py summary --root DIR --dataset NAME [--skip-bad-files]   # the table of a dataset
    python data.py folders --root DIR --dataset NAME --out DIR2 [--no-cameras]
                                          # copy a Market-layout dataset into the folder layout
The synthetic dataset of the demos is written by `python synthetic.py` (a tool beside this file).

Choices the papers leave open (each marked "Choice (not in the paper)" at its line):
- load_images resizes bilinearly (PIL, which filters when it shrinks).
- PKSampler: an epoch is ceil(#ids / P) batches, one per group of P identities in a random
  order; the last group is filled up with identities drawn from the rest (no repeat inside a
  batch), so every batch is full and every identity appears at least once per epoch.
- PKSampler: an identity with n < K images gives all n images once plus K - n drawn with
  replacement; one with n >= K gives K distinct images.
- augment: flip + pad 10 + random crop (+ random erasing), the usual re-ID baseline augmentation
  (neither paper states one); random erasing with Zhong et al.'s parameters: area
  U(0.02, 0.4) * H * W, aspect ratio U(0.3, 1/0.3), up to 100 tries for a rectangle that fits
  (Zhong et al. 2017, Alg. 1).
- augment: padding and random erasing write 0 in the normalised image (the ImageNet mean
  colour), the value AEA's adversarial erasing writes, rather than black or random values.
"""
import argparse
import contextlib
import functools
import os
import re
import shutil
import stat
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from common import UserError, exit_on_user_error

# -----------------------------------------------------------------------------
# Parsing the Market-1501 layout

# pid (or -1), camera, then the dataset's own tail: Market "s1_000151_01", Duke "_f0046985",
# CUHK03-NP "_1"; one regex so the three datasets share one parser.
_NAME = re.compile(r"^(-1|\d+)_c(\d+)(?:s\d+_\d+_\d+|_f\d+|_\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# where the usual releases unpack, tried under ROOT after ROOT itself: a path to the folder the
# download unpacked into works too
_RELEASES = {
    "market1501": ["Market-1501-v15.09.15", "Market-1501", "market1501"],
    "duke": ["DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid"],
    "cuhk03-labeled": ["cuhk03-np/labeled", "CUHK03-NP/labeled", "labeled"],
    "cuhk03-detected": ["cuhk03-np/detected", "CUHK03-NP/detected", "detected"],
    "synthetic": [],
    "folder": [],  # ROOT/train|query|gallery/<identity>/<image>: `_read_folders`
}


# The largest identity and camera numbers a file name may carry: the datasets have 4-digit
# identities and at most 15 cameras; far larger numbers are not labels, and the evaluation's keys
# (identity x number of cameras + camera) must fit in int64
MAX_PID = 10**9 - 1
MAX_CAMERA = 9999


def parse_name(filename):
    """(pid, cam) of a Market-style image name, both ints: the identity as written (-1 = junk,
    0 = distractor) and the camera counted from 0 (c1 -> 0). Only the file name is read, never the
    folders of a path; `_NAME` matches the names of the three datasets (its groups: the identity,
    the camera number). A name `_NAME` does not match, an identity above MAX_PID or a camera
    outside c1..c<MAX_CAMERA> (both limits are names) is a UserError whose message holds the file
    name as given.

    The camera matters beyond bookkeeping: the evaluation drops gallery images of the query's own
    pid AND camera, so a wrong camera silently changes every score. 0-based so it can index arrays.
    """
    # only the file name carries the labels; the folder says which split it belongs to
    m = _NAME.match(os.path.basename(filename))
    if m is None or not 1 <= int(m.group(2)) <= MAX_CAMERA:
        raise UserError(f"{filename}: image name does not parse; expected "
                        "PPPP_cCsS_FFFFFF_BB.jpg (Market-1501), PPPP_cC_fFFFFFFF.jpg (Duke) "
                        f"or PPPP_cC_N.png (CUHK03-NP), camera 1..{MAX_CAMERA}")
    pid = int(m.group(1))
    if pid > MAX_PID:
        raise UserError(f"{filename}: identity {pid} is not an identity number; expected "
                        f"-1 (junk), 0000 (distractor) or 1..{MAX_PID}")
    return pid, int(m.group(2)) - 1


@dataclass
class Split:
    """One split as parallel arrays: paths[i] shows person pids[i] seen by camera cams[i]."""
    paths: list          # image files, sorted by name
    pids: np.ndarray     # int64 [N]; training split: relabelled 0..num_train_pids-1
    cams: np.ndarray     # int64 [N], 0-based

    def __len__(self):
        return len(self.paths)


@dataclass
class ReIDData:
    """A parsed dataset: names and labels only (pixels come from load_images(split.paths, ...))."""
    name: str
    root: str            # the folder that holds the three split folders
    train: Split
    query: Split
    gallery: Split
    num_train_pids: int
    cameras: bool = True  # False: the file names carry no camera (each image is its own camera)

    def summary(self):
        """The table printed on load: identities / images / cameras per split."""
        rows = [f"{self.name} at {self.root}",
                "  split      ids   images  cameras  junk(-1)  distractors(0000)"]
        for s in _SPLITS:
            split = getattr(self, s)
            # train pids are labels 0..N-1 (label 0 is a person); elsewhere pid 0 is a distractor
            people = split.pids if s == "train" else split.pids[split.pids > 0]
            junk = 0 if s == "train" else int((split.pids == -1).sum())
            distractors = 0 if s == "train" else int((split.pids == 0).sum())
            cameras = len(np.unique(split.cams)) if self.cameras else "-"
            ids = len(np.unique(people))
            rows.append(f"  {s:8s}{ids:5d}{len(split):9d}{cameras:>9}{junk:10d}{distractors:19d}")
        if not self.cameras:
            rows.append("  no camera ids in the file names (no c<digits> token): the same-camera "
                        "rule is off")
        return "\n".join(rows)


def _is_folder(path):
    """os.path.isdir(path), except that a folder we may not look into is an error naming it:
    os.path.isdir answers False there, which would report the folders in it as missing."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except PermissionError as e:
        raise UserError(f"cannot look into the folder {os.path.dirname(path) or '.'}: "
                        f"{e.strerror}") from None
    except OSError:  # no such file, a file where a folder was expected on the way, ...
        return False


def _listdir(folder):
    """os.listdir(folder), with a folder that cannot be read (permission denied, ...) reported as
    an error naming it."""
    try:
        return os.listdir(folder)
    except OSError as e:
        raise UserError(f"cannot read the folder {folder}: {e.strerror}") from None


def _find_root(root, name):
    """The folder with bounding_box_train, bounding_box_test and query: ROOT or ROOT/<release>."""
    if name not in _RELEASES:
        raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(_RELEASES)}")
    if not _is_folder(root):
        raise UserError(f"dataset root {root} does not exist (or is not a folder)")
    # ROOT itself first, so that a path to the exact folder always wins over a guess below it
    tried = [root] + [os.path.join(root, r) for r in _RELEASES[name]]
    for folder in tried:
        if all(_is_folder(os.path.join(folder, s)) for s in _SPLITS.values()):
            return folder
    # name what ROOT lacks (the likeliest mistake: a path one level too high or too low)
    missing = [s for s in _SPLITS.values() if not _is_folder(os.path.join(root, s))]
    raise UserError(f"{root} is not a {name} dataset: expected the folders "
                    f"{', '.join(_SPLITS.values())} in it (missing: {', '.join(missing)}); "
                    f"also searched {', '.join(tried[1:]) or 'nothing else'}")


def _read_split(folder, skip_bad_files):
    """All images of one split folder, sorted by name, with their parsed (pid, cam)."""
    # sorted: os.listdir's order depends on the file system, and the index of an image must not,
    # or the same seed would draw different batches on two machines. Non-images (Thumbs.db,
    # readme.txt) are skipped silently; an image whose name does not parse is an error.
    files = sorted(f for f in _listdir(folder) if f.lower().endswith(_IMAGE_EXT))
    paths = []
    pids = []
    cams = []
    for f in files:
        path = os.path.join(folder, f)
        try:
            pid, cam = parse_name(path)
        except UserError as e:
            if not skip_bad_files:
                raise UserError(f"{e} (pass skip_bad_files=True / --skip-bad-files "
                                "to skip such files)") from None
            warnings.warn(f"skipping {e}")
            continue
        paths.append(path)
        pids.append(pid)
        cams.append(cam)
    if not paths:
        raise UserError(f"{folder} holds no images "
                        "(expected .jpg/.png files named like 0002_c1s1_000451_03.jpg)")
    return Split(paths, np.array(pids, dtype=np.int64), np.array(cams, dtype=np.int64))


# -----------------------------------------------------------------------------
# The folder layout (--dataset folder): a folder per identity, any image format PIL opens
#   ROOT/train/<identity>/<image>  ROOT/query/<identity>/<image>  ROOT/gallery/<identity>/<image>

_FOLDERS = ("train", "query", "gallery")
# a camera id in a file name: "c" and digits at the start or after a non-alphanumeric character
# ("0002_c1s1_000451_03.jpg", "alice_c2.png"; not "abc12.jpg")
_CAMERA = re.compile(r"(?<![a-z0-9])c(\d+)", re.IGNORECASE)


def image_extensions():
    """The file extensions of the formats PIL can decode: .jpg .png .bmp .webp .tif ..."""
    from PIL import ImageFile
    # not the formats PIL only identifies (stubs: HDF5, GRIB, BUFR; MPEG) or decodes with an
    # outside program (EPS: Ghostscript)
    extensions = Image.registered_extensions()  # loads every plugin first
    decodes = set()
    for f, (kind, _) in Image.OPEN.items():
        # `kind` is a class, or a function (JPEG's)
        stub = isinstance(kind, type) and issubclass(kind, ImageFile.StubImageFile)
        if f not in ("EPS", "MPEG") and not stub:
            decodes.add(f)
    return tuple(e for e, f in extensions.items() if f in decodes)


def _images_under(folder):
    """The images under `folder`, subfolders included, hidden files and folders skipped (.git,
    macOS's ._name copies), as sorted paths relative to it (the order must not depend on the
    file system)."""
    extensions = image_extensions()
    found = []

    def unreadable(e):  # os.walk would skip a folder it cannot read, silently
        raise UserError(f"cannot read the folder {e.filename}: {e.strerror}")

    for top, folders, files in os.walk(folder, onerror=unreadable):
        folders[:] = [f for f in folders if not f.startswith(".")]  # prune hidden folders
        for f in files:
            if f.lower().endswith(extensions) and not f.startswith("."):
                found.append(os.path.relpath(os.path.join(top, f), folder))
    return sorted(found)


def image_files(folder):
    """`_images_under(folder)`; a folder that does not exist or holds no image is an error."""
    if not _is_folder(folder):
        raise UserError(f"{folder} is not a folder of images (it does not exist, or is a file)")
    found = _images_under(folder)
    if not found:
        raise UserError(f"{folder} holds no images (.jpg, .png, .bmp, .webp, ... any format "
                        "PIL decodes)")
    return found


def _identity_pids(names):
    """{identity folder name: pid}: "-1" -> -1 (junk) and "0000" -> 0 (distractor), the
    Market-1501 names, and every other name -> 1, 2, ... in sorted order (names need not be
    numbers: "alice", "bob"; "0" is a person)."""
    # the Market-1501 names keep their meaning, so that a Market-style dataset converted by
    # `to_folders` scores the same
    people = sorted(n for n in names if n not in ("-1", "0000"))
    people = {n: i + 1 for i, n in enumerate(people)}
    return {n: people.get(n, -1 if n == "-1" else 0) for n in names}


def _read_folders(root):
    """The three splits of a folder dataset: ([Split] with raw pids, whether every file name
    carries a camera). Identities are the folder names, shared by the splits (the same name in
    query and gallery is the same person); an identity's images may lie in its subfolders."""
    if not _is_folder(root):
        raise UserError(f"dataset root {root} does not exist (or is not a folder)")
    missing = [s for s in _FOLDERS if not _is_folder(os.path.join(root, s))]
    if missing:
        raise UserError(f"{root} is not a folder dataset: expected the folders train, query, "
                        f"gallery in it (missing: {', '.join(missing)}), each with one folder "
                        "of images per identity")
    extensions = image_extensions()
    found = {}  # split -> [(path, identity, camera or None)]
    for s in _FOLDERS:
        folder = os.path.join(root, s)
        found[s] = []
        for identity in sorted(_listdir(folder)):  # sorted: indices must not depend on the disk
            sub = os.path.join(folder, identity)
            if identity.startswith("."):  # .ipynb_checkpoints, .DS_Store
                continue
            if not _is_folder(sub):
                if identity.lower().endswith(extensions):
                    raise UserError(f"{sub}: an image outside an identity folder; expected "
                                    f"{folder}/<identity>/<image>")
                continue  # Thumbs.db, readme.txt
            for f in _images_under(sub):
                stem = os.path.splitext(os.path.basename(f))[0]
                camera = _CAMERA.search(stem)
                cam = int(camera.group(1)) if camera else None
                if cam is not None and not 1 <= cam <= MAX_CAMERA:
                    raise UserError(f"{os.path.join(sub, f)}: camera c{cam} in its name; "
                                    f"expected c1..c{MAX_CAMERA}")
                found[s].append((os.path.join(sub, f), identity, cam))
        if not found[s]:
            raise UserError(f"{folder} holds no images (expected {folder}/<identity>/<image>, "
                            "e.g. train/0002/0002_c1_01.jpg)")
    pids = _identity_pids({identity for s in found.values() for _, identity, _ in s})
    unnamed = [p for s in found.values() for p, _, c in s if c is None]  # without a camera
    if 0 < len(unnamed) < sum(map(len, found.values())):
        warnings.warn(f"{len(unnamed)} file names of {root} carry no camera id (c<digits>), e.g. "
                      f"{unnamed[0]}: every image counts as a camera of its own")
    splits = []
    start = 0  # without camera ids: the first camera number of this split's images
    for s in _FOLDERS:
        paths, identities, cams = zip(*found[s])
        # without camera ids, every image is a camera of its own: no gallery image shares the
        # query's camera, so the evaluation's same-camera rule removes nothing, and XQDA /
        # KISSME pair all training images
        if unnamed:
            cams = range(start, start + len(paths))
        start += len(paths)
        split_pids = np.array([pids[i] for i in identities], dtype=np.int64)
        splits.append(Split(list(paths), split_pids, np.array(cams, dtype=np.int64)))
    return splits, not unnamed


def to_folders(ds, out, cameras=True):
    """Copy a parsed dataset (`load_dataset`) into the folder layout at `out`:
    out/<train|query|gallery>/<raw pid>/<file name>; cameras=False renames each file to
    <pid>_<n>.<ext>, without its camera (a folder dataset without camera ids). The training
    split's raw pids are gone after relabelling: its folders are named train<label + 1>, e.g.
    train0001, so that no training identity shares a name (and so a pid) with a test one."""
    if os.path.exists(out) and _listdir(out):
        raise UserError(f"{out} is not empty; give a new or empty folder")
    for s, split in zip(_FOLDERS, (ds.train, ds.query, ds.gallery)):
        for n, (path, pid) in enumerate(zip(split.paths, split.pids)):
            if s == "train":
                name = f"train{pid + 1:04d}"
            elif pid == -1:
                name = "-1"
            else:
                name = f"{pid:04d}"
            if cameras:
                file = os.path.basename(path)
            else:
                file = f"{name}_{n}{os.path.splitext(path)[1]}"  # e.g. 0002_0.jpg
            os.makedirs(os.path.join(out, s, name), exist_ok=True)
            shutil.copyfile(path, os.path.join(out, s, name, file))
    return out


# -----------------------------------------------------------------------------
# Loading a dataset

# what PIL raises for a file it cannot decode: missing or truncated (OSError), not an image or a bad
# header (ValueError, SyntaxError from some plugins), absurd dimensions (DecompressionBombError)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _open_image(path):
    """Image.open(path), for the two decoders below; raises one of _DECODE_ERRORS.

    A file that is not a regular one (a named pipe, a device, a folder) is refused before it is
    opened: reading a named pipe would wait forever for a writer. An image larger than PIL's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS) gets a warning that names the file; PIL's
    own warning names none, so the decoders silence it (_without_pil_bomb_warning).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    img = Image.open(path)  # raises DecompressionBombError above twice the limit
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        warnings.warn(f"{path}: {img.width}x{img.height} = {img.width * img.height} pixels, "
                      f"more than PIL's limit of {limit} (Image.MAX_IMAGE_PIXELS); a "
                      "decompression bomb?", Image.DecompressionBombWarning)
    return img


@contextlib.contextmanager
def _without_pil_bomb_warning():
    """PIL's DecompressionBombWarning silenced (_open_image warns instead, naming the file). The
    warning filters are shared by all threads, so the thread that runs a decoding pool enters this
    and the pool's workers see it too."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module="PIL")
        yield


def _readable(path):
    """None if PIL decodes the whole file, else why it cannot (truncated, not an image, ...)."""
    try:
        with _open_image(path) as img:
            # JPEG: decode at 1/8 scale, which still reads every byte of the file
            img.draft("RGB", (img.width // 8 or 1, img.height // 8 or 1))
            img.load()
    except _DECODE_ERRORS as e:
        return str(e) or type(e).__name__
    return None


def _drop_unreadable(split, folder):
    """`split` without the images PIL cannot decode, each named in a warning (--skip-bad-files)."""
    workers = min(8, os.cpu_count() or 1)
    with _without_pil_bomb_warning(), ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(_readable, split.paths))
    for path, why in zip(split.paths, reasons):
        if why is not None:
            warnings.warn(f"skipping {path}: cannot decode it ({why})")
    keep = np.array([why is None for why in reasons], dtype=bool)
    if not keep.any():
        raise UserError(f"{folder} holds no readable images: all {len(keep)} failed to decode")
    paths = [p for p, k in zip(split.paths, keep) if k]
    return Split(paths, split.pids[keep], split.cams[keep])


def load_dataset(root, name="market1501", verbose=True, skip_bad_files=False):
    """Parse a dataset in the Market-1501 layout (name "folder": the folder layout, see
    `_read_folders`). Reads names only; load_images decodes pixels.

    skip_bad_files=False: an image name that does not parse is an error naming the file (and
    load_images names the first file that does not decode). True: such files are dropped with a
    warning each, and every image is test-decoded here so that corrupt ones are dropped too.

    train: pid -1 junk and pid 0 distractors dropped, pids relabelled 0..N-1 in increasing raw pid
    order (the label a classifier predicts). query and gallery keep raw pids, junk and distractors.
    """
    if name == "folder":  # ROOT/<split>/<identity>/<image>
        folder = root
        folders = list(_FOLDERS)
        splits, cameras = _read_folders(root)
    else:
        folder = _find_root(root, name)
        folders = list(_SPLITS.values())
        splits = [_read_split(os.path.join(folder, f), skip_bad_files) for f in folders]
        cameras = True
    if skip_bad_files:
        # with the flag, every image is test-decoded here, so that a corrupt one is dropped with
        # its labels before any index is built; without it, load_images names the first bad file
        # when it meets it (no second read of a clean dataset)
        splits = [_drop_unreadable(s, os.path.join(folder, f)) for s, f in zip(splits, folders)]
    train, query, gallery = splits
    # a query is a person to find: junk and distractors are gallery images only (Market-1501)
    not_people = np.flatnonzero(query.pids <= 0)
    if len(not_people):
        more = f" (and {len(not_people) - 1} more)" if len(not_people) > 1 else ""
        raise UserError(f"{query.paths[not_people[0]]}{more}: a query named as junk (-1) or "
                        "a distractor (0000); these are gallery images only, a query is a "
                        "person with an identity number from 1 on")
    # junk (-1) and distractors (0000) are no training identity: the Market-1501 protocol puts
    # distractors in the gallery only. Its bounding_box_train holds neither; other copies of a
    # dataset might.
    keep = train.pids > 0
    dropped = len(train) - int(keep.sum())
    if not keep.any():
        raise UserError(f"{os.path.join(folder, folders[0])} holds only junk/distractor "
                        "images (pid -1 or 0000)")
    # relabel: raw pid -> its rank among the sorted distinct training pids
    ids, labels = np.unique(train.pids[keep], return_inverse=True)
    paths = [p for p, k in zip(train.paths, keep) if k]
    train = Split(paths, labels.astype(np.int64), train.cams[keep])
    data = ReIDData(name, folder, train, query, gallery, len(ids), cameras)
    if verbose:
        print(data.summary())
        print(f"  train: {dropped} junk/distractor images dropped; "
              f"pids relabelled 0..{len(ids) - 1}")
    return data


# In a synthetic dataset's ROOT: the arguments synthetic.py wrote it with, one line. synthetic.py
# moves this file into ROOT last, so its presence means a complete dataset.
SYNTHETIC_ARGS = "synthetic.txt"


def demo_dataset(root="data/synthetic"):
    """The synthetic dataset of the paper demos: `root`, when its three split folders hold files
    and ROOT/synthetic.txt exists; otherwise a UserError saying how to write it
    (`python synthetic.py`, a tool this module does not import)."""
    folders = [os.path.join(root, s) for s in _SPLITS.values()]
    filled = all(_is_folder(f) and _listdir(f) for f in folders)
    if filled and os.path.isfile(os.path.join(root, SYNTHETIC_ARGS)):
        return root
    command = "python synthetic.py"
    if os.path.normpath(root) != os.path.normpath("data/synthetic"):
        command += f" --root {root}"
    raise UserError(f"{root} holds no synthetic dataset: write it first with `{command}`")


# -----------------------------------------------------------------------------
# Pixels: decode once, normalise, augment on the device

# ImageNet statistics, the ones the torchvision ResNet-50 weights were trained with.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_device(t, device):
    """Copy a tensor to `device`; from the CPU to CUDA through pinned memory and without
    blocking: a copy from pageable memory would wait for all the GPU work queued before it, while
    this one lets the host queue the next step as the copy runs. A tensor already on `device`
    comes back as it is."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@functools.lru_cache(maxsize=None)
def _mean_std(device):
    """MEAN and STD as [3, 1, 1] tensors on `device`, made once per device: a copy to a GPU that
    is issued with every batch would make the host wait for the GPU every time."""
    return (torch.tensor(MEAN, device=device).view(3, 1, 1),
            torch.tensor(STD, device=device).view(3, 1, 1))


def normalize(x):
    """x_norm[c] = (x[c] / 255 - MEAN[c]) / STD[c]; uint8 [B, 3, H, W] -> float32, on x's device."""
    mean, std = _mean_std(x.device)
    # in place on one float32 copy (copy=True: never the caller's tensor): a single temporary
    # instead of three, the same operations, so the same bits as (x / 255 - mean) / std
    return x.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)


def check_memory(size, what):
    """Refuse `size` bytes for `what` when they exceed this machine's memory (before allocating:
    the system would kill the process, or it would swap for hours)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not Linux or macOS: nothing to compare with
        return
    if size > memory:
        raise UserError(f"decoding {what} takes {size / 2**30:.1f} GiB, more than this "
                        f"machine's {memory / 2**30:.1f} GiB of memory: give a smaller --height "
                        "and --width")


def load_images(paths, height, width, desc="", quiet=False,
                hint=" (--skip-bad-files drops such images with a warning)"):
    """Decode every image once into one uint8 tensor [N, 3, height, width] on the CPU.

    Each file: PIL decode -> RGB -> resize to (width, height), bilinear (PIL filters when it
    shrinks). Memory: N * 3 * height * width bytes, e.g. Market-1501's 12,936 training images at
    256 x 128 take 1.27 GB. A thread pool decodes in parallel (PIL releases the GIL); a progress
    line on stderr updates in place and ends with the rate in images/s (quiet=True: none). A file
    that does not decode is a UserError naming it, then `hint`.
    """
    N = len(paths)
    what = f"{N} {desc} images" if desc else f"{N} images"
    check_memory(N * 3 * height * width, f"{what} at {height}x{width}")
    # allocated once and filled in place: no list of N small tensors, no second copy at the end
    out = torch.empty((N, 3, height, width), dtype=torch.uint8)

    def decode(i):
        # runs in a worker thread; each writes its own row of `out`, so no lock is needed
        try:
            with _open_image(paths[i]) as img:
                rgb = img.convert("RGB")  # reads all bytes: a truncated file fails here
            # Choice (not in the paper): bilinear resizing (PIL's, which filters when shrinking)
            rgb = rgb.resize((width, height), Image.BILINEAR)
        except _DECODE_ERRORS as e:  # missing, truncated, not an image, a named pipe
            raise UserError(f"cannot decode image {paths[i]}: {e}{hint}") from None
        out[i] = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]

    # the progress line goes to stderr with "\r", so it rewrites itself in a terminal and leaves
    # stdout to the tables and results; about two updates a second
    tag = f"{desc} " if desc else ""
    start = time.time()
    last = start  # when the progress line was last written
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    with _without_pil_bomb_warning():   # until the last worker has stopped
        try:
            for done, _ in enumerate(pool.map(decode, range(N)), 1):
                if time.time() - last > 0.5 and not quiet:
                    last = time.time()
                    print(f"\r{tag}decoding {done}/{N} images", end="", file=sys.stderr,
                          flush=True)
        finally:
            pool.shutdown(cancel_futures=True)  # after an error, do not decode the rest first
    secs = time.time() - start
    if not quiet:
        mib = out.numel() / 2**20
        rate = N / max(secs, 1e-9)
        print(f"\r{tag}decoded {N} images to {height}x{width} ({mib:.0f} MiB) "
              f"in {secs:.1f} s, {rate:.0f} images/s", file=sys.stderr, flush=True)
    return out


def _erasing_boxes(B, H, W, p, generator):
    """Random erasing's rectangles (Zhong et al., Alg. 1), drawn on the CPU: (erase, y0, x0, h, w),
    each [B]; sample i is erased (if erase[i]) in rows y0..y0+h-1 and columns x0..x0+w-1."""
    # Choice (not in the paper): random erasing with Zhong et al.'s defaults: s_l = 0.02,
    # s_h = 0.4, r_1 = 0.3, and up to 100 tries for a rectangle that fits (their code's count;
    # all tries drawn at once here)
    tries = 100
    erase = torch.rand(B, generator=generator) < p
    # S_e = U(s_l, s_h) * H * W, r_e = U(r_1, 1/r_1)
    area = H * W * (0.02 + 0.38 * torch.rand(B, tries, generator=generator))
    r = 0.3 + (1 / 0.3 - 0.3) * torch.rand(B, tries, generator=generator)
    h = (area * r).sqrt().round().long()                       # H_e = sqrt(S_e * r_e), [B, tries]
    w = (area / r).sqrt().round().long()                       # W_e = sqrt(S_e / r_e)
    fits = (h < H) & (w < W)
    first = fits.long().argmax(1, keepdim=True)                # first try that fits, [B, 1]
    erase &= fits.any(1)                                       # none fits (rare): no erasing
    h = h.gather(1, first)[:, 0]                               # [B]
    w = w.gather(1, first)[:, 0]                               # [B]
    # position uniform among those where the rectangle lies inside the image
    y0 = (torch.rand(B, generator=generator) * (H - h + 1)).long()
    x0 = (torch.rand(B, generator=generator) * (W - w + 1)).long()
    return erase, y0, x0, h, w


def _draws(B, H, W, pad, random_erasing, generator):
    """Every random number `augment` uses, drawn on the CPU: an int64 table [B, 8], one row per
    sample: mirror?, crop corner oy, ox, then erase?, y0, x0, h, w of the erasing rectangle
    (all 0 without random erasing: its 2 x 100 candidate rectangles per sample are not drawn)."""
    # drawn in this order (the rectangles first): another order gives other batches for a seed
    if random_erasing > 0:
        boxes = _erasing_boxes(B, H, W, random_erasing, generator)
    else:
        boxes = [torch.zeros(B)] * 5
    mirror = torch.rand(B, generator=generator) < 0.5
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    return torch.stack([mirror, oy, ox, *boxes], dim=1).long()


def augment(images, generator, flip=True, pad=10, random_erasing=0.0, index=None):
    """Training augmentation of uint8 images [N, 3, H, W], per sample, on their device -> float32.

        flip (p = 0.5) -> pad by `pad` px + random H x W crop -> normalize -> random erasing (p).

    index: the rows of `images` that make the batch (a list of ints, e.g. a PK batch of the decoded
    cache), or None for all of them in order. Output sample b is images[index[b]] augmented.

    Every random number comes from `generator` (a CPU torch.Generator) and is drawn on the CPU, so a
    seed gives the same batch on any device. Random erasing (Zhong et al., "Random Erasing Data
    Augmentation", AAAI 2020, arXiv:1708.04896, Alg. 1): with probability p pick area
    S_e = U(0.02, 0.4) * H * W and aspect r_e = U(0.3, 1/0.3), height sqrt(S_e * r_e), width
    sqrt(S_e / r_e), a position where it fits, and erase the rectangle.

    How it runs: flip, pad and crop only move pixels, so each sample is ONE slice copy of uint8
    pixels from its cache row into the batch (a crop is a shifted window; no padded copy is made;
    a mirrored sample costs one more copy, torch.flip's); then one normalisation of the whole
    batch; then the padding strips and the erased rectangle of each sample are set to 0 by slice
    assignment. The loop over the batch does only slicing (views and small copies, never a read of
    a device value), so on a GPU it queues work without waiting. The result is bit-identical to
    normalising first, then flipping, padding with 0, cropping and erasing (tests/test_data.py),
    and faster than doing it that way (bench.py measures both).
    """
    B = len(images) if index is None else len(index)
    _, C, H, W = images.shape
    # every per-sample random number, drawn on the CPU: [B, 8] ints, as Python ints for the loop
    draws = _draws(B, H, W, pad, random_erasing, generator).tolist()
    out = torch.empty((B, C, H, W), dtype=torch.uint8, device=images.device)
    # Choice (not in the paper): neither paper states its augmentation; flip + pad 10 + crop
    # (+ random erasing) is the usual re-ID baseline's (Luo et al., "Bag of Tricks", CVPRW 2019).
    # Random crop of the padded image: top-left corner (oy, ox) uniform in {0..2pad}, i.e. output
    # pixel (i, j) reads source pixel (i + dy, j + dx) with dy = oy - pad, dx = ox - pad.
    windows = []
    for b in range(B):
        mirror, oy, ox = draws[b][:3]
        src = images[b if index is None else index[b]]                       # [3, H, W], a view
        if flip and mirror:
            src = src.flip(2)  # flip: mirror left-right with probability 0.5 (dim 2 = width)
        dy = oy - pad
        dx = ox - pad
        # output rows r0..r1-1 and columns c0..c1-1 read inside the image; the rest is padding
        r0 = min(H, max(0, -dy))
        r1 = max(0, min(H, H - dy))
        c0 = min(W, max(0, -dx))
        c1 = max(0, min(W, W - dx))
        if r0 < r1 and c0 < c1:
            out[b, :, r0:r1, c0:c1] = src[:, r0 + dy:r1 + dy, c0 + dx:c1 + dx]
        windows.append((r0, r1, c0, c1))
    x = normalize(out)                                                        # [B, 3, H, W] float32
    for b in range(B):
        r0, r1, c0, c1 = windows[b]
        erase, y0, x0, h, w = draws[b][3:]
        # Choice (not in the paper): the strips shifted in from outside are 0 in the normalised
        # image, i.e. the mean colour (the value AEA's adversarial erasing writes), not black
        x[b, :, :r0] = 0
        x[b, :, r1:] = 0
        x[b, :, :, :c0] = 0
        x[b, :, :, c1:] = 0
        if erase:
            # Choice (not in the paper): the erased value is 0 in the normalised image (the mean
            # colour), the value AEA's adversarial erasing writes; Zhong et al. also fill with
            # random values.
            x[b, :, y0:y0 + h, x0:x0 + w] = 0
    return x


# -----------------------------------------------------------------------------
# PK sampler

class PKSampler:
    """Batches of P identities x K images each (Hermans et al. 2017; AEA Sec. IV-B: P=8, K=4).

    One epoch = ceil(#ids / P) batches: the identities in a random order, cut into consecutive
    groups of P. The order and the images drawn depend only on (seed, epoch), so a resumed run can
    replay an epoch: call set_epoch(e) before iterating (one numpy generator made from the pair
    [seed, epoch] draws everything of the epoch). Each batch is a list of P*K dataset indices, the
    K images of one identity next to each other; `self.index[i]` holds identity i's indices.
    Choices (not in the paper), what __iter__ does where the identities or images run short:
      - a last group with fewer than P identities is filled with distinct identities drawn without
        replacement from the other groups, so every batch holds exactly P distinct identities;
      - an identity with n >= K images gives K of them drawn without replacement; one with n < K
        gives all n once, in a random order, then K - n more drawn with replacement.
    """

    def __init__(self, pids, P, K, seed=0):
        pids = np.asarray(pids)
        ids = np.unique(pids)
        if P < 1 or K < 1:
            raise UserError(f"PK sampler needs P >= 1 and K >= 1, got P={P}, K={K}")
        if len(ids) < P:
            raise UserError(f"--P {P}: a PK batch needs P distinct identities, but the training "
                            f"split has only {len(ids)}")
        if P * K > len(pids):
            raise UserError(f"--P {P} --K {K}: a batch of P x K = {P * K} images is more than the "
                            f"{len(pids)} training images")
        # the dataset indices of each identity; the sampler never needs the raw pid values again
        self.index = [np.flatnonzero(pids == i) for i in ids]
        if seed < 0:
            raise UserError(f"PK sampler seed must be >= 0, got {seed}")
        self.P = P
        self.K = K
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        """Choose which epoch the next iteration yields (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.index) // self.P)  # ceil(#ids / P)

    def __iter__(self):
        P = self.P
        K = self.K
        # one generator per (seed, epoch): epoch e can be replayed without replaying epochs 0..e-1
        rng = np.random.default_rng([self.seed, self.epoch])
        # Choice (not in the paper): an epoch is the identities in a random order, cut into
        # consecutive groups of P, one batch each (ceil(#ids / P) batches)
        order = rng.permutation(len(self.index))
        short = len(self) * P - len(order)
        if short:
            # Choice (not in the paper): fill the last group with identities drawn from the other
            # groups, so every batch has exactly P distinct identities.
            last = order[len(order) - (P - short):]
            fill = rng.choice(np.setdiff1d(order, last), short, replace=False)
            order = np.concatenate([order, fill])
        for group in order.reshape(len(self), P):
            batch = []
            for i in group:
                idx = self.index[i]
                if len(idx) >= K:
                    pick = rng.choice(idx, K, replace=False)
                else:
                    # Choice (not in the paper): all n < K images once, the K - n others
                    # drawn with replacement
                    once = rng.permutation(idx)
                    again = rng.choice(idx, K - len(idx))
                    pick = np.concatenate([once, again])
                batch.extend(pick.tolist())
            yield batch


# -----------------------------------------------------------------------------
# Training batches

def train_batches(images, labels, sampler, generator, **augment_args):
    """One epoch of training batches: sampler index lists -> decoded cache rows -> `augment`.

    images: uint8 [N, 3, H, W] from load_images, labels: int64 [N], both on the training device
    (on a GPU the whole cache fits, so a batch costs one small copy of indices). sampler: any
    iterable of index lists -- a PKSampler (call sampler.set_epoch(e) first), or the rows of a
    shuffled pass (AAA-Net). Yields (x float32 [B, 3, H, W] augmented, y int64 [B]).
    """
    for idx in sampler:
        # augment cuts the batch straight out of the cache rows (`index`): no gathered copy first
        x = augment(images, generator, index=list(idx), **augment_args)
        y = labels[to_device(torch.tensor(idx), labels.device)]   # [P*K] labels
        yield x, y

# -----------------------------------------------------------------------------
# Command line

def main(argv=None):
    """The command line:
        python data.py summary --root DIR --dataset NAME [--skip-bad-files]
        python data.py folders --root DIR --dataset NAME --out DIR2 [--no-cameras]
    """
    parser = argparse.ArgumentParser(description="Re-ID datasets in the Market-1501 layout.")
    sub = parser.add_subparsers(dest="command", required=True)
    summ = sub.add_parser("summary", help="print the ids / images / cameras table of a dataset")
    summ.add_argument("--root", required=True)
    summ.add_argument("--dataset", default="market1501", choices=list(_RELEASES))
    summ.add_argument("--skip-bad-files", action="store_true",
                      help="warn about unparsable names instead of failing")
    fold = sub.add_parser("folders", help="copy a dataset into the folder layout "
                          "(<split>/<identity>/<image>) that --dataset folder reads")
    fold.add_argument("--root", required=True)
    fold.add_argument("--dataset", default="market1501", choices=list(_RELEASES))
    fold.add_argument("--out", required=True, help="new or empty folder")
    fold.add_argument("--no-cameras", action="store_true",
                      help="file names without their camera id")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in sub.choices:
        raise UserError(f"unknown command {argv[0]!r}; expected one of {', '.join(sub.choices)} "
                        "(python data.py -h)")
    args = parser.parse_args(argv)
    if args.command == "folders":
        ds = load_dataset(args.root, args.dataset, verbose=False)
        to_folders(ds, args.out, cameras=not args.no_cameras)
        load_dataset(args.out, "folder")
    else:
        load_dataset(args.root, args.dataset, skip_bad_files=args.skip_bad_files)


if __name__ == "__main__":
    exit_on_user_error(main)  # a UserError becomes "error: <message>", exit status 2
