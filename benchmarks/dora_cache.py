"""Evaluation speed of a DoRA run with and without `dora_caching` (PEFT's DoraCaching), on SmolLM2-135M.

DoRA recomputes B·A and ||W + s·B·A|| on every forward pass; during evaluation the weights are fixed, so
`modetune eval` caches both by default (`--no-dora-cache` turns it off). This measures what that buys:
greedy generation of GSM8K-style prompts with DoRA r=32 on q, k, v, up, down (the grid's row 5 setting,
B drawn at random so the adapter does something), timed after a warm-up, alternating, median of --repeats runs each, and checks the texts are identical.

    python benchmarks/dora_cache.py [--prompts 8] [--new-tokens 64] [--threads 2] [--repeats 3]

Run it on a quiet machine; prints one markdown row.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from modetune.data import generate_problems
from modetune.evaluation.runner import GenerationSettings, dora_caching, generate_texts
from modetune.loading import load_model_and_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating; the median counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    config = LoraConfig(
        r=32, lora_alpha=64, use_dora=True, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    )
    model = get_peft_model(model, config).eval()
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 1e-3)
    prompts = [
        f"### Instruction:\n{p.instruction}\n\n### Response:\n"
        for p in generate_problems(args.prompts, seed=0, difficulty=3)
    ]
    settings = GenerationSettings(stop_strings=())

    def timed() -> tuple[float, list[str]]:
        start = time.perf_counter()
        texts = generate_texts(
            model, tokenizer, prompts, max_new_tokens=args.new_tokens, settings=settings, batch_size=len(prompts)
        )
        return time.perf_counter() - start, texts

    timed()  # warm-up: one-time costs (allocation, kernels) land on neither side
    plain_times, cached_times = [], []
    for _ in range(args.repeats):
        seconds, plain = timed()
        plain_times.append(seconds)
        with dora_caching(model):
            seconds, cached = timed()
        cached_times.append(seconds)
    plain_s, cached_s = statistics.median(plain_times), statistics.median(cached_times)
    print(
        "| prompts x new tokens | threads | without cache s (median) | with cache s (median) | speed-up | identical texts |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.prompts} x {args.new_tokens} | {args.threads} | {plain_s:.1f} | {cached_s:.1f} | "
        f"{plain_s / cached_s:.2f}x | {plain == cached} |"
    )


if __name__ == "__main__":
    main()
