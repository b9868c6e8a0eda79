"""`open-vlm view --attention`: attention maps that follow the object after a short training, for every kind."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from open_vlm.cli import main
from open_vlm.data.manifest import write_manifest
from open_vlm.extract.writer import ShardWriter
from tests.trainer.runs import folder, write_config

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
SIZE, SPOT = 32, 8  # 32 px images (the tiny PaliGemma's input: a 4 x 4 grid of 8 px patches), 8 px squares


def spot_image(x: int, y: int, colour: str) -> Image.Image:
    """A light background with one coloured square whose top-left corner is (x, y)."""
    image = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    ImageDraw.Draw(image).rectangle([x, y, x + SPOT - 1, y + SPOT - 1], fill=COLOURS[colour])
    return image


def write_spot_shards(out: Path) -> str:
    """Two shards of 64 images, a square anywhere; the caption is its colour alone (found only where it is)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    urls = []
    for s in range(2):
        url = str(out / f"spot-{s:06d}.tar")
        with ShardWriter(url) as sink:
            for i in range(64):
                colour = rng.choice(list(COLOURS))
                buf = io.BytesIO()
                spot_image(rng.randrange(SIZE - SPOT + 1), rng.randrange(SIZE - SPOT + 1), colour).save(buf, "PNG")
                sink.write(f"{s}_{i:04d}", {"png": buf.getvalue(), "txt": colour.encode()})
        urls.append(url)
    write_manifest(urls, str(out / "manifest.json"))
    return str(out / "spot-{000000..000001}.tar")


@pytest.fixture(scope="module")
def spot_run(tmp_path_factory, demo_dir) -> Path:
    """The tiny PaliGemma trained in-process to name the square's colour (vision tower frozen: ~10 s on CPU)."""
    from open_vlm.config.load import load_run_config
    from open_vlm.trainer.loop import Trainer

    tmp = tmp_path_factory.mktemp("spot")
    urls = write_spot_shards(tmp / "shards")
    config = write_config(
        tmp,
        demo_dir,
        "spot",
        data={"sources": [{"name": "spot", "urls": [urls]}], "batch_size": 16, "max_text_len": 8, "num_streams": 2},
        model={
            "kind": "paligemma",
            "config": str(Path(__file__).resolve().parents[2] / "configs/models/paligemma_tiny.yaml"),
            "tokenizer": str(demo_dir / "tokenizer"),
            "freeze": ["vision"],
        },
        # After 250 steps the tiny model localises the square for most seeds, not all: 6 of 8 tried on 2026-11-23
        # (seeds 0 and 4 learn the colour without a localised map under data order v2). A build that breaks the maps
        # (wrong tokens, image grid or layer) fails for every seed.
        train={"seed": 1, "max_steps": 250, "global_batch_size": 16},
        logging={"every_steps": 50},
    )
    Trainer(load_run_config(["--config", str(config)]), folder(tmp, "spot")).fit()
    return folder(tmp, "spot")


def hot_centre(png: Path) -> tuple[float, float]:
    """The centre (x, y) in [0, 1] of the hot region (>= 3/4 of the hottest) of a PNG's right panel (heat in grey)."""
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    heat = image[:, image.shape[1] // 2 :]
    ys, xs = np.nonzero(heat >= heat.min() + 0.75 * (heat.max() - heat.min()))
    return float(xs.mean() / heat.shape[1]), float(ys.mean() / heat.shape[0])


def test_the_hot_region_moves_with_the_object(spot_run, tmp_path, capsys):
    corners = {"top_left": (1, 1), "top_right": (23, 1), "bottom_left": (1, 23), "bottom_right": (23, 23)}
    images = []
    for name, (x, y) in corners.items():
        spot_image(x, y, "blue").save(tmp_path / f"{name}.png")
        images.append(str(tmp_path / f"{name}.png"))
    out = tmp_path / "maps"
    assert main(["view", "--attention", "--checkpoint", str(spot_run), "--image", *images, "--out", str(out)]) == 0
    assert "'blue'" in capsys.readouterr().out  # the trained model names the colour it attends to
    for name, (x, y) in corners.items():
        png = out / f"{name}-attention.png"
        assert Image.open(png).text["answer"] == "blue"
        cx, cy = hot_centre(png)
        sx, sy = (x + SPOT / 2) / SIZE, (y + SPOT / 2) / SIZE  # the square's centre
        assert abs(cx - sx) < 0.25 and abs(cy - sy) < 0.25, (name, (cx, cy), (sx, sy))


def test_given_answer_equals_the_generated_one_and_views_select(spot_run, tmp_path):
    from open_vlm.inference.attention import attention_maps
    from open_vlm.inference.wrapper import OpenVLM

    model = OpenVLM.from_pretrained(str(spot_run))
    image = spot_image(12, 4, "red")
    generated = attention_maps(model, image)
    given = attention_maps(model, image, answer=generated.answer)
    np.testing.assert_array_equal(generated.layers, given.layers)
    other = attention_maps(model, image, answer="green square")
    assert other.answer == "green square" and not np.array_equal(other.layers, given.layers)
    layers, heads = given.layers.shape[:2]
    names = [name for name, _ in given.select("all", "all")]
    assert len(names) == layers * heads and names[-1] == f"layer{layers - 1}-head{heads - 1}"
    (name, mean), *_ = given.select()
    np.testing.assert_allclose(mean, given.layers.mean((0, 1)), rtol=1e-6)
    assert [n for n, _ in given.select([-1], None)] == [f"layer{layers - 1}"]


@pytest.mark.parametrize("kind", ["vlm", "siglip"])
def test_other_kinds_write_one_png_per_view(trained, examples, tmp_path, kind):
    args = ["view", "--attention", "--checkpoint", str(trained(kind)), "--image", examples[0], "--out", str(tmp_path)]
    assert main([*args, "--layer", "all", "--head", "all"]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    layers = {p.name.split("-")[-2] for p in pngs}
    heads = {p.name.split("-")[-1] for p in pngs}
    assert len(pngs) == len(layers) * len(heads) >= 4
    image = Image.open(pngs[0])
    assert image.width == 2 * image.height  # a square image: overlay and heat side by side


def test_siglip_pooled_map_is_the_pooling_head_weights(trained, examples):
    """The default SigLIP map, applied to the head's value projections, reproduces the pooling attention output."""
    from open_vlm.inference.attention import attention_maps
    from open_vlm.inference.wrapper import OpenVLM

    model = OpenVLM.from_pretrained(str(trained("siglip")))
    maps = attention_maps(model, examples[0])
    tower = model.model.vision_model
    with torch.no_grad():
        hidden = tower(pixel_values=model._pixels(examples[:1])).last_hidden_state[0]  # (N, C)
        attn = tower.head.attention
        heads, width = attn.num_heads, attn.embed_dim
        values = hidden @ attn.in_proj_weight[2 * width :].T + attn.in_proj_bias[2 * width :]  # (N, C)
        per_head = values.view(len(hidden), heads, width // heads)
        weights = torch.from_numpy(maps.by_head.reshape(heads, -1))  # (H, N)
        mixed = torch.einsum("hn,nhd->hd", weights, per_head).reshape(1, width)
        expected = attn(tower.head.probe, hidden[None], hidden[None])[0][0]
    torch.testing.assert_close(attn.out_proj(mixed), expected, rtol=1e-4, atol=1e-5)


def test_bad_requests_are_one_line_errors(spot_run, trained, examples, capsys):
    base = ["view", "--attention", "--checkpoint", str(spot_run), "--image", examples[0]]
    assert main([*base, "--layer", "7"]) == 2
    assert "--layer 7: the model has 2 layers" in capsys.readouterr().err
    assert main([*base[:-1], "missing.jpg"]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["view", "--attention", "--checkpoint", str(trained("lxmert")), "--image", examples[0]]) == 2
    assert "attention maps are for" in capsys.readouterr().err


def test_clip_maps_are_the_class_token_rows(examples):
    """CLIP pools its class token: the default map is its last-layer row over the patches (without itself)."""
    from open_vlm.config.schema import ModelConfig
    from open_vlm.inference.attention import attention_maps
    from open_vlm.inference.processor import InferenceProcessor, ProcessorSettings
    from open_vlm.inference.wrapper import OpenVLM
    from open_vlm.models.registry import build_model

    torch.manual_seed(0)
    bundle = build_model(
        ModelConfig(kind="clip", config=str(Path(__file__).parents[2] / "configs/models/clip_tiny.yaml"))
    )
    settings = ProcessorSettings(kind="clip", task="contrastive", image_size=bundle.image_size)
    model = OpenVLM(bundle.model, InferenceProcessor(None, settings))
    maps = attention_maps(model, examples[0])
    config = bundle.model.config.vision_config
    side = config.image_size // config.patch_size
    assert maps.layers.shape == (config.num_hidden_layers, config.num_attention_heads, side, side)
    np.testing.assert_array_equal(maps.by_head, maps.layers[-1])
    totals = maps.layers.sum(axis=(2, 3))  # a softmax row minus the class token's weight on itself
    assert (totals > 0).all() and (totals < 1).all()
