"""`modetune export RUN OUT`: a trained run as a model directory that plain transformers loads.

Logic lives in `modetune.export`; this module only parses the options and reports.
"""

from __future__ import annotations

import argparse

from modetune.export import DTYPES, export_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a run as a self-contained model directory (loads with transformers alone, trust_remote_code)",
        description="Write a MoDE or MoD run (`modetune train`) or a MoM run (`modetune pretrain --arch mom`) as a "
        "model directory with config.json (auto_map), safetensors weights, the tokenizer, the model card and "
        "modeling_modetune.py, the method's code: AutoModelForCausalLM.from_pretrained(OUT, "
        "trust_remote_code=True) loads it where modetune is not installed, and lm-eval's stock `hf` model "
        "evaluates it. Publish it with `huggingface-cli upload`.",
    )
    parser.add_argument("run_dir", metavar="RUN", help="run directory (or one of its checkpoint-N folders)")
    parser.add_argument("out", metavar="OUT", help="new directory to write (refused if it exists and is not empty)")
    parser.add_argument(
        "--merge-adapters",
        action="store_true",
        help="fold a PEFT adapter (LoRA and any method PEFT merges) into the base weights first; without it a "
        "plain LoRA adapter is exported beside the frozen weights, anything else is refused",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=tuple(DTYPES),
        help="precision the base weights are stored in (default float32); routers and adapters stay float32",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = export_run(args.run_dir, args.out, merge_adapters=args.merge_adapters, dtype=args.dtype)
    merged = ", adapters merged" if result.merged_adapters else ""
    print(f"exported the {result.method} run as {result.model_class} ({result.dtype}{merged}) to {result.directory}")
    print(f'load it with: AutoModelForCausalLM.from_pretrained("{result.directory}", trust_remote_code=True)')
    return 0
