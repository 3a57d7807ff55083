"""`modetune export`: a trained run as a self-contained model directory that plain transformers loads.

    AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)      # no modetune needed

The directory holds `config.json` (with `auto_map`), the weights as safetensors, the tokenizer, the model
card and `modeling_modetune.py`: the method's inference code, put together from modetune's own modules
(`bundle_sources`), so the exported model computes what modetune computes, with torch and transformers alone.
MoDE and MoD runs export through their registered wrapper class (`MethodSpec.export_class`, a
`modetune.hub.WrapperForCausalLM`); a MoM run (`modetune pretrain --arch mom`) exports `MoMForCausalLM` itself.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft.tuners.lora import Linear as LoraLayer
from transformers import AutoTokenizer, PreTrainedModel

from modetune.errors import CheckpointError, ConfigError, ModetuneError
from modetune.hub import WrapperForCausalLM
from modetune.method_base import MethodModel, MethodSpec, get_method, registered_methods, saved_method
from modetune.mom import MoMConfig, MoMForCausalLM
from modetune.runs import load_run
from modetune.version import __version__

MODELING_FILE = "modeling_modetune.py"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    method: str
    model_class: str
    merged_adapters: bool
    dtype: str


# --------------------------------------------------------------------------------------------------
# One modeling file from modetune's own modules
# --------------------------------------------------------------------------------------------------
def bundle_sources(module_name: str) -> str:
    """The source of `module_name` and every modetune module it imports, dependencies first, in one file.

    Each module's imports of modetune names are dropped (those names are defined above it in the file), its
    docstring becomes a comment, and the other imports are merged at the top. A module that imports a modetune
    module as a whole, or two modules that define the same top-level name, are refused: the bundle would not
    mean what the modules mean.
    """
    order: list[str] = []
    _collect(module_name, order, set())
    imports: dict[str, set[str]] = {}  # module -> names ("" for `import module`)
    bodies: list[str] = []
    defined: dict[str, str] = {}
    for name in order:
        module_imports, doc, body, names = _split_module(name)
        for source, imported in module_imports:
            imports.setdefault(source, set()).update(imported)
        for top in names:
            if top in defined:
                raise ModetuneError(f"cannot bundle {module_name}: {top!r} is defined in {defined[top]} and {name}")
            defined[top] = name
        comment = "\n".join(f"# {line}".rstrip() for line in doc.strip().splitlines())
        bodies.append(f"# {'=' * 98}\n# {name}\n#\n{comment}\n# {'=' * 98}\n{body.strip()}\n")
    intro = (
        f'"""A model written by `modetune export` (modetune {__version__}): the code of {", ".join(order)}.\n\n'
        "It needs torch and transformers only:\n\n"
        "    AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)\n"
        '"""\n\n'
    )
    return intro + _import_block(imports) + "\n\n" + "\n\n".join(bodies)


def _import_block(imports: dict[str, set[str]]) -> str:
    """`from __future__` first, then the standard library, then the rest, one line per module."""

    def line(source: str) -> str:
        names = sorted(n for n in imports[source] if n)
        plain = f"import {source}" if "" in imports[source] else ""
        joined = f"from {source} import {', '.join(names)}" if names else ""
        return "\n".join(x for x in (plain, joined) if x)

    future = [line(s) for s in imports if s == "__future__"]
    stdlib = sorted(s for s in imports if s != "__future__" and s.split(".")[0] in sys.stdlib_module_names)
    other = sorted(s for s in imports if s != "__future__" and s.split(".")[0] not in sys.stdlib_module_names)
    groups = [future, [line(s) for s in stdlib], [line(s) for s in other]]
    return "\n\n".join("\n".join(group) for group in groups if group) + "\n"


def _is_modetune(node: ast.AST) -> bool:
    return isinstance(node, ast.ImportFrom) and bool(node.module) and node.module.split(".")[0] == "modetune"


def _collect(name: str, order: list[str], visiting: set[str]) -> None:
    if name in order:
        return
    if name in visiting:
        raise ModetuneError(f"cannot bundle: {name} imports itself through a cycle")
    visiting.add(name)
    tree = ast.parse(inspect.getsource(importlib.import_module(name)))
    for node in tree.body:
        if _is_modetune(node):
            _collect(node.module, order, visiting)  # type: ignore[attr-defined]
    order.append(name)


def _split_module(name: str) -> tuple[list[tuple[str, set[str]]], str, str, list[str]]:
    """(its imports but modetune's, its docstring, its body without either, its top-level names)."""
    source = inspect.getsource(importlib.import_module(name))
    tree = ast.parse(source)
    lines = source.splitlines()
    drop: set[int] = set()
    imports: list[tuple[str, set[str]]] = []
    names: list[str] = []
    doc = ast.get_docstring(tree) or ""
    for index, node in enumerate(tree.body):
        span = range(node.lineno - 1, node.end_lineno or node.lineno)
        if index == 0 and doc and isinstance(node, ast.Expr):
            drop.update(span)
        elif isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "modetune" for alias in node.names):
                raise ModetuneError(f"cannot bundle {name}: it imports a modetune module as a whole")
            imports.extend((_alias(alias), {""}) for alias in node.names)
            drop.update(span)
        elif isinstance(node, ast.ImportFrom):
            if not _is_modetune(node):
                imports.append((node.module or "", {_alias(a) for a in node.names}))
            drop.update(span)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names.extend(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    body = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    return imports, doc, body, names


def _alias(alias: ast.alias) -> str:
    return f"{alias.name} as {alias.asname}" if alias.asname else alias.name


# --------------------------------------------------------------------------------------------------
# The exported model
# --------------------------------------------------------------------------------------------------
def lora_of(model: MethodModel) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """(path -> [rank, scaling], the base model's weights under the wrapper's names) of an unmerged LoRA run.

    Only plain LoRA on linear layers has an exported form; anything else (DoRA, LoRA on embeddings or GPT-2's
    Conv1D, other PEFT methods, several adapters) is refused with the fix: `--merge-adapters`.
    """
    peft_model = model.model
    if list(getattr(peft_model, "peft_config", {})) != ["default"]:
        raise ConfigError("the run has several PEFT adapters; export it with --merge-adapters")
    lora: dict[str, list[float]] = {}
    for path, module in model.causal_lm.named_modules():
        if not hasattr(module, "base_layer") or not hasattr(module, "lora_A"):
            continue
        reason = ""
        if type(module) is not LoraLayer or type(module.base_layer) is not torch.nn.Linear:
            reason = f"a {type(module).__name__} adapter on a {type(module.base_layer).__name__}"
        elif module.use_dora.get("default") or module.fan_in_fan_out:
            reason = "DoRA or fan-in-fan-out LoRA"
        if reason:
            raise ConfigError(f"{path} carries {reason}, which has no unmerged export; use --merge-adapters")
        lora[path] = [int(module.r["default"]), float(module.scaling["default"])]
    if not lora:
        raise ConfigError(f"the run's {type(peft_model.peft_config['default']).__name__} has no unmerged "
                          "export (only LoRA has); use --merge-adapters")  # fmt: skip
    state = {
        key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): value
        for key, value in model.causal_lm.state_dict().items()
    }
    return lora, state


def wrapper_for(model: MethodModel, merge_adapters: bool) -> WrapperForCausalLM:
    """The run's exported form: its registered wrapper class holding the base model and the method's weights.

    With `merge_adapters`, `model`'s adapter is merged in place first (`MethodModel.merge_and_unload`).
    """
    spec = method_spec_of(model)
    if spec.export_class is None:
        raise ConfigError(f"method {spec.name!r} has no exported form yet")
    lora, base_state = None, None
    if model.is_peft:
        if merge_adapters:
            model = model.merge_and_unload()
        else:
            lora, base_state = lora_of(model)
    loc = model._located
    located = {**(loc.paths or {}), "logit_scale": loc.transform.scale, "logit_softcap": loc.transform.softcap}
    text_config = model.causal_lm.config.to_dict()
    config = spec.export_class.config_class(
        text_config=text_config, method=model.export_settings(), located=located, lora=lora
    )
    config._attn_implementation = model.causal_lm.config._attn_implementation
    wrapper = spec.export_class(config).to(model.device)
    state = {f"model.{k}": v for k, v in (base_state or model.causal_lm.state_dict()).items()}
    for name, module in model.method_modules().items():
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    missing, unexpected = wrapper.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied(wrapper, k)]
    if missing or unexpected:
        raise ModetuneError(f"the exported model does not match the run: missing {missing}, unexpected {unexpected}")
    wrapper.generation_config = model.causal_lm.generation_config
    return wrapper.eval()


def _is_tied(model: PreTrainedModel, key: str) -> bool:
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return key in tied


def method_spec_of(model: MethodModel) -> MethodSpec:
    for name in registered_methods():
        if type(model) is get_method(name).model_class:
            return get_method(name)
    raise ConfigError(f"{type(model).__name__} is not a registered method")


def mom_for(run_dir: Path) -> MoMForCausalLM:
    """A MoM run's model (`modetune pretrain --arch mom`), as saved."""
    return MoMForCausalLM.from_pretrained(str(run_dir), dtype=torch.float32).eval()


def is_mom_run(run_dir: Path) -> bool:
    config = run_dir / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MoMConfig.model_type
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{config} is not valid JSON; the run is corrupt") from None


# --------------------------------------------------------------------------------------------------
# Writing the directory
# --------------------------------------------------------------------------------------------------
def export_run(
    run_dir: str | Path, out: str | Path, *, merge_adapters: bool = False, dtype: str = "float32"
) -> ExportResult:
    """Write `run_dir`'s model to `out` so that transformers loads it with `trust_remote_code=True` alone.

    `merge_adapters` folds a LoRA adapter into the base weights first (any PEFT method that merges); without
    it, a plain LoRA adapter is exported beside the frozen weights. `dtype` is the stored precision of the base
    weights; a method's own modules (routers, adapters) stay in float32, as they are computed.
    """
    run_dir, out = Path(run_dir), Path(out)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; choose a new directory (nothing was written)")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a directory; pass a run directory (or one of its checkpoint-N)")
    if saved_method(run_dir) is None and (run_dir / "config.json").is_file() and not is_mom_run(run_dir):
        raise ConfigError(
            f"{run_dir} is a plain transformers model directory (a vanilla model, no MoDE/MoD/MoM); it loads "
            "without modetune as it is: nothing to export"
        )
    if is_mom_run(run_dir):
        model: PreTrainedModel = mom_for(run_dir)
        tokenizer, method, merged = AutoTokenizer.from_pretrained(str(run_dir)), "mom", False
    else:
        method_model, tokenizer, _ = load_run(run_dir, dtype="float32", device="cpu")
        method, merged = method_spec_of(method_model).name, merge_adapters and method_model.is_peft
        model = wrapper_for(method_model, merge_adapters)
    _cast_base(model, DTYPES[dtype])
    class_name = type(model).__name__
    model.config.auto_map = {
        "AutoConfig": f"{Path(MODELING_FILE).stem}.{type(model.config).__name__}",
        "AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{class_name}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / MODELING_FILE).write_text(bundle_sources(type(model).__module__))
        (staging / "README.md").write_text(export_card(run_dir, class_name, method, merged, dtype))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, method, class_name, merged, dtype)


def _cast_base(model: PreTrainedModel, dtype: torch.dtype) -> None:
    """Store the base weights in `dtype`; modules listed in `_keep_in_fp32_modules_strict` stay float32."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    for name, param in model.named_parameters():
        if not any(part in keep for part in name.split(".")):
            param.data = param.data.to(dtype)
    model.config.dtype = dtype


def export_card(run_dir: Path, class_name: str, method: str, merged: bool, dtype: str) -> str:
    """The run's own model card (when it has one) under a short section on loading the export."""
    original = run_dir / "README.md"
    body = original.read_text() if original.is_file() else ""
    snippet = (
        f"## Load it without modetune\n\n"
        f"This directory was written by `modetune export` ({method}, {class_name}, weights in {dtype}"
        f"{', LoRA merged' if merged else ''}). `modeling_modetune.py` holds the method's code; transformers "
        "runs it when asked to trust it:\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)\n'
        'tokenizer = AutoTokenizer.from_pretrained("PATH")\n```\n\n'
        "lm-evaluation-harness: `lm_eval --model hf --model_args pretrained=PATH,trust_remote_code=True ...`\n"
    )
    if body.startswith("---\n"):  # keep the Hub's front matter first
        end = body.index("\n---\n", 4) + 5
        return body[:end] + "\n" + snippet + "\n" + body[end:]
    return snippet + ("\n" + body if body else "")
