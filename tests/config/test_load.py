import pytest
import yaml

from open_vlm.config.load import ConfigError, dump_config, load_run_config, valid_keys
from tests.conftest import run_cli


def write(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, {"train": {"max_steps": 7, "seed": 1}, "data": {"sources": [{"urls": ["a.tar"]}]}})
    cfg = load_run_config(["--config", path, "--train.seed", "5", "--optim.lr", "0.25"])
    assert cfg.train.max_steps == 7  # from the file
    assert cfg.train.seed == 5  # the override wins
    assert cfg.optim.lr == 0.25
    assert cfg.data.sources[0].urls == ["a.tar"]
    assert cfg.data.sources[0].name == "source0"  # unnamed sources get a name


def test_nested_override(tmp_path):
    cfg = load_run_config(["--logging.wandb.mode", "offline"])
    assert cfg.logging.wandb.mode == "offline"


@pytest.mark.parametrize(
    "data, bad, nearest",
    [
        ({"train": {"max_step": 3}}, "train.max_step", "train.max_steps"),
        ({"optim": {"learning_rate": 3}}, "optim.learning_rate", "optim.lr"),
        ({"trian": {"seed": 3}}, "trian", "train"),
        ({"data": {"sources": [{"urls": ["x"], "wieght": 2}]}}, "data.sources[0].wieght", "data.sources[0].weight"),
        ({"data": {"augment": {"lite": {"flipp": True}}}}, "data.augment.lite.flipp", "data.augment.lite.flip"),
        (
            {"data": {"sources": [{"urls": ["x"], "augment": {"colour_jitter": 0.2}}]}},
            "data.sources[0].augment.colour_jitter",
            "data.sources[0].augment.color_jitter",
        ),
    ],
)
def test_unknown_key_in_yaml_names_nearest(tmp_path, data, bad, nearest):
    with pytest.raises(ConfigError) as err:
        load_run_config(["--config", write(tmp_path, data)])
    assert f"'{bad}'" in str(err.value)
    assert f"'{nearest}'" in str(err.value)
    assert err.value.exit_code == 2


def test_unknown_cli_key_names_nearest():
    with pytest.raises(ConfigError, match=r"'train\.max_stepz'.*'train\.max_steps'"):
        load_run_config(["--train.max_stepz", "3"])


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError) as err:
        load_run_config(["--train.max_steps", "many"])
    assert "train.max_steps" in str(err.value) and "int" in str(err.value)


def test_bad_choice():
    with pytest.raises(ConfigError, match="train.strategy"):
        load_run_config(["--train.strategy", "horovod"])


def test_dump_round_trips(tmp_path):
    cfg = load_run_config(["--train.seed", "9", "--data.sources", '[{"name": "a", "urls": ["x.tar"], "weight": 2}]'])
    again = load_run_config(["--config", write(tmp_path, yaml.safe_load(dump_config(cfg)))])
    assert again == cfg


def test_valid_keys_cover_contract():
    keys = set(valid_keys())
    for key in (
        "run.project",
        "run.name",
        "run.output_dir",
        "train.seed",
        "train.max_steps",
        "train.strategy",
        "train.precision",
        "checkpoint.dir",
        "checkpoint.every_steps",
        "checkpoint.resume",
        "data.sources",
        "logging.every_steps",
    ):
        assert key in keys


def test_cli_exit_code_and_message(tmp_path):
    out = run_cli("-m", "open_vlm.train", "--config", write(tmp_path, {"train": {"max_stpes": 1}}))
    assert out.returncode == 2
    assert "train.max_stpes" in out.stderr and "train.max_steps" in out.stderr
    out = run_cli("-m", "open_vlm.cli", "train", "--train.seed", "x")
    assert out.returncode == 2 and "train.seed" in out.stderr


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(["--config", str(tmp_path / "nope.yaml")])


def test_ignored_keys_are_named(tmp_path):
    from open_vlm.config.load import ignored_keys

    path = write(tmp_path, {"optim": {"lr": 0.1}, "train": {"seed": 1}, "extract": {"num_regions": 4}})
    assert ignored_keys(["--config", path, "--checkpoint.every_steps", "3"], "extract") == [
        "checkpoint.every_steps",
        "optim.lr",
    ]
    assert ignored_keys(["--config", path], "eval") == ["extract.num_regions", "optim.lr"]
    assert ignored_keys(["--config", path], "train") == ["extract.num_regions"]


def test_a_bare_value_of_a_list_key_is_a_one_item_list():
    assert load_run_config(["--extract.urls", "in/x-{0..3}.tar"]).extract.urls == ["in/x-{0..3}.tar"]
    assert load_run_config(["--data.catalogs=s3://b/c.yaml"]).data.catalogs == ["s3://b/c.yaml"]
    assert load_run_config(["--extract.urls", '["a.tar", "b.tar"]']).extract.urls == ["a.tar", "b.tar"]


@pytest.mark.parametrize(
    "overrides, why",
    [(["--train.max_steps"], "argument --train.max_steps: expected one argument"), (["stray"], "unrecognized")],
)
def test_a_malformed_override_is_one_line_naming_it(overrides, why, capsys):
    with pytest.raises(ConfigError, match="bad override: ") as err:
        load_run_config(overrides)
    assert why in str(err.value) and "--section.key VALUE" in str(err.value)
    assert "\n" not in str(err.value) and "usage:" not in capsys.readouterr().err  # not argparse's usage page


@pytest.mark.parametrize("value", ["inf", "nan", "1e400"])
def test_a_number_that_is_not_finite_is_said_to_be_so(value):
    """'inf is out of range (it must be >= 0)' would contradict itself."""
    with pytest.raises(
        ConfigError, match=r"train\.epochs: (inf|nan) is out of range \(it must be a finite number >= 0\)"
    ):
        load_run_config(["--train.epochs", value])
