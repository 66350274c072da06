"""
What users run around the two papers: features of their own images, a search among them, the
ranking figure, the curves of training runs, the papers' figures, and a paper's table rows over
several seeds. The papers themselves (networks, losses, training, the evaluation protocol) are in
the core files: common.py, data.py, evaluate.py, aea.py, aaanet.py.

  python tools.py extract --checkpoint C --images DIR --out feats.npz         # `extract`
  python tools.py search --checkpoint C --query IMAGE --gallery DIR|feats.npz  # `search`
                         [--top K] [--out ranks.png]
  python tools.py ranks --checkpoint C --root DIR --dataset NAME --out FIGS    # `ranks`
                        [--metric euclidean xqda ...] [--rerank] [--num N | --queries NAME ...]
  python tools.py plot OUT [OUT ...] [--out curves.png]        # log.csv of runs -> `plot_runs`
  python tools.py figure aea --checkpoint C [C2 ...] [--out F.png]   # AEA Figs. 3 and 5
  python tools.py figure aaanet --checkpoint C [--out F.png]         # AAA-Net Fig. 4
  python tools.py compare aea [--seeds 5]       # AEA Tables 2 and 6 in miniature, over seeds
  python tools.py compare aaanet [--seeds 5]    # AAA-Net Tables 3-5 in miniature, over seeds
                 [--start pretrained|random] [--on test|validation] [--rows ...] [--set K=V]

The model flags (--checkpoint or --weights, --device, --batch-size, --flip) are evaluate.py's;
so are the features, the distances and the ranking: `ranks` draws the ranking that
`python evaluate.py` scores. A bad flag or file: one line `error: ...`, exit status 2.

Imports flow one way: this file imports the core (and synthetic.py, the demo's data); no core
file imports it. Its decisions are about files and figures (layout, atomic writes, the queries a
figure shows), each with a plain comment at its line; the readings of the papers are in the core.
"""
import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

import aaanet
import aea
import common
import data
import evaluate
import pretrain
import synthetic
from common import UserError

# -----------------------------------------------------------------------------
# Images in and out: the --out checks before any work, whole-or-nothing writes, image grids


def evenly_spaced(n, num):
    """Up to `num` indices of 0..n-1, evenly spaced, first and last included; all n when num is
    n or more."""
    # figures draw evenly spaced queries / images, so that they do not show only the first
    # identity. At most n points are spaced: --num may be any size, and more points than items
    # would round to every index anyway
    return np.unique(np.linspace(0, n - 1, min(num, n)).round().astype(int))


def check_image_path(path):
    """Refuse, before any work, an --out image that could not be written: a folder, a name
    without an image extension PIL writes, or a folder that cannot be written to."""
    from PIL import Image  # comes with torchvision
    if os.path.isdir(path):
        raise UserError(f"--out {path} is a folder; expected the image file to write, e.g. "
                        f"{os.path.join(path, 'figure.png')}")
    ext = os.path.splitext(path)[1].lower()
    try:  # a 1x1 colour image in that format, in memory: what PIL can write, it writes here
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=Image.registered_extensions()[ext])
    except (KeyError, OSError, ValueError):
        raise UserError(f"--out {path}: expected an image file name with an extension PIL "
                        f"writes in colour (.png, .jpg, .bmp, ...), got "
                        f"{repr(ext) if ext else 'none'}") from None
    check_out_folder(os.path.dirname(os.path.abspath(path)), path)


def check_out_folder(folder, out=None):
    """Create --out's `folder` and prove it writable, before any work; otherwise one UserError.
    out: the --out file that goes into the folder (None: --out is the folder itself)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # created and removed: the folder takes files
            pass
    except OSError as e:
        where = "there" if out is None else f"into its folder {folder}"
        reason = "a file, not a folder" if os.path.isfile(folder) else e.strerror
        raise UserError(f"--out {out or folder}: cannot write {where} ({reason}); give a folder "
                        "you can write to") from None


def save_image(image, path):
    """Write a PIL image whole or not at all: into a hidden file beside `path`, renamed to `path`
    once complete, so a full disk leaves no partial image; a failure is a UserError naming the
    file."""
    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f".partial-{os.getpid()}-{name}")  # keeps the extension
    try:
        os.makedirs(folder, exist_ok=True)
        image.save(partial)
        os.replace(partial, path)
    except BaseException as e:  # a full disk, a format that cannot hold the image, Ctrl-C...
        with contextlib.suppress(OSError):
            os.remove(partial)
        if not isinstance(e, (OSError, ValueError)):  # a stop goes on, the partial file gone
            raise
        raise UserError(f"cannot write {path} ({getattr(e, 'strerror', None) or e})") from None


# frame colours of the ranking figures: the query, a true match, any other item, an unlabelled one
GREY = (128, 128, 128)
GREEN = (0, 170, 0)
RED = (220, 0, 0)
BLUE = (40, 90, 220)


def image_rows(rows, height=128, width=64, border=3, desc="figure"):
    """A PIL image of rows of framed images: rows[r] = [(image file, frame colour), ...], the first
    of each row (a query) set apart by a gap."""
    from PIL import Image  # comes with torchvision
    # every image of the figure decoded in one go, [n, H, W, 3] for PIL
    paths = [path for row in rows for path, _ in row]
    images = data.load_images(paths, height, width, desc=desc).permute(0, 2, 3, 1).numpy()
    tile_w = width + 2 * border
    tile_h = height + 2 * border
    gap = 12  # between the query and its results
    canvas_w = gap + max(map(len, rows)) * (tile_w + 2)
    canvas = Image.new("RGB", (canvas_w, len(rows) * (tile_h + 4)), "white")
    k = 0  # index into `images`, in the order of `paths`
    for r, row in enumerate(rows):
        for c, (_, colour) in enumerate(row):
            tile = Image.new("RGB", (tile_w, tile_h), colour)  # the frame is the tile's background
            tile.paste(Image.fromarray(images[k]), (border, border))
            canvas.paste(tile, (c * (tile_w + 2) + (gap if c else 0), r * (tile_h + 4)))
            k += 1
    return canvas


def heat_overlay(images, maps, alpha=0.5):
    """Attention maps drawn over their images, as in the papers' figures (AEA Figs. 3 and 5,
    AAA-Net Fig. 4): uint8 [B, 3, H, W] images, float [B, h, w] maps -> uint8 [B, 3, H, W].

    Each map is resized bilinearly to H x W and min-max scaled to 0..1 per image (only its shape
    matters in a figure), coloured blue (low) -> green -> red (high), and blended with the image.
    """
    B, _, H, W = images.shape
    m = F.interpolate(maps[:, None].float().cpu(), size=(H, W), mode="bilinear",
                      align_corners=False)  # [B, 1, H, W]
    lo = m.amin(dim=(2, 3), keepdim=True)
    m = (m - lo) / (m.amax(dim=(2, 3), keepdim=True) - lo).clamp_min(1e-12)
    # a three-stop colour ramp (blue, green, red), piecewise linear in m
    red = (2 * m - 1).clamp(0, 1)
    blue = (1 - 2 * m).clamp(0, 1)
    green = 1 - red - blue
    heat = torch.cat([red, green, blue], dim=1) * 255                     # [B, 3, H, W]
    return ((1 - alpha) * images.float().cpu() + alpha * heat).round().to(torch.uint8)


def save_image_grid(path, rows, gap=2):
    """Write a PNG of image rows: rows[r][c] is a uint8 [3, H, W] tensor, all the same size."""
    from PIL import Image  # comes with torchvision
    H, W = rows[0][0].shape[1:]
    canvas_w = max(len(r) for r in rows) * (W + gap)
    canvas = Image.new("RGB", (canvas_w, len(rows) * (H + gap)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            canvas.paste(Image.fromarray(img.permute(1, 2, 0).cpu().numpy()),
                         (c * (W + gap), r * (H + gap)))
    save_image(canvas, path)


# -----------------------------------------------------------------------------
# Your own images: features of a folder (extract), one person searched in a gallery (search)


def file_features(model, paths, size, device, batch_size=256, flip=False, precision="auto",
                  desc="features", chunk=1024):
    """Features [N, D] float32 on the CPU of image files: `chunk` images decoded at a time (the
    memory of two chunks of pixels, whatever N), the next chunk decoded in a thread while the
    model runs on this one, features extracted in batches of `batch_size`; a progress line on
    stderr (images and images/s so far)."""
    feats = []
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        def decode(i):  # chunk i.. of the paths, in the pool's thread
            return pool.submit(data.load_images, paths[i:i + chunk], *size, quiet=True, hint="")
        pending = decode(0)
        for i in range(0, len(paths), chunk):
            images = pending.result()
            if i + chunk < len(paths):
                pending = decode(i + chunk)
            feats.append(evaluate.extract_features(model, images.split(batch_size), device, flip,
                                                   precision).cpu())
            done = min(i + chunk, len(paths))
            secs = time.perf_counter() - start
            print(f"\r{desc}: {done}/{len(paths)} images, {done / max(secs, 1e-9):.0f} img/s",
                  end="\n" if done == len(paths) else "", file=sys.stderr, flush=True)
    return torch.cat(feats)


def extract(argv):
    """python tools.py extract --checkpoint C --images DIR --out FEATS.npz [--flip]: the features
    of every image under DIR (subfolders included), with their paths relative to DIR."""
    p = evaluate.add_model_args(argparse.ArgumentParser(prog="tools.py extract",
                                                        description=extract.__doc__))
    p.add_argument("--images", required=True, help="folder of images, subfolders included")
    p.add_argument("--out", required=True, help="the .npz to write: features [N, D] float32, "
                   "paths [N] relative to --images")
    args = p.parse_args(argv)
    evaluate.check_args(args)
    if not args.out.endswith(".npz"):
        raise UserError(f"--out {args.out}: expected a file name ending in .npz")
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a folder; expected the .npz file to write, e.g. "
                        f"{os.path.join(args.out, 'features.npz')}")
    check_out_folder(os.path.dirname(os.path.abspath(args.out)), args.out)
    paths = data.image_files(args.images)
    model, device, size, precision = evaluate.model_on_device(args)
    features = file_features(model, [os.path.join(args.images, f) for f in paths], size, device,
                             args.batch_size, args.flip, precision, desc="extract")
    what = args.checkpoint or f"weights {args.weights}"
    # written whole under a hidden name, then renamed: a full disk leaves no partial file
    partial = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                           f".partial-{os.getpid()}-{os.path.basename(args.out)}")
    try:
        with open(partial, "wb") as f:
            np.savez(f, features=features.numpy(), paths=np.array(paths),
                     root=os.path.abspath(args.images), model=what, size=np.array(size),
                     flip=args.flip)
        os.replace(partial, args.out)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise UserError(f"cannot write {args.out} ({e.strerror})") from None
    print(f"wrote {args.out}: {len(paths)} features of {features.shape[1]} dimensions "
          f"({what}, {size[0]}x{size[1]}{', flip' if args.flip else ''})")
    return features, paths


# the arrays of `extract`'s .npz: name -> (their kind, as numpy's dtype.kind: f float, U string,
# i or u whole number, b bool; their number of dimensions; what they hold)
FEATURE_ARRAYS = {"features": ("f", 2, "float numbers [N, D], a row of D > 0 per image"),
                  "paths": ("U", 1, "N image paths (strings), one per row of features"),
                  "root": ("U", 0, "one string, the folder of the images"),
                  "model": ("U", 0, "one string, the model that extracted them"),
                  "size": ("iu", 1, "2 positive whole numbers, the images' height and width"),
                  "flip": ("b", 0, "one bool")}


def load_features(path):
    """What `extract` wrote: (features [N, D] float32 tensor, absolute image paths,
    {size, flip, model}). Plain arrays only (allow_pickle=False): no code is loaded. Each array is
    checked for its type and shape, the features for NaN and infinity, before any model is
    built: a file that is not what `extract` writes is one UserError naming what is wrong."""
    def not_ours(found):
        return UserError(f"--gallery {path}: not a features file of `tools.py extract` ({found})")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a lone .npy array renamed .npz
            raise not_ours(f"one array of shape {f.shape}, not named arrays")
        with f:
            arrays = {name: f[name] for name in FEATURE_ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise not_ours(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    for name, (kinds, ndim, expected) in FEATURE_ARRAYS.items():
        a = arrays[name]
        if a.dtype.kind not in kinds or a.ndim != ndim:
            raise not_ours(f"{name}: {a.dtype} array of shape {a.shape}; expected {expected}")
    feats = arrays["features"]
    rel = arrays["paths"]
    size = arrays["size"]
    if feats.shape[1] == 0:
        raise not_ours(f"features of shape {feats.shape}; expected {FEATURE_ARRAYS['features'][2]}")
    if len(rel) != len(feats):
        raise not_ours(f"{len(feats)} rows of features, {len(rel)} paths; expected one path per "
                       "row")
    if size.shape != (2,) or (size < 1).any():
        raise not_ours(f"size {size.tolist()}; expected {FEATURE_ARRAYS['size'][2]}")
    if len(feats) == 0:
        raise UserError(f"--gallery {path} holds no features (0 images); expected the features "
                        "of at least one image: extract a folder that holds images")
    paths = [os.path.join(str(arrays["root"]), p) for p in rel]
    # as float32, the features the query's are compared with (a float64 beyond float32's range
    # becomes infinite here, quietly, and is refused with the NaNs below)
    with np.errstate(over="ignore"):
        feats = torch.from_numpy(feats.astype(np.float32))
    bad = first_not_finite(feats)
    if bad is not None:
        raise UserError(f"--gallery {path}: the features of {paths[bad]} (row {bad}) hold NaN or "
                        "infinite values; expected finite numbers (distances to them mean "
                        "nothing): extract again with a model whose features are finite")
    info = dict(size=tuple(int(s) for s in size), flip=bool(arrays["flip"]),
                model=str(arrays["model"]))
    return feats, paths, info


def first_not_finite(features):
    """The index of the first row of `features` [N, D] with a NaN or infinite value; None if
    there is none."""
    bad = torch.nonzero(~torch.isfinite(features).all(dim=1)).flatten()
    return int(bad[0]) if len(bad) else None


def search(argv):
    """python tools.py search --checkpoint C --query IMAGE --gallery DIR|FEATS.npz [--top K]
    [--out RANKS.png]: the K gallery images nearest to the query, printed with their distances
    and drawn beside it."""
    p = evaluate.add_model_args(argparse.ArgumentParser(prog="tools.py search",
                                                        description=search.__doc__))
    p.add_argument("--query", required=True, help="the image of the person to search for")
    p.add_argument("--gallery", required=True, help="a folder of images (subfolders included), "
                   "or the .npz of `tools.py extract` (then --flip as it was extracted)")
    p.add_argument("--top", type=int, default=10, help="how many of the nearest to show")
    p.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    p.add_argument("--out", help="the image to write: the query, then its --top nearest")
    args = p.parse_args(argv)
    evaluate.check_args(args)
    common.check_limits(args, {"top": "[1, inf)"})
    if args.out:
        check_image_path(args.out)
    if not os.path.isfile(args.query):
        raise UserError(f"--query {args.query} is not an image file")
    stored = args.gallery.lower().endswith(".npz")
    if stored and not os.path.isfile(args.gallery):
        raise UserError(f"--gallery {args.gallery} does not exist (expected the file "
                        "`tools.py extract` wrote, or a folder of images)")
    if stored:
        gf, paths, info = load_features(args.gallery)
        if info["flip"] != args.flip:
            print(f"note: --flip {'on' if info['flip'] else 'off'}, as the gallery was extracted")
        args.flip = info["flip"]  # the query's feature made as the gallery's were
    else:
        paths = [os.path.join(args.gallery, f) for f in data.image_files(args.gallery)]
    model, device, size, precision = evaluate.model_on_device(args)
    qf = file_features(model, [args.query], size, device, flip=args.flip, precision=precision,
                       desc="query")
    what = args.checkpoint or f"weights {args.weights}"
    if first_not_finite(qf) is not None:
        raise UserError(f"the model ({what}) gives NaN or infinite features for --query "
                        f"{args.query}; expected finite numbers (distances to them mean nothing): "
                        "search with a model whose features are finite")
    if stored and (gf.shape[1] != qf.shape[1] or info["size"] != tuple(size)):
        raise UserError(f"--gallery {args.gallery} holds {gf.shape[1]}-d features of "
                        f"{info['size'][0]}x{info['size'][1]} images ({info['model']}); this model "
                        f"gives {qf.shape[1]}-d features of {size[0]}x{size[1]} images: extract "
                        "the gallery with the same model")
    if stored and info["model"] != what:
        print(f"note: the gallery features are of {info['model']}, the query's of {what}: "
              "distances mean something only if both are one model")
    if not stored:
        gf = file_features(model, paths, size, device, args.batch_size, args.flip, precision,
                           desc="gallery")
        bad = first_not_finite(gf)
        if bad is not None:
            raise UserError(f"the model ({what}) gives NaN or infinite features for {paths[bad]} "
                            f"of --gallery {args.gallery}; expected finite numbers (distances to "
                            "them mean nothing): search with a model whose features are finite")
    dist = evaluate.pairwise_distances(qf, gf, args.metric)[0]
    # the evaluation's order: by distance, equal distances by gallery index (a stable sort)
    order = torch.sort(dist, stable=True).indices[:args.top].tolist()
    moved = [paths[g] for g in order if not os.path.isfile(paths[g])]
    if moved:
        raise UserError(f"--gallery {args.gallery}: {moved[0]} (and {len(moved) - 1} more of the "
                        f"top {len(order)}) is gone: the images moved since extract; run extract "
                        "again")
    print(f"the {len(order)} nearest of {len(paths)} gallery images to {args.query} "
          f"({args.metric} distance):")
    for rank, g in enumerate(order, 1):
        print(f"{rank:4d}  {dist[g]:9.4f}  {paths[g]}")
    if args.out:
        row = [(args.query, GREY)] + [(paths[g], BLUE) for g in order]
        save_image(image_rows([row]), args.out)
        print(f"wrote {args.out}")
    return [(paths[g], float(dist[g])) for g in order]


# -----------------------------------------------------------------------------
# The ranking figure: queries of a test set and the first items of their scored rankings


def rank_figure(dist, ds, queries, top=10):
    """A PIL image of the query indices `queries`, one per row: the query (grey frame), then its
    first `top` gallery items in the ranking that is scored: green frame = true match, red = any
    other item. Junk and same-id-same-camera items are not drawn: the protocol removes them."""
    dist = torch.as_tensor(dist)
    rows = []
    for q in queries:
        # the ranking that is scored (evaluate.valid_ranking): the figure shows what CMC and mAP
        # count
        order, hits = evaluate.valid_ranking(dist[q].double().cpu().numpy(), ds.query.pids[q],
                                             ds.query.cams[q], ds.gallery.pids, ds.gallery.cams)
        results = [(ds.gallery.paths[g], GREEN if h else RED)
                   for g, h in zip(order[:top], hits[:top])]
        rows.append([(ds.query.paths[q], GREY)] + results)
    return image_rows(rows, desc="ranks")


def find_queries(ds, names):
    """The indices of the query images named (a file name, or its end: "0002/0002_c1_01.jpg"),
    in the order given; a name that fits no image, or several, is an error."""
    found = []
    for name in names:
        hits = [i for i, p in enumerate(ds.query.paths)
                if p == name or p.endswith(os.sep + name.lstrip(os.sep))]
        if len(hits) != 1:
            raise UserError(f"--queries {name}: " + (f"no query image of that name in {ds.root}"
                            if not hits else f"{len(hits)} query images end so; give its folder "
                            "too"))
        found += hits
    return found


def ranks(argv):
    """python tools.py ranks --checkpoint C --root DIR [--dataset NAME] [--metric M ...]
    [--rerank] [--num N | --queries NAME ...] --out DIR: one PNG per metric (and per re-ranked
    metric), OUT/ranks_<metric>.png: N queries evenly spaced over the query split (or the query
    images named), each with the first 10 items of the ranking `python evaluate.py` scores."""
    p = evaluate.add_model_args(argparse.ArgumentParser(prog="tools.py ranks",
                                                        description=ranks.__doc__))
    evaluate.add_dataset_args(p)
    p.add_argument("--metric", nargs="+", default=["euclidean"],
                   choices=["euclidean", "cosine", "xqda", "kissme"],
                   help="a figure per metric (XQDA and KISSME with their defaults)")
    p.add_argument("--rerank", action="store_true", help="also each metric's ranking after "
                   "k-reciprocal re-ranking: a second figure each")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--num", type=int, default=8, metavar="N",
                       help="N queries, evenly spaced over the query split (default: 8)")
    which.add_argument("--queries", nargs="+", metavar="NAME",
                       help="these query images (file names) instead")
    p.add_argument("--out", required=True, help="the folder to write the PNGs into")
    args = p.parse_args(argv)
    evaluate.check_args(args)
    common.check_limits(args, {"num": "[1, inf)"})
    check_out_folder(args.out)  # before any work
    # the dataset next: a wrong --root fails before any model is built
    ds = data.load_dataset(args.root, args.dataset, skip_bad_files=args.skip_bad_files)
    evaluate.check_true_matches(ds)
    if args.queries:
        queries = find_queries(ds, args.queries)
    else:
        queries = evenly_spaced(len(ds.query), args.num)
    model, device, size, precision = evaluate.model_on_device(args)
    feats = evaluate.split_features(model, ds, size, device,
                                    evaluate.needed_splits(args.metric),
                                    batch_size=args.batch_size, flip=args.flip,
                                    precision=precision)
    written = []
    for metric in args.metric:
        distance = evaluate.metric_distance(metric, feats, ds)
        for name, dist in evaluate.ranked_distances(metric, distance, feats, args.rerank).items():
            path = os.path.join(args.out, f"ranks_{name.replace(' + ', '_')}.png")
            save_image(rank_figure(dist, ds, queries), path)
            print(f"wrote {path}")
            written.append(path)
    return written


# -----------------------------------------------------------------------------
# The record of a run: OUT/log.csv (written by common.write_log) drawn as curves


# the columns every run writes to its log.csv (aea.py and aaanet.py: the epoch and its learning
# rate, then common.Progress's speed and time); the loss terms and scores vary with the run
LOG_COLUMNS = ("epoch", "lr", "img/s", "seconds")


def read_log(path):
    """(label, {column: float array}) of a run's log.csv: `path` is the file, or a folder that
    holds it. Empty cells (an epoch without evaluation) become NaN, which matplotlib skips.
    A file that is not such a log (not text, a header without a run's columns, a row of more or
    fewer cells than the header, a cell not a number) is one UserError naming it."""
    file = os.path.join(path, "log.csv") if os.path.isdir(path) else path
    try:
        with open(file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read {file} ({e.strerror}); expected the --out folder of a "
                        "training run, which holds log.csv") from None
    not_a_log = f"{file} is not a log.csv of this project"
    try:
        # common.write_log's names and numbers are ASCII; -sig: a byte-order mark that a
        # spreadsheet program adds is skipped
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{not_a_log} (not text)") from None
    if "\x00" in text:  # valid UTF-8 but binary
        raise UserError(f"{not_a_log} (not text)")
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise UserError(f"{not_a_log} ({e})") from None
    if not lines:
        raise UserError(f"{file} is empty; expected a log.csv of this project (a header, then a "
                        "row per epoch)")
    header = lines[0]
    rows = [row for row in lines[1:] if row]  # blank lines skipped, as csv.DictReader does
    missing = [c for c in LOG_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{not_a_log} (no column {', '.join(missing)} in its header "
                        f"{','.join(header)}; a run writes {', '.join(LOG_COLUMNS)} and its loss "
                        "terms)")
    twice = [c for c in dict.fromkeys(header) if header.count(c) > 1]
    if twice:
        raise UserError(f"{not_a_log} (column {twice[0]} twice in its header; a run writes each "
                        "once)")
    if not rows:
        raise UserError(f"{file} holds no epoch yet (a run writes a row at the end of each epoch)")
    for i, row in enumerate(lines[1:], 2):  # i: the row's number in the file, the header 1
        if row and len(row) != len(header):
            raise UserError(f"{not_a_log} (row {i} has {len(row)} cells, its header "
                            f"{len(header)})")
    try:
        columns = {k: np.array([float(r[j]) if r[j] else np.nan for r in rows])
                   for j, k in enumerate(header)}
    except ValueError:
        raise UserError(f"{file} is not a log.csv of this project (a cell is not a number)"
                        ) from None
    epochs = columns["epoch"]
    whole = np.isfinite(epochs) & (epochs >= 1) & (epochs % 1 == 0)  # NaN: an empty cell too
    if not whole.all():
        raise UserError(f"{not_a_log} (epoch {epochs[~whole][0]:g}; expected whole numbers 1, 2, "
                        "...)")
    return os.path.dirname(file) or ".", columns


def run_logs(paths):
    """The log.csv of each path: a run's --out, its log.csv, or a folder of runs (AAA-Net's OUT
    holds stage1/, stage2/, stage3/): each of its subfolders with a log.csv, in name order."""
    found = []
    for path in paths:
        names = os.listdir(path) if os.path.isdir(path) else []
        subs = sorted(os.path.join(path, s) for s in names)
        runs = [s for s in subs if os.path.isfile(os.path.join(s, "log.csv"))]
        if not runs or os.path.isfile(os.path.join(path, "log.csv")):
            found.append(path)
        else:
            found += runs
    return [read_log(p) for p in found]


# columns of log.csv that are not a loss term
_NOT_LOSSES = ("epoch", "lr", "img/s", "seconds")


def plot_runs(paths, out):
    """Draw the curves of one or several runs into the image `out`: a panel per loss term (its
    epoch mean), then rank-1 and mAP (%) per metric where a run evaluated; one colour per run."""
    check_image_path(out)
    try:
        from matplotlib.figure import Figure  # no pyplot: no window, no global state
    except ImportError:
        raise UserError("drawing curves needs matplotlib: pip install matplotlib") from None
    logs = run_logs(paths)
    names = list(dict.fromkeys(k for _, log in logs for k in log))
    panels = [k for k in names if k not in _NOT_LOSSES and not k.startswith(("rank-1 ", "mAP "))]
    panels += [p for p in ("rank-1", "mAP") if any(k.startswith(p + " ") for k in names)]
    if not panels:
        raise UserError(f"{', '.join(paths)}: no loss term or score to draw in log.csv")
    cols = min(3, len(panels))
    grid_rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4 * cols, 3 * grid_rows), layout="constrained")
    axes = fig.subplots(grid_rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        for i, (label, log) in enumerate(logs):
            # a loss term is one column; rank-1 and mAP one column per metric ("rank-1 xqda")
            keys = [panel] if panel in log else [k for k in log if k.startswith(panel + " ")]
            for k in keys:
                ax.plot(log["epoch"], log[k], marker=".", color=f"C{i % 10}",
                        linestyle=["-", "--", ":", "-."][keys.index(k) % 4],
                        label=label + k[len(panel):])
        ax.set_title(panel + (" (%)" if panel in ("rank-1", "mAP") else ""))
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    from PIL import Image  # comes with torchvision
    save_image(Image.open(buffer).convert("RGB"), out)  # any format PIL writes
    return out


def plot(argv):
    """python tools.py plot OUT [OUT ...] [--out curves.png]: the curves of training runs (their
    log.csv) in one figure, e.g. AEA against Baseline 1. One run: OUT/curves.png by default."""
    p = argparse.ArgumentParser(prog="tools.py plot", description=plot.__doc__)
    p.add_argument("runs", nargs="+", help="a run's --out (or its log.csv); an AAA-Net --out "
                   "draws each stage")
    p.add_argument("--out", help="the image to write (default: curves.png in the run's folder "
                   "for one run, curves.png here for several)")
    args = p.parse_args(argv)
    out = args.out
    if out is None and len(args.runs) == 1:
        run = args.runs[0]
        folder = run if os.path.isdir(run) else os.path.dirname(run)
        out = os.path.join(folder, "curves.png")
    elif out is None:
        out = "curves.png"
    print(f"wrote {plot_runs(args.runs, out)}")
    return out


# -----------------------------------------------------------------------------
# The papers' figures: AEA Figs. 3 and 5, AAA-Net Fig. 4


def figure_inputs(argv, prog, description, paper, default_out, several=False):
    """What the papers' figure commands share (AEA Figs. 3 and 5, AAA-Net Fig. 4): the flags, the
    checkpoints (refused unless `paper` wrote them), and --num images evenly spaced over a split,
    decoded at the checkpoints' input size. Returns (args, device, [(path, ckpt)], uint8 images
    [n, 3, H, W]); args.out is the PNG to write."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--checkpoint", nargs="+" if several else None, required=True,
                   help="checkpoints of one run (e.g. its epoch_N.pt)" if several else None)
    p.add_argument("--root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--split", default="query", choices=["train", "query", "gallery"])
    p.add_argument("--num", type=int, default=8, help="images, evenly spaced over the split")
    p.add_argument("--out", default=default_out, help="the PNG to write")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    check_image_path(args.out)
    device = common.pick_device(args.device)  # a wrong --device fails before any file is read
    paths = args.checkpoint if several else [args.checkpoint]
    ckpts = [common.load_checkpoint(path) for path in paths]
    for path, ckpt in zip(paths, ckpts):
        common.check_checkpoint(ckpt, path, paper)
    cfg = ckpts[0]["config"]
    if len({(c["config"]["height"], c["config"]["width"]) for c in ckpts}) > 1:
        raise UserError("the checkpoints were trained at different input sizes; give checkpoints "
                        "of one size")
    ds = data.load_dataset(args.root or cfg["root"], args.dataset or cfg["dataset"], verbose=False)
    split = getattr(ds, args.split)
    shown = [split.paths[i] for i in evenly_spaced(len(split), args.num)]
    images = data.load_images(shown, cfg["height"], cfg["width"], desc="figure")
    return args, device, list(zip(paths, ckpts)), images


def aea_figure(argv):
    """python tools.py figure aea --checkpoint C [C2 ...] --out F.png: one column per query image;
    rows: the images, then per checkpoint its attention map as a heat overlay (Fig. 3; several
    checkpoints of one run = Fig. 5's training statuses) and its erased images (Fig. 4)."""
    args, device, ckpts, images = figure_inputs(
        argv, "tools.py figure aea", aea_figure.__doc__, "aea",
        os.path.join("runs", "aea", "attention.png"), several=True)
    rows = [list(images)]                                                 # uint8 [n, 3, H, W]
    for path, ckpt in ckpts:
        model, _ = aea.model_from_checkpoint(ckpt, path)
        model = model.to(device)
        cfg = ckpt["config"]
        with torch.no_grad(), common.autocast(device, evaluate.trained_precision(ckpt)):
            # Eq. (1) at test time, as the erase-once masks take it: unaugmented images, eval
            # mode
            x = data.normalize(images.to(device))
            M_l = model.basic.backbone.run(x, "conv1", cfg["attention_layer"])
        A = aea.attention_map(M_l).cpu()                                   # [n, h, w]
        rows.append(list(heat_overlay(images, A)))
        erased = aea.erase_uint8(images, aea.salient_pixels(A, cfg["R"], images.shape[-2:]))
        rows.append(list(erased))
    save_image_grid(args.out, rows)
    print(f"wrote {args.out}: {len(images)} {args.split} images, per checkpoint attention + erased")
    return args.out


def aaanet_figure(argv):
    """python tools.py figure aaanet --checkpoint C --out F.png: like Fig. 4, three rows of N
    images: the inputs, their attention maps over them, and the inputs with the occluded region
    black. C: a stage-2 or stage-3 checkpoint (stage 3 of Table 4's variant draws its response
    mask)."""
    args, device, ckpts, images = figure_inputs(
        argv, "tools.py figure aaanet", aaanet_figure.__doc__, "aaanet", "aaanet_fig4.png")
    path, ckpt = ckpts[0]
    model, (H, W) = aaanet.model_from_checkpoint(ckpt, path)
    cfg = aaanet.Config(**ckpt["config"])
    if ckpt.get("stage") == "stage1":
        raise UserError(f"{path} is a stage-1 checkpoint: its attention branch is untrained "
                        "(draw a stage-2 or stage-3 checkpoint)")
    response = cfg.mask_source == "response"  # Table 4's variant: the mask from f_r's response
    with torch.no_grad(), common.autocast(device, evaluate.trained_precision(ckpt)):
        f_r = model.to(device).middle(data.normalize(data.to_device(images, device)))
        M_att = model.attention_map(f_r)
        if response:
            mask = aaanet.response_mask(f_r)                               # [n, h, w], 0 = occluded
        else:
            mask = aaanet.attention_mask(M_att, cfg.threshold)
    # the map that chose the mask, relu(M_att) or Table 4's response; the mask upsampled, nearest
    shown = f_r.float().mean(dim=1) if response else M_att.float().relu()
    kept = F.interpolate(mask[:, None].float().cpu(), size=(H, W), mode="nearest").bool()
    rows = [list(images), list(heat_overlay(images, shown)), list(images * kept)]
    save_image_grid(args.out, rows)
    print(f"wrote {args.out}: {len(images)} {args.split} images, their attention and the "
          f"occluded regions ({100 * (~mask).float().mean():.0f}% of the positions)")
    return args.out


FIGURES = {"aea": aea_figure, "aaanet": aaanet_figure}


def figure(argv):
    """python tools.py figure aea|aaanet ...: a paper's figure."""
    return FIGURES[paper_of("figure", argv)](argv[1:])


# -----------------------------------------------------------------------------
# A paper's rows over several seeds: `python tools.py compare aea|aaanet`


# the most seeds `compare` takes: each one trains every row (minutes each), and the list of runs
# is made up front, so a larger number is a typing mistake, not a plan
MAX_SEEDS = 1000


# The benchmarks a compare runs on, synthetic.py's sets of other seeds (other people): every
# setting of the demos and compares is chosen on "validation"; "test" is looked at to report
BENCHMARKS = {"test": dict(root=os.path.join("data", "synthetic"), seed=0),
              "validation": dict(root=os.path.join("data", "synthetic_val"), seed=1)}
# the starts a compare trains from: the pretrained stand-in for ImageNet, or random weights
STARTS = ("pretrained", "random")


def compare_command(argv, prog, description, out, title, rows, claims, train_row,
                    metrics=("euclidean",), arch="resnet18", diagnose=None,
                    diagnostic_claims=(), check_settings=None):
    """A paper's `compare` command: flags --seeds (5), --start, --on, --rows, --set, --out,
    --device, --resume (the default), then `compare`. rows: [(label, what train_row needs,
    cost)]; train_row(that, seed, folder, device, resume, root, start, settings) trains one run
    in `folder` on the benchmark at `root` from `start` with `settings` ({--set KEY: VALUE}) ->
    {metric or diagnostic view: rank_metrics}. The benchmark
    and, for --start pretrained, the pretrained start of `arch` are built first if they are not
    there. diagnose(label, folder) -> {name: number} and diagnostic_claims: `compare`'s.
    check_settings(settings) raises a UserError for a --set the paper does not take."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per row (default: 5)")
    p.add_argument("--start", choices=STARTS, default="pretrained",
                   help="pretrained: every run starts from the backbone `python pretrain.py` "
                        "builds (built on first use), the stand-in for the papers' ImageNet "
                        "start; random: from random weights (default: pretrained)")
    p.add_argument("--on", choices=BENCHMARKS, default="test",
                   help="the benchmark: test (data/synthetic, to report) or validation "
                        "(data/synthetic_val, where settings are chosen) (default: test)")
    p.add_argument("--rows", nargs="+", metavar="ROW", default=None,
                   help="train these rows only (their labels, e.g. AEA \"Baseline 1\"); the "
                        "orderings between them are printed; AAA-Net's rows after stage 1 start "
                        "from the Stage 1 row's run in --out (default: every row)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", default=[],
                   help="a setting over the start's for every row: a training flag's name "
                        "and value, e.g. lr=0.02 (AAA-Net: also stage1.lr=0.003); how settings "
                        "are chosen with --on validation")
    p.add_argument("--out", default=None,
                   help=f"a run per row and seed in it (default: {out}/START-ON[-KEYVALUE...])")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the finished runs in --out, resume a stopped one (default: yes)")
    args = p.parse_args(argv)
    settings = {}
    for item in args.set:
        key, equals, value = item.partition("=")
        if not (equals and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.]*", key) and value):
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. lr=0.02")
        settings[key] = value
    if check_settings is not None:  # before any work: a bad key or value is one line
        check_settings(settings)
    labels = [label for label, _, _ in rows]
    unknown = [label for label in args.rows or [] if label not in labels]
    if unknown:
        raise UserError(f"--rows {unknown[0]!r}: expected row labels among {', '.join(labels)}")
    if args.rows:
        rows = [row for row in rows if row[0] in args.rows]
        # the orderings whose rows (and views of them: "<row>, <view>") are all trained
        def trained(label):
            if label in labels:
                return label in args.rows
            return label.rpartition(", ")[0] in args.rows
        claims = [c for c in claims if trained(c[0]) and trained(c[1])]
        diagnostic_claims = [c for c in diagnostic_claims if trained(c[0]) and trained(c[1])]
    if args.out is None:
        suffix = "".join(f"-{key}{value}" for key, value in settings.items())
        args.out = os.path.join(out, f"{args.start}-{args.on}{suffix}")
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: expected 1 or more")
    if args.seeds > MAX_SEEDS:
        raise UserError(f"--seeds {args.seeds}: expected at most {MAX_SEEDS} (each seed trains "
                        "every row once)")
    # checked before the dataset is written (minutes) and any run trains: the device, the folder
    # (created here), and the scores compare reuses (it reads them again)
    common.pick_device(args.device)
    check_out_folder(args.out)
    read_scores(os.path.join(args.out, "scores.json"), args.resume)
    spec = {label: that for label, that, _ in rows}

    def folder_of(label, seed):  # OUT/<label>/seed<seed>, e.g. OUT/Baseline_1/seed0
        return os.path.join(args.out, re.sub(r"\W+", "_", label).strip("_"), f"seed{seed}")
    # the benchmark, and the pretrained start: written now if they are not there yet (the paper
    # modules only read them)
    root = synthetic.ensure_synthetic(**BENCHMARKS[args.on])
    if args.start == "pretrained":
        pretrain.ensure_pretrained(arch, args.device)

    def train(label, seed):
        return train_row(spec[label], seed, folder_of(label, seed), args.device, args.resume,
                         root, args.start, settings)

    def run_diagnostics(label, seed):  # what `diagnose` reads from the run's folder
        return diagnose(label, folder_of(label, seed))
    costs = [(label, cost) for label, _, cost in rows]
    heading = f"{title}, start: {args.start}, benchmark: {args.on} ({root})"
    if settings:
        heading += ", settings: " + " ".join(args.set)
    return compare(heading, costs, claims, train, args.seeds, args.out, metrics,
                   reuse=args.resume, diagnose=run_diagnostics if diagnose else None,
                   diagnostic_claims=diagnostic_claims)


def compare(title, rows, claims, train, seeds, out, metrics=("euclidean",), reuse=True,
            diagnose=None, diagnostic_claims=()):
    """Train every row with seeds 0..seeds-1, then print rank-1 and mAP as mean ± sd per row and
    metric, and each ordering the paper claims: the mean of its per-seed differences with their
    95% t-interval, and whether the interval says it holds here (`compare_table`).

    rows: [(label, cost)], cost any unit of work (epochs x networks) that weighs the time left;
    train(label, seed) -> {metric: rank_metrics}, and a diagnostic view of the run's network
    (e.g. "basic half") beside the metrics. claims: [(better, worse, paper source)].
    diagnostic_claims: [(better, worse, question)], where a label may be "<row>, <view>";
    diagnose(label, seed) -> {name: number} read from the run's folder. Both are printed after
    the paper's claims, marked as not the paper's.
    Each run's scores go to OUT/scores.json (in %) when it ends: a run found there is reused
    (reuse=False: none). Ctrl-C or SIGTERM stops the compare (KeyboardInterrupt out of `train`):
    the finished runs stay in scores.json and the run it was on resumes from its last.pt, so the
    same command goes on from there; returns None then.
    Writes the table, the claims and every seed's scores to OUT/compare.txt; returns the text."""
    path = os.path.join(out, "scores.json")
    check_out_folder(out)
    scores = read_scores(path, reuse)  # {"label/seed": {metric: {"rank-1": %, "mAP": %}}}
    # a run is reused when scores.json holds every metric of it; one without a metric asked for
    # (a row now scored under more metrics) is trained again, resumed from its folder, rather
    # than refused: its entry is then rewritten whole
    todo = [(label, cost, s) for label, cost in rows for s in range(seeds)
            if not set(metrics) <= set(scores.get(f"{label}/{s}", {}))]
    # the time left, from this invocation's runs so far, weighted by each run's cost
    left_cost = sum(cost for _, cost, _ in todo)
    spent = 0.0
    done_cost = 0.0
    for i, (label, cost, seed) in enumerate(todo):
        if done_cost:
            eta = f"about {spent / done_cost * left_cost / 60:.0f} min left"
        else:
            eta = "time left known after the first run"
        print(f"compare: run {i + 1}/{len(todo)} ({len(rows) * seeds - len(todo)} reused): "
              f"{label}, seed {seed}; {eta}", flush=True)
        start = time.time()
        try:
            results = train(label, seed)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (common.stop_on_sigterm)
            print("compare stopped; the same command goes on from here", flush=True)
            return None
        spent += time.time() - start
        done_cost += cost
        left_cost -= cost
        scores[f"{label}/{seed}"] = {m: {"rank-1": 100 * float(r["cmc"][0]),
                                         "mAP": 100 * float(r["mAP"])}
                                     for m, r in results.items()}
        _write_text(path, json.dumps(scores, indent=1))
    labels = [label for label, _ in rows]
    diagnostics = {}  # {label: {name: [a number per seed]}}, from the runs' folders
    if diagnose is not None:
        for label in labels:
            found = [diagnose(label, s) for s in range(seeds)]
            names = [name for name in found[0] if all(name in f for f in found)]
            diagnostics[label] = {name: [f[name] for f in found] for name in names}
    text = compare_table(title, labels, claims, scores, seeds, metrics, diagnostic_claims,
                         diagnostics)
    _write_text(os.path.join(out, "compare.txt"), text + "\n")
    print(text + f"\n(also in {os.path.join(out, 'compare.txt')})", flush=True)
    return text


def read_scores(path, reuse=True):
    """The scores `compare` wrote to `path` (OUT/scores.json), each entry checked:
    {"<label>/<seed>": {metric: {"rank-1": %, "mAP": %}}}, every score a number in [0, 100];
    {} when there is no such file, or with reuse=False (not read: every run is trained again and
    the file rewritten). A file that is not that is one UserError naming the first bad entry:
    taken for no runs, it would have every run trained again and its scores written over."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; expected the scores file `compare` writes there: "
                        "move it away")
    if not reuse or not os.path.exists(path):
        return {}
    anew = "to start anew, delete it or pass --no-resume"
    try:
        with open(path, "rb") as f:
            scores = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); {anew}") from None
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, or nested beyond reason
        found = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not valid JSON ({found}): it was not written by this command, "
                        f"or was edited or cut short; {anew}") from None
    expected = 'expected {"<label>/<seed>": {metric: {"rank-1": %, "mAP": %}}}'
    if not isinstance(scores, dict):
        raise UserError(f"{path} holds a JSON {type(scores).__name__}; {expected}; {anew}")
    for key, entry in scores.items():
        label, _, seed = key.rpartition("/")
        if not (label and re.fullmatch(r"[0-9]+", seed) and isinstance(entry, dict) and entry):
            raise UserError(f"{path}: entry {key!r}: {json.dumps(entry)[:80]}; {expected}; "
                            f"{anew}")
        for metric, r in entry.items():
            if not (isinstance(r, dict) and set(r) == {"rank-1", "mAP"}
                    and all(is_percent(v) for v in r.values())):
                raise UserError(f"{path}: entry {key!r}, metric {metric!r}: "
                                f"{json.dumps(r)[:80]}; expected {{\"rank-1\": %, \"mAP\": %}}, "
                                f"numbers in [0, 100]; {anew}")
    return scores


def is_percent(value):
    """A JSON number in [0, 100] (bool is not one; a mean of fractions may pass 100 by a rounding
    error, up to 1e-6 is taken)."""
    return type(value) in (int, float) and -1e-6 <= value <= 100 + 1e-6


def _write_text(path, text):  # written to a temporary file, then renamed: never half a file
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# t_{0.975, df}, the 97.5% quantile of Student's t with df degrees of freedom, for df 1..30, to 3
# decimals as printed in the usual tables of t critical values (two-sided 95%)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df):
    """t_{0.975, df}: the table above for df 1..30; beyond it the Cornish-Fisher expansion of
    Student's t around the normal quantile z = 1.959964 (Abramowitz and Stegun 26.7.5), to the
    term in 1/df^3:
        t = z + g1(z) / df + g2(z) / df^2 + g3(z) / df^3
        g1 = (z^3 + z) / 4
        g2 = (5z^5 + 16z^3 + 3z) / 96
        g3 = (3z^7 + 19z^5 + 17z^3 - 15z) / 384
    From df 31 on it is within 2e-6 of the exact quantile (t_{0.975, 31} = 2.039513), closer than
    the table's 3 decimals; as df grows it tends to z."""
    if df < 1:
        raise ValueError(f"df {df}: expected 1 or more")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964  # the standard normal's 97.5% quantile
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def paired_interval(diffs):
    """The mean of the paired differences d_s = A_s - B_s (one per seed) and its 95% Student-t
    interval: mean ± t_{0.975, n-1} * sd(d) / sqrt(n), sd the sample sd (n - 1) -> (mean, low,
    high). One difference has no sd, so no interval: low and high are nan."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = d.mean()
    if n < 2:
        return mean, float("nan"), float("nan")
    half = t_quantile_975(n - 1) * d.std(ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def claim_cell(diffs):
    """One claim "A > B" under one metric and key, from its per-seed differences A - B:
    "+4.0 [1.5, 6.5] holds" (the interval above 0), "reversed" (below 0), "not resolved" (0 inside
    it); with one seed "+3.0 (one seed: no interval)", no verdict."""
    mean, low, high = paired_interval(diffs)
    if len(diffs) < 2:
        return f"{mean:+.1f} (one seed: no interval)"
    if low > 0:
        verdict = "holds"
    elif high < 0:
        verdict = "reversed"
    else:
        verdict = "not resolved"
    return f"{mean:+.1f} [{low:.1f}, {high:.1f}] {verdict}"


def compare_table(title, labels, claims, scores, seeds, metrics, diagnostic_claims=(),
                  diagnostics=None):
    """The text of `compare`: mean ± sd (sample sd, n - 1) per row and metric; per claim "A > B",
    metric and key, the differences A - B seed by seed (the seeds 0..seeds-1, which every row
    has: a seed gives every row the same initial weights, PK batches and augmentation draws),
    their mean and its 95% t-interval (`paired_interval`), "holds" or "reversed" only when the
    interval excludes 0 (`claim_cell`); then what is not the paper's: the diagnostic views of
    the runs' networks (a label "<row>, <view>", e.g. "AEA, basic half"), the orderings asked
    of them and `diagnostics` {label: {name: [a number per seed]}}; then every run's scores."""
    def values(label, m, key):
        if label not in labels:  # "<row>, <view>": the view's scores in the row's runs
            row, _, view = label.rpartition(", ")
            return np.array([scores[f"{row}/{s}"][view][key] for s in range(seeds)])
        return np.array([scores[f"{label}/{s}"][m][key] for s in range(seeds)])

    # the views of each row's runs beside its metrics, in every seed: "AEA, basic half"
    views = [f"{label}, {view}" for label in labels
             for view in scores[f"{label}/0"] if view not in metrics
             and all(view in scores[f"{label}/{s}"] for s in range(seeds))]

    def mean_sd(v):
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan"))
    w = max(map(len, labels)) + 2  # the label column fits the longest label
    lines = [f"{title}: mean ± sd over {seeds} seed(s), in %"]
    lines.append(f"{'':<{w}}" + "".join(f"{m + ' rank-1':>18}{m + ' mAP':>18}" for m in metrics))
    for label in labels:
        cells = [mean_sd(values(label, m, k)) for m in metrics for k in ("rank-1", "mAP")]
        lines.append(f"{label:<{w}}" + "".join(f"{f'{a:.1f} ± {b:.1f}'.replace('nan', '-'):>18}"
                                                for a, b in cells))
    lines.append(f"\nThe paper's orderings A > B, here: the mean of the per-seed differences "
                 f"A - B (paired by seed) with its 95% t-interval over {seeds} seed(s), in % "
                 f"points; holds / reversed only when the interval excludes 0")
    for better, worse, source in claims:
        cells = []
        for m in metrics:
            for key in ("rank-1", "mAP"):
                # d_s = A_s - B_s: seed s of both rows
                diffs = values(better, m, key) - values(worse, m, key)
                cells.append(f"{m} {key} {claim_cell(diffs)}")
        lines.append(f"{better} > {worse} ({source}): " + "; ".join(cells))
    if views:
        first = metrics[0]  # a view is scored as the test feature is, under the first metric
        lines.append(f"\nDiagnostics, not the paper's: each part of a network's test feature "
                     f"alone ({first}), mean ± sd")
        view_width = max(map(len, views)) + 2
        for label in views:
            cells = [mean_sd(values(label, first, k)) for k in ("rank-1", "mAP")]
            lines.append(f"{label:<{view_width}}" + "".join(
                f"{f'{a:.1f} ± {b:.1f}'.replace('nan', '-'):>18}" for a, b in cells))
    # the diagnostic orderings whose two sides were scored (a view exists for some rows only)
    scored = set(labels) | set(views)
    diagnostic_claims = [c for c in diagnostic_claims if c[0] in scored and c[1] in scored]
    if diagnostic_claims:
        lines.append("\nDiagnostic orderings A > B, paired as above (rank-1; mAP):")
        for better, worse, question in diagnostic_claims:
            cells = [claim_cell(values(better, metrics[0], k) - values(worse, metrics[0], k))
                     for k in ("rank-1", "mAP")]
            lines.append(f"{better} > {worse} ({question}): " + "; ".join(cells))
    logged = {label: found for label, found in (diagnostics or {}).items() if found}
    if logged:
        lines.append("\nFrom the runs' logs, not the paper's: mean over seeds")
        for label, found in logged.items():
            cells = [f"{name} {np.mean(v):.3g}" for name, v in found.items()]
            lines.append(f"{label}: " + "; ".join(cells))
    lines.append("\nPer seed: " + ", ".join(f"{m} rank-1 / mAP" for m in metrics))
    for label in labels:
        for s in range(seeds):
            r = scores[f"{label}/{s}"]
            parts = list(metrics) + [view for view in r if view not in metrics]
            lines.append(f"{label}, seed {s}: " + "; ".join(
                f"{'' if m in metrics else m + ' '}{r[m]['rank-1']:.2f} / {r[m]['mAP']:.2f}"
                for m in parts))
    return "\n".join(lines)


def aea_compare(argv):
    """python tools.py compare aea [--seeds N] [--start pretrained|random] [--on ...]:
    AEA, Baselines 1-4 (Table 2), REDA and the erase-once AOS-style input (Table 6), and the
    diagnostic row "own triplets", each the AEA demo in 10 epochs (aea.compare_run) with seeds
    0..N-1; mean ± sd of rank-1 and mAP, each ordering the paper claims as a paired difference
    with its interval, and the diagnostics: each half of the test feature and the orderings
    that say where the score comes from. Resumable."""
    return compare_command(argv, "tools.py compare aea", aea_compare.__doc__,
                           os.path.join("runs", "aea", "compare"),
                           "AEA, Tables 2 and 6 in miniature", aea.COMPARE, aea.CLAIMS,
                           aea.compare_run, arch=aea.DEMO["arch"],
                           diagnostic_claims=aea.DIAGNOSTIC_CLAIMS,
                           check_settings=aea_settings)


def aea_settings(settings):
    """compare aea's --set: each key a field of aea.AEAConfig (a flag of aea.py), its value one
    the flag takes; else a UserError naming it."""
    fields = {f.name for f in dataclasses.fields(aea.AEAConfig)}
    for key, value in settings.items():
        if key not in fields:
            raise UserError(f"--set {key}={value}: expected a training flag of aea.py, e.g. "
                            "lr, pad, dropout, epochs")
    given = " ".join(f"{k}={v}" for k, v in settings.items())
    try:
        aea.parse_config(aea.as_flags({**aea.DEMO, **settings}))
    except SystemExit:  # argparse has printed which value it refused
        raise UserError(f"--set {given}: a value aea.py does not take (above)") from None
    except UserError as e:  # a value out of its range
        raise UserError(f"--set {given}: {e}") from None


def aaanet_compare(argv):
    """python tools.py compare aaanet [--seeds N] [--start pretrained|random] [--on ...]:
    stage 1 (the baseline), stage 3, the control "Stage 1, continued", Table 4's stage 3 without
    stage 2, Table 5's baseline with random erasing and Table 3's occlusion points, each trained
    as the AAA-Net demo (aaanet.compare_run) with seeds 0..N-1; mean ± sd of rank-1 and mAP
    under Euclidean, XQDA and KISSME, each ordering the paper claims as a paired difference with
    its interval, and stage 3's omega gate and L_r per epoch. Resumable."""
    loaded = {}  # the dataset and its decoded images: compare_run fills it once for all runs

    def train_row(spec, seed, out, device, resume, root, start, settings):
        return aaanet.compare_run(spec, seed, out, device, resume, loaded, root, start, settings)

    def diagnose(label, folder):
        return aaanet.run_diagnostics(folder)
    def check_settings(settings):  # the demo's stages, copied: nothing is changed here
        aaanet.apply_settings(settings, {k: dict(v) for k, v in aaanet.DEMO_STAGES.items()})
    return compare_command(argv, "tools.py compare aaanet", aaanet_compare.__doc__,
                           os.path.join("runs", "aaanet_compare"),
                           "AAA-Net, Tables 3-5 in miniature", aaanet.COMPARE, aaanet.CLAIMS,
                           train_row, aaanet.DEMO_METRICS, arch=aaanet.DEMO["arch"],
                           diagnose=diagnose, check_settings=check_settings)


COMPARES = {"aea": aea_compare, "aaanet": aaanet_compare}


def compare_paper(argv):
    """python tools.py compare aea|aaanet ...: a paper's rows over seeds."""
    return COMPARES[paper_of("compare", argv)](argv[1:])


# -----------------------------------------------------------------------------
# Command line


def paper_of(command, argv):
    """The paper a `figure` or `compare` command names first in argv: aea or aaanet."""
    if not argv or argv[0] not in ("aea", "aaanet"):
        found = repr(argv[0]) if argv else "nothing"
        raise UserError(f"{command}: expected the paper, aea or aaanet, first; got {found}")
    return argv[0]


COMMANDS = {"extract": extract, "search": search, "ranks": ranks, "plot": plot,
            "figure": figure, "compare": compare_paper}


def run(argv):
    """`python tools.py COMMAND [flags]`: the command's work."""
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return None
    if not argv or argv[0] not in COMMANDS:
        found = repr(argv[0]) if argv else "none"
        raise UserError(f"unknown command {found}; expected one of {', '.join(COMMANDS)} "
                        "(python tools.py -h)")
    return COMMANDS[argv[0]](argv[1:])


def main(argv=None):
    """`python tools.py COMMAND ...`; SIGTERM stops a command as Ctrl-C does, a UserError is
    printed as one line `error: ...` with exit status 2."""
    common.stop_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    return common.exit_on_user_error(run, argv)


if __name__ == "__main__":
    main()
