"""pretrain.py: the pretrained start, built once on the pretraining set, loaded by name."""
import os

import pytest
import torch
import torchvision

import aea
import common
import pretrain
import synthetic
from common import UserError


def test_weights_to_torchvision_names_the_stem_as_torchvision_does():
    # Backbone keeps the stem as conv1 = (conv1, bn1, relu, maxpool): conv1.0.* is torchvision's
    # conv1.*, conv1.1.* its bn1.*; layer1..layer4 keep their names. The renamed dict loads into
    # a torchvision ResNet-18 without its classifier, every key matched
    backbone = common.Backbone("none", arch="resnet18")
    renamed = pretrain.weights_to_torchvision(backbone.state_dict())
    resnet = torchvision.models.resnet18(weights=None)
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict(renamed, strict=True)
    assert torch.equal(resnet.conv1.weight, backbone.conv1[0].weight)
    assert torch.equal(resnet.bn1.running_var, backbone.conv1[1].running_var)
    assert "conv1.0.weight" not in renamed and "bn1.weight" in renamed


def test_backbone_synthetic_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "PRETRAINED", str(tmp_path / "{arch}-synthetic.pt"))
    with pytest.raises(UserError, match=r"weights 'synthetic': .*resnet18-synthetic.pt is not "
                       r"built yet; `python pretrain.py --arch resnet18` builds it"):
        common.Backbone("synthetic", arch="resnet18")


@pytest.fixture
def tiny_recipe(synthetic_root, tmp_path, monkeypatch):
    """pretrain.py on the conftest set (its 8 training identities), 1 epoch of 4 x 2 images,
    written under tmp_path; the working folder is tmp_path (runs/pretrain/... goes there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common, "PRETRAINED", str(tmp_path / "pre" / "{arch}-synthetic.pt"))
    monkeypatch.setattr(synthetic, "ensure_synthetic", lambda **sizes: synthetic_root)
    recipe = list(pretrain.RECIPE)
    for flag, value in (("--epochs", "1"), ("--lr-step", "1"), ("--P", "4")):
        recipe[recipe.index(flag) + 1] = value
    monkeypatch.setattr(pretrain, "RECIPE", [*recipe, "--K", "2"])
    return tmp_path


@pytest.mark.slow
def test_ensure_pretrained_builds_once_and_loads_by_name(tiny_recipe, monkeypatch, capsys):
    path = pretrain.ensure_pretrained("resnet18", "cpu")
    assert path == str(tiny_recipe / "pre" / "resnet18-synthetic.pt")
    record = path[:-len(".pt")] + ".txt"
    assert open(record).read() == pretrain.recipe_line("resnet18")
    # the file is the trained basic network's backbone: --weights synthetic loads it
    run = common.load_checkpoint(os.path.join("runs", "pretrain", "resnet18", "last.pt"))
    assert run["config"]["variant"] == "b1" and run["config"]["weights"] == "none"
    assert run["config"]["seed"] == 7
    trained = run["model"]["basic.backbone.layer4.1.conv2.weight"]
    loaded = common.Backbone("synthetic", arch="resnet18")
    assert torch.equal(loaded.layer4[1].conv2.weight, trained)
    assert "pretrained start written to" in capsys.readouterr().out
    # a second call finds it and trains nothing
    monkeypatch.setattr(aea, "train", lambda cfg: pytest.fail("built twice"))
    assert pretrain.ensure_pretrained("resnet18", "cpu") == path
    # a start built with another recipe: refused, naming the files to delete
    with open(record, "w") as f:
        f.write("pretrain.py version 0: another recipe\n")
    with pytest.raises(UserError, match="records another recipe .*delete .*resnet18-synthetic"):
        pretrain.ensure_pretrained("resnet18", "cpu")
