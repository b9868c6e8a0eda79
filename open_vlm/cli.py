"""The `open-vlm` command: train, eval, extract, view, generate, export, config, data."""

from __future__ import annotations

import argparse
import json
import sys

from open_vlm.errors import ConfigError, OpenVLMError, run_main, usage_errors
from open_vlm.names import did_you_mean


def _train(argv: list[str]) -> int:
    from open_vlm.train import main

    return main(argv)


def _extract(argv: list[str]) -> int:
    from open_vlm.extract.run import main

    return main(argv)


def _eval(argv: list[str]) -> int:
    from open_vlm.evaluation.run import main

    return main(argv)


def _view(argv: list[str]) -> int:
    if "--attention" in argv:
        from open_vlm.view import attention_main

        return attention_main(argv)
    parser = argparse.ArgumentParser(
        prog="open-vlm view",
        description="Show a shard, manifest, run folder or checkpoint (attention maps: open-vlm view --attention -h).",
    )
    parser.add_argument("path")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default=None, help="region_features shard: where to write the boxes PNG")
    parser.add_argument("--index", type=int, default=0, help="region_features shard: which sample to draw")
    parser.add_argument(
        "--verify", action="store_true", help="checkpoint or run: check every file against its commit record (exit 1)"
    )
    args = parser.parse_args(argv)
    from open_vlm.storage import is_remote, probe
    from open_vlm.view import render, verify, view

    try:
        with usage_errors(FileNotFoundError, ValueError):  # ValueError: e.g. a checkpoint refused as unsafe
            if is_remote(args.path):  # the store answers (credentials, endpoint), before any retried read
                probe(args.path)
            info = verify(args.path) if args.verify else view(args.path, boxes_png=args.out, index=args.index)
    except OpenVLMError:
        raise
    except Exception as err:  # credentials, endpoint, network: botocore and the stores raise many types
        if not is_remote(args.path):
            raise
        from open_vlm.config.validate import unreachable

        raise unreachable("PATH", args.path, err) from err
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 1 if args.verify and not info["ok"] else 0


def _generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="open-vlm generate", description="Answer a prompt about an image.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint, run folder or exported folder (or s3://)")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s); several make a batch")
    parser.add_argument("--prompt", default=None, help="default: the prompt the model was trained with")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same answers)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every position each step (slow)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from open_vlm.config import validate

    validate.check_model_inputs(args.checkpoint, args.image)
    for flag, value, allowed in (
        ("--max-new-tokens", args.max_new_tokens, validate.AT_LEAST_1),
        ("--temperature", args.temperature, validate.POSITIVE),
        ("--top-p", args.top_p, validate.UNIT_OPEN_BOTTOM),
        ("--top-k", args.top_k, validate.AT_LEAST_0),
    ):
        validate.check_range(flag, value, allowed)
    from open_vlm.inference.wrapper import OpenVLM

    with usage_errors(FileNotFoundError, ValueError):
        model = OpenVLM.from_pretrained(args.checkpoint, device=args.device)
        answers = model.generate(
            args.image,
            [args.prompt] * len(args.image) if args.prompt else None,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            use_cache=not args.no_cache,
        )
    for image, answer in zip(args.image, answers):
        print(f"{image}: {one_line_answer(answer)}")
    return 0


def one_line_answer(answer: str) -> str:
    """An answer on one output line: a generated newline is written as `\\n` (one line per image)."""
    return answer.replace("\\", "\\\\").replace("\n", "\\n")


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="open-vlm export", description="Write a checkpoint as a folder stock transformers loads."
    )
    parser.add_argument("checkpoint", help="checkpoint, checkpoint dir or run folder (local or s3://)")
    parser.add_argument("out_dir", help="output folder (local or s3://)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: as trained")
    args = parser.parse_args(argv)
    from open_vlm.config.validate import check_model_inputs

    check_model_inputs(args.checkpoint, [], key="CHECKPOINT")
    from open_vlm.inference.export import export

    with usage_errors(FileNotFoundError, ValueError):  # ValueError: e.g. a checkpoint refused as unsafe
        folder = export(args.checkpoint, args.out_dir, args.dtype)
    print(f"exported {args.checkpoint} to {folder}")
    return 0


def _embed(argv: list[str]) -> int:
    from open_vlm.inference.embed import main

    return main(argv)


def _config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="open-vlm config", description="Manage the environment config.")
    sub = parser.add_subparsers(dest="action", required=True)
    setter = sub.add_parser("set", help="set KEY VALUE in the user config file")
    setter.add_argument("key")
    setter.add_argument("value")
    sub.add_parser("show", help="show every key, its value and where it comes from")
    args = parser.parse_args(argv)
    from open_vlm.config import env

    if args.action == "set":
        try:
            path = env.set_user_value(args.key, args.value)
        except KeyError:
            hint = did_you_mean(args.key, env.env_keys())
            raise ConfigError(f"unknown environment config key '{args.key}'{hint}") from None
        print(f"{args.key} = {args.value} (written to {path})")
        return 0
    for key, value, origin in env.describe():
        print(f"{key:15s} {value!s:40s} ({origin})")
    return 0


def _data(argv: list[str]) -> int:
    from open_vlm.data.catalog_cli import main

    return main(argv)


COMMANDS = {
    "train": (_train, "train a model: same as python -m open_vlm.train"),
    "eval": (_eval, "evaluate a model: classification metrics (eval.kind)"),
    "extract": (_extract, "extract region/grid features into region_features shards"),
    "view": (_view, "show a shard, manifest, run folder or checkpoint (draws extracted boxes)"),
    "generate": (_generate, "answer a prompt about an image from a checkpoint"),
    "export": (_export, "write a checkpoint as a stock transformers folder (+ tokenizer, processor)"),
    "embed": (_embed, "image or text embeddings of a siglip/clip checkpoint"),
    "config": (_config, "show or set the environment config (output root, S3 endpoint, wandb)"),
    "data": (_data, "the dataset catalog: list, show, add, verify; bench (loader throughput)"),
}


def main(argv: list[str] | None = None) -> int:
    """`open-vlm COMMAND ...`: every failure ends in one `error:` line (`open_vlm.errors.run_main`)."""
    return run_main(_dispatch, argv)


def _dispatch(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: open-vlm COMMAND [ARGS...]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:10s} {text}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}'{did_you_mean(command, COMMANDS)} (open-vlm --help lists them)")
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
