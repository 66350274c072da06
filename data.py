"""Re-ID data: the Market-1501 folder layout, a synthetic dataset in that layout, a PK sampler,
and a data path that decodes every image once into one uint8 tensor and augments batches on the
training device.

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
of the file name when every file has one (`_read_folders`). `python data.py folders` copies a
Market-layout dataset into it.

Use (the training loop of a paper module, one line each):
    data = load_dataset(root, "market1501")                  # parse names, print the table
    images = load_images(data.train.paths, 256, 128).to(device)  # [N, 3, H, W] uint8, decoded once
    labels = torch.as_tensor(data.train.pids).to(device)
    sampler = PKSampler(data.train.pids, P=8, K=4, seed=0)   # sampler.set_epoch(e) each epoch
    for x, y in train_batches(images, labels, sampler, g, random_erasing=0.5): ...  # x augmented
Indexing one in-memory tensor and augmenting on the device replaces DataLoader workers: JPEG
decoding happens once, not once per epoch, and the per-sample work runs as a few batched ops.
On a GPU the uint8 cache can live on the GPU itself (Market-1501 at 256x128: 1.27 GB), so a batch
costs one small copy of indices and one of random numbers, neither of which waits for the GPU.

Choices the papers leave open (each marked "Choice (not in the paper)" at its line):
- load_dataset accepts ROOT itself or ROOT/<usual release folder> (Market-1501-v15.09.15, ...).
- load_images resizes bilinearly (PIL, which filters when it shrinks).
- --skip-bad-files test-decodes every image once in load_dataset (JPEGs at 1/8 scale, every byte
  read), so a corrupt file is dropped with its labels; without the flag nothing is read twice.
- PKSampler: an epoch is ceil(#ids / P) batches, one per group of P identities in a random
  order; the last group is filled up with identities drawn from the rest (no repeat inside a
  batch), so every batch is full and every identity appears at least once per epoch.
- PKSampler: an identity with n < K images gives all n images once plus K - n drawn with
  replacement; one with n >= K gives K distinct images.
- augment: flip + pad 10 + random crop (+ random erasing), the usual re-ID baseline augmentation
  (neither paper states one); random-erasing aspect ratio uniform in [0.3, 1/0.3] with up to
  100 tries for a rectangle that fits (Zhong et al. 2017, Alg. 1).
- augment: padding and random erasing write 0 in the normalised image (the ImageNet mean
  colour), the value AEA's adversarial erasing writes, rather than black or random values.
- make_synthetic: see its docstring (what is drawn, look-alike families that share the upper
  clothing and differ elsewhere, an occluder on every other image, junk = fragments of test
  identities or bare background, distractors = one-off people or bare background, query = one
  image per camera).
- The folder layout without camera ids in the file names: every image is a camera of its own,
  so the same-camera rule of the evaluation removes nothing (`_read_folders`).
- The folder layout: identity folders "-1" and "0000" are junk and distractors, as Market-1501's
  names (`_identity_pids`); an identity's subfolders are read, hidden entries skipped.
- make_synthetic draws into ROOT/.tmp<pid> and moves the split folders into ROOT at the end, so
  a failure leaves no partial dataset (renames inside ROOT: an empty mount point works too).
"""
import argparse
import contextlib
import errno
import functools
import inspect
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

from common import UserError, exit_on_user_error, pid_running

# -----------------------------------------------------------------------------
# Parsing the folder layout

# pid (or -1), camera, then the dataset's own tail: Market "s1_000151_01", Duke "_f0046985",
# CUHK03-NP "_1"; one regex so the three datasets share one parser.
_NAME = re.compile(r"^(-1|\d+)_c(\d+)(?:s\d+_\d+_\d+|_f\d+|_\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# Choice (not in the paper): where the usual releases unpack, tried under ROOT after ROOT itself.
_RELEASES = {
    "market1501": ["Market-1501-v15.09.15", "Market-1501", "market1501"],
    "duke": ["DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid"],
    "cuhk03-labeled": ["cuhk03-np/labeled", "CUHK03-NP/labeled", "labeled"],
    "cuhk03-detected": ["cuhk03-np/detected", "CUHK03-NP/detected", "detected"],
    "synthetic": [],
    "folder": [],  # ROOT/train|query|gallery/<identity>/<image>: `_read_folders`
}


def parse_name(filename):
    """(pid, cam) of a Market-style image name; pid -1 = junk, 0 = distractor; c1 -> cam 0.

    The camera matters beyond bookkeeping: the evaluation drops gallery images of the query's own
    pid AND camera, so a wrong camera silently changes every score. 0-based so it can index arrays.
    """
    # only the file name carries the labels; the folder says which split it belongs to
    m = _NAME.match(os.path.basename(filename))
    if m is None or int(m.group(2)) < 1:
        raise UserError(f"{filename}: image name does not parse; expected "
                        "PPPP_cCsS_FFFFFF_BB.jpg (Market-1501), PPPP_cC_fFFFFFFF.jpg (Duke) "
                        "or PPPP_cC_N.png (CUHK03-NP), camera >= 1")
    return int(m.group(1)), int(m.group(2)) - 1


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
            rows.append(f"  {s:8s}{len(np.unique(people)):5d}{len(split):9d}"
                        f"{cameras:>9}{junk:10d}{distractors:19d}")
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
    paths, pids, cams = [], [], []
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


# --- The folder layout (--dataset folder): a folder per identity, any image format PIL opens ---
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
    decodes = {f for f, (kind, _) in Image.OPEN.items()
               if f not in ("EPS", "MPEG")  # `kind` is a class, or a function (JPEG's)
               and not (isinstance(kind, type) and issubclass(kind, ImageFile.StubImageFile))}
    return tuple(e for e, f in extensions.items() if f in decodes)


def _images_under(folder):
    """The images under `folder`, subfolders included, hidden files and folders skipped (.git,
    macOS's ._name copies), as sorted paths relative to it (the order must not depend on the
    file system)."""
    found, extensions = [], image_extensions()

    def unreadable(e):  # os.walk would skip a folder it cannot read, silently
        raise UserError(f"cannot read the folder {e.filename}: {e.strerror}")
    for top, folders, files in os.walk(folder, onerror=unreadable):
        folders[:] = [f for f in folders if not f.startswith(".")]
        found += [os.path.relpath(os.path.join(top, f), folder) for f in files
                  if f.lower().endswith(extensions) and not f.startswith(".")]
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
    # Choice (not in the paper): the Market-1501 names keep their meaning, so that a converted
    # Market-style dataset scores the same
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
        folder, found[s] = os.path.join(root, s), []
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
                camera = _CAMERA.search(os.path.splitext(os.path.basename(f))[0])
                found[s].append((os.path.join(sub, f), identity,
                                 int(camera.group(1)) if camera else None))
        if not found[s]:
            raise UserError(f"{folder} holds no images (expected {folder}/<identity>/<image>, "
                            "e.g. train/0002/0002_c1_01.jpg)")
    pids = _identity_pids({identity for s in found.values() for _, identity, _ in s})
    unnamed = [p for s in found.values() for p, _, c in s if c is None]  # without a camera
    if 0 < len(unnamed) < sum(map(len, found.values())):
        warnings.warn(f"{len(unnamed)} file names of {root} carry no camera id (c<digits>), e.g. "
                      f"{unnamed[0]}: every image counts as a camera of its own")
    splits, start = [], 0
    for s in _FOLDERS:
        paths, identities, cams = zip(*found[s])
        # Choice (not in the paper): without camera ids, every image is a camera of its own: no
        # gallery image shares the query's camera, so the evaluation's same-camera rule removes
        # nothing, and XQDA / KISSME pair all training images
        cams = range(start, start + len(paths)) if unnamed else cams
        start += len(paths)
        splits.append(Split(list(paths), np.array([pids[i] for i in identities], dtype=np.int64),
                            np.array(cams, dtype=np.int64)))
    return splits, not unnamed


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
    with _without_pil_bomb_warning(), ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(_readable, split.paths))
    for path, why in zip(split.paths, reasons):
        if why is not None:
            warnings.warn(f"skipping {path}: cannot decode it ({why})")
    keep = np.array([why is None for why in reasons], dtype=bool)
    if not keep.any():
        raise UserError(f"{folder} holds no readable images: all {len(keep)} failed to decode")
    return Split([p for p, k in zip(split.paths, keep) if k], split.pids[keep], split.cams[keep])


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
        folder, folders, ((train, query, gallery), cameras) = root, _FOLDERS, _read_folders(root)
    else:
        folder, folders, cameras = _find_root(root, name), _SPLITS.values(), True
        train, query, gallery = (_read_split(os.path.join(folder, s), skip_bad_files)
                                 for s in folders)
    if skip_bad_files:
        # Choice (not in the paper): with the flag, every image is test-decoded here, so that a
        # corrupt one is dropped with its labels before any index is built; without it,
        # load_images names the first bad file when it meets it (no second read of a clean dataset)
        train, query, gallery = (_drop_unreadable(s, os.path.join(folder, f))
                                 for s, f in zip((train, query, gallery), folders))
    # junk (-1) and distractors (0000) are no training identity: the Market-1501 protocol puts
    # distractors in the gallery only. Its bounding_box_train holds neither; other copies of a
    # dataset might.
    keep = train.pids > 0
    dropped = len(train) - int(keep.sum())
    if not keep.any():
        raise UserError(f"{os.path.join(folder, next(iter(folders)))} holds only junk/distractor "
                        "images (pid -1 or 0000)")
    # relabel: raw pid -> its rank among the sorted distinct training pids
    ids, labels = np.unique(train.pids[keep], return_inverse=True)
    train = Split([p for p, k in zip(train.paths, keep) if k], labels.astype(np.int64),
                  train.cams[keep])
    data = ReIDData(name, folder, train, query, gallery, len(ids), cameras)
    if verbose:
        print(data.summary())
        print(f"  train: {dropped} junk/distractor images dropped; "
              f"pids relabelled 0..{len(ids) - 1}")
    return data


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
    # allocated once and filled in place: no list of N small tensors, no second copy at the end
    out = torch.empty((N, 3, height, width), dtype=torch.uint8)

    def decode(i):
        # runs in a worker thread; each writes its own row of `out`, so no lock is needed
        try:
            with _open_image(paths[i]) as img:
                # Choice (not in the paper): bilinear resizing (PIL's, which filters when
                # shrinking); convert() reads all bytes, so a truncated file fails here
                rgb = img.convert("RGB").resize((width, height), Image.BILINEAR)
        except _DECODE_ERRORS as e:  # missing, truncated, not an image, a named pipe
            raise UserError(f"cannot decode image {paths[i]}: {e}{hint}") from None
        out[i] = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]

    # the progress line goes to stderr with "\r", so it rewrites itself in a terminal and leaves
    # stdout to the tables and results; about two updates a second
    tag = f"{desc} " if desc else ""
    start = last = time.time()
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
        print(f"\r{tag}decoded {N} images to {height}x{width} ({out.numel() / 2**20:.0f} MiB) "
              f"in {secs:.1f} s, {N / max(secs, 1e-9):.0f} images/s", file=sys.stderr, flush=True)
    return out


def _erasing_boxes(B, H, W, p, generator):
    """Random erasing's rectangles (Zhong et al., Alg. 1), drawn on the CPU: (erase, y0, x0, h, w),
    each [B]; sample i is erased (if erase[i]) in rows y0..y0+h-1 and columns x0..x0+w-1."""
    tries = 100  # Zhong et al.'s code tries up to 100 rectangles; all drawn at once here
    erase = torch.rand(B, generator=generator) < p
    # S_e = U(0.02, 0.4) * H * W, r_e = U(0.3, 1/0.3): the paper's s_l, s_h, r_1 defaults
    area = H * W * (0.02 + 0.38 * torch.rand(B, tries, generator=generator))
    r = 0.3 + (1 / 0.3 - 0.3) * torch.rand(B, tries, generator=generator)
    h = (area * r).sqrt().round().long()                       # H_e = sqrt(S_e * r_e), [B, tries]
    w = (area / r).sqrt().round().long()                       # W_e = sqrt(S_e / r_e)
    fits = (h < H) & (w < W)
    first = fits.long().argmax(1, keepdim=True)                # first try that fits, [B, 1]
    erase &= fits.any(1)                                       # none fits (rare): no erasing
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]  # [B]
    # position uniform among those where the rectangle lies inside the image
    y0 = (torch.rand(B, generator=generator) * (H - h + 1)).long()
    x0 = (torch.rand(B, generator=generator) * (W - w + 1)).long()
    return erase, y0, x0, h, w


def _draws(B, H, W, pad, random_erasing, generator):
    """Every random number `augment` uses, drawn on the CPU: an int64 table [B, 8], one row per
    sample: mirror?, crop corner oy, ox, then erase?, y0, x0, h, w of the erasing rectangle
    (all 0 without random erasing: its 2 x 100 candidate rectangles per sample are not drawn)."""
    boxes = (_erasing_boxes(B, H, W, random_erasing, generator) if random_erasing > 0
             else [torch.zeros(B)] * 5)
    return torch.stack([torch.rand(B, generator=generator) < 0.5,
                        torch.randint(0, 2 * pad + 1, (B,), generator=generator),
                        torch.randint(0, 2 * pad + 1, (B,), generator=generator),
                        *boxes], dim=1).long()


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
    and about 5x faster than doing it that way on the CPU (bench.py).
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
    for b, (mirror, oy, ox, *_) in enumerate(draws):
        src = images[b if index is None else index[b]]                       # [3, H, W], a view
        if flip and mirror:
            src = src.flip(2)  # flip: mirror left-right with probability 0.5 (dim 2 = width)
        dy, dx = oy - pad, ox - pad
        # output rows r0..r1-1 and columns c0..c1-1 read inside the image; the rest is padding
        r0, r1 = min(H, max(0, -dy)), max(0, min(H, H - dy))
        c0, c1 = min(W, max(0, -dx)), max(0, min(W, W - dx))
        if r0 < r1 and c0 < c1:
            out[b, :, r0:r1, c0:c1] = src[:, r0 + dy:r1 + dy, c0 + dx:c1 + dx]
        windows.append((r0, r1, c0, c1))
    x = normalize(out)                                                        # [B, 3, H, W] float32
    for b, ((r0, r1, c0, c1), (*_, erase, y0, x0, h, w)) in enumerate(zip(windows, draws)):
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

    One epoch = ceil(#ids / P) batches: the identities in a random order, cut into groups of P.
    The order and the images drawn depend only on (seed, epoch), so a resumed run can replay an
    epoch: call set_epoch(e) before iterating. Each batch is a list of P*K dataset indices, the K
    images of one identity next to each other.
    """

    def __init__(self, pids, P, K, seed=0):
        pids = np.asarray(pids)
        ids = np.unique(pids)
        if P < 1 or K < 1:
            raise UserError(f"PK sampler needs P >= 1 and K >= 1, got P={P}, K={K}")
        if len(ids) < P:
            raise UserError(f"--P {P}: a PK batch needs P distinct identities, but the training "
                            f"split has only {len(ids)}")
        # the dataset indices of each identity; the sampler never needs the raw pid values again
        self.index = [np.flatnonzero(pids == i) for i in ids]
        if seed < 0:
            raise UserError(f"PK sampler seed must be >= 0, got {seed}")
        self.P, self.K, self.seed, self.epoch = P, K, seed, 0

    def set_epoch(self, epoch):
        """Choose which epoch the next iteration yields (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.index) // self.P)  # ceil(#ids / P)

    def __iter__(self):
        P, K = self.P, self.K
        # one generator per (seed, epoch): epoch e can be replayed without replaying epochs 0..e-1
        rng = np.random.default_rng([self.seed, self.epoch])
        # the identities in a random order; consecutive groups of P make the batches
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
                    pick = np.concatenate([rng.permutation(idx), rng.choice(idx, K - len(idx))])
                batch.extend(pick.tolist())
            yield batch


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
        yield x, labels[to_device(torch.tensor(idx), labels.device)]   # [P*K] labels


# -----------------------------------------------------------------------------
# Synthetic dataset in the Market-1501 layout

_H, _W = 128, 64  # Market-1501's native image size
_YY, _XX = np.mgrid[0:_H, 0:_W].astype(np.float32)  # pixel row / column grids, [H, W] each
# 16 clothing colours (RGB): with tens of identities many share a shirt colour, so identity
# lies in the combination (upper, lower, pattern, accessories, build), not in one colour.
_PALETTE = np.array([[30, 30, 35], [225, 225, 220], [128, 128, 128], [30, 40, 110],
                     [50, 100, 200], [190, 40, 40], [110, 25, 35], [40, 130, 60],
                     [110, 110, 50], [220, 190, 60], [200, 180, 140], [110, 70, 40],
                     [220, 140, 170], [110, 60, 140], [230, 120, 40], [40, 140, 140]],
                    dtype=np.float32)
_SKIN = np.array([[235, 200, 170], [200, 150, 115], [150, 100, 70], [95, 65, 45]], dtype=np.float32)
_HAIR = np.array([[20, 20, 20], [90, 55, 30], [200, 170, 100], [150, 150, 150]], dtype=np.float32)


def _identity(rng, family=None):
    """One person's appearance, fixed across all their images.

    pattern: 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks (period in figure
    heights); lower_kind: 0 trousers, 1 shorts, 2 skirt; build: width factor; height: size factor.
    family: another identity whose upper garment (colours, pattern, sleeves) this one wears: a
    look-alike that differs only below the waist, in shoes, bags, hat, hair and build.
    """
    def colour():  # a palette colour, shifted a little per identity
        return _PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, 10, 3)

    def maybe(p):  # an accessory's colour, or None when the person has none
        return colour() if rng.random() < p else None
    # the values draw from rng in the order written: reordering them changes the whole dataset
    person = dict(upper=colour(), upper2=colour(), pattern=rng.integers(4),
                  period=rng.uniform(0.03, 0.07), long_sleeves=rng.random() < 0.5, lower=colour(),
                  lower_kind=rng.integers(3), skin=_SKIN[rng.integers(len(_SKIN))],
                  hair=_HAIR[rng.integers(len(_HAIR))], shoes=colour(), hat=maybe(0.35),
                  backpack=maybe(0.4), handbag=maybe(0.35), build=rng.uniform(0.85, 1.15),
                  height=rng.uniform(0.9, 1.05))
    if family is not None:  # the most salient cue, the upper garment, copied from the family
        person.update({k: family[k] for k in ("upper", "upper2", "pattern", "period",
                                              "long_sleeves")})
    return person


def _camera(rng):
    """One camera's scene: wall/floor colours and texture, illumination, framing, sharpness.

    gain and tint multiply every pixel, the person's too: the same shirt reads as a different
    colour in another camera, the cross-camera change re-ID models must see through.
    """
    def muted():  # a grey level plus a little colour: scenes are duller than clothes
        return rng.uniform(60, 190) + rng.uniform(-35, 35, 3)
    return dict(wall=muted(), floor=muted(), horizon=rng.uniform(0.55, 0.8),
                panel=rng.uniform(6, 20), gain=rng.uniform(0.7, 1.25),
                tint=rng.uniform(0.85, 1.15, 3), scale=rng.uniform(0.85, 1.0),
                blurry=rng.random() < 0.5)


def _render(rng, cam, person=None):
    """One 128x64 RGB uint8 image: the camera's background, the person (if any), maybe an occluder.

    Parts are painted back to front, each a boolean mask over the pixel grid: a later part covers
    an earlier one. Sizes are in figure heights with roughly a real body's proportions: head
    0-0.16, torso 0.16-0.52, arms to 0.54, legs 0.5-1 with shoes from 0.94.
    """
    # background: wall above a horizon that wanders a little per image, floor below
    horizon = (cam["horizon"] + rng.uniform(-0.04, 0.04)) * _H
    panels = np.floor((_XX + rng.uniform(0, cam["panel"])) / cam["panel"]) % 2     # wall texture
    wall = cam["wall"] * (1 - 0.12 * panels[..., None])                            # [H, W, 3]
    img = np.where((_YY < horizon)[..., None], wall, cam["floor"])
    if person is not None:
        p = person
        # viewpoint jitter: figure height s (px), centre cx, top edge; mirrored half of the time
        s = _H * 0.86 * cam["scale"] * p["height"] * rng.uniform(0.93, 1.07)
        cx, top = _W / 2 + rng.uniform(-5, 5), (_H - s) / 2 + rng.uniform(-4, 4)
        side = rng.choice([-1.0, 1.0])
        uh = side * (_XX - cx) / s            # horizontal, in figure heights (head: no build)
        u = uh / p["build"]                   # body parts scale with the build
        v = (_YY - top) / s                   # 0 at the top of the head, 1 at the soles
        back = rng.random() < 0.5             # seen from behind: hair over the head, backpack shows
        stride = rng.uniform(0, 0.06)         # the feet spread while walking
        # legs and shoes: two bars whose centres move apart towards the feet
        leg_x = 0.045 + stride * np.clip((v - 0.5) / 0.45, 0, 1)
        legs = (np.abs(np.abs(u) - leg_x) < 0.042) & (v > 0.5) & (v < 1.0)
        # skin shows below v = bare: trousers never (2 > 1), shorts from the knee, skirt's legs
        bare = {0: 2.0, 1: 0.68, 2: 0.5}[int(p["lower_kind"])]
        img[legs] = np.where((v[legs] > bare)[:, None], p["skin"], p["lower"])
        if p["lower_kind"] == 2:
            img[(v > 0.48) & (v < 0.72) & (np.abs(u) < 0.11 + 0.12 * (v - 0.48))] = p["lower"]
        img[legs & (v > 0.94)] = p["shoes"]
        # arms at the sides of the torso; short sleeves end at v = 0.28, hands below v = 0.5
        arms = (np.abs(u) > 0.115) & (np.abs(u) < 0.16) & (v > 0.17) & (v < 0.54)
        img[arms] = p["skin"]
        img[arms & (v < (0.5 if p["long_sleeves"] else 0.28))] = p["upper"]
        # torso, tapering to the waist, with the identity's pattern in the second colour
        torso = (np.abs(u) < 0.125 - 0.03 * (v - 0.16) / 0.36) & (v > 0.16) & (v < 0.52)
        img[torso] = p["upper"]
        hstripe, vstripe = np.floor(v / p["period"]) % 2 == 1, np.floor(u / p["period"]) % 2 == 1
        pattern = [np.zeros_like(torso), hstripe, vstripe, hstripe ^ vstripe][int(p["pattern"])]
        img[torso & pattern] = p["upper2"]
        if p["backpack"] is not None:    # a block from behind, two straps from the front
            if back:
                pack = (np.abs(u) < 0.09) & (v > 0.19) & (v < 0.42)
            else:
                pack = (np.abs(np.abs(u) - 0.06) < 0.012) & (v > 0.16) & (v < 0.34)
            img[pack] = p["backpack"]
        # head: an ellipse of skin, hair on top (the whole head from behind), maybe a hat
        head = (uh / 0.06) ** 2 + ((v - 0.085) / 0.075) ** 2 < 1
        img[head] = p["skin"]
        img[head & ((v < 0.05) | back)] = p["hair"]
        if p["hat"] is not None:
            img[(v > -0.005) & (v < 0.04) & (np.abs(uh) < 0.07)] = p["hat"]
        if p["handbag"] is not None:     # on one side; that side flips with the mirroring
            img[(u > 0.16) & (u < 0.26) & (v > 0.44) & (v < 0.58)] = p["handbag"]
    if rng.random() < 0.5:
        # an occluder on every other image, hiding one body region: a pole (a vertical band), a
        # low object (car, bench) over the legs and shoes, or a sign / passer-by over the torso
        kind, x0 = rng.integers(3), _W * rng.uniform(-0.3, 0.2)
        if kind == 0:
            x0 = rng.uniform(0, _W - 6)
            box = (_XX >= x0) & (_XX < x0 + rng.uniform(6, 16))
        else:
            y0 = _H * (rng.uniform(0.55, 0.75) if kind == 1 else rng.uniform(0.1, 0.25))
            y1 = _H if kind == 1 else y0 + _H * rng.uniform(0.25, 0.4)
            box = (_YY > y0) & (_YY < y1) & (_XX >= x0) & (_XX < x0 + _W * rng.uniform(0.7, 1.1))
        img[box] = rng.uniform(30, 220, 3)
    # illumination: the camera's gain and tint, a little per-image flicker, then sensor noise
    img = img * cam["gain"] * cam["tint"] * rng.uniform(0.9, 1.1) + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic(root, seed=0, train_ids=150, test_ids=200, cameras=6, max_per_camera=3,
                   junk=50, distractors=50, lookalikes=3):
    """Write a synthetic re-ID dataset in the Market-1501 layout and naming; return root.

    Each identity (train_ids for training, test_ids others for query/gallery, as in Market-1501)
    is seen by 2..`cameras` cameras, 1..max_per_camera images in each. An image draws the person
    (clothing colours from a shared palette, a pattern, sleeves, trousers/shorts/skirt, shoes,
    hat, backpack, handbag, hair, build) over the camera's background under its gain and tint,
    with jitter of position, scale, pose, front/back view and mirroring, and noise.
    What makes it a test of complementary cues: identities come in look-alike families of
    `lookalikes` that wear the same upper garment, the largest and most salient region, and
    differ only in the others; and every other image has an occluder that hides one region
    (the torso, the legs and shoes, or a vertical band). A network that relies on the torso
    alone confuses a query with its look-alikes and fails where the torso is hidden.
    Choice (not in the paper): query = one image from every camera where the test identity has
    2+ images (from its first camera if none has), so every camera it was seen in stays in the
    gallery and every query has a cross-camera match. Junk (pid -1, gallery): about half fragments
    (a top or bottom third) of test identities, the rest bare background (a coin flip each).
    Distractors (pid 0000, gallery): about half people seen once and never queried, the rest bare
    background (false detections).
    Deterministic for a seed (the same bytes with the same Pillow). Defaults: 2864 images (1202
    train, 517 query, 1145 gallery) written in about 8 s on one CPU core. ROOT/synthetic.txt
    records the arguments (`ensure_synthetic` compares them).
    Written into ROOT/.tmp<pid>, its split folders moved into ROOT once complete: after a failure
    (disk full, Ctrl-C) ROOT holds no part of a dataset (and is gone if this call created it).
    """
    # cameras >= 2: every identity needs a second camera for a cross-camera match;
    # at most 9999 identities: pids are 4 digits
    if (train_ids < 1 or test_ids < 1 or train_ids + test_ids > 9999 or cameras < 2
            or max_per_camera < 1 or junk < 0 or distractors < 0 or lookalikes < 1):
        raise UserError("make_synthetic needs train_ids >= 1, test_ids >= 1, "
                        "train_ids + test_ids <= 9999, cameras >= 2, max_per_camera >= 1, "
                        f"junk >= 0, distractors >= 0, lookalikes >= 1; got {train_ids}, "
                        f"{test_ids}, {cameras}, {max_per_camera}, {junk}, {distractors}, "
                        f"{lookalikes}")
    # numpy's generators take seeds >= 0; checked here, before anything is written
    if not 0 <= seed <= 2**32 - 1:
        raise UserError(f"--seed must lie in [0, 2**32 - 1], got {seed}")
    if os.path.lexists(root) and not _is_folder(root):
        raise UserError(f"{root} is not a folder; give make_synthetic a new or empty --root")
    _remove_dead_temporaries(root)  # a killed make_synthetic's .tmp<pid> is not content
    # refuse to mix with (or delete) what is there: a dataset must come from one seed. Empty
    # split folders hold nothing to lose: they are replaced.
    for entry in sorted(_listdir(root)) if _is_folder(root) else []:
        path = os.path.join(root, entry)
        if entry not in _SPLITS.values() or not _is_folder(path) or _listdir(path):
            raise UserError(f"{root} is not empty (it holds {entry}); give make_synthetic a "
                            "new or empty --root")
    created = not os.path.exists(root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root} for the synthetic dataset: {e.strerror}") from None
    # Choice (not in the paper): drawn into ROOT/.tmp<pid>, each split folder moved into ROOT at
    # the end (renames inside one folder: an empty mount point or "." works too)
    tmp = os.path.join(root, f".tmp{os.getpid()}")
    try:
        _draw_synthetic(tmp, seed, train_ids, test_ids, cameras, max_per_camera, junk,
                        distractors, lookalikes)
        args = dict(seed=seed, train_ids=train_ids, test_ids=test_ids, cameras=cameras,
                    max_per_camera=max_per_camera, junk=junk, distractors=distractors,
                    lookalikes=lookalikes)
        with open(os.path.join(tmp, SYNTHETIC_ARGS), "w") as f:
            f.write(_synthetic_line(args))
        for split in [*_SPLITS.values(), SYNTHETIC_ARGS]:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(root, split))  # an empty split folder given with ROOT
            os.rename(os.path.join(tmp, split), os.path.join(root, split))
        os.rmdir(tmp)
    except BaseException as e:  # UserError, Ctrl-C, ...: no partial dataset is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot move the synthetic dataset into {root}: {e.strerror}"
                            ) from None
        raise
    return root


SYNTHETIC_ARGS = "synthetic.txt"  # make_synthetic's arguments, one line, in ROOT


def _synthetic_line(args):
    """The line of ROOT/synthetic.txt: the generator's version and its arguments."""
    return "make_synthetic version 2: " + " ".join(f"{k}={v}" for k, v in args.items()) + "\n"


def _remove_dead_temporaries(root):
    """Remove the temporary folders ROOT/.tmp<pid> whose process no longer runs (make_synthetic
    killed before it could clean up); those of running processes stay."""
    with contextlib.suppress(OSError):  # no ROOT yet, or one we may not list: nothing to do
        for entry in os.listdir(root):
            m = re.fullmatch(r"\.tmp(\d+)", entry)
            if m and not pid_running(m.group(1)):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _draw_synthetic(folder, seed, train_ids, test_ids, cameras, max_per_camera, junk,
                    distractors, lookalikes):
    """The dataset make_synthetic describes, drawn and written into the new folder `folder`."""
    for split in _SPLITS.values():
        try:
            os.makedirs(os.path.join(folder, split))
        except OSError as e:
            raise UserError(f"cannot create {os.path.join(folder, split)} for the synthetic "
                            f"dataset: {e.strerror}") from None
    rng = np.random.default_rng(seed)
    cams = [_camera(rng) for _ in range(cameras)]
    # raw pids: distinct, in 1..9999 and not contiguous, so that relabelling to 0..N-1 is tested
    pids = rng.choice(np.arange(1, 10000), train_ids + test_ids, replace=False)
    # look-alike families: within each split, every run of `lookalikes` identities wears the
    # first one's upper garment, so the torso alone cannot tell them apart
    people = {}
    for n, pid in enumerate(pids.tolist()):
        first = n - (n if n < train_ids else n - train_ids) % lookalikes
        people[pid] = _identity(rng, people[int(pids[first])] if first < n else None)
    frame = [0] * cameras  # a running frame number per camera keeps every name unique

    def write(split, pid, c, person):
        """Render one image of `person` (None: background only) in camera c, save it in `split`."""
        frame[c] += int(rng.integers(1, 50))
        # Market naming: 4-digit pid (junk "-1" unpadded), 1-based camera, sequence 1, frame, box 01
        name = f"{'-1' if pid == -1 else f'{pid:04d}'}_c{c + 1}s1_{frame[c]:06d}_01.jpg"
        img = _render(rng, cams[c], person)
        if pid == -1 and person is not None:     # junk fragment: a top or bottom third, stretched
            third = img[:_H // 3] if rng.random() < 0.5 else img[-_H // 3:]
            img = np.asarray(Image.fromarray(third).resize((_W, _H), Image.BILINEAR))
        im = Image.fromarray(img)
        if cams[c]["blurry"]:                    # half the resolution, scaled back up
            im = im.resize((_W // 2, _H // 2), Image.BILINEAR).resize((_W, _H), Image.BILINEAR)
        path = os.path.join(folder, _SPLITS[split], name)
        try:
            im.save(path, quality=90)
        except OSError as e:  # disk full, folder removed under us; make_synthetic removes folder
            if e.errno == errno.ENOSPC:
                raise UserError(f"no space left on device writing the synthetic dataset into "
                                f"{os.path.dirname(folder)} (nothing of it was kept)") from None
            raise UserError(f"cannot write {path}: {e}") from None

    # the first train_ids identities go to training, the rest to query + gallery
    for n, pid in enumerate(people):
        # seen by 2..cameras cameras, 1..max_per_camera images in each
        seen = rng.choice(cameras, rng.integers(2, cameras + 1), replace=False)
        counts = rng.integers(1, max_per_camera + 1, len(seen))
        # cameras that give a query image: those with 2+ images (one stays in the gallery)
        queried = set(seen[counts >= 2].tolist()) or {int(seen[0])}
        for c, k in zip(seen.tolist(), counts.tolist()):
            for j in range(k):
                if n < train_ids:
                    split = "train"
                else:
                    split = "query" if j == 0 and c in queried else "gallery"
                write(split, int(pid), c, people[pid])
    test = list(people)[train_ids:]
    for _ in range(junk):
        # a fragment of a test identity (Market's junk: poor boxes of real people), or background
        who = people[test[rng.integers(len(test))]] if rng.random() < 0.5 else None
        write("gallery", -1, int(rng.integers(cameras)), who)
    for _ in range(distractors):
        # a passer-by seen only once (a new identity), or a false detection of background
        who = _identity(rng) if rng.random() < 0.5 else None
        write("gallery", 0, int(rng.integers(cameras)), who)


def to_folders(ds, out, cameras=True):
    """Copy a parsed dataset (`load_dataset`) into the folder layout at `out`:
    out/<train|query|gallery>/<raw pid>/<file name>; cameras=False renames each file to
    <pid>_<n>.<ext>, without its camera (a folder dataset without camera ids). The training
    split's raw pids are gone after relabelling: its folders are named by label + 1."""
    if os.path.exists(out) and _listdir(out):
        raise UserError(f"{out} is not empty; give a new or empty folder")
    for s, split in zip(_FOLDERS, (ds.train, ds.query, ds.gallery)):
        for n, (path, pid) in enumerate(zip(split.paths, split.pids)):
            pid = pid + 1 if s == "train" else pid
            name = "-1" if pid == -1 else f"{pid:04d}"
            file = os.path.basename(path) if cameras else f"{name}_{n}{os.path.splitext(path)[1]}"
            os.makedirs(os.path.join(out, s, name), exist_ok=True)
            shutil.copyfile(path, os.path.join(out, s, name, file))
    return out


# -----------------------------------------------------------------------------
# Command line

def ensure_synthetic(root="data/synthetic", any_dataset=False, **sizes):
    """The paper modules' demos: use the synthetic dataset at `root` if it is there (all three
    split folders hold files) and ROOT/synthetic.txt says it was written with these arguments,
    otherwise write one with `make_synthetic(root, **sizes)`; return root. A dataset written
    with other arguments (or by an older version) is refused, naming both: the demos' numbers
    hold for one dataset. any_dataset=True takes whatever dataset is there (bench.py times, it
    does not score). A half-filled folder is not patched up: make_synthetic refuses it."""
    folders = [os.path.join(root, s) for s in _SPLITS.values()]
    if all(_is_folder(f) and _listdir(f) for f in folders):
        if any_dataset:
            return root
        bound = inspect.signature(make_synthetic).bind(root, **sizes)
        bound.apply_defaults()
        wanted = _synthetic_line({k: v for k, v in bound.arguments.items() if k != "root"})
        with contextlib.suppress(OSError), open(os.path.join(root, SYNTHETIC_ARGS)) as f:
            if f.read() == wanted:
                return root
        raise UserError(f"{root} holds a dataset not written by this data.py with the arguments"
                        f" the demo needs ({os.path.join(root, SYNTHETIC_ARGS)} should read "
                        f"'{wanted.strip()}'); delete {root} and run again")
    print(f"writing the synthetic dataset to {root}")
    return make_synthetic(root, **sizes)


def main(argv=None):
    """The command line:
        python data.py synthetic --root DIR [sizes]
        python data.py summary --root DIR --dataset NAME [--skip-bad-files]
        python data.py folders --root DIR --dataset NAME --out DIR2 [--no-cameras]
    """
    parser = argparse.ArgumentParser(description="Re-ID datasets in the Market-1501 layout.")
    sub = parser.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="write a synthetic dataset in the Market-1501 layout",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    syn.add_argument("--root", required=True, help="output folder (new or empty)")
    # the size flags mirror make_synthetic's keyword arguments, defaults taken from its signature
    sizes = {"seed": "the same seed writes the same bytes",
             "train_ids": "identities in bounding_box_train",
             "test_ids": "identities in query + bounding_box_test",
             "cameras": "number of cameras, >= 2",
             "max_per_camera": "images of one identity in one camera: 1..this",
             "junk": "pid -1 images in the gallery",
             "distractors": "pid 0000 images in the gallery",
             "lookalikes": "identities per family sharing an upper garment"}
    defaults = inspect.signature(make_synthetic).parameters
    for k, text in sizes.items():
        syn.add_argument("--" + k.replace("_", "-"), type=int, default=defaults[k].default,
                         help=text)
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
    args = parser.parse_args(argv)
    if args.command == "folders":
        to_folders(load_dataset(args.root, args.dataset, verbose=False), args.out,
                   cameras=not args.no_cameras)
        load_dataset(args.out, "folder")
    elif args.command == "synthetic":
        start = time.time()
        make_synthetic(args.root, **{k: getattr(args, k) for k in sizes})
        print(f"wrote a synthetic dataset in {time.time() - start:.1f} s")
        load_dataset(args.root, "synthetic")
    else:
        load_dataset(args.root, args.dataset, skip_bad_files=args.skip_bad_files)


if __name__ == "__main__":
    exit_on_user_error(main)  # a UserError becomes "error: <message>", exit status 2
