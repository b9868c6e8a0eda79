"""The run configuration: one dataclass per component, composed into `RunConfig`.

Every default lives here. YAML nesting maps to dotted CLI keys (`--train.max_steps 10`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunSection:
    """Where a run lives: `<output_dir>/<project>/<name>/`."""

    project: str = "open_vlm"
    name: str = "default"
    output_dir: str = "runs"


@dataclass
class AugmentConfig:
    """Image augmentation of one source (open_vlm/data/augment.py). Every random choice is seeded by the sample's
    (train.seed, source, position), so a resumed run augments exactly as the uninterrupted one did."""

    recipe: str = ""  # a recipe of data.augment or a built-in one (light, strong); settings given here override it
    crop_scale: list[float] = field(default_factory=list)  # random resized crop: [min, max] area fraction ([]: off)
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # its aspect-ratio range
    # Horizontal flip (p 0.5). Off unless asked for: a flip turns the image's left into right, so captions and
    # questions that say "left"/"right" (and any written text in the image) no longer match it.
    flip: bool = False
    color_jitter: float = 0.0  # brightness, contrast and saturation factors drawn from [1 - x, 1 + x]
    hue: float = 0.0  # hue shift drawn from [-x, x] (at most 0.5)
    noise_std: float = 0.0  # Gaussian pixel noise, std as a fraction of the [0, 255] range
    policy: str = ""  # a torchvision v2 policy: randaugment | trivialaugment | autoaugment | augmix ("": none)
    policy_ops: int = 2  # randaugment: operations per image
    policy_magnitude: int = 9  # randaugment / augmix: strength (0..30 bins for randaugment, 1..10 for augmix)


@dataclass
class SourceConfig:
    """One data source: tar shards of one modality, mixed into the run by `weight`."""

    name: str = ""  # default: `dataset`, else source<i>
    # A dataset from the catalog (open_vlm/data/catalog.py): fills `urls`, `modality` and `manifest` at load.
    dataset: str | None = None
    # Brace-expandable pattern(s): "data/demo/demo-{000000..000003}.tar", "s3://bucket/x-{0..9}.tar".
    urls: list[str] = field(default_factory=list)
    weight: float = 1.0
    modality: str = "image_text"
    # Manifest (per-shard sample counts). Default: `<shard dir>/manifest.json`, built on first use.
    manifest: str | None = None
    # The data task (processor + collator) of this source's samples: prefix_lm | chat_lm | causal_lm | contrastive |
    # lxmert; "" = `data.task`, else the model kind's. One run can mix captions and VQA under prefix_lm with chat
    # under chat_lm and text under causal_lm; each source's samples get their task's masking.
    task: str = ""
    # The catalog dataset's split: train (default) | val | test (`{dataset: coco_captions, split: val}`).
    split: str = ""
    # Image augmentation while training (never in evaluation): settings, or `augment: NAME` for a recipe.
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Set at config load: the catalog file `dataset` came from. A resolved config (run folder, launched job)
    # keeps its urls as written instead of looking the name up again.
    catalog_file: str | None = None


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    # Extra dataset catalogs (paths or s3:// URLs), read after the repo's and the user's; later ones win.
    catalogs: list[str] = field(default_factory=list)
    # Named augmentation recipes, used by sources as `augment: NAME` (built in: light, strong).
    augment: dict[str, AugmentConfig] = field(default_factory=dict)
    batch_size: int = 8  # per-device micro batch
    num_workers: int = 0
    prompt: str = "caption en"  # prefix used for image-caption samples
    max_text_len: int = 32  # max tokens of prefix + suffix (image tokens excluded)
    shuffle_window: int = 32  # samples per seeded shuffle window inside a shard piece
    # batch: each step's global batch from one source | sample: sources mixed per sample (all sources must then
    # have one task, so their samples batch together)
    mixing: str = "batch"
    # mixing sample: samples per mixing group (each group is one source; a multiple of ranks x workers keeps
    # every shard on one worker). 0: 8 when it divides the global batch, else the whole batch.
    mix_group: int = 0
    num_streams: int = 64  # canonical streams P per source (fixed per run; ranks x workers should divide it)
    strict: bool = False  # fail on the first bad shard/sample instead of skipping it
    # A tar member larger than this is never read: its sample is skipped and counted (`oversized_member`).
    max_member_bytes: int = 256 * 1024 * 1024
    # A loader worker that makes no progress this long is reported with the shard it was reading and the run
    # stops (a frozen storage endpoint), instead of hanging forever.
    worker_timeout_s: float = 300.0
    # processor + collator (open_vlm/tokenize/registry.py); "" = the model's own task. Sources may be pretokenized.
    task: str = ""
    pad_to_multiple: int = 1  # pad each batch's length up to a multiple of this (8/64 for tensor cores)
    # causal_lm sources: pack documents into rows of `max_text_len` tokens (block-diagonal attention, positions
    # restart per document); `packed_mask` is the mask form the collator writes (4d_bool | 4d_float |
    # position_ids; the trainer rebuilds it for the model's attention implementation anyway).
    pack: bool = False
    packed_mask: str = "4d_bool"


@dataclass
class ModelConfig:
    kind: str = "paligemma"
    # A model config file (json/yaml) for random init, or None when `pretrained` is given.
    config: str | None = None
    pretrained: str | None = None  # HF save_pretrained directory, local or s3://
    tokenizer: str | None = None  # HF tokenizer directory, local or s3://
    # Parameter groups (`vision`, `language`, ... per kind) or globs over parameter names
    # (`vision_tower.encoder.layers.11.*`); `unfreeze` is applied after `freeze`.
    freeze: list[str] = field(default_factory=list)
    unfreeze: list[str] = field(default_factory=list)
    frozen_dtype: str = "fp32"  # fp32 | bf16: storage dtype of frozen parameters
    # Which vision layer's patch features a downstream model reads: -1 the final (post-layernorm) output;
    # other values index the tower's `hidden_states` (0: embeddings, i: layer i's output, -2: penultimate).
    vision_feature_layer: int = -1
    # kind siglip: convert an open_clip SigLIP instead (a built-in name, a model-config json, or local-dir:...)
    open_clip_model: str | None = None
    open_clip_checkpoint: str | None = None  # its state-dict file (.pt/.bin/.safetensors), local or s3://
    # A user module imported before the model is built (`my_package.my_models`): it registers its own model
    # kinds, processors or losses with the library's decorators (`register_model`, `register_task`, ...).
    module: str | None = None
    # transformers' attention implementation for every transformers part: eager | sdpa | flash_attention_2
    # ("" keeps transformers' default).
    attn_implementation: str = ""
    # Which text layer a text embedding reads (`open-vlm embed --text`): -1 the model's own pooled, projected
    # embedding; other values index the text tower's `hidden_states`, mean-pooled over the real tokens. For image
    # embeddings `vision_feature_layer` does the same (-1: the pooled embedding; else patches mean-pooled).
    text_feature_layer: int = -1


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # warmup as a fraction of train.max_steps (used when warmup_steps is 0)
    schedule: str = "cosine"  # cosine | linear | constant | inverse_sqrt
    min_lr_ratio: float = 0.1  # floor of the decay, as a fraction of lr
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping
    # Per-group learning rates by model parameter group (see the model's groups), e.g. {vision: 1.0e-5}.
    group_lr: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 100
    # Passes over the data instead of max_steps (> 0 replaces it): steps until every source has been read this
    # many times at its weight, from the sources' sample counts (logged at start).
    epochs: float = 0.0
    strategy: str = "single"  # single | ddp | fsdp
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a grad scaler)
    global_batch_size: int = 0  # samples per optimizer step; 0: data.batch_size x world x accum_steps
    accum_steps: int = 1  # used when global_batch_size is 0
    loss: str = "next_token"  # next_token | clip | siglip | lxmert
    device: str = "auto"  # auto | cpu | cuda
    reshard_after_forward: bool = True  # fsdp: free gathered params after forward
    cpu_offload: bool = False  # fsdp: keep sharded params and optimizer state on CPU
    activation_checkpointing: bool = False  # recompute each declared unit's activations in backward
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # deterministic algorithms: bit-identical losses on CPU
    # Seconds between a stop signal and the SIGKILL that follows it (a warning says when stopping came close);
    # 0: torchrun's own `--shutdown-timeout` (read from its command line), else TORCH_ELASTIC_SHUTDOWN_TIMEOUT, else 30.
    shutdown_timeout: float = 0.0


@dataclass
class CheckpointConfig:
    dir: str | None = None  # default: <run folder>/checkpoints; local or any fsspec URL (s3://...)
    every_steps: int = 0  # 0: only at the end (and on SIGTERM / SIGUSR1 / Ctrl-C)
    every_minutes: float = 0.0  # also save when this much time passed since the last save (0: off)
    resume: str = "latest"  # latest | none | a checkpoint path/URL
    keep_last: int = 0  # 0 keeps every checkpoint
    async_save: bool = False  # DCP async save: training continues while the write proceeds (`checkpoint.async`)
    init_from: str | None = None  # load model weights only from this checkpoint (fresh optimizer, data, step)
    reset_data: bool = False  # resume weights + optimizer, but restart the data order
    allow_config_change: bool = False  # resume even if seed / sources / batch / precision / optim.* changed
    allow_partial_init: bool = False  # init_from a checkpoint of another kind, or holding < half the weights
    # Resume even when a source's dataset version differs from the checkpoint's (the position then names
    # other samples); by default such a resume is refused.
    allow_data_change: bool = False
    # `resume latest` checks the newest checkpoint's files against its COMPLETE marker; a damaged one is named and
    # (fallback true) the newest good one is used instead, or (false) the resume is refused.
    fallback: bool = True
    # Record every file's sha256 in the marker at commit (each rank re-reads its share once); sizes are always
    # recorded. `open-vlm view CKPT --verify` compares them.
    checksums: bool = True


@dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str | None = None  # default: run.project
    entity: str | None = None


@dataclass
class LoggingConfig:
    every_steps: int = 10
    level: str = "INFO"
    # Where metrics go (open_vlm/tracking): jsonl (metrics.jsonl), wandb, mlflow, tensorboard. wandb is also on
    # when logging.wandb.mode is online / offline. MLflow honours MLFLOW_TRACKING_URI.
    trackers: list[str] = field(default_factory=lambda: ["jsonl"])
    # CPU / GPU utilisation and memory (`system/...`) in the first record logged every N steps (0: off).
    system_every_steps: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RegionExtractorConfig:
    """`extract.extractor region`: a torchvision Faster R-CNN; K RoI-pooled features per image."""

    # resnet50_fpn | resnet18_fpn | mobilenet_v3_large_fpn | resnet101_c4 (bottom-up attention: D = 2048) | resnet50_c4
    backbone: str = "resnet50_fpn"
    weights: str | None = None  # state dict (.pt/.pth/.safetensors), local or s3://; None: random init (tests)
    num_classes: int = 91  # including background (COCO: 91)
    representation_size: int = 1024  # FPN box-head width: the feature size D when feature=box_head (C4: 2048)
    feature: str = "box_head"  # box_head: the fc7 features | roi_pool: RoIAlign output averaged (D = FPN width)
    min_size: int = 600  # the detector's resize (shorter side), as bottom-up-attention
    max_size: int = 1000
    score_thresh: float = 0.2  # a region survives with a class score >= this after per-class NMS
    nms_iou: float = 0.5  # first NMS IoU threshold; raised by nms_iou_step toward 1.0 until K survive
    nms_iou_step: float = 0.1
    rpn_pre_nms_top_n: int = 6000  # proposals per level before the RPN's NMS
    rpn_post_nms_top_n: int = 300  # proposals kept after it (the candidates for the K regions)
    rpn_nms_thresh: float = 0.7


@dataclass
class ExtractConfig:
    """`open-vlm extract`: image shards in, `region_features` shards (+ manifest) out."""

    extractor: str = "region"  # region (Faster R-CNN) | grid (the `model` section's SigLIP/CLIP patches)
    urls: list[str] = field(default_factory=list)  # input image shards, brace-expandable, local or s3://
    out: str = ""  # output folder, local or s3://: one shard per input shard (same file name) + manifest.json
    num_regions: int = 36  # K boxes per image (region); grid gives one per patch
    batch_size: int = 4  # images per forward pass (batches never span shards: resumed output is identical)
    device: str = "auto"  # auto | cpu | cuda
    keep_image: bool = False  # store the source image bytes in the output samples (open-vlm view draws boxes)
    strip_leading_zeros: bool = False  # image_id "000000397133" -> "397133" (keys are never changed)
    seed: int = 0  # random init of an extractor without weights
    region: RegionExtractorConfig = field(default_factory=RegionExtractorConfig)


@dataclass
class EvalConfig:
    """`open-vlm eval`: `kind` picks the evaluation (open_vlm/evaluation/run.py registry)."""

    kind: str = "classification"  # classification | loss (held-out loss / perplexity, retrieval for contrastive)
    every_steps: int = 0  # during training: held-out loss every N steps (0: off)
    sources: list[SourceConfig] = field(default_factory=list)  # held-out shards (default for `eval`: data.sources)
    # `open-vlm eval --split val`: the catalog split it reads of every dataset source (eval.sources, else
    # data.sources) that names no split of its own.
    split: str = ""
    max_batches: int = 16  # held-out global batches per evaluation (0: one pass over eval.sources' first epoch)
    checkpoint: str | None = None  # `open-vlm eval --checkpoint`: the checkpoint / run folder to evaluate
    task: str = "zero_shot"  # zero_shot (siglip/clip + class names) | vqa (lxmert QA head, class_names = answers)
    class_names: list[str] = field(default_factory=list)
    prompt: str = "a photo of a {}."  # zero_shot: text per class
    label_field: str = "label"  # json field with the label: a class name, an index, or a list (multi_label)
    question_field: str = "question"  # vqa: json field with the question; falls back to the caption
    multi_label: bool = False  # sigmoid(score) >= threshold per class instead of the argmax
    threshold: float = 0.5
    max_samples: int = 0  # 0: every sample of data.sources
    num_regions: int = 36  # vqa: regions per image fed to LXMERT
    # Held-out VQA sources (samples with answers) of generative kinds: greedy answers of at most this many tokens
    # are scored by VQAv2-normalised exact match (`eval_vqa_accuracy`); 0 turns that off.
    answer_max_tokens: int = 16


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.task": ("", "prefix_lm", "chat_lm", "causal_lm", "contrastive", "lxmert"),
    "train.strategy": ("single", "ddp", "fsdp"),
    "data.mixing": ("batch", "sample"),
    "data.packed_mask": ("4d_bool", "4d_float", "position_ids"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "model.frozen_dtype": ("fp32", "bf16"),
    "model.attn_implementation": ("", "eager", "sdpa", "flash_attention_2"),
    "optim.schedule": ("cosine", "linear", "constant", "inverse_sqrt"),
    "logging.wandb.mode": ("online", "offline", "disabled"),
    "extract.extractor": ("region", "grid"),
    "extract.device": ("auto", "cpu", "cuda"),
    "extract.region.feature": ("box_head", "roi_pool"),
    "eval.task": ("zero_shot", "vqa"),
}

# The data task (processor) each model kind trains on unless `data.task` names another.
MODEL_TASKS: dict[str, str] = {"paligemma": "prefix_lm", "vlm": "chat_lm", "siglip": "contrastive", "lxmert": "lxmert"}


def data_task(cfg: RunConfig) -> str:
    """The run's data task: `data.task`, or the model kind's own."""
    return cfg.data.task or MODEL_TASKS.get(cfg.model.kind, "prefix_lm")


def source_task(source: SourceConfig, run_task: str) -> str:
    """A source's data task: its own `task`, else the run's (`data_task`, or a bundle's own task)."""
    return source.task or run_task
