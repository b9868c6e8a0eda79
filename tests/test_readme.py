"""The README stays true: every command of its shell blocks names a config file, module, tool, CLI command and
config keys that exist, and every config key it names in prose exists."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import typing

from open_vlm.cli import COMMANDS
from open_vlm.config.load import RENAMES
from open_vlm.config.schema import RunConfig
from tests.conftest import REPO

README = REPO / "README.md"
SECTIONS = [f.name for f in dataclasses.fields(RunConfig)]
# A backticked dotted name in prose whose first part is a config section, e.g. `train.epochs`, `data.sources[i].split`.
PROSE_KEY = re.compile(rf"`((?:{'|'.join(SECTIONS)})(?:\.[A-Za-z_*][A-Za-z0-9_*]*|\[[^\]]*\])+)`")
FILE_SUFFIXES = (".safetensors", ".json", ".yaml", ".py", ".npz", ".tar", ".png", ".log", ".jsonl", ".txt")


def shell_commands(text: str) -> list[list[str]]:
    """Each command of the ```bash blocks as its words (continuation lines joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command: list[str] = []
            for word in shlex.split(line, comments=True) + [";"]:
                if word in ("&&", "||", ";", "|"):
                    commands += [command] if command else []
                    command = []
                else:
                    command.append(word)
    return commands


def key_problem(key: str) -> str | None:
    """Why a dotted config key (`data.sources[i].augment.flip`, `logging.wandb.*`) does not exist, or None."""
    key = RENAMES.get(key, key)
    tp: typing.Any = RunConfig
    parts = re.sub(r"\[[^\]]*\]", "", key).split(".")
    for i, part in enumerate(parts):
        origin = typing.get_origin(tp)
        if origin is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            tp = typing.get_args(tp)[0]
        if origin is dict:  # a user-chosen name (a recipe, a parameter group), then the value's own keys
            tp = typing.get_args(tp)[1]
            continue
        if part == "*":
            return None
        if not dataclasses.is_dataclass(tp):
            return f"'{'.'.join(parts[:i])}' has no keys below it"
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return f"no key '{part}' in '{'.'.join(parts[:i]) or 'the config'}'"
        tp = hints[part]
    return None


def program(words: list[str]) -> tuple[str, list[str]]:
    """The program a command runs (`open-vlm eval`, `module open_vlm.train`, `tool tools/x.py`) and its arguments."""
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # `MLFLOW_TRACKING_URI=... open-vlm train ...`
        words = words[1:]
    if words[0] in ("torchrun", "python", "python3") and "-m" in words:
        at = words.index("-m")
        return f"module {words[at + 1]}", words[at + 2 :]
    if words[0] in ("python", "python3") and words[1].endswith(".py"):
        return f"tool {words[1]}", words[2:]
    if words[0] == "open-vlm":
        return f"open-vlm {words[1]}", words[2:]
    return words[0], words[1:]


def command_problems(commands: list[list[str]]) -> list[str]:
    problems, made = [], set()
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), re.M))
    for words in commands:
        line = " ".join(words)
        name, args = program(words)
        if name == "cp" and (REPO / args[0]).exists():
            made.add(args[1])  # `cp configs/demo.yaml configs/mine.yaml`: later commands may use the copy
        elif name == "make" and args and args[0] not in targets:
            problems.append(f"{line}: no make target {args[0]}")
        elif name.startswith("module ") and importlib.util.find_spec(name.split()[1]) is None:
            problems.append(f"{line}: no module {name.split()[1]}")
        elif name.startswith("tool ") and not (REPO / name.split()[1]).exists():
            problems.append(f"{line}: no file {name.split()[1]}")
        elif name.startswith("open-vlm ") and name.split()[1] not in COMMANDS:
            problems.append(f"{line}: no command {name}")
        for i, arg in enumerate(args):
            flag, _, value = arg.partition("=")
            if flag == "--config":
                path = value or args[i + 1]
                if path not in made and not (REPO / path).is_file():
                    problems.append(f"{line}: no config file {path}")
            elif flag.startswith("--") and "." in flag and name != "make":
                why = key_problem(flag[2:])
                if why:
                    problems.append(f"{line}: {flag}: {why}")
    return problems


def prose_key_problems(text: str) -> list[str]:
    keys = {k for k in PROSE_KEY.findall(text) if not k.endswith(FILE_SUFFIXES)}
    return sorted(f"`{key}`: {why}" for key in keys if (why := key_problem(key)))


def test_every_readme_command_names_files_modules_and_keys_that_exist():
    commands = shell_commands(README.read_text())
    assert len(commands) > 30  # the blocks were found
    assert command_problems(commands) == []


def test_every_config_key_the_readme_names_exists():
    assert prose_key_problems(README.read_text()) == []


def test_the_checks_catch_what_goes_stale(tmp_path):
    stale = """```bash
open-vlm eval --config configs/heldout.yaml --train.max_step 3   # a missing file, a misspelt key
cp configs/demo.yaml configs/mine.yaml
X=1 open-vlm train --config configs/mine.yaml --data.sources '[]' --logging.trackers mlflow --logging.trakcers x
python -m open_vlm.trian --config configs/demo.yaml
python tools/no_such_tool.py && open-vlm evaluate
```
Keys: `train.epochs`, `data.sources[i].augment.flip`, `logging.wandb.*`, `model.safetensors`, `train.epoch`."""
    assert command_problems(shell_commands(stale)) == [
        "open-vlm eval --config configs/heldout.yaml --train.max_step 3: no config file configs/heldout.yaml",
        "open-vlm eval --config configs/heldout.yaml --train.max_step 3: --train.max_step: no key 'max_step' in "
        "'train'",
        "X=1 open-vlm train --config configs/mine.yaml --data.sources [] --logging.trackers mlflow --logging.trakcers x: "
        "--logging.trakcers: no key 'trakcers' in 'logging'",
        "python -m open_vlm.trian --config configs/demo.yaml: no module open_vlm.trian",
        "python tools/no_such_tool.py: no file tools/no_such_tool.py",
        "open-vlm evaluate: no command open-vlm evaluate",
    ]
    assert prose_key_problems(stale) == ["`train.epoch`: no key 'epoch' in 'train'"]
