"""Augmentation: recipes and checks, per-sample seeding by (seed, source, position), the loader hook, offline copies."""

import json
import shutil

import pytest
import torch
import yaml

from open_vlm.config.load import ConfigError, load_run_config
from open_vlm.config.schema import AugmentConfig, DataConfig, ModelConfig, SourceConfig
from open_vlm.data.augment import ImageAugment, resolve, sample_seed
from tests.conftest import REPO


def test_a_recipe_with_settings_given_on_the_source():
    settings = resolve(AugmentConfig(recipe="light", flip=True), {}, "data.sources[0].augment")
    assert (settings.crop_scale, settings.color_jitter, settings.flip) == ([0.8, 1.0], 0.2, True)
    mine = {"light": AugmentConfig(noise_std=0.1)}  # data.augment names win over the built-in ones
    assert resolve(AugmentConfig(recipe="light"), mine, "x").noise_std == 0.1
    assert resolve(AugmentConfig(), {}, "x") is None  # nothing asked: no wrapper at all


def write_run(tmp_path, demo_dir, source_augment, modality="image_text", recipes=None):
    path = tmp_path / "run.yaml"
    source = {"urls": [str(demo_dir / "demo-000000.tar")], "modality": modality, "augment": source_augment}
    data = {"sources": [source], **({"augment": recipes} if recipes else {})}
    data["task"] = "causal_lm" if modality == "text" else "prefix_lm"
    path.write_text(yaml.safe_dump({"data": data}))
    return ["--config", str(path)]


@pytest.mark.parametrize(
    "augment, modality, message",
    [
        ("strnog", "image_text", r"data.sources\[0\].augment.recipe: unknown recipe 'strnog'; did you mean 'strong'"),
        ({"crop_scale": [0.5]}, "image_text", r"data.sources\[0\].augment.crop_scale: \[0.5\] is out of range"),
        ({"policy": "randaug"}, "image_text", r"augment.policy: unknown policy 'randaug'; did you mean 'randaugment'"),
        ({"flip": True}, "text", r"data.sources\[0\].augment: modality text has no images to augment"),
    ],
)
def test_bad_augmentation_is_refused_at_config_load(tmp_path, demo_dir, augment, modality, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(write_run(tmp_path, demo_dir, augment, modality))


def test_a_source_names_a_recipe_of_data_augment(tmp_path, demo_dir):
    args = write_run(tmp_path, demo_dir, "mine", recipes={"mine": {"flip": True, "hue": 0.1}})
    cfg = load_run_config(args)
    assert cfg.data.sources[0].augment.recipe == "mine" and cfg.data.augment["mine"].hue == 0.1
    on_the_command_line = json.dumps([{"urls": [str(demo_dir / "demo-000000.tar")], "augment": "light"}])
    cfg = load_run_config([*args, "--data.sources", on_the_command_line])
    assert cfg.data.sources[0].augment.recipe == "light"


def test_same_sample_same_augmentation_and_the_global_rng_is_untouched():
    image = (torch.rand(24, 24, 3) * 255).to(torch.uint8)
    augment = ImageAugment(resolve(AugmentConfig(recipe="strong", flip=True), {}, "x"))
    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    first = augment(image, sample_seed((0, 1, 5)))
    assert torch.equal(torch.rand(3), expected_next)  # dropout's stream never depends on the data
    assert first.dtype == torch.uint8 and first.shape == image.shape
    assert torch.equal(ImageAugment(augment.settings)(image, sample_seed((0, 1, 5))), first)
    others = [augment(image, sample_seed(order)) for order in ((0, 1, 6), (0, 0, 5), (1, 1, 5))]
    assert all(not torch.equal(first, other) for other in others)


def first_step_pixels(demo_dir, augment_settings, workers, augment=True):
    from open_vlm.data.build import build_model_loader
    from open_vlm.models.registry import build_model
    from open_vlm.tokenize.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(demo_dir / "tokenizer"))
    bundle = build_model(ModelConfig(config=str(REPO / "configs/models/paligemma_tiny.yaml")), tokenizer)
    source = SourceConfig(name="s", urls=[str(demo_dir / "demo-000000.tar")], augment=augment_settings)
    data = DataConfig(sources=[source], batch_size=4, num_workers=workers, num_streams=4, max_text_len=16)
    loader = build_model_loader(data, seed=0, global_batch=4, bundle=bundle, tokenizer=tokenizer, augment=augment)
    return next(iter(loader))["pixel_values"]


def test_the_loader_augments_each_sample_by_its_order_not_by_the_worker(demo_dir):
    settings = AugmentConfig(recipe="strong")
    in_process, one_worker = first_step_pixels(demo_dir, settings, 0), first_step_pixels(demo_dir, settings, 1)
    assert torch.equal(in_process, one_worker)
    plain = first_step_pixels(demo_dir, settings, 0, augment=False)  # what evaluation reads
    assert plain.shape == in_process.shape and not torch.equal(plain, in_process)
    assert torch.equal(plain, first_step_pixels(demo_dir, AugmentConfig(), 0))


def test_offline_copies_are_a_new_version_recording_the_recipe(tmp_path, demo_dir):
    from augment_shards import main

    from open_vlm.data.manifest import read_manifest
    from open_vlm.data.shards import iter_tar_samples, open_url
    from open_vlm.data.version import manifest_version

    shards = tmp_path / "shapes"
    shards.mkdir()
    shutil.copy(demo_dir / "demo-000002.tar", shards)
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(yaml.safe_dump({"shapes": {"urls": [str(shards / "demo-000002.tar")], "tasks": ["captioning"]}}))
    from open_vlm.data.manifest import write_manifest

    original = manifest_version(write_manifest([str(shards / "demo-000002.tar")], str(shards / "manifest.json")))
    args = ["shapes", "--recipe", "light", "--copies", "2", "--seed", "3", "--catalog", str(catalog)]
    assert main([*args, "--out", str(tmp_path / "again"), "--name", "shapes_again"]) == 0  # under another name
    assert main([*args, "--out", str(tmp_path / "aug")]) == 0  # under its own: a new version of `shapes`
    entry = yaml.safe_load(catalog.read_text())["shapes"]
    assert entry["urls"] == [str(tmp_path / "aug" / f"demo-000002-aug{c}.tar") for c in (0, 1)]
    manifest = read_manifest(str(tmp_path / "aug/manifest.json"))
    assert manifest.num_samples == 64 and entry["version"] == manifest_version(manifest) != original
    assert entry["tasks"] == ["captioning"] and entry["modality"] == "image_text"
    assert entry["augment"]["recipe"] == {"recipe": "light", "crop_scale": [0.8, 1.0], "color_jitter": 0.2}
    assert entry["augment"]["from"] == {
        "dataset": "shapes",
        "split": "train",
        "version": original,
        "urls": [str(shards / "demo-000002.tar")],
    }
    assert (entry["augment"]["seed"], entry["augment"]["copies"]) == (3, 2)

    def samples(url):
        with open_url(url) as stream:
            return list(iter_tar_samples(stream, url))

    before, after = samples(str(shards / "demo-000002.tar")), samples(entry["urls"][0])
    assert [s["__key__"] + "_aug0" for s in before] == [s["__key__"] for s in after]
    assert all(a["txt"] == b["txt"] and a["jpg"] != b["jpg"] for a, b in zip(after, before))
    for c in (0, 1):  # the same command writes the same bytes
        name = f"demo-000002-aug{c}.tar"
        assert (tmp_path / "aug" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert json.loads((tmp_path / "aug/manifest.json").read_text())["format"] == "open_vlm.manifest/1"


def test_offline_copies_never_replace_the_source_manifest(tmp_path, demo_dir):
    """`--out` at the dataset's own folder would overwrite its manifest.json with the copies' (a review found it)."""
    from augment_shards import main

    from open_vlm.data.manifest import write_manifest
    from open_vlm.errors import ConfigError

    shards = tmp_path / "shapes"
    shards.mkdir()
    shutil.copy(demo_dir / "demo-000002.tar", shards)
    write_manifest([str(shards / "demo-000002.tar")], str(shards / "manifest.json"))
    before = (shards / "manifest.json").read_bytes()
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(yaml.safe_dump({"shapes": {"urls": [str(shards / "demo-000002.tar")]}}))
    for out in (shards, tmp_path / "." / "shapes"):
        with pytest.raises(ConfigError, match="the dataset's own shards and manifest.json"):
            main(["shapes", "--recipe", "light", "--catalog", str(catalog), "--out", str(out)])
    assert (shards / "manifest.json").read_bytes() == before
    assert not list(shards.glob("*-aug*.tar"))  # nothing written
