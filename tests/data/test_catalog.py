"""The dataset catalog: precedence of the three places, resolution into sources, fit checks at config load."""

import logging
import posixpath

import pytest
import yaml

from open_vlm.config.load import ConfigError, load_run_config
from open_vlm.config.schema import DataConfig, SourceConfig
from open_vlm.data.catalog import CatalogError, load_catalog, resolve_sources, user_catalog_path
from open_vlm.data.compat import fit_problem
from open_vlm.data.shards import expand_urls
from tests.conftest import REPO, run_cli


def write_catalog(path, entries: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(entries))
    return path


def entry(urls, modality="image_text", tasks=("captioning",)):
    return {"urls": urls if isinstance(urls, list) else [urls], "modality": modality, "tasks": list(tasks)}


def write_run_config(tmp_path, sources, task="prefix_lm", catalogs=()):
    cfg = {
        "run": {"output_dir": str(tmp_path / "runs")},
        "data": {"sources": sources, "task": task, "catalogs": [str(c) for c in catalogs]},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def three_places(tmp_path):
    """`shared` defined in the repo dir, the user file and two run-config catalogs; one name only in each."""
    repo = tmp_path / "repo"
    write_catalog(repo / "a.yaml", {"shared": entry("repo/x.tar"), "only_repo": entry("repo/r.tar")})
    write_catalog(user_catalog_path(), {"shared": entry("user/x.tar"), "only_user": entry("user/u.tar")})
    run1 = write_catalog(tmp_path / "run1.yaml", {"shared": entry("run1/x.tar")})
    run2 = write_catalog(tmp_path / "run2.yaml", {"shared": entry("run2/x.tar"), "only_run": entry("run2/o.tar")})
    return repo, run1, run2


def resolved(repo, catalogs, *names):
    data = DataConfig(sources=[SourceConfig(dataset=n) for n in names], catalogs=[str(c) for c in catalogs])
    resolve_sources(data, repo_dir=repo)
    return data.sources


def test_later_catalogs_override_earlier_with_a_log_line(three_places, caplog):
    repo, run1, run2 = three_places
    with caplog.at_level(logging.INFO, logger="open_vlm.data.catalog"):
        shared, only_repo, only_user = resolved(repo, [run1, run2], "shared", "only_repo", "only_user")
    assert shared.urls == ["run2/x.tar"] and shared.catalog_file == str(run2)
    assert only_repo.urls == ["repo/r.tar"] and only_user.urls == ["user/u.tar"]
    line = next(r.getMessage() for r in caplog.records if "dataset shared" in r.getMessage())
    assert str(run2) in line and f"overrides {repo / 'a.yaml'}, {user_catalog_path()}, {run1}" in line
    assert resolved(repo, [run2, run1], "shared")[0].urls == ["run1/x.tar"]  # run-config order decides
    assert resolved(repo, [], "shared")[0].urls == ["user/x.tar"]  # user file over the repo
    user_catalog_path().unlink()
    assert resolved(repo, [], "shared")[0].urls == ["repo/x.tar"]


def test_resolution_fills_the_source_and_keeps_its_weight(three_places):
    repo, _, run2 = three_places
    write_catalog(run2, {"txt": {**entry("t/{0..2}.tar", "text", ["text_lm"]), "manifest": "m/manifest.json"}})
    data = DataConfig(sources=[SourceConfig(dataset="txt", weight=0.25)], catalogs=[str(run2)], task="causal_lm")
    resolve_sources(data, repo_dir=repo)
    (source,) = data.sources
    assert (source.name, source.modality, source.manifest, source.weight) == ("txt", "text", "m/manifest.json", 0.25)
    assert expand_urls(source.urls) == ["t/0.tar", "t/1.tar", "t/2.tar"]


def test_dataset_and_urls_together_or_a_contradicting_modality_are_refused(three_places):
    repo, run1, _ = three_places
    data = DataConfig(sources=[SourceConfig(dataset="shared", urls=["other.tar"])], catalogs=[str(run1)])
    with pytest.raises(CatalogError, match="either dataset"):
        resolve_sources(data, repo_dir=repo)
    data = DataConfig(sources=[SourceConfig(dataset="shared", modality="text")], catalogs=[str(run1)])
    with pytest.raises(CatalogError, match="contradicts"):
        resolve_sources(data, repo_dir=repo)


def test_a_resolved_config_keeps_its_urls_without_the_catalog(tmp_path):
    """A dumped run config (run folder, launched job) names its catalog file; it loads where that file is gone."""
    source = SourceConfig(name="s", dataset="gone", urls=["x/{0..1}.tar"], catalog_file="/nowhere/datasets.yaml")
    data = DataConfig(sources=[source], catalogs=["/nowhere/datasets.yaml"])
    resolve_sources(data, repo_dir=tmp_path)
    assert data.sources[0].urls == ["x/{0..1}.tar"]


def test_bad_catalog_entries_name_the_file(tmp_path):
    repo = tmp_path / "empty_repo"
    bad = write_catalog(tmp_path / "bad.yaml", {"x": {**entry("a.tar"), "url": "typo"}})
    with pytest.raises(CatalogError, match=r"bad.yaml: dataset 'x': unknown key 'url'; did you mean 'urls'"):
        load_catalog([str(bad)], repo_dir=repo)
    bad = write_catalog(tmp_path / "bad.yaml", {"x": entry("a.tar", tasks=["captions"])})
    with pytest.raises(CatalogError, match="unknown task"):
        load_catalog([str(bad)], repo_dir=repo)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog([str(tmp_path / "missing.yaml")], repo_dir=repo)


@pytest.mark.parametrize(
    "modality, tasks, data_task, fits",
    [
        ("image_text", ["captioning"], "prefix_lm", True),
        ("image_text", ["captioning"], "contrastive", True),
        ("image_text", ["vqa"], "contrastive", False),
        ("image_text", [], "chat_lm", True),
        ("image_text", ["captioning"], "causal_lm", False),
        ("text", ["text_lm"], "causal_lm", True),
        ("text", ["text_lm"], "prefix_lm", True),  # issue 16: text in a VLM run (a document, no image)
        ("text", ["text_lm"], "contrastive", False),
        ("image_text", ["chat"], "chat_lm", True),
        ("image_text", ["chat"], "prefix_lm", False),
        ("region_features", ["region_pretraining"], "lxmert", True),
        ("region_features", [], "prefix_lm", False),
        ("pretokenized", ["prefix_lm"], "prefix_lm", True),
        ("pretokenized", ["prefix_lm"], "chat_lm", False),
    ],
)
def test_compatibility_table(modality, tasks, data_task, fits):
    assert (fit_problem(modality, tasks, data_task) is None) == fits


def test_inline_sources_are_checked_too(tmp_path):
    config = write_run_config(tmp_path, [{"urls": ["t.tar"], "modality": "text"}], task="contrastive")
    with pytest.raises(ConfigError, match=r"data.sources\[0\]: source does not fit data.task contrastive"):
        load_run_config(["--config", str(config)])
    config = write_run_config(tmp_path, [{"urls": ["t.tar"], "modality": "text"}], task="causal_lm")
    assert load_run_config(["--config", str(config)]).data.sources[0].name == "source0"


def test_the_repo_catalog_names_the_demo_shards(tmp_path, demo_dir):
    """The shipped entry loads, resolves through a run config and names what make_demo_data writes."""
    config = write_run_config(tmp_path, [{"dataset": "demo_shapes", "weight": 1.0}])
    (source,) = load_run_config(["--config", str(config)]).data.sources
    assert source.name == "demo_shapes" and source.catalog_file == str(REPO / "configs/datasets/demo.yaml")
    written = sorted(p.name for p in demo_dir.glob("*.tar"))
    assert [posixpath.basename(u) for u in expand_urls(source.urls)] == written
    assert posixpath.dirname(source.manifest) == posixpath.dirname(expand_urls(source.urls)[0]) == "data/demo"


@pytest.fixture
def run_catalog(tmp_path):
    """Three datasets whose shards do not exist: a config error must come before any data is read."""
    return write_catalog(
        tmp_path / "datasets.yaml",
        {
            "coco_captions": entry("nowhere/coco-{0..3}.tar"),
            "coco_vqa": entry("nowhere/vqa-{0..3}.tar", tasks=["vqa"]),
            "wiki_text": entry("nowhere/wiki-{0..3}.tar", "text", ["text_lm"]),
        },
    )


def test_unknown_dataset_exits_2_listing_close_matches(tmp_path, run_catalog):
    config = write_run_config(tmp_path, [{"dataset": "coco_caption"}], catalogs=[run_catalog])
    out = run_cli("-m", "open_vlm.train", "--config", str(config), timeout=120)
    assert out.returncode == 2, out.stderr
    assert "unknown dataset 'coco_caption'; did you mean 'coco_captions', 'coco_vqa'?" in out.stderr
    assert str(run_catalog) in out.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made


def test_dataset_not_fitting_the_task_exits_2(tmp_path, run_catalog):
    config = write_run_config(
        tmp_path, [{"dataset": "coco_captions"}, {"dataset": "wiki_text"}], task="contrastive", catalogs=[run_catalog]
    )
    out = run_cli("-m", "open_vlm.cli", "train", "--config", str(config), timeout=120)
    assert out.returncode == 2, out.stderr
    assert "data.sources[1]: dataset 'wiki_text' does not fit data.task contrastive" in out.stderr
    assert "modality text cannot feed data.task contrastive" in out.stderr
    # right modality, wrong purpose: VQA pairs are not for contrastive training (checked in-process: fast)
    config = write_run_config(tmp_path, [{"dataset": "coco_vqa"}], task="contrastive", catalogs=[run_catalog])
    with pytest.raises(ConfigError, match="it is meant for vqa; data.task contrastive takes datasets for"):
        load_run_config(["--config", str(config)])
