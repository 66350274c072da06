"""Tests of tools.py, `python tools.py COMMAND`: extract and search on your own images, the
ranking figure (ranks), the curves of runs (plot), the papers' figures (figure aea|aaanet) and a
paper's rows over seeds (compare aea|aaanet), the image helpers, the checks of flags, output
paths and the files read back (features, log.csv, scores.json) before any work, and the direction
of the imports. The figures and compares of trained
tiny runs are marked slow."""
import ast
import errno
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import aaanet
import aea
import common
from conftest import REPO, pool_model, pooled, run_python
import data
import evaluate
import pretrain
import synthetic
import tools
from common import UserError

H, W = 64, 32  # the tiny runs' input size


def record_decoding(monkeypatch):
    """A list that data.load_images appends (desc, height, width) to at each call."""
    decoded, load_images = [], data.load_images
    monkeypatch.setattr(data, "load_images", lambda paths, h, w, desc="", **kw:
                        decoded.append((desc, h, w)) or load_images(paths, h, w, desc, **kw))
    return decoded


def full_disk(monkeypatch):
    """Make PIL's save write half a file, then fail as on a full disk."""
    def save(image, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", save)


def expect_exit_2(capsys, *argv):
    """`python tools.py <argv>`: exit status 2 and one `error:` line; returns (that line,
    stdout)."""
    with pytest.raises(SystemExit) as e:
        tools.main(list(argv))
    assert e.value.code == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("error: "), out


# -----------------------------------------------------------------------------
# The command line and the direction of the imports


def test_unknown_command_or_paper_is_one_error_naming_it(capsys):
    line, _ = expect_exit_2(capsys, "nonsense", "--out", "x")
    assert line == ("unknown command 'nonsense'; expected one of extract, search, ranks, plot, "
                    "figure, compare (python tools.py -h)")
    assert expect_exit_2(capsys)[0].startswith("unknown command none; expected one of")
    line, _ = expect_exit_2(capsys, "figure", "aaa", "--checkpoint", "c.pt")
    assert line == "figure: expected the paper, aea or aaanet, first; got 'aaa'"
    line, _ = expect_exit_2(capsys, "compare")
    assert line == "compare: expected the paper, aea or aaanet, first; got nothing"
    # -h: the commands, from the module docstring
    tools.main(["-h"])
    assert "python tools.py compare aaanet" in capsys.readouterr().out


def test_the_core_never_imports_tools_or_synthetic():
    # imports flow one way: common <- data <- evaluate <- aea, aaanet <- tools (and synthetic.py,
    # a tool too); evaluate's one upward edge is load_model's run-time import of a paper module
    repo = os.path.dirname(os.path.abspath(tools.__file__))
    for core in ("common", "data", "evaluate", "aea", "aaanet"):
        with open(os.path.join(repo, core + ".py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"tools", "synthetic"}, core


# -----------------------------------------------------------------------------
# Your own images: extract, search


def test_extract_then_search_a_folder_and_its_features(synthetic_root, tmp_path, pool_weights,
                                                      capsys):
    gallery = os.path.join(synthetic_root, "bounding_box_test")
    feats = str(tmp_path / "gallery.npz")
    tools.main(["extract", *pool_weights, "--images", gallery, "--out", feats])
    with np.load(feats) as f:
        names, features = f["paths"].tolist(), f["features"]
    assert names == sorted(os.listdir(gallery)) and features.dtype == np.float32
    np.testing.assert_allclose(features, pooled([os.path.join(gallery, n) for n in names]),
                               atol=1e-6)
    assert f"wrote {feats}: {len(names)} features of 24 dimensions" in capsys.readouterr().out
    # search: the query's 5 nearest, by the evaluation's Euclidean distance (between
    # L2-normalised features) to the features computed here
    query = os.path.join(synthetic_root, "query", sorted(os.listdir(
        os.path.join(synthetic_root, "query")))[0])
    unit = torch.nn.functional.normalize
    expected = torch.cdist(unit(pooled([query]), dim=1), unit(torch.from_numpy(features), dim=1))[0]
    order = torch.sort(expected, stable=True).indices[:5].tolist()
    png = str(tmp_path / "ranks.png")
    for source in (gallery, feats):  # a folder, or what extract wrote: the same answer
        found = tools.main(["search", *pool_weights, "--query", query, "--gallery", source,
                            "--top", "5", "--out", png])
        assert [os.path.basename(p) for p, _ in found] == [names[g] for g in order]
        assert [d for _, d in found] == pytest.approx(expected[order].tolist(), abs=1e-4)
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].split()[0] == "1" and lines[1].split()[2].endswith(names[order[0]])
    # the figure: the query then 5 results, 128 x 64 tiles in a 3-px frame, one row
    with Image.open(png) as im:
        assert im.size == (12 + 6 * (64 + 6 + 2), 128 + 6 + 4)
        assert im.getpixel((1, 1)) == (128, 128, 128)


def test_search_and_extract_refuse_bad_input_clearly(synthetic_root, tmp_path, pool_weights,
                                                     capsys):
    def error(*argv):
        return expect_exit_2(capsys, *argv)[0]
    gallery = os.path.join(synthetic_root, "bounding_box_test")
    assert error("extract", *pool_weights, "--images", gallery, "--out", str(tmp_path / "f.txt")
                 ) == f"--out {tmp_path / 'f.txt'}: expected a file name ending in .npz"
    (tmp_path / "empty").mkdir()
    assert "holds no images" in error("extract", *pool_weights, "--images",
                                      str(tmp_path / "empty"), "--out", str(tmp_path / "f.npz"))
    assert not os.path.exists(tmp_path / "f.npz")
    assert error("search", *pool_weights, "--query", str(tmp_path / "nobody.jpg"), "--gallery",
                 gallery) == f"--query {tmp_path / 'nobody.jpg'} is not an image file"
    query = os.path.join(gallery, os.listdir(gallery)[0])
    assert error("search", *pool_weights, "--query", query, "--gallery", gallery, "--top", "0"
                 ) == "--top must lie in [1, inf), got 0"
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a features file of `tools.py extract`" in error(
        "search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "junk.npz"))
    # features of another model (here 24-d features said to be of 128 x 64 images)
    np.savez(tmp_path / "other.npz", features=np.zeros((2, 24), np.float32),
             paths=np.array(["a.jpg", "b.jpg"]), root="/", model="weights imagenet",
             size=np.array([128, 64]), flip=False)
    assert "extract the gallery with the same model" in error(
        "search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "other.npz"))
    assert error("search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "no.npz")
                 ).startswith(f"--gallery {tmp_path / 'no.npz'} does not exist")
    # features of this model whose images are gone: the error says so, not a decoding failure
    np.savez(tmp_path / "moved.npz", features=np.ones((2, 24), np.float32),
             paths=np.array(["a.jpg", "b.jpg"]), root=str(tmp_path / "gone"),
             model="weights none", size=np.array([64, 32]), flip=False)
    assert "the images moved since extract; run extract again" in error(
        "search", *pool_weights, "--query", query, "--gallery", str(tmp_path / "moved.npz"))


def features_file(path, **changed):
    """An .npz as `extract` writes it, of a.jpg and b.jpg in path's folder (24-d features of
    64 x 32 images: the pool_weights model's), with the arrays `changed`; returns its path."""
    arrays = dict(features=np.ones((2, 24), np.float32), paths=np.array(["a.jpg", "b.jpg"]),
                  root=str(path.parent), model="weights none", size=np.array([64, 32]),
                  flip=False)
    np.savez(path, **{**arrays, **changed})
    return str(path)


def nan_row(row):  # 2 x 24 features, a NaN in row `row`
    features = np.ones((2, 24), np.float32)
    features[row, 3] = np.nan
    return features


NOT_EXTRACTS = "not a features file of `tools.py extract` ("


@pytest.mark.parametrize("changed, message", [
    (dict(features=np.ones(24, np.float32)), NOT_EXTRACTS + "features: float32 array of shape "
     "(24,); expected float numbers [N, D], a row of D > 0 per image)"),
    (dict(features=np.ones((2, 24), np.int64)), NOT_EXTRACTS + "features: int64 array of shape "
     "(2, 24); expected float numbers [N, D], a row of D > 0 per image)"),
    (dict(features=np.ones((2, 0), np.float32)), NOT_EXTRACTS + "features of shape (2, 0); "
     "expected float numbers [N, D], a row of D > 0 per image)"),
    (dict(paths=np.array([["a.jpg", "b.jpg"]])), NOT_EXTRACTS + "paths: <U5 array of shape "
     "(1, 2); expected N image paths (strings), one per row of features)"),
    (dict(paths=np.array([1, 2])), NOT_EXTRACTS + "paths: int64 array of shape (2,); expected "
     "N image paths (strings), one per row of features)"),
    (dict(paths=np.array(["a.jpg"])), NOT_EXTRACTS + "2 rows of features, 1 paths; expected "
     "one path per row)"),
    (dict(paths=np.array(["a.jpg", "b.jpg", "c.jpg"])), NOT_EXTRACTS + "2 rows of features, 3 "
     "paths; expected one path per row)"),
    (dict(size=np.array([64, 32, 3])), NOT_EXTRACTS + "size [64, 32, 3]; expected 2 positive "
     "whole numbers, the images' height and width)"),
    (dict(size=np.array([0, 32])), NOT_EXTRACTS + "size [0, 32]; expected 2 positive whole "
     "numbers, the images' height and width)"),
    (dict(size=np.array([64.0, 32.0])), NOT_EXTRACTS + "size: float64 array of shape (2,); "
     "expected 2 positive whole numbers, the images' height and width)"),
    (dict(root=np.array(["/a", "/b"])), NOT_EXTRACTS + "root: <U2 array of shape (2,); "
     "expected one string, the folder of the images)"),
    (dict(flip="yes"), NOT_EXTRACTS + "flip: <U3 array of shape (); expected one bool)"),
    (dict(features=np.zeros((0, 24), np.float32), paths=np.array([], str)),
     "holds no features (0 images); expected the features of at least one image: extract a "
     "folder that holds images"),
    (dict(features=nan_row(1)), "the features of {b} (row 1) hold NaN or infinite values; "
     "expected finite numbers (distances to them mean nothing): extract again with a model "
     "whose features are finite"),
    (dict(features=np.full((2, 24), np.inf, np.float32)), "the features of {a} (row 0) hold "
     "NaN or infinite values; expected finite numbers (distances to them mean nothing): extract "
     "again with a model whose features are finite"),
], ids=["1-d features", "int features", "0-d features", "2-d paths", "int paths", "fewer paths",
        "more paths", "3 sizes", "size 0", "float size", "2 roots", "flip a string", "empty",
        "NaN", "infinite"])
def test_search_refuses_a_bad_features_file_before_the_model(synthetic_root, tmp_path,
                                                             pool_weights, monkeypatch, capsys,
                                                             changed, message):
    # each array of the .npz checked for its type, shape and values, before any model is built
    monkeypatch.setattr(evaluate, "model_on_device", lambda args: pytest.fail("model built"))
    query = os.path.join(synthetic_root, "query", os.listdir(synthetic_root + "/query")[0])
    path = features_file(tmp_path / "g.npz", **changed)
    line, out = expect_exit_2(capsys, "search", *pool_weights, "--query", query, "--gallery",
                              path)
    message = message.format(a=tmp_path / "a.jpg", b=tmp_path / "b.jpg")
    assert line == f"--gallery {path}{'' if message.startswith('holds') else ':'} {message}"
    assert out == ""


def test_search_refuses_other_files_as_features(tmp_path):
    # a lone array (.npy) named .npz, pickled objects, a missing array: the file is named
    with open(tmp_path / "one.npz", "wb") as f:
        np.save(f, np.ones((2, 24), np.float32))
    with pytest.raises(UserError) as e:
        tools.load_features(str(tmp_path / "one.npz"))
    assert str(e.value) == (f"--gallery {tmp_path / 'one.npz'}: {NOT_EXTRACTS}one array of "
                            "shape (2, 24), not named arrays)")
    path = features_file(tmp_path / "objects.npz", model=np.array([{"code": 1}], dtype=object))
    with pytest.raises(UserError, match=re.escape(NOT_EXTRACTS + "Object arrays cannot be "
                                                  "loaded when allow_pickle=False")):
        tools.load_features(path)
    np.savez(tmp_path / "part.npz", features=np.ones((2, 24), np.float32))
    with pytest.raises(UserError, match=re.escape(NOT_EXTRACTS + "'paths is not a file")):
        tools.load_features(str(tmp_path / "part.npz"))
    # float64 features are taken, as the query's float32; a float64 beyond float32 is infinite
    features, paths, info = tools.load_features(
        features_file(tmp_path / "f64.npz", features=np.full((2, 24), 0.5)))
    assert features.dtype == torch.float32 and paths == [str(tmp_path / "a.jpg"),
                                                        str(tmp_path / "b.jpg")]
    assert info == dict(size=(64, 32), flip=False, model="weights none")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'a.jpg'} (row 0) hold NaN or "
                                                  "infinite")):
        tools.load_features(features_file(tmp_path / "big.npz", features=np.full((2, 24), 1e300)))


def test_search_refuses_nan_features_of_the_model(synthetic_root, tmp_path, pool_weights,
                                                  monkeypatch, capsys):
    # a model whose features are NaN (a run that diverged): the query is refused before the
    # gallery is extracted; NaN features of a gallery image name that image
    gallery = os.path.join(synthetic_root, "bounding_box_test")
    names = data.image_files(gallery)
    query = os.path.join(gallery, names[0])
    file_features = tools.file_features
    nan_at = {}  # desc ("query", "gallery") -> the row made NaN

    def nan_features(model, paths, *args, desc="features", **kwargs):
        feats = file_features(model, paths, *args, desc=desc, **kwargs)
        if desc in nan_at:
            feats[nan_at[desc]] = float("nan")
        return feats
    monkeypatch.setattr(tools, "file_features", nan_features)
    nan_at["query"] = 0
    line, out = expect_exit_2(capsys, "search", *pool_weights, "--query", query, "--gallery",
                              gallery)
    assert line == (f"the model (weights none) gives NaN or infinite features for --query "
                    f"{query}; expected finite numbers (distances to them mean nothing): search "
                    "with a model whose features are finite")
    assert "nearest" not in out
    nan_at.clear()
    nan_at["gallery"] = 2
    line, out = expect_exit_2(capsys, "search", *pool_weights, "--query", query, "--gallery",
                              gallery)
    assert line == (f"the model (weights none) gives NaN or infinite features for "
                    f"{os.path.join(gallery, names[2])} of --gallery {gallery}; expected finite "
                    "numbers (distances to them mean nothing): search with a model whose "
                    "features are finite")
    assert "nearest" not in out


def test_extract_refuses_an_out_folder_before_decoding(synthetic_root, tmp_path, pool_weights,
                                                       monkeypatch, capsys):
    decoded = record_decoding(monkeypatch)
    folder = tmp_path / "feats.npz"
    folder.mkdir()
    line, _ = expect_exit_2(capsys, "extract", *pool_weights, "--images", synthetic_root,
                            "--out", str(folder))
    assert line == (f"--out {folder} is a folder; expected the .npz file to write, e.g. "
                    f"{folder / 'features.npz'}")
    assert decoded == [] and os.listdir(folder) == []


def test_file_features_chunk_by_chunk_equal_all_at_once(synthetic_root):
    # chunks of 4 images (the next one decoded while the model runs) give the same rows, in order
    paths = data.load_dataset(synthetic_root, "synthetic", verbose=False).gallery.paths
    chunked = tools.file_features(pool_model(), paths, (64, 32), "cpu", batch_size=3, chunk=4)
    torch.testing.assert_close(chunked, pooled(paths))


# -----------------------------------------------------------------------------
# ranks: the ranking figure


def test_rank_figure_frames(synthetic_root):
    # query 0's first true match is put at distance -1 and a junk item at -2: the junk is left out
    # (removed by the protocol), so the first result is the match, framed green; item 2 is red
    # unless it is a match too.
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    dist = torch.rand(len(ds.query), len(ds.gallery))
    same = ds.gallery.pids == ds.query.pids[0]
    match = np.flatnonzero(same & (ds.gallery.cams != ds.query.cams[0]))[0]
    dist[0, match], dist[0, np.flatnonzero(ds.gallery.pids == -1)[0]] = -1.0, -2.0
    im = tools.rank_figure(dist, ds, [0])
    second = np.argsort(dist[0].numpy(), kind="stable")[2]  # after the junk and the match
    tile = 64 + 6 + 2
    assert im.getpixel((1, 1)) == (128, 128, 128)                  # query frame
    assert im.getpixel((12 + tile + 1, 1)) == (0, 170, 0)          # rank 1: the match
    assert im.getpixel((12 + 2 * tile + 1, 1)) == ((0, 170, 0) if same[second] else (220, 0, 0))


def test_ranks_draws_the_distances_evaluate_scores(synthetic_root, tmp_path, pool_weights,
                                                   monkeypatch, capsys):
    # the figure's distances are the evaluation's: euclidean between the pooled features, and
    # their re-ranking; 3 queries evenly spaced over the split (first and last included)
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    drawn = []
    rank_figure = tools.rank_figure
    monkeypatch.setattr(tools, "rank_figure", lambda dist, ds, queries: drawn.append(
        (dist, list(queries))) or rank_figure(dist, ds, queries))
    written = tools.main(["ranks", *pool_weights, "--root", synthetic_root, "--dataset",
                          "synthetic", "--num", "3", "--rerank", "--out", str(tmp_path)])
    assert written == [str(tmp_path / "ranks_euclidean.png"),
                       str(tmp_path / "ranks_euclidean_re-ranking.png")]
    assert f"wrote {written[1]}" in capsys.readouterr().out
    qf, gf = pooled(ds.query.paths), pooled(ds.gallery.paths)
    d = evaluate.pairwise_distances
    torch.testing.assert_close(drawn[0][0], d(qf, gf), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(drawn[1][0], evaluate.re_ranking(d(qf, gf), d(qf, qf), d(gf, gf)),
                               atol=1e-5, rtol=1e-5)
    last = len(ds.query) - 1
    assert drawn[0][1] == [0, round(last / 2), last]
    for path in written:  # 3 query rows of 1 + 10 tiles (128 x 64 images with a 3-px frame)
        with Image.open(path) as im:
            assert im.size == (12 + 11 * (64 + 6 + 2), 3 * (128 + 6 + 4))


def test_ranks_draws_the_queries_named(synthetic_root, tmp_path, pool_weights, monkeypatch,
                                       capsys):
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    names = [os.path.basename(ds.query.paths[i]) for i in (5, 2)]
    drawn = []
    rank_figure = tools.rank_figure
    monkeypatch.setattr(tools, "rank_figure", lambda dist, ds, queries: drawn.append(
        queries) or rank_figure(dist, ds, queries))
    tools.main(["ranks", *pool_weights, "--root", synthetic_root, "--dataset", "synthetic",
                "--queries", *names, "--out", str(tmp_path)])
    assert drawn == [[5, 2]]
    with Image.open(tmp_path / "ranks_euclidean.png") as im:
        assert im.size[1] == 2 * (128 + 6 + 4)  # one row per query named
    line, _ = expect_exit_2(capsys, "ranks", *pool_weights, "--root", synthetic_root,
                            "--dataset", "synthetic", "--queries", "nobody.jpg", "--out",
                            str(tmp_path))
    assert line.startswith("--queries nobody.jpg: no query image of that name")


def test_ranks_refuses_before_decoding(synthetic_root, tmp_path, pool_weights, monkeypatch,
                                       capsys):
    decoded = record_decoding(monkeypatch)
    flags = ["ranks", *pool_weights, "--root", synthetic_root, "--dataset", "synthetic"]
    (tmp_path / "a_file").write_text("x")
    line, _ = expect_exit_2(capsys, *flags, "--out", str(tmp_path / "a_file"))
    assert line == (f"--out {tmp_path / 'a_file'}: cannot write there (a file, not a folder); "
                    "give a folder you can write to")
    line, _ = expect_exit_2(capsys, *flags, "--num", "0", "--out", str(tmp_path))
    assert line == "--num must lie in [1, inf), got 0"
    with pytest.raises(SystemExit) as e:  # argparse: --out is required
        tools.main(flags)
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert decoded == []


def test_ranks_of_more_queries_than_the_split_draws_each_once(synthetic_root, tmp_path,
                                                              pool_weights, monkeypatch):
    ds = data.load_dataset(synthetic_root, "synthetic", verbose=False)
    drawn = []
    monkeypatch.setattr(tools, "rank_figure", lambda dist, ds, queries: drawn.append(
        list(queries)) or Image.new("RGB", (1, 1)))
    tools.main(["ranks", *pool_weights, "--root", synthetic_root, "--dataset", "synthetic",
                "--num", str(10 ** 20), "--out", str(tmp_path)])
    assert drawn == [list(range(len(ds.query)))]


def test_ranks_writes_a_whole_figure_or_none(synthetic_root, tmp_path, pool_weights, monkeypatch,
                                             capsys):
    # the disk fills up while the PNG is written: one error line, no partial file
    full_disk(monkeypatch)
    figs = tmp_path / "figs"
    line, _ = expect_exit_2(capsys, "ranks", *pool_weights, "--root", synthetic_root,
                            "--dataset", "synthetic", "--num", "2", "--out", str(figs))
    assert line == f"cannot write {figs / 'ranks_euclidean.png'} (No space left on device)"
    assert os.listdir(figs) == []


@pytest.mark.slow
def test_ranks_of_a_checkpoint_under_every_metric(synthetic_root, tiny_checkpoint, tmp_path,
                                                  capsys):
    out_dir = tmp_path / "figs"
    written = tools.main(["ranks", "--checkpoint", tiny_checkpoint, "--root", synthetic_root,
                          "--dataset", "synthetic", "--metric", "euclidean", "xqda", "kissme",
                          "--flip", "--device", "cpu", "--batch-size", "16", "--num", "3",
                          "--out", str(out_dir)])
    assert [os.path.basename(p) for p in written] == [
        "ranks_euclidean.png", "ranks_xqda.png", "ranks_kissme.png"]
    # one PNG per metric: 3 query rows of 1 + 10 tiles (128 x 64 images with a 3-px frame)
    for path in written:
        with Image.open(path) as im:
            assert im.size == (12 + 11 * (64 + 6 + 2), 3 * (128 + 6 + 4))
    assert capsys.readouterr().out.count("wrote ") == 3


# -----------------------------------------------------------------------------
# plot: the curves of runs


def write_log(folder, text):
    os.makedirs(folder, exist_ok=True)
    (folder / "log.csv").write_text(text)
    return str(folder)


def test_plot_overlays_runs_and_reads_a_folder_of_stages(tmp_path, capsys):
    # run a: loss terms L_I1 and L; run b: L and an evaluation at epoch 2 only (empty at 1).
    # Panels: L_I1, L, rank-1, mAP -> 3 columns x 2 rows of 4 x 3 inches at 80 dpi
    a = write_log(tmp_path / "a", "epoch,lr,L_I1,L,img/s,seconds\n1,0.01,4.0,5.0,10,3\n"
                  "2,0.01,3.0,4.0,10,3\n")
    b = write_log(tmp_path / "b", "epoch,lr,L,img/s,seconds,rank-1 euclidean,mAP euclidean\n"
                  "1,0.01,6.0,10,3,,\n2,0.01,5.0,10,3,40.0,30.0\n")
    out = str(tmp_path / "curves.png")
    tools.main(["plot", a, b, "--out", out])
    with Image.open(out) as im:
        assert im.size == (3 * 4 * 80, 2 * 3 * 80)
    label, log = tools.read_log(b)
    assert label == b and np.isnan(log["rank-1 euclidean"][0]) and log["mAP euclidean"][1] == 30
    # an AAA-Net --out holds a run per stage: each is a curve
    write_log(tmp_path / "aaa" / "stage1", "epoch,lr,L_ce,img/s,seconds\n1,0.01,2.0,10,3\n")
    write_log(tmp_path / "aaa" / "stage3", "epoch,lr,L,img/s,seconds\n1,0.01,1.0,10,3\n")
    assert [label for label, _ in tools.run_logs([str(tmp_path / "aaa")])] == [
        str(tmp_path / "aaa" / "stage1"), str(tmp_path / "aaa" / "stage3")]
    assert expect_exit_2(capsys, "plot", str(tmp_path / "none"), "--out", out)[0].startswith(
        "cannot read")
    empty = write_log(tmp_path / "e", "epoch,lr,img/s,seconds\n1,0.01,10,3\n")
    assert "no loss term or score to draw" in expect_exit_2(capsys, "plot", empty, "--out",
                                                            out)[0]


def test_plot_of_one_run_writes_its_curves_beside_its_log(tmp_path, monkeypatch, capsys):
    # no --out: one run (its folder or its log.csv) -> OUT/curves.png; several -> ./curves.png
    a = write_log(tmp_path / "a", "epoch,lr,L,img/s,seconds\n1,0.01,5.0,10,3\n")
    b = write_log(tmp_path / "b", "epoch,lr,L,img/s,seconds\n1,0.01,6.0,10,3\n")
    assert tools.main(["plot", a]) == os.path.join(a, "curves.png")
    assert os.path.isfile(os.path.join(a, "curves.png"))
    assert tools.main(["plot", os.path.join(b, "log.csv")]) == os.path.join(b, "curves.png")
    monkeypatch.chdir(tmp_path)
    assert tools.main(["plot", a, b]) == "curves.png"
    assert os.path.isfile(tmp_path / "curves.png")
    assert f"wrote {os.path.join(a, 'curves.png')}" in capsys.readouterr().out


NOT_A_LOG = " is not a log.csv of this project ("
HEADER = b"epoch,lr,L,img/s,seconds\n"


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", NOT_A_LOG + "not text)"),
    ("epoch,lr,L,img/s,seconds\n1,0.01,5.0,10,3 \u00e9t\u00e9\n".encode("latin-1"),
     NOT_A_LOG + "not text)"),
    (HEADER + b"1,0.01,5.0\x00,10,3\n", NOT_A_LOG + "not text)"),
    (b"", " is empty; expected a log.csv of this project (a header, then a row per epoch)"),
    (HEADER + b"1,0.01,5.0,10,3\n2,0.01,4.0,10,3,7\n", NOT_A_LOG + "row 3 has 6 cells, its "
     "header 5)"),
    (HEADER + b"1,0.01,5.0,10\n", NOT_A_LOG + "row 2 has 4 cells, its header 5)"),
    (b"a,b\n1,2\n", NOT_A_LOG + "no column epoch, lr, img/s, seconds in its header a,b; a run "
     "writes epoch, lr, img/s, seconds and its loss terms)"),
    (b"epoch,lr,L\n1,0.01,5.0\n", NOT_A_LOG + "no column img/s, seconds in its header "
     "epoch,lr,L; a run writes epoch, lr, img/s, seconds and its loss terms)"),
    (b"epoch,lr,L,L,img/s,seconds\n1,0.01,5.0,6.0,10,3\n", NOT_A_LOG + "column L twice in its "
     "header; a run writes each once)"),
    (HEADER + b"1.5,0.01,5.0,10,3\n", NOT_A_LOG + "epoch 1.5; expected whole numbers 1, 2, ...)"),
    (HEADER + b",0.01,5.0,10,3\n", NOT_A_LOG + "epoch nan; expected whole numbers 1, 2, ...)"),
    # the messages of the cases that were refused before
    (HEADER, " holds no epoch yet (a run writes a row at the end of each epoch)"),
    (HEADER + b"1,0.01,five,10,3\n", NOT_A_LOG + "a cell is not a number)"),
], ids=["binary", "latin-1", "NUL", "empty", "a longer row", "a shorter row", "another csv",
        "no img/s", "a column twice", "epoch 1.5", "no epoch", "no row", "not a number"])
def test_plot_refuses_a_file_that_is_not_a_log(tmp_path, capsys, content, message):
    (tmp_path / "log.csv").write_bytes(content)
    line, _ = expect_exit_2(capsys, "plot", str(tmp_path))
    assert line == str(tmp_path / "log.csv") + message
    assert os.listdir(tmp_path) == ["log.csv"]  # no curves.png


def test_plot_reads_a_log_a_spreadsheet_saved(tmp_path):
    # saved again by a spreadsheet program: a byte-order mark, CRLF line ends, a blank line
    (tmp_path / "log.csv").write_bytes("\ufeff".encode() + HEADER.replace(b"\n", b"\r\n")
                                       + b"1,0.01,5.0,10,3\r\n\r\n2,0.01,4.0,10,3\r\n")
    _, log = tools.read_log(str(tmp_path))
    assert list(log) == ["epoch", "lr", "L", "img/s", "seconds"]
    assert log["epoch"].tolist() == [1, 2] and log["L"].tolist() == [5, 4]


# -----------------------------------------------------------------------------
# The image helpers of the figures


def test_heat_overlay_colours_and_grid(tmp_path):
    # a grey image and a map that is low on the left column and high on the right one: after
    # min-max scaling m = 0 (left) and 1 (right), so the heat is pure blue (0, 0, 255) on the left
    # and pure red (255, 0, 0) on the right; alpha 0.5 blends with grey 100:
    # left (50, 50, 177.5 -> 178), right (177.5 -> 178, 50, 50)
    images = torch.full((1, 3, 4, 2), 100, dtype=torch.uint8)
    maps = torch.tensor([[[0.0, 5.0]]])  # [1, 1, 2]: resized to 4 x 2, every row the same
    out = tools.heat_overlay(images, maps)
    assert out.shape == (1, 3, 4, 2) and out.dtype == torch.uint8
    assert out[0, :, 0, 0].tolist() == [50, 50, 178] and out[0, :, 0, 1].tolist() == [178, 50, 50]
    path = tmp_path / "grid.png"
    tools.save_image_grid(str(path), [[images[0], out[0]], [out[0]]])
    with Image.open(path) as im:
        assert im.size == (2 * (2 + 2), 2 * (4 + 2))
        assert im.getpixel((4 + 1, 0)) == (178, 50, 50)   # row 0, second tile, its right column


def test_evenly_spaced_includes_both_ends():
    # 10 items, 4 wanted: linspace(0, 9, 4) = 0, 3, 6, 9; more wanted than there are: each once,
    # for any number asked (--num 100000000000000000000 too)
    assert tools.evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    assert tools.evenly_spaced(3, 8).tolist() == [0, 1, 2]
    assert tools.evenly_spaced(3, 10 ** 20).tolist() == [0, 1, 2]
    # n points or more: every index, as linspace's rounding gives them
    for n in range(1, 20):
        for num in range(n, 3 * n):
            assert tools.evenly_spaced(n, num).tolist() == list(range(n))


def test_figure_out_is_checked_before_the_checkpoint_is_read(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cases = [(tmp_path, "is a folder; expected the image file to write"),
             (tmp_path / "fig", "an extension PIL writes in colour (.png, .jpg, .bmp, ...), "
                                "got none"),
             (tmp_path / "fig.xyz", "got '.xyz'"),
             # formats PIL knows but cannot write in colour (1-bit XBM), or cannot write at all
             (tmp_path / "fig.xbm", "got '.xbm'"), (tmp_path / "fig.h5", "got '.h5'"),
             (tmp_path / "a_file" / "fig.png", "cannot write into its folder"),
             # a good --out: the missing checkpoint is next
             (tmp_path / "figs" / "fig.png", "missing.pt does not exist")]
    for out, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            tools.figure_inputs(["--checkpoint", str(tmp_path / "missing.pt"), "--out",
                                 str(out)], "tools.py figure aea", "", "aea", "attention.png")


def test_figure_device_is_checked_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(UserError, match=re.escape("--device 'gpu' is not a device name")):
        tools.figure_inputs(["--checkpoint", str(tmp_path / "missing.pt"), "--device", "gpu",
                             "--out", str(tmp_path / "f.png")], "tools.py figure aea", "", "aea",
                            "attention.png")


def test_figures_refuse_another_papers_checkpoint(tmp_path, capsys):
    other = str(tmp_path / "aaanet.pt")
    common.save_checkpoint(other, {"paper": "aaanet", "stage": "stage3", "config": {},
                                   "model": {}})
    line, _ = expect_exit_2(capsys, "figure", "aea", "--checkpoint", other, "--out",
                            str(tmp_path / "f.png"))
    assert line == (f"{other} is an AAA-Net stage3 checkpoint (aaanet.py); expected an AEA "
                    "checkpoint (aea.py)")
    line, _ = expect_exit_2(capsys, "figure", "aaanet", "--checkpoint", other, "--num", "0")
    assert line == "--num must be at least 1, got 0"


def test_save_image_writes_the_whole_file_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    tools.save_image(Image.new("RGB", (4, 2), "red"), str(path))
    with Image.open(path) as im:
        assert im.size == (4, 2)
    # a failed write leaves the previous file as it was, and no partial file beside it
    before = path.read_bytes()
    full_disk(monkeypatch)
    with pytest.raises(UserError, match=re.escape(f"cannot write {path} (No space left")):
        tools.save_image(Image.new("RGB", (4, 2)), str(path))
    assert os.listdir(tmp_path) == ["a.png"] and path.read_bytes() == before
    # Ctrl-C (or SIGTERM) half way through: the stop goes on, and no partial file is left either
    def save_then_stop(image, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a PNG")
        raise KeyboardInterrupt
    monkeypatch.setattr(Image.Image, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        tools.save_image(Image.new("RGB", (4, 2)), str(path))
    assert os.listdir(tmp_path) == ["a.png"] and path.read_bytes() == before


# -----------------------------------------------------------------------------
# figure aea, figure aaanet: of tiny trained runs


@pytest.fixture(scope="module")
def aea_run(synthetic_root, tmp_path_factory):
    """A 2-epoch AEA run (1 warm-up epoch) on the conftest set, every epoch's checkpoint kept."""
    out = tmp_path_factory.mktemp("aea") / "run"
    aea.main(["--root", synthetic_root, "--dataset", "synthetic", "--height", str(H), "--width",
              str(W), "--epochs", "2", "--warmup-epochs", "1", "--P", "4", "--K", "2",
              "--weights", "none", "--device", "cpu", "--out", str(out), "--keep-every", "1"])
    return out


@pytest.mark.slow
def test_figure_aea_draws_attention_and_erased_images_per_checkpoint(aea_run, tmp_path, capsys):
    # 3 images; rows = images + (attention, erased) per checkpoint = 5 rows, 2-px gaps
    png = tmp_path / "fig.png"
    tools.main(["figure", "aea", "--checkpoint", str(aea_run / "epoch_1.pt"),
                str(aea_run / "last.pt"), "--num", "3", "--out", str(png), "--device", "cpu"])
    with Image.open(png) as im:
        assert im.size == (3 * (W + 2), 5 * (H + 2))
    assert f"wrote {png}: 3 query images" in capsys.readouterr().out


# `python tools.py ...` whose figure gets a real SIGTERM once PIL has written its bytes (into the
# partial file save_image renames when it is whole)
SIGTERM_IN_SAVE = f"""
import os, signal, sys
sys.path.insert(0, {REPO!r})
from PIL import Image
import tools
real_save = Image.Image.save
def save_then_sigterm(image, fp, *args, **kwargs):
    real_save(image, fp, *args, **kwargs)
    if isinstance(fp, str):  # the figure's file (--out's format is tried in memory first)
        os.kill(os.getpid(), signal.SIGTERM)
Image.Image.save = save_then_sigterm
tools.main()
"""


@pytest.mark.slow
def test_a_sigterm_while_a_figure_is_written_ends_in_one_line_and_no_file(aea_run, tmp_path):
    script = tmp_path / "sigterm_in_save.py"
    script.write_text(SIGTERM_IN_SAVE)
    png = tmp_path / "figs" / "fig.png"
    stopped = run_python(str(script), "figure", "aea", "--checkpoint", str(aea_run / "last.pt"),
                         "--num", "2", "--out", str(png), "--device", "cpu")
    # 128 + SIGTERM's 15, one line, no traceback; neither the figure nor its partial file
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == "stopped by SIGTERM"
    assert "Traceback" not in stopped.stderr
    assert os.listdir(tmp_path / "figs") == []


TINY = ["--dataset", "synthetic", "--height", str(H), "--width", str(W), "--pad", "3",
        "--batch-size", "8", "--epochs", "1", "--weights", "none", "--device", "cpu"]


@pytest.fixture(scope="module")
def aaanet_stages(synthetic_root, tmp_path_factory):
    """stage1, stage2, stage3, and Table 4's stage3 from stage 1, one epoch each."""
    out = str(tmp_path_factory.mktemp("aaanet"))
    flags = TINY + ["--root", synthetic_root, "--out", out]
    aaanet.main(["stage1", *flags, "--eval-metrics"])
    aaanet.main(["stage2", *flags])
    aaanet.main(["stage3", *flags, "--eval-metrics"])
    aaanet.main(["stage3", *flags, "--mask-source", "response", "--out", out + "/table4",
                 "--init", out + "/stage1/last.pt", "--eval-metrics"])
    return out


@pytest.mark.slow
def test_figure_aaanet_draws_images_attention_and_black_occlusion(aaanet_stages, synthetic_root,
                                                                  tmp_path, capsys):
    out = aaanet_stages
    for ckpt in (f"{out}/stage3/last.pt", f"{out}/table4/stage3/last.pt"):
        path = tmp_path / "fig.png"
        tools.main(["figure", "aaanet", "--checkpoint", ckpt, "--out", str(path), "--num", "4",
                    "--device", "cpu", "--root", synthetic_root])
        with Image.open(path) as im:
            assert im.size == (4 * (W + 2), 3 * (H + 2))  # three rows of 4 images, 2-px gaps
            first_image = im.crop((0, 2 * (H + 2), W, 3 * H + 4))  # of the third row
            third_row = torch.from_numpy(np.array(first_image)).view(-1, 3)  # [H*W, 3]
    # Table 4's mask: 11 of the 32 positions of the 8x4 map, each an 8x8 block of black pixels
    assert (third_row.sum(dim=1) == 0).sum().item() >= 11 * 64
    # a stage-1 checkpoint has no trained attention branch to draw
    line, _ = expect_exit_2(capsys, "figure", "aaanet", "--checkpoint",
                            f"{out}/stage1/last.pt", "--out", str(path), "--device", "cpu",
                            "--root", synthetic_root)
    assert "is a stage-1 checkpoint: its attention branch is untrained" in line


# -----------------------------------------------------------------------------
# compare: rows over seeds, mean ± sd, the paper's orderings, reuse after a stop

def fake_scores(rank1, mAP, metrics=("euclidean",)):  # the two numbers compare reads
    return {m: {"cmc": np.array([rank1 / 100]), "mAP": mAP / 100} for m in metrics}


def test_compare_mean_sd_claims_and_reuse(tmp_path, capsys):
    # A's rank-1 over seeds 0, 1, 2: 50, 52, 54 -> mean 52, sample sd 2; B's: 47, 48, 49 -> 48,
    # sd 1. "A > B", paired by seed: d = 3, 4, 5, mean 4, sd 1, t_{0.975, 2} = 4.303, half-width
    # 4.303 * 1 / sqrt(3) = 2.484 -> [1.5, 6.5], above 0: holds.
    # mAP: A 30, 30, 30 (sd 0), B 31, 33, 35 (sd 2): d = -1, -3, -5, mean -3, sd 2, half-width
    # 4.303 * 2 / sqrt(3) = 4.969 -> [-8.0, 2.0], 0 inside: not resolved
    table = {"A": [(50, 30), (52, 30), (54, 30)], "B": [(47, 31), (48, 33), (49, 35)]}
    calls = []

    def train(label, seed):
        calls.append((label, seed))
        if len(calls) == 5 and not stop_done:  # Ctrl-C (or SIGTERM) during the 5th run
            raise KeyboardInterrupt
        return fake_scores(*table[label][seed])
    stop_done = False
    rows, claims = [("A", 2), ("B", 1)], [("A", "B", "Table 2")]
    out = str(tmp_path / "cmp")
    assert tools.compare("toy", rows, claims, train, 3, out) is None
    assert calls == [("A", 0), ("A", 1), ("A", 2), ("B", 0), ("B", 1)]
    assert "compare stopped; the same command goes on from here" in capsys.readouterr().out
    # the next invocation reuses the four finished runs and trains the last two
    stop_done, calls[:] = True, []
    text = tools.compare("toy", rows, claims, train, 3, out)
    assert calls == [("B", 1), ("B", 2)]
    assert "run 1/2 (4 reused): B, seed 1" in capsys.readouterr().out
    assert "52.0 ± 2.0" in text and "48.0 ± 1.0" in text and "30.0 ± 0.0" in text
    assert ("A > B (Table 2): euclidean rank-1 +4.0 [1.5, 6.5] holds; "
            "euclidean mAP -3.0 [-8.0, 2.0] not resolved") in text
    assert "B, seed 2: 49.00 / 35.00" in text
    assert open(os.path.join(out, "compare.txt")).read() == text + "\n"
    # one seed: no sd, so no interval and no verdict
    one = tools.compare("toy", rows, claims, train, 1, str(tmp_path / "one"))
    assert ("A > B (Table 2): euclidean rank-1 +3.0 (one seed: no interval); "
            "euclidean mAP -1.0 (one seed: no interval)") in one.splitlines()
    assert "50.0 ± -" in one


# t_{0.975, df} to 3 decimals, as in the printed tables (df 31: 2.0395 exactly, from the
# Cornish-Fisher expansion beyond the table; a very large df: the normal's 1.960)
@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228),
                                   (30, 2.042), (31, 2.040), (60, 2.000), (120, 1.980),
                                   (10 ** 6, 1.960)])
def test_t_quantile_975_at_known_df(df, t):
    assert round(tools.t_quantile_975(df), 3) == t


@pytest.mark.parametrize("df, t", [(31, 2.0395134), (40, 2.0210754), (100, 1.9839715)])
def test_t_quantile_975_beyond_the_table_within_2e_6(df, t):
    # the exact quantiles (Student's t CDF solved for 0.975 to 7 decimals): the expansion's
    # terms up to 1/df^3 keep it within 2e-6 of them from df 31 on
    assert abs(tools.t_quantile_975(df) - t) < 2e-6


def test_t_quantile_975_falls_with_df_across_the_table_end():
    # the table (df <= 30) and the expansion beyond it meet without a step up: t falls with df
    ts = [tools.t_quantile_975(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(ts, ts[1:]))
    with pytest.raises(ValueError, match="df 0: expected 1 or more"):
        tools.t_quantile_975(0)


@pytest.mark.parametrize("diffs, mean, low, high, cell", [
    # mean 2, sd 1, t(2) = 4.303, half-width 4.303 / sqrt(3) = 2.484 -> [-0.484, 4.484]: 0 inside
    ([1, 2, 3], 2, -0.484, 4.484, "+2.0 [-0.5, 4.5] not resolved"),
    # mean 4, sd sqrt(10 / 4) = 1.581, t(4) = 2.776, half-width 2.776 * 1.581 / sqrt(5) = 1.963
    # -> [2.037, 5.963]: above 0
    ([2, 3, 4, 5, 6], 4, 2.037, 5.963, "+4.0 [2.0, 6.0] holds"),
    # the same spread around -11: mean -11, sd 1.581, half-width 1.963 -> [-12.963, -9.037]:
    # below 0
    ([-10, -12, -11, -9, -13], -11, -12.963, -9.037, "-11.0 [-13.0, -9.0] reversed"),
    # two seeds: mean 3.5, sd sqrt(0.5) = 0.707, t(1) = 12.706, half-width 12.706 * 0.707 /
    # sqrt(2) = 6.353 -> [-2.853, 9.853]: a clear sign over two seeds is not resolved
    ([3, 4], 3.5, -2.853, 9.853, "+3.5 [-2.9, 9.9] not resolved"),
])
def test_paired_interval_and_verdict_worked_by_hand(diffs, mean, low, high, cell):
    got = tools.paired_interval(diffs)
    np.testing.assert_allclose(got, (mean, low, high), atol=1e-3)
    assert tools.claim_cell(np.array(diffs, dtype=float)) == cell


def test_paired_interval_of_one_seed_is_none():
    # one difference: no sd, so no interval and no verdict
    mean, low, high = tools.paired_interval([3.0])
    assert mean == 3.0 and np.isnan(low) and np.isnan(high)
    assert tools.claim_cell(np.array([3.0])) == "+3.0 (one seed: no interval)"


def test_compare_table_pairs_seeds_and_names_the_verdicts():
    # two rows, 3 seeds (the label column: the longest label and 2 spaces). rank-1: A 50, 60, 70
    # (sd 10), B 49, 59, 69 (sd 10): d = 1, 1, 1, mean 1, sd 0 -> [1, 1], holds; the means differ
    # by 1 against sds of 10, and it holds because the seeds are paired. mAP: A 40, 41, 42,
    # B 39, 41, 41: d = 1, 0, 1, mean 0.667, sd 0.577, half-width 4.303 * 0.577 / sqrt(3) = 1.434
    # -> [-0.767, 2.101], not resolved. The claim "B > A" has every difference negated: rank-1
    # -1.0 [-1.0, -1.0] reversed, mAP -0.7 [-2.1, 0.8] not resolved
    scores = {}
    for s, (a1, am, b1, bm) in enumerate([(50, 40, 49, 39), (60, 41, 59, 41),
                                          (70, 42, 69, 41)]):
        scores[f"A/{s}"] = {"euclidean": {"rank-1": a1, "mAP": am}}
        scores[f"B/{s}"] = {"euclidean": {"rank-1": b1, "mAP": bm}}
    claims = [("A", "B", "Table 2"), ("B", "A", "Table 6")]
    text = tools.compare_table("toy", ["A", "B"], claims, scores, 3, ("euclidean",))
    lines = text.splitlines()
    assert lines[0] == "toy: mean ± sd over 3 seed(s), in %"
    assert lines[2] == "A  " + f"{'60.0 ± 10.0':>18}{'41.0 ± 1.0':>18}"
    header = ("The paper's orderings A > B, here: the mean of the per-seed differences A - B "
              "(paired by seed) with its 95% t-interval over 3 seed(s), in % points; holds / "
              "reversed only when the interval excludes 0")
    assert lines[5:8] == [
        header,
        "A > B (Table 2): euclidean rank-1 +1.0 [1.0, 1.0] holds; "
        "euclidean mAP +0.7 [-0.8, 2.1] not resolved",
        "B > A (Table 6): euclidean rank-1 -1.0 [-1.0, -1.0] reversed; "
        "euclidean mAP -0.7 [-2.1, 0.8] not resolved"]
    assert lines[9:] == ["Per seed: euclidean rank-1 / mAP", "A, seed 0: 50.00 / 40.00",
                         "A, seed 1: 60.00 / 41.00", "A, seed 2: 70.00 / 42.00",
                         "B, seed 0: 49.00 / 39.00", "B, seed 1: 59.00 / 41.00",
                         "B, seed 2: 69.00 / 41.00"]


@pytest.fixture
def synthetic_written(monkeypatch):
    """Records the roots tools.py asks synthetic.ensure_synthetic for (nothing is written); the
    pretrained start is not built either."""
    roots = []

    def ensure_synthetic(root, **sizes):
        roots.append(root)
        return root
    monkeypatch.setattr(synthetic, "ensure_synthetic", ensure_synthetic)
    monkeypatch.setattr(pretrain, "ensure_pretrained", lambda arch, device="auto": None)
    return roots


def test_compare_command_flags_folders_and_no_resume(tmp_path, synthetic_written, capsys):
    # a paper's compare: each row and seed trains in OUT/<label, non-word runs as _>/seed<s>;
    # --resume (the default) reuses scores.json and asks train_row to resume, --no-resume neither
    calls = []

    def train_row(spec, seed, folder, device, resume, root, start, settings):
        calls.append((spec, seed, os.path.relpath(folder, out), device, resume))
        return fake_scores(50 + seed, 40)
    out = str(tmp_path / "cmp")
    rows, claims = [("Baseline 1", "b1", 1), ("AEA (ours)", "aea", 1)], [("AEA (ours)",
                                                                         "Baseline 1", "T2")]
    args = ["--seeds", "2", "--out", out, "--device", "cpu"]
    tools.compare_command(args, "x compare", "", "unused", "toy", rows, claims, train_row)
    assert calls == [("b1", 0, os.path.join("Baseline_1", "seed0"), "cpu", True),
                     ("b1", 1, os.path.join("Baseline_1", "seed1"), "cpu", True),
                     ("aea", 0, os.path.join("AEA_ours", "seed0"), "cpu", True),
                     ("aea", 1, os.path.join("AEA_ours", "seed1"), "cpu", True)]
    assert synthetic_written == ["data/synthetic"]  # the runs' dataset, before the first run
    calls[:] = []  # all four runs in scores.json: reused
    tools.compare_command(args, "x compare", "", "unused", "toy", rows, claims, train_row)
    assert calls == []
    tools.compare_command(args + ["--no-resume"], "x compare", "", "unused", "toy", rows,
                          claims, train_row)
    assert len(calls) == 4 and not any(resume for *_, resume in calls)
    capsys.readouterr()
    with pytest.raises(common.UserError, match="--seeds 0: expected 1 or more"):
        tools.compare_command(["--seeds", "0"], "x compare", "", out, "toy", rows, claims,
                              train_row)


def test_compare_command_trains_5_seeds_by_default(tmp_path, synthetic_written, capsys):
    seeds = []

    def train_row(spec, seed, folder, device, resume, root, start, settings):
        seeds.append(seed)
        return fake_scores(50, 40)
    tools.compare_command(["--out", str(tmp_path / "cmp")], "x compare", "", "unused", "toy",
                          [("A", "a", 1)], [], train_row)
    assert seeds == [0, 1, 2, 3, 4]
    assert "over 5 seed(s)" in capsys.readouterr().out


def never_trains(*args):
    pytest.fail("a run trained")


SCORES = b'{"A/0": {"euclidean": {"rank-1": 50.0, "mAP": 40.0}}}'
NOT_JSON = (": it was not written by this command, or was edited or cut short; to start anew, "
            "delete it or pass --no-resume")
EXPECTED_RUN = ('; expected {"rank-1": %, "mAP": %}, numbers in [0, 100]; to start anew, delete '
                'it or pass --no-resume')
EXPECTED_FILE = ('; expected {"<label>/<seed>": {metric: {"rank-1": %, "mAP": %}}}; to start '
                 'anew, delete it or pass --no-resume')


@pytest.mark.parametrize("content, message", [
    (SCORES[:-9], " is not valid JSON (Expecting ':' delimiter: line 1 column 45 (char 44))"
     + NOT_JSON),
    (b"", " is not valid JSON (Expecting value: line 1 column 1 (char 0))" + NOT_JSON),
    (b"\x89PNG\r\n\x1a\n\xff", " is not valid JSON ('utf-8' codec can't decode byte 0x89 in "
     "position 0: invalid start byte)" + NOT_JSON),
    (b"[" * 100000, " is not valid JSON (maximum recursion depth exceeded...)" + NOT_JSON),
    (b"[1, 2]", " holds a JSON list" + EXPECTED_FILE),
    (SCORES.replace(b"50.0", b'"x"'), """: entry 'A/0', metric 'euclidean': {"rank-1": "x", """
     '"mAP": 40.0}' + EXPECTED_RUN),
    (SCORES.replace(b"50.0", b"150"), """: entry 'A/0', metric 'euclidean': {"rank-1": 150, """
     '"mAP": 40.0}' + EXPECTED_RUN),
    (SCORES.replace(b"50.0", b"NaN"), """: entry 'A/0', metric 'euclidean': {"rank-1": NaN, """
     '"mAP": 40.0}' + EXPECTED_RUN),
    (SCORES.replace(b"50.0", b"true"), """: entry 'A/0', metric 'euclidean': {"rank-1": true, """
     '"mAP": 40.0}' + EXPECTED_RUN),
    (SCORES.replace(b', "mAP": 40.0', b""), """: entry 'A/0', metric 'euclidean': """
     '{"rank-1": 50.0}' + EXPECTED_RUN),
    (SCORES.replace(b"A/0", b"A"), """: entry 'A': {"euclidean": {"rank-1": 50.0, "mAP": 40.0}}"""
     + EXPECTED_FILE),
    (b'{"A/0": [50, 40]}', ": entry 'A/0': [50, 40]" + EXPECTED_FILE),
    # a row that the command does not run now is checked too: compare wrote it as the others
    (SCORES[:-1] + b', "B/7": {"euclidean": {"rank-1": -1, "mAP": 40}}}', """: entry 'B/7', """
     """metric 'euclidean': {"rank-1": -1, "mAP": 40}""" + EXPECTED_RUN),
], ids=["cut short", "empty", "binary", "nested", "a list", "a string", "above 100", "NaN",
        "a bool", "no mAP", "no seed", "a run not a dict", "an unused row"])
def test_compare_refuses_a_bad_scores_json_before_any_work(tmp_path, synthetic_written, content,
                                                            message):
    # before the dataset is written and any run trains; the file is left as it was. "..." in a
    # message: any text (Python's own words)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "scores.json").write_bytes(content)
    with pytest.raises(UserError) as e:
        tools.compare_command(["--seeds", "1", "--out", str(out)], "x compare", "", "unused",
                              "toy", [("A", "a", 1)], [], never_trains)
    expected = str(out / "scores.json") + message
    assert re.fullmatch(".*".join(map(re.escape, expected.split("..."))), str(e.value))
    assert synthetic_written == [] and (out / "scores.json").read_bytes() == content
    assert os.listdir(out) == ["scores.json"]


def test_compare_start_benchmark_rows_settings_and_diagnostics(tmp_path, synthetic_written,
                                                             monkeypatch):
    # --on validation trains on data/synthetic_val; --start pretrained builds the pretrained
    # start first; --rows trains those rows only; --set reaches every run and names the folder;
    # the views a run returns beside its metrics, the diagnostic orderings and the numbers
    # `diagnose` reads from each run's folder are printed after the paper's orderings
    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr(pretrain, "ensure_pretrained",
                        lambda arch, device="auto": built.append(arch))
    calls = []

    def train_row(spec, seed, folder, device, resume, root, start, settings):
        calls.append((spec, seed, folder, root, start, settings))
        scores = fake_scores(50 + seed, 40)
        # A's basic half: 52, 55 against B's 50, 51 (B = 50 + seed): d = 2, 4, mean 3, sd 1.414,
        # t_{0.975, 1} = 12.706, half-width 12.706 * 1.414 / sqrt(2) = 12.7 -> not resolved
        if spec == "a":
            scores["basic half"] = fake_scores(52 + 3 * seed, 41)["euclidean"]
        return scores

    def diagnose(label, folder):
        return {"gate open, epoch 1": 0.25} if label == "A" else {}
    rows = [("A", "a", 1), ("B", "b", 1), ("C", "c", 1)]
    argv = ["--seeds", "2", "--on", "validation", "--rows", "A", "B", "--set", "lr=0.02"]
    text = tools.compare_command(argv, "x compare", "", "cmp", "toy", rows,
                                 [("A", "B", "T1"), ("A", "C", "T2")], train_row,
                                 diagnose=diagnose,
                                 diagnostic_claims=[("A, basic half", "B", "why?"),
                                                    ("C", "B", "not trained")])
    assert synthetic_written == ["data/synthetic_val"] and built == ["resnet18"]
    folder = os.path.join("cmp", "pretrained-validation-lr0.02")
    assert [(spec, seed, os.path.relpath(f, folder), root, start, settings)
            for spec, seed, f, root, start, settings in calls] == [
        (spec, seed, os.path.join(spec.upper(), f"seed{seed}"), "data/synthetic_val",
         "pretrained", {"lr": "0.02"}) for spec in "ab" for seed in (0, 1)]
    assert text.startswith("toy, start: pretrained, benchmark: validation (data/synthetic_val)"
                           ", settings: lr=0.02: mean ± sd over 2 seed(s)")
    assert "A > B (T1)" in text and "(T2)" not in text and "not trained" not in text
    assert "\nA, basic half " in text and "53.5 ± 2.1" in text
    assert "\nA, basic half > B (why?): +3.0 [-9.7, 15.7] not resolved; +1.0 [" in text
    assert ("\nFrom the runs' logs, not the paper's: mean over seeds\n"
            "A: gate open, epoch 1 0.25") in text
    assert "A, seed 1: 51.00 / 40.00; basic half 55.00 / 41.00" in text
    # --start random builds nothing; unknown rows and settings that are not KEY=VALUE: refused
    built.clear()
    tools.compare_command(["--seeds", "1", "--start", "random", "--rows", "B"], "x compare", "",
                          "cmp", "toy", rows, [], train_row)
    assert built == [] and calls[-1][4] == "random"
    for flags, message in ((["--rows", "D"], "--rows 'D': expected row labels among A, B, C"),
                           (["--set", "lr"], "--set 'lr': expected KEY=VALUE, e.g. lr=0.02")):
        with pytest.raises(UserError, match=re.escape(message)):
            tools.compare_command(flags, "x compare", "", "cmp", "toy", rows, [], train_row)


def test_compare_refuses_bad_flags_before_any_work(tmp_path, synthetic_written, monkeypatch,
                                                   capsys):
    monkeypatch.setattr(aea, "compare_run", never_trains)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "cmp" / "scores.json").mkdir(parents=True)
    cases = [(["--seeds", str(10 ** 20)], "--seeds 100000000000000000000: expected at most 1000 "
              "(each seed trains every row once)"),
             (["--out", str(tmp_path / "a_file")], f"--out {tmp_path / 'a_file'}: cannot write "
              "there (a file, not a folder); give a folder you can write to"),
             (["--device", "gpu"], "--device 'gpu' is not a device name; expected auto, cpu, "
              "cuda or cuda:N"),
             (["--out", str(tmp_path / "cmp")], f"{tmp_path / 'cmp' / 'scores.json'} is a "
              "folder; expected the scores file `compare` writes there: move it away"),
             (["--set", "speed=1"], "--set speed=1: expected a training flag of aea.py, e.g. "
              "lr, pad, dropout, epochs"),
             (["--set", "lr=-1"], "--set lr=-1: --lr must lie in (0, inf), got -1.0 (learning "
              "rate, Sec. IV-B)")]
    for flags, message in cases:
        line, out = expect_exit_2(capsys, "compare", "aea", "--seeds", "1", "--out",
                                  str(tmp_path / "new"), *flags)
        assert line == message and out == ""
    assert synthetic_written == [] and not os.path.exists(tmp_path / "new")
    # AAA-Net's --set: a stage that does not exist, refused before any work too
    line, _ = expect_exit_2(capsys, "compare", "aaanet", "--out", str(tmp_path / "new"), "--set",
                            "stage4.lr=1")
    assert line.startswith("--set stage4.lr=1: expected a field of aaanet.py's Config")
    assert synthetic_written == [] and not os.path.exists(tmp_path / "new")
    # the CLI on a cut-short scores.json: one line, no run
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "scores.json").write_bytes(SCORES[:-9])
    line, _ = expect_exit_2(capsys, "compare", "aea", "--out", str(tmp_path / "new"))
    assert line.endswith(NOT_JSON) and synthetic_written == []


def test_compare_reuses_checked_scores_and_redoes_a_run_without_a_metric(tmp_path, capsys):
    # A/0: reused (its mAP a mean that passed 100 by a rounding error); A/1 lacks euclidean (a
    # row now scored under another metric): trained again; Old/0, a row no longer run: kept
    out = tmp_path / "cmp"
    out.mkdir()
    kept = {"A/0": {"euclidean": {"rank-1": 50, "mAP": 100 * np.mean([1.0000000000000002] * 3)}},
            "A/1": {"xqda": {"rank-1": 60.0, "mAP": 50.0}},
            "Old/0": {"euclidean": {"rank-1": 10.0, "mAP": 5.0}}}
    (out / "scores.json").write_text(json.dumps(kept))
    calls = []

    def train(label, seed):
        calls.append((label, seed))
        return fake_scores(52, 42)
    text = tools.compare("toy", [("A", 1)], [], train, 2, str(out))
    assert calls == [("A", 1)]
    assert "run 1/1 (1 reused): A, seed 1" in capsys.readouterr().out
    assert "A, seed 0: 50.00 / 100.00" in text and "A, seed 1: 52.00 / 42.00" in text
    scores = json.loads((out / "scores.json").read_text())
    assert scores == {**kept, "A/1": {"euclidean": {"rank-1": 52.0, "mAP": 42.0}}}


def test_compare_no_resume_does_not_read_scores_json(tmp_path, synthetic_written, capsys):
    # --no-resume: every run trains again and scores.json is written anew, whatever it held
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "scores.json").write_bytes(SCORES[:-9])
    calls = []

    def train_row(spec, seed, folder, device, resume, root, start, settings):
        calls.append((spec, seed, resume))
        return fake_scores(50, 40)
    tools.compare_command(["--seeds", "1", "--out", str(out), "--no-resume"], "x compare", "",
                          "unused", "toy", [("A", "a", 1)], [], train_row)
    assert calls == [("a", 0, False)]
    assert json.loads((out / "scores.json").read_text()) == json.loads(SCORES)


def test_compare_aea_runs_every_row_and_stops_with_exit_0(tmp_path, synthetic_written,
                                                         monkeypatch, capsys):
    # `tools.py compare aea`: aea.COMPARE's rows in order, each with its flags, in
    # OUT/<row>/seed<s>; aea.CLAIMS checked; a stop (Ctrl-C or SIGTERM inside a run) ends the
    # command normally, and the same command goes on from the run it was on
    runs = []
    stop_at = [3]

    def compare_run(flags, seed, out, device, resume, root, start, settings):
        runs.append((flags, seed, out, device, resume))
        if len(runs) == stop_at[0]:
            raise KeyboardInterrupt("SIGTERM")
        return fake_scores(40 + len(runs), 30)
    monkeypatch.setattr(aea, "compare_run", compare_run)
    out = str(tmp_path / "cmp")
    argv = ["compare", "aea", "--seeds", "1", "--out", out, "--device", "cpu"]
    assert tools.main(argv) is None  # no SystemExit: exit status 0
    assert "compare stopped; the same command goes on from here" in capsys.readouterr().out
    assert synthetic_written == [aea.DEMO["root"]]
    stop_at[0] = 0
    text = tools.main(argv)
    labels = [label for label, _, _ in aea.COMPARE]
    assert [os.path.relpath(o, out) for *_, o, _, _ in runs] == [
        os.path.join(re.sub(r"\W+", "_", label).strip("_"), "seed0")
        for label in labels[:3] + labels[2:]]
    assert [flags for flags, *_ in runs[3:]] == [flags for _, flags, _ in aea.COMPARE[2:]]
    assert [line.split("  ")[0] for line in text.splitlines()[2:2 + len(labels)]] == labels
    for better, worse, source in aea.CLAIMS:
        assert f"{better} > {worse} ({source}): euclidean rank-1" in text
    assert text.startswith("AEA, Tables 2 and 6 in miniature, start: pretrained, benchmark: "
                           "test (data/synthetic): mean ± sd over 1 seed(s)")
    # every row finished: the same command prints the same table, nothing runs
    runs[:] = []
    assert tools.main(argv) == text and runs == []


def test_compare_aaanet_shares_what_it_loaded_and_scores_every_metric(tmp_path,
                                                                      synthetic_written,
                                                                      monkeypatch):
    # `tools.py compare aaanet`: one `loaded` dict for every run (the dataset and its images,
    # read once), the rows' specs in order, every metric of aaanet.DEMO_METRICS in the table
    seen = []

    def compare_run(spec, seed, out, device, resume, loaded, root, start, settings):
        seen.append((spec, id(loaded)))
        loaded["ds"] = "read once"
        return fake_scores(40 + len(seen), 30, aaanet.DEMO_METRICS)
    monkeypatch.setattr(aaanet, "compare_run", compare_run)
    text = tools.main(["compare", "aaanet", "--seeds", "1", "--out", str(tmp_path / "cmp"),
                       "--device", "cpu"])
    assert [spec for spec, _ in seen] == [spec for _, spec, _ in aaanet.COMPARE]
    assert len({ident for _, ident in seen}) == 1
    assert text.startswith("AAA-Net, Tables 3-5 in miniature")
    header = text.splitlines()[1]
    assert all(f"{m} rank-1" in header and f"{m} mAP" in header for m in aaanet.DEMO_METRICS)
    for better, worse, source in aaanet.CLAIMS:
        assert f"{better} > {worse} ({source}): " in text


@pytest.mark.slow
def test_compare_aea_trains_every_row_and_reuses_them(synthetic_root, synthetic_written,
                                                      monkeypatch, tmp_path, capsys):
    # the compare's code path on the tiny fixture set: 8 rows x 1 seed, 2 epochs each (1 warm-up)
    monkeypatch.setattr(aea, "DEMO", {**aea.DEMO, "P": 4, "K": 2})
    monkeypatch.setattr(tools, "BENCHMARKS", {"test": dict(root=synthetic_root, seed=0)})
    monkeypatch.setattr(aea, "COMPARE_EPOCHS", ["--epochs", "2", "--warmup-epochs", "1",
                                                "--lr-step", "2"])
    out = str(tmp_path / "cmp")
    argv = ["compare", "aea", "--seeds", "1", "--out", out, "--device", "cpu", "--start",
            "random"]
    text = tools.main(argv)
    labels = [label for label, _, _ in aea.COMPARE]
    assert [line.split("  ")[0] for line in text.splitlines()[2:2 + len(labels)]] == labels
    for better, worse, source in aea.CLAIMS:
        assert f"{better} > {worse} ({source}): euclidean rank-1" in text
    # the diagnostics: each half of every two-network row, the orderings asked of them
    for row in ("AEA", "Baseline 3", "own triplets"):
        assert f"\n{row}, basic half " in text and f"\n{row}, complementary half " in text
    assert "\nBaseline 2, concatenation " in text and "Baseline 1, basic half" not in text
    for better, worse, question in aea.DIAGNOSTIC_CLAIMS:
        assert f"{better} > {worse} ({question}): " in text
    own = common.load_checkpoint(os.path.join(out, "own_triplets", "seed0", "last.pt"))
    assert own["config"]["triplet"] == "separate" and own["config"]["weights"] == "none"
    # each row trained its own run: B4's is B1's 2 epochs then AEA's 1 joint epoch
    b4 = common.load_checkpoint(os.path.join(out, "Baseline_4", "seed0", "last.pt"))
    assert b4["epoch"] == 3 and b4["config"]["variant"] == "b4"
    reda = common.load_checkpoint(os.path.join(out, "REDA", "seed0", "last.pt"))
    assert reda["config"]["erasing"] == "random" and reda["config"]["seed"] == 0
    # run again: every row is reused from scores.json, nothing trains
    monkeypatch.setattr(aea, "train", lambda cfg: pytest.fail("a finished row trained again"))
    capsys.readouterr()
    assert tools.main(argv) == text


@pytest.mark.slow
def test_compare_aaanet_rows_share_stage1_and_are_reused(synthetic_root, synthetic_written,
                                                         monkeypatch, tmp_path, capsys):
    # the compare's code path on the tiny fixture set, one seed, one epoch per stage, batches of 8
    monkeypatch.setattr(data, "demo_dataset", lambda root="data/synthetic": synthetic_root)
    monkeypatch.setattr(aaanet, "DEMO", {**aaanet.DEMO, "batch_size": 8})
    monkeypatch.setattr(aaanet, "DEMO_STAGES",
                        {s: {**v, "epochs": 1} for s, v in aaanet.DEMO_STAGES.items()})
    out = str(tmp_path / "cmp")
    argv = ["compare", "aaanet", "--seeds", "1", "--out", out, "--device", "cpu", "--start",
            "random"]
    text = tools.main(argv)
    labels = [label for label, *_ in aaanet.COMPARE]
    assert [line.split("  ")[0] for line in text.splitlines()[2:2 + len(labels)]] == labels
    assert "Stage 3 > Stage 1 (Tables 3-5): euclidean rank-1" in text and "kissme mAP" in text
    # every row but the baselines starts from the Stage 1 row's run of its seed
    stage1 = os.path.join(out, "Stage_1", "seed0", "stage1", "last.pt")
    for folder, stage in [("Stage_3", "stage2"), ("Stage_1_continued", "stage1"),
                          ("without_stage_2", "stage3"),
                          ("conv2_x", "stage2"), ("conv4_x_2x2_grid", "stage2")]:
        ckpt = common.load_checkpoint(os.path.join(out, folder, "seed0", stage, "last.pt"))
        assert ckpt["config"]["init"] == stage1 and ckpt["stage"] == stage
    for folder in ("Stage_1", "random_erasing"):
        assert os.listdir(os.path.join(out, folder, "seed0")) == ["stage1"]
    assert os.path.isfile(os.path.join(out, "conv4_x_2x2_grid", "seed0", "stage3", "last.pt"))
    # run again: every row is reused from scores.json, nothing trains
    monkeypatch.setattr(aaanet, "train_stage", lambda *a: pytest.fail("a finished row trained"))
    capsys.readouterr()
    assert tools.main(argv) == text
