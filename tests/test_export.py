"""`modetune export`: each method's export loads where modetune cannot be imported and computes modetune's numbers.

The runs are saved as `modetune train` / `modetune pretrain` write them; the exports are read back in a
subprocess whose import of modetune fails, which compares logits and 20 greedy tokens (KV cache on) with
what modetune's own model gives on the same inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from modetune.cli import main
from modetune.errors import ConfigError
from modetune.export import bundle_sources, export_run
from modetune.mod import get_mod_model
from modetune.mode import get_mode_model
from modetune.mom import MoMConfig, MoMForCausalLM
from modetune.runs import load_run, write_run_info
from tests.conftest import save_tiny_model_dir

PROMPTS = [[5, 17, 42, 9, 100, 7, 33, 250, 11, 64, 3, 80], [301, 2, 77, 19, 45, 8, 123, 56, 90, 14, 6, 222]]
NEW_TOKENS = 20

# run in a fresh interpreter in which `import modetune` fails: prints each export's logits and greedy tokens
READER = r"""
import importlib.abc, json, sys
class NoModetune(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "modetune" or name.startswith("modetune."):
            raise ImportError("modetune is not installed here")
sys.meta_path.insert(0, NoModetune())
import torch
from transformers import AutoModelForCausalLM
prompts = torch.tensor(json.loads(sys.argv[1]))
out = {}
for directory in sys.argv[3:]:
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=prompts).logits
    tokens = model.generate(prompts[:1], max_new_tokens=int(sys.argv[2]), do_sample=False, min_new_tokens=int(sys.argv[2]))
    out[directory] = {"logits": logits.tolist(), "tokens": tokens[0].tolist(), "class": type(model).__name__,
                      "modetune_imported": any(m.split(".")[0] == "modetune" for m in sys.modules)}
print(json.dumps(out))
"""


def _save_run(model, run_dir: Path, base_dir: Path) -> Path:
    model.save_pretrained(run_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run_dir)
    write_run_info(run_dir, {"base_model": {"spec": str(base_dir), "path": str(base_dir), "kind": "directory"}})
    return run_dir


def _perturb(*modules: torch.nn.Module, scale: float = 0.5) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(torch.randn_like(p) * scale)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A MoDE run (k = 3, LoRA), a MoD run (threshold routing that skips tokens) and a MoM run."""
    root = tmp_path_factory.mktemp("export-runs")
    base_dir = save_tiny_model_dir(root / "base")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    mode = get_mode_model(get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora), num_layers=3)
    _perturb(mode.router, mode.adapters)
    mod = get_mod_model(AutoModelForCausalLM.from_pretrained(base_dir), skip_first=1, skip_last=0)
    _perturb(mod.routers, scale=2.0)
    parts = {}
    for part in ("attention", "mlp"):  # routing only a part of each layer
        parts[part] = get_mod_model(AutoModelForCausalLM.from_pretrained(base_dir), skip_first=1, routed_module=part,
                                    operator="topk", capacity=0.6)  # fmt: skip
        _perturb(parts[part].routers, scale=2.0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    mom = MoMForCausalLM(MoMConfig(base_config=base.config.to_dict(), num_rounds=3, router_init_bias=0.5))
    _perturb(mom, scale=0.02)
    mom.save_pretrained(root / "mom")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(root / "mom")
    return {
        "base": base_dir,
        "mode": _save_run(mode, root / "mode", base_dir),
        "mod": _save_run(mod, root / "mod", base_dir),
        **{f"mod-{part}": _save_run(model, root / f"mod-{part}", base_dir) for part, model in parts.items()},
        "mom": root / "mom",
    }


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    plan = {"mode": ("mode", []), "mode-merged": ("mode", ["--merge-adapters"]), "mod": ("mod", []),
            "mod-attention": ("mod-attention", []), "mod-mlp": ("mod-mlp", []), "mom": ("mom", [])}  # fmt: skip
    for name, (run, extra) in plan.items():
        assert main(["export", str(runs[run]), str(out / name), *extra]) == 0
    return {name: out / name for name in plan}


def _reference(run: Path) -> tuple[torch.Tensor, list[int], object]:
    """modetune's logits and greedy tokens for `run`, and its model."""
    if (run / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32).eval()  # MoM (registered by modetune)
    else:
        model, _, _ = load_run(run, dtype="float32", device="cpu")
    prompts = torch.tensor(PROMPTS)
    with torch.no_grad():
        logits = model(input_ids=prompts).logits
    tokens = model.generate(prompts[:1], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return logits, tokens[0].tolist(), model


def test_exports_load_without_modetune_and_match_it(runs, exports):
    argv = [sys.executable, "-c", READER, json.dumps(PROMPTS), str(NEW_TOKENS), *map(str, exports.values())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=exports["mom"].parent)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    expected_class = {"mode": "MoDEForCausalLM", "mode-merged": "MoDEForCausalLM", "mod": "MoDForCausalLM",
                      "mod-attention": "MoDForCausalLM", "mod-mlp": "MoDForCausalLM", "mom": "MoMForCausalLM"}  # fmt: skip
    for name, directory in exports.items():
        got = seen[str(directory)]
        assert got["class"] == expected_class[name] and not got["modetune_imported"]
        logits, tokens, model = _reference(runs[name.removesuffix("-merged")])
        difference = (torch.tensor(got["logits"]) - logits).abs().max().item()
        assert difference <= 1e-5, f"{name}: largest logit difference {difference}"
        assert got["tokens"] == tokens, name
        if name in ("mod", "mod-attention", "mod-mlp"):  # the comparison means something only when tokens are skipped
            with torch.no_grad():
                fractions = model(input_ids=torch.tensor(PROMPTS)).processed_fraction
            assert 0 < float(fractions.min()) < 1


def test_export_directory_is_a_transformers_model_directory(exports):
    names = {p.name for p in exports["mode"].iterdir()}
    assert {"config.json", "model.safetensors", "modeling_modetune.py", "README.md", "tokenizer.json"} <= names
    config = json.loads((exports["mode"] / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_modetune.MoDEForCausalLM"
    assert config["model_type"] == "modetune" and config["text_config"]["model_type"] == "llama"
    assert config["lora"] and not json.loads((exports["mode-merged"] / "config.json").read_text()).get("lora")
    card = (exports["mode"] / "README.md").read_text()
    assert card.startswith("---\n") and "trust_remote_code=True" in card


@pytest.mark.parametrize("name", ["mode", "mod", "mom"])
def test_modeling_file_imports_nothing_from_modetune(exports, name):
    import ast

    source = (exports[name] / "modeling_modetune.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("modetune"), node.module
        if isinstance(node, ast.Import):
            assert all(not alias.name.startswith("modetune") for alias in node.names)


def test_bfloat16_export_keeps_routers_in_float32(runs, tmp_path):
    export_run(runs["mod"], tmp_path / "bf16", dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", trust_remote_code=True, dtype="auto")
    assert model.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.routers.parameters())
    reference_model, _, _ = load_run(runs["mod"], dtype="bfloat16", device="cpu")  # modetune's own bf16 path
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(PROMPTS)).logits.float()
        reference = reference_model(input_ids=torch.tensor(PROMPTS)).logits.float()
    assert (logits - reference).abs().max().item() <= 1e-2


def test_an_adapter_without_an_unmerged_form_asks_for_merging(runs, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(runs["base"])
    ia3 = get_peft_model(base, IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    run = _save_run(get_mode_model(ia3, num_layers=2), tmp_path / "ia3", runs["base"])
    with pytest.raises(ConfigError, match="use --merge-adapters"):
        export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    export_run(run, tmp_path / "merged", merge_adapters=True)
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_bundle_puts_dependencies_first_and_keeps_their_docstrings():
    source = bundle_sources("modetune.mod.hub")
    order = [source.index(f"# modetune.{m}\n") for m in ("hub", "errors", "tensors", "mod.routing", "mod.hub")]
    assert order == sorted(order)
    assert "# MoD's inference core" in source
    compile(source, "modeling_modetune.py", "exec")


def test_exports_loaded_one_after_another_in_one_process_match(runs, exports):
    """transformers builds a loaded model on the meta device: anything not in the weights file (a non-persistent
    buffer) would hold leftover memory. Loading several exports in a row in one process exposed such a buffer."""
    for name in ("mode", "mod", "mom", "mod"):
        model = AutoModelForCausalLM.from_pretrained(exports[name], trust_remote_code=True, dtype=torch.float32)
        reference, _, _ = _reference(runs[name])
        with torch.no_grad():
            logits = model.eval()(input_ids=torch.tensor(PROMPTS)).logits
        assert (logits - reference).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("name", ["mode", "mod"])
def test_the_method_modules_hold_nothing_outside_the_weights_file(exports, name):
    """Every tensor of the method's own modules is in the weights file: a non-persistent buffer would be left
    uninitialised by transformers' loading (the base model re-creates its own, e.g. rotary frequencies)."""
    model = AutoModelForCausalLM.from_pretrained(exports[name], trust_remote_code=True, dtype=torch.float32)
    saved = set(model.state_dict())
    outside = [n for n, _ in model.named_buffers() if n not in saved and not n.startswith("model.")]
    assert outside == []


def test_the_attention_implementation_asked_for_reaches_the_base_model(runs, exports):
    model = AutoModelForCausalLM.from_pretrained(
        exports["mod"], trust_remote_code=True, dtype=torch.float32, attn_implementation="eager"
    )
    assert model.model.config._attn_implementation == "eager"
    reference, _, _ = _reference(runs["mod"])
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor(PROMPTS)).logits
    assert (logits - reference).abs().max().item() <= 1e-4  # eager against sdpa: the same maths, other rounding
