"""The questions with experiments (docs/exercises_questions.md) cannot drift from the code: the
set-up's settings are the demos', and every command of the sheet runs, here on the small
conftest dataset (slow). The answers' measured outputs are in docs/exercises_answers.md."""
import os
import re
import shlex
import subprocess
import sys

import pytest

import aaanet
import aea
from conftest import REPO, SYNTHETIC_SIZES

QUESTIONS = os.path.join(REPO, "docs", "exercises_questions.md")


def sheet():
    with open(QUESTIONS, encoding="utf-8") as f:
        return f.read()


def bash_blocks(text):
    """The ```bash blocks of the sheet, in order, each a list of commands: a line ending with a
    backslash goes on, and so does a line inside an open double quote (python -c "...")."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        commands = []
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            open_quote = pending.count('"') % 2 == 1
            if pending.rstrip().endswith("\\") or open_quote:
                continue
            if pending.strip() and not pending.lstrip().startswith("#"):
                commands.append(pending)
            pending = ""
        blocks.append(commands)
    return blocks


def setup_values(text):
    """{name: value} of the set-up block's shell variables (S, SMALL, ST2, ST3)."""
    setup = bash_blocks(text)[0]
    values = {}
    for command in setup:
        m = re.match(r'(\w+)="(.*)"', command.split("#")[0].strip().replace("\\\n", ""), re.S)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def flags_of(words):
    """{flag: value} of "--a 1 --b x" words."""
    return dict(zip(words[::2], words[1::2]))


def test_the_setup_lines_are_the_demos_settings():
    # S: a compare row's epochs (aea.COMPARE_EPOCHS); SMALL: aaanet.DEMO's data, size, network
    # and padding; ST2, ST3: aaanet.DEMO_STAGES' epochs and lrs
    values = setup_values(sheet())
    assert shlex.split(values["S"]) == aea.COMPARE_EPOCHS
    small = flags_of(shlex.split(values["SMALL"]))
    demo = {f"--{k.replace('_', '-')}": str(v) for k, v in aaanet.DEMO.items()
            if k in ("dataset", "height", "width", "weights", "arch", "pad")}
    assert small == {"--root": "data/synthetic", **demo}
    for name, stage in (("ST2", "stage2"), ("ST3", "stage3")):
        settings = {f"--{k.replace('_', '-')}": str(v)
                    for k, v in aaanet.DEMO_STAGES[stage].items()}
        assert flags_of(shlex.split(values[name])) == settings


# The sheet's commands as they run here: the data are the conftest set, so the set-up writes it
# with its sizes, and AEA's batches hold 4 identities (it has 8); the compare of A6 trains 40
# runs of the demo's size, and its code path is tested in test_tools.py instead
SIZES = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in SYNTHETIC_SIZES.items())
# and the pretrained start is a random ResNet-18 in the place `python pretrain.py` writes to
RANDOM_START = ("python -c \"import os, torch, torchvision; os.makedirs('data/pretrained'); "
                "torch.save(torchvision.models.resnet18().state_dict(), "
                "'data/pretrained/resnet18-synthetic.pt')\"")
HERE = {"python synthetic.py": f"python synthetic.py --root data/synthetic {SIZES}",
        "python pretrain.py": RANDOM_START}
SKIPPED = ("python tools.py compare aea",)
# the one command the sheet runs to see it refused: B6's 4x4 grid on conv4_x's 4x2 map
REFUSED = {"--point conv4_x \\\n  --out": "--grid 4 is finer than f_r's 4x2 map"}


@pytest.mark.slow
def test_every_command_of_the_sheet_runs(synthetic_root, tmp_path):
    # a working folder that is the repository to the commands (its modules and tests linked),
    # with data/synthetic the conftest set; runs/ and the figures are written there
    for name in os.listdir(REPO):
        if name.endswith(".py") or name in ("tests", "docs"):
            os.symlink(os.path.join(REPO, name), tmp_path / name)
    (tmp_path / "data").mkdir()
    os.symlink(synthetic_root, tmp_path / "data" / "synthetic")
    text = sheet()
    values = setup_values(text)
    values["S"] += " --P 4 --K 2"
    env = {**os.environ, **values, "PATH": os.path.dirname(sys.executable) + ":" +
           os.environ["PATH"]}
    ran = 0
    for commands in bash_blocks(text):
        for command in commands:
            if re.match(r"\w+=", command) or command.strip() in SKIPPED:
                continue
            for sheet_form, here in HERE.items():
                command = command.replace(sheet_form, here)
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            refused = [m for key, m in REFUSED.items() if key in command]
            if refused:
                assert done.returncode == 2 and refused[0] in done.stderr, command
            else:
                assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
            ran += 1
    # the set-up's 4, A1-A7's 13 and B1-B7's 12: every command but the compare
    assert ran == 29
