"""On SmolLM2-135M: how exactly `modetune export` reproduces each method, and how far half precision moves the loss.

    OMP_NUM_THREADS=1 python benchmarks/export_precision.py          # ~12 min on one CPU thread
    python benchmarks/export_precision.py --docs                     # its tables into the docs

For each method, a model with non-trivial method weights (MoDE k = 3 with LoRA on q/v and a perturbed router;
MoD with routers perturbed so tokens are skipped; MoM built from SmolLM2's own layers with a perturbed router;
for the losses, with its routes fixed to SmolLM2's layer order, the phase-2 starting point)
is (1) exported and loaded back through transformers' `trust_remote_code` path, and the largest logit difference
against modetune's model is recorded with whether 20 greedy tokens agree; (2) run on a fixed batch of GSM8K
test questions in float32 and as training runs it in bf16 and fp16 (frozen base stored in half precision,
trainables float32, bf16 under autocast; MoM: float32 weights under autocast), recording the loss difference.
Writes benchmarks/export_precision.json; `--docs` then writes its tables into docs/export.md and docs/training.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from modetune.export import MODELING_FILE, bundle_sources, wrapper_for
from modetune.files import replace_marked_block
from modetune.loading import load_model_and_tokenizer
from modetune.mod import get_mod_model
from modetune.mode import get_mode_model
from modetune.mom import MoMConfig, from_pretrained_layers

OUT = Path(__file__).resolve().parent / "export_precision.json"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "smollm2-135m"
NEW_TOKENS = 20


def _perturb(module: torch.nn.Module, scale: float, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def build(method: str, dtype: str, fixed_routes: bool = False) -> torch.nn.Module:
    """The method around SmolLM2 loaded in `dtype`, with the same method weights whatever the dtype (MoM with
    `fixed_routes`: the phase-2 starting point, which computes SmolLM2's own logits)."""
    base, _ = load_model_and_tokenizer(MODEL, dtype=dtype, device="cpu")
    torch.manual_seed(0)
    if method == "mode":
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_mode_model(get_peft_model(base, lora), num_layers=3)
        _perturb(model.router, 0.05)
    elif method == "mod":
        model = get_mod_model(base, skip_first=2, skip_last=2)
        for router in model.routers:
            _perturb(router.score, 0.05)
    else:
        layers = len(base.model.layers)  # a pool of SmolLM2's 30 layers, 30 rounds
        config = MoMConfig(
            num_attention_modules=layers, num_ffn_modules=layers, num_rounds=layers, router_init_bias=3.0
        )
        model = from_pretrained_layers(base.float(), config)
        _perturb(model.attention_router, 0.01)
        _perturb(model.ffn_router, 0.01)
        if fixed_routes:
            model.fix_routes_to_layers()
        else:  # the reference is the model as modetune loads it back (what the export is compared with)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    return model.eval()


def gsm8k_test_texts(n: int) -> list[str]:
    lines = (DATA / "gsm8k_openai" / "test.jsonl").read_text().splitlines()[:n]
    return [f"{r['question']}\n{r['answer']}" for r in map(json.loads, lines)]


def batch(tokenizer, texts: list[str], length: int = 256) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=length)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def export_fidelity(method: str, inputs: dict[str, torch.Tensor], merge: bool = False) -> dict[str, float | bool]:
    model = build(method, "float32")
    ids, mask = inputs["input_ids"][:2], inputs["attention_mask"][:2]
    prompt = inputs["input_ids"][:1, :40]
    with torch.no_grad():  # before exporting: --merge-adapters merges the run's model in place
        ours = model(input_ids=ids, attention_mask=mask).logits
    our_tokens = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)
    exported = model if method == "mom" else wrapper_for(model, merge_adapters=merge)
    name = type(exported).__name__
    exported.config.auto_map = {"AutoConfig": f"modeling_modetune.{type(exported.config).__name__}",
                                "AutoModelForCausalLM": f"modeling_modetune.{name}"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        exported.save_pretrained(tmp)
        (Path(tmp) / MODELING_FILE).write_text(bundle_sources(type(exported).__module__))
        loaded = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True, dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = loaded(input_ids=ids, attention_mask=mask).logits
        difference = (ours - theirs).abs()[mask.bool()].max().item()
        same = torch.equal(our_tokens, loaded.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False))
    return {"max_logit_difference": difference, "greedy_tokens_equal": same}


def loss_in(method: str, dtype: str, inputs: dict[str, torch.Tensor]) -> float:
    model = build(method, "float32" if method == "mom" else dtype, fixed_routes=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    if method == "mom" and dtype == "float16":
        return float("nan")  # MoM pre-trains in fp16 only under CUDA autocast (refused on CPU)
    with torch.no_grad(), autocast:
        return float(model(**inputs).loss)


NAMES = {
    "mode": "MoDE (k = 3, LoRA on q/v)",
    "mod": "MoD (threshold, tokens skipped)",
    "mom": "MoM (30 modules, 30 rounds)",
}
DOCS = Path(__file__).resolve().parents[1] / "docs"


def export_table(rows: list[dict]) -> str:
    lines = ["| method | largest logit difference, export vs modetune (fp32) | 20 greedy tokens |", "|---|---|---|"]
    for row in rows:
        for key, suffix in (("export", ""), ("export_merged", ", LoRA merged by `--merge-adapters`")):
            if key in row:
                got = row[key]
                same = "identical" if got["greedy_tokens_equal"] else "differ"
                lines.append(f"| {NAMES[row['method']]}{suffix} | {got['max_logit_difference']:.2g} | {same} |")
    return "\n".join(lines)


def precision_table(rows: list[dict]) -> str:
    lines = ["| method | loss, float32 | bf16 (Δ) | fp16 (Δ) |", "|---|---|---|---|"]
    for row in rows:
        loss = row["loss"]
        cells = [f"{loss['float32']:.4f}"]
        for dtype in ("bfloat16", "float16"):
            value = loss[dtype]
            cells.append("refused on CPU" if value != value else f"{value:.4f} ({value - loss['float32']:+.4f})")
        lines.append(f"| {NAMES[row['method']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs() -> None:
    rows = json.loads(OUT.read_text())["rows"]
    for page, name, table in (
        ("export.md", "export", export_table(rows)),
        ("training.md", "precision", precision_table(rows)),
    ):
        begin, end = f"<!-- export_precision.py {name}: begin -->", f"<!-- export_precision.py {name}: end -->"
        replace_marked_block(DOCS / page, begin, end, f"{begin}\n{table}\n{end}", if_missing="error")
    print("wrote the tables into docs/export.md and docs/training.md")


def main() -> None:
    _, tokenizer = load_model_and_tokenizer(MODEL, dtype="float32", device="cpu")
    inputs = batch(tokenizer, gsm8k_test_texts(8))
    rows = []
    for method in ("mode", "mod", "mom"):
        start = time.time()
        row: dict[str, object] = {"method": method, "export": export_fidelity(method, inputs)}
        if method == "mode":
            row["export_merged"] = export_fidelity(method, inputs, merge=True)
        losses = {dtype: loss_in(method, dtype, inputs) for dtype in ("float32", "bfloat16", "float16")}
        row["loss"] = losses
        row["seconds"] = round(time.time() - start, 1)
        rows.append(row)
        print(json.dumps(row))
    OUT.write_text(json.dumps({"model": MODEL, "batch": "8 GSM8K test questions, <= 256 tokens", "rows": rows},
                              indent=2) + "\n")  # fmt: skip
    print(f"wrote {OUT.name}")


if __name__ == "__main__":
    write_docs() if sys.argv[1:] == ["--docs"] else main()
