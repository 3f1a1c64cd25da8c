"""Command line: ``ssmkit <command> [options]``. Thin: parse, dispatch, print."""

from __future__ import annotations

import argparse
import logging
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    from .bench.demo import demo_json, demo_markdown, run_demo

    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        print(f"ssmkit demo: --json {args.json}: its folder does not exist", file=sys.stderr)
        return 2
    if args.d_model % 8:
        print(f"ssmkit demo: --d-model must be a multiple of 8 (Mamba-2 heads of 16 channels), got {args.d_model}",
              file=sys.stderr)
        return 2

    rows = run_demo(d_model=args.d_model, seq_len=args.seq_len, batch=args.batch, seed=args.seed,
                    progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(demo_markdown(rows, args.d_model, args.seq_len, args.batch))
    if args.json:
        demo_json(rows, args.json)
        print(f"\nwrote {args.json}", file=sys.stderr)
    failed = [r.engine for r in rows if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)} exceed the 1e-4 relative error", file=sys.stderr)
    return 1 if failed else 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .io import generate_text

    try:
        generate_text(args.model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                      seed=args.seed, device=args.device)
    except ValueError as e:  # CheckpointError, or a bad sampling argument
        print(f"ssmkit generate: error: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .io import convert

    try:
        out = convert(args.src, args.dst, to=args.to, max_shard_size=args.max_shard_size)
    except ValueError as e:  # CheckpointError, or a model the target layout cannot hold
        print(f"ssmkit convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.to} layout)", file=sys.stderr)
    return 0


def _shard_size(text: str) -> str:
    from .io.files import parse_size

    try:
        parse_size(text, "--max-shard-size")
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _device(text: str) -> str:
    import torch

    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmkit", description="State space sequence models: run, check, compare.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend choices and progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build every engine, check it against its reference, print a table")
    demo.add_argument("--d-model", type=_positive_int, default=64)
    demo.add_argument("--seq-len", type=_positive_int, default=256)
    demo.add_argument("--batch", type=_positive_int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", help="also write the results to this JSON file")
    demo.set_defaults(func=_cmd_demo)

    gen = sub.add_parser("generate", help="stream a continuation of a prompt from a checkpoint (dir or Hub id)")
    gen.add_argument("--model", required=True, help="checkpoint directory or Hugging Face Hub id")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=_positive_int, default=128)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-k", type=_positive_int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None, help="seed the sampler (reproducible output)")
    gen.add_argument("--device", type=_device, default=None, help="cpu, cuda, ... (default: cuda when available)")
    gen.set_defaults(func=_cmd_generate)

    conv = sub.add_parser("convert", help="convert a checkpoint to the ssmkit or transformers (hf) layout")
    conv.add_argument("src", help="checkpoint directory or Hub id (ssmkit, transformers or mamba_ssm layout)")
    conv.add_argument("dst", help="output directory (replaced atomically if it exists)")
    conv.add_argument("--to", choices=["ssmkit", "hf"], default="ssmkit")
    conv.add_argument("--max-shard-size", type=_shard_size, default="2GB", help="shard the weights above this size (e.g. 2GB, 500MB)")
    conv.set_defaults(func=_cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
