"""Benchmark files from their public sources: download, verify, cache.

``modetune data fetch gsm8k`` (or `modetune.evaluation.task_data.fetch_data`, which resolves task names and
groups) downloads each file of a task from the repository it
was published in, at a pinned commit, checks it against a pinned sha256, and stores it in the data
cache (``$MODETUNE_DATA_DIR``, else ``~/.cache/modetune/data``) in the layout ``modetune eval`` searches
(``gsm8k/test.json``, ``arc_easy/test.json``, ...). A file is written to a temporary file beside its
destination and renamed into place only once its hash matches, so the cache never holds a partial or
altered file. Offline, the first connection fails within `TIMEOUT` seconds with one clear message.

Sources (the files are byte-identical to the repositories' own; the git blob ids are recorded too):

* LLM-Adapters (``AGI-Edgerunners/LLM-Adapters`` at `LLM_ADAPTERS_COMMIT`): ``dataset/<TASK>/test.json``
  (and the few ``train.json`` files of that size), ODC-By 1.0.
* GSM8K (``openai/grade-school-math`` at `GSM8K_COMMIT`): ``grade_school_math/data/{train,test}.jsonl``,
  MIT.

``$MODETUNE_DATA_URL`` replaces the base URL (``https://raw.githubusercontent.com``) by a mirror with
the same ``OWNER/REPO/COMMIT/PATH`` layout (the tests serve one on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from modetune import files
from modetune.errors import ModetuneError
from modetune.loading import cache_dir

__all__ = [
    "DATA_FILES",
    "DEFAULT_BASE_URL",
    "GSM8K_COMMIT",
    "LLM_ADAPTERS_COMMIT",
    "SOURCES",
    "DataFile",
    "FetchError",
    "Source",
    "data_cache_dir",
    "download",
    "fetch_file",
    "fetchable_names",
    "sha256_of",
    "verify_file",
]

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
#: seconds to wait for a connection or for the next bytes: offline fails at once, not after minutes
TIMEOUT = 15.0
LLM_ADAPTERS_COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"
GSM8K_COMMIT = "3101c7d5072418e28b9008a6636bde82a006892c"


class FetchError(ModetuneError):
    """A download failed (offline, HTTP error, cut connection) or its bytes are not the pinned ones."""


@dataclass(frozen=True)
class Source:
    """A public repository the benchmark files are taken from, at a fixed commit."""

    name: str
    repo: str
    commit: str
    license: str
    citation: str


SOURCES: dict[str, Source] = {
    "llm-adapters": Source(
        "LLM-Adapters",
        "AGI-Edgerunners/LLM-Adapters",
        LLM_ADAPTERS_COMMIT,
        "Open Data Commons Attribution License (ODC-By 1.0), the repository's DATA_LICENSE; the files are "
        "reformatted public benchmarks, each under its own license (cite the benchmark too)",
        "Hu et al., LLM-Adapters: An Adapter Family for Parameter-Efficient Fine-Tuning of Large Language "
        "Models, EMNLP 2023 (arXiv:2304.01933)",
    ),
    "gsm8k": Source(
        "GSM8K",
        "openai/grade-school-math",
        GSM8K_COMMIT,
        'MIT License, "Copyright (c) 2021 OpenAI"',
        "Cobbe et al., Training Verifiers to Solve Math Word Problems, 2021 (arXiv:2110.14168)",
    ),
}

#: the benchmark each task's file reformats (cite it when publishing results)
BENCHMARK_CITATIONS: dict[str, str] = {
    "gsm8k": "Cobbe et al., 2021 (arXiv:2110.14168)",
    "svamp": "Patel et al., NAACL 2021",
    "aqua": "Ling et al., ACL 2017 (AQuA-RAT)",
    "multiarith": "Roy & Roth, EMNLP 2015",
    "addsub": "Hosseini et al., EMNLP 2014",
    "singleeq": "Koncel-Kedziorski et al., TACL 2015",
    "mawps": "Koncel-Kedziorski et al., NAACL 2016",
    "mathqa": "Amini et al., NAACL 2019",
    "boolq": "Clark et al., NAACL 2019",
    "piqa": "Bisk et al., AAAI 2020",
    "siqa": "Sap et al., EMNLP 2019",
    "winogrande": "Sakaguchi et al., AAAI 2020",
    "arc_easy": "Clark et al., 2018 (arXiv:1803.05457)",
    "arc_challenge": "Clark et al., 2018 (arXiv:1803.05457)",
    "openbookqa": "Mihaylov et al., EMNLP 2018",
}


@dataclass(frozen=True)
class DataFile:
    """One pinned file: where it goes in the cache, where it comes from, and what its bytes must be."""

    name: str  # the task (or dataset) it belongs to: "gsm8k", "gsm8k_openai", ...
    local: str  # path under the data cache, in the layout `modetune eval` searches
    source: str  # key of SOURCES
    upstream: str  # path inside the source repository
    sha256: str
    size: int
    git_blob: str  # the upstream git blob id (`git hash-object FILE`)

    def url(self, base_url: str | None = None) -> str:
        src = SOURCES[self.source]
        base = (base_url or os.environ.get("MODETUNE_DATA_URL") or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{src.repo}/{src.commit}/{self.upstream}"


def _la(name: str, local: str, upstream: str, sha256: str, size: int, blob: str) -> DataFile:
    return DataFile(name, local, "llm-adapters", f"dataset/{upstream}", sha256, size, blob)


# sha256 and sizes measured on the files of the pinned commits (their git blob ids match upstream's)
DATA_FILES: tuple[DataFile, ...] = (
    _la("gsm8k", "gsm8k/test.json", "gsm8k/test.json",
        "2cc616a1e0b23ea1df29370476365cde71c4e0aa823fb06cc194c5a8a9381abe", 824475,
        "57a7a08e10e12e975e1f972d2b8125c0d4c722b1"),
    _la("svamp", "svamp/test.json", "SVAMP/test.json",
        "ffed015784f738f317c5603177861d044c4fc94e09211d78b25e96d46c656e2c", 459713,
        "98b8f1872db596f8aaff2c95d1d698a9fa13b94f"),
    _la("aqua", "aqua/test.json", "AQuA/test.json",
        "de677f5f0139340009eb01f17c0db781b4161912cd1f4efa77292f2fcf3478ee", 152063,
        "731fbb456f7a93bb4121125de09c4adcf42e5dab"),
    _la("multiarith", "multiarith/test.json", "MultiArith/test.json",
        "a40f426807c8a563802c2a5b66bda3bcd1eba9c099038fd1199f0dd57de5fd28", 275458,
        "08e996c6cd8c633cc977f5c50709a8bbfc8fadff"),
    _la("addsub", "addsub/test.json", "AddSub/test.json",
        "62a8662b1ad40879953c4df0e61883a749d03aa3fc5e71f1cdb842b816e139ff", 170411,
        "f3996cdf4159b4e1e4b6768865a4db72105f4e2f"),
    _la("singleeq", "singleeq/test.json", "SingleEq/test.json",
        "712b15edb851c97aab42a5de106d94008f94d917366c92537ed5400a8aacb207", 212001,
        "cce7a868400323e30e2094a15d482c1aa743dbb0"),
    _la("mawps", "mawps/test.json", "mawps/test.json",
        "c1a708979cbf2b3df9ac4020baacf3e8e73fcf089e1de7dd1b305b810bfaa15f", 60202,
        "eca473c5b5d398acbae0b84ede833bbbccd63add"),
    _la("mathqa", "mathqa/test.json", "mathqa/test.json",
        "58715cb7aaccc7f3f2994586073800a57a3e44f77d22e62bee7fd7ff8315172c", 1018708,
        "4395ded7d91bd4fb1192ba3981f6ef00ccc88570"),
    _la("boolq", "boolq/test.json", "boolq/test.json",
        "89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9", 899151,
        "6d7edb0a8e8a6566b546ccf0d98d24e48db3fdf3"),
    _la("boolq", "boolq/train.json", "boolq/train.json",
        "5ccbaceebaddc69765e1c4a363632196b81851d303696672165ab59ec4e48c83", 2599507,
        "87a7beee26b49f81c450641ef2ff84f55611321f"),
    _la("piqa", "piqa/test.json", "piqa/test.json",
        "3860d11b9b42e590b6b4bbc1643214d373ed0b0d4ac62fcc7bdceb8e044ad141", 913157,
        "f7a1c260692ef31796d4763cb6334f316a754fed"),
    _la("siqa", "siqa/test.json", "social_i_qa/test.json",
        "71543f41127451945379d106ffedaef502f1c8770dff6d2f543aca85e3080b1d", 843748,
        "eadf221799ca394367b144c0f86ee0436db409d2"),
    _la("winogrande", "winogrande/test.json", "winogrande/test.json",
        "6946f5209e7114c65c6d04f8f644c5a061af20d730b1cfe158fff3dc44076fb9", 497409,
        "21257263593dd4d00546e1918c88ca0f357b08ad"),
    _la("arc_easy", "arc_easy/test.json", "ARC-Easy/test.json",
        "3f32a84716ca6d57d38728bf80cc8117aecd17445c2cf29a68b571b810eb82dc", 1157216,
        "6c0d30aaedaeca148df6bcd7aaacf7c31e6ad70f"),
    _la("arc_easy", "arc_easy/train.json", "ARC-Easy/train.json",
        "6a06cece3dec32f4fb1c1b0fc29dab14be7cf3053b417290dbc6cd845359f5ff", 1092324,
        "488a8e5e5bbbd7a630ebbfe07a1fd91b7d9d8c9b"),
    _la("arc_challenge", "arc_challenge/test.json", "ARC-Challenge/test.json",
        "4a89ce368ae01a71d268d9851686738b2a0a1d84271116bab49a1dd2b48ecad7", 622510,
        "9540685439144200b5a7e48dab9ca4655be2af09"),
    _la("arc_challenge", "arc_challenge/train.json", "ARC-Challenge/train.json",
        "a9debff28aafed86a08211dc3584a3b6cb38edca8c56bb34cd5002ed54aeebfb", 585556,
        "d7e080b04bff9fd16dd85455fb04481807a088d8"),
    _la("openbookqa", "openbookqa/test.json", "openbookqa/test.json",
        "8479930f7b8a26052c78250280b5465a4016ca7fc806af440d0f37e243f3099e", 202545,
        "a6e69676104bcb77237388c3b5a3f0dcbb81d1e2"),
    _la("openbookqa", "openbookqa/train.json", "openbookqa/train.json",
        "a1e094eeea01f70c0baa880f37497b26700ae99b243927b9c529984de9b1fe90", 1987446,
        "75bcd5eb9f5e77a3796c05e6bb38f169d19563fc"),
    DataFile("gsm8k_openai", "gsm8k_openai/test.jsonl", "gsm8k", "grade_school_math/data/test.jsonl",
             "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738,
             "e4c2ff4942b9a78bd74f04141224c11e28d12dc9"),
    DataFile("gsm8k_openai", "gsm8k_openai/train.jsonl", "gsm8k", "grade_school_math/data/train.jsonl",
             "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206,
             "7d97154b91aef28d01c3301741c81ce90039a4b1"),
)  # fmt: skip


def data_dir_entries() -> list[Path]:
    """The directories listed in ``$MODETUNE_DATA_DIR`` (``os.pathsep``-separated), in order."""
    return [Path(p).expanduser() for p in os.environ.get("MODETUNE_DATA_DIR", "").split(os.pathsep) if p.strip()]


def data_cache_dir() -> Path:
    """Where fetched files go: the first entry of ``$MODETUNE_DATA_DIR``, else ``<modetune cache>/data``
    (``~/.cache/modetune/data``; ``$MODETUNE_CACHE`` moves the modetune cache)."""
    entries = data_dir_entries()
    return entries[0] if entries else cache_dir() / "data"


def fetchable_names() -> list[str]:
    """Task/dataset names `fetch_data` accepts (besides the groups ``all``, ``arithmetic``, ``commonsense``)."""
    return list(dict.fromkeys(f.name for f in DATA_FILES))


def sha256_of(path: Path) -> str:
    """The sha256 of a file (hex)."""
    return files.sha256_of(path).hexdigest()


def verify_file(spec: DataFile, root: Path | None = None) -> bool:
    """True when ``root/spec.local`` exists and has the pinned size and sha256."""
    path = (root or data_cache_dir()) / spec.local
    return path.is_file() and path.stat().st_size == spec.size and sha256_of(path) == spec.sha256


def fetch_file(spec: DataFile, root: Path | None = None, *, base_url: str | None = None, force: bool = False) -> Path:
    """Download one file into ``root`` (default `data_cache_dir`) unless a verified copy is there.

    The bytes go to a temporary file in the destination directory, are hashed while they arrive and
    renamed into place only if size and sha256 match: an interrupted or altered download leaves
    nothing behind (not even the temporary file) and raises `FetchError`.
    """
    root = root or data_cache_dir()
    dest = root / spec.local
    if not force and verify_file(spec, root):
        return dest
    download(spec.url(base_url), dest, sha256=spec.sha256, size=spec.size)
    return dest


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int,
    host: str = DEFAULT_BASE_URL.split("//")[1],
    mirror_env: str = "MODETUNE_DATA_URL",
    fallback: str = "copy the files into the data directory yourself or pass --data FILE",
) -> None:
    """Download ``url`` to ``dest`` if its bytes have the pinned ``size`` and ``sha256``, else raise `FetchError`.

    `fetch_file` and the other pinned downloads (`modetune.data.general_text`) share it, so they time out,
    verify and clean up the same way. ``host``, ``mirror_env`` and ``fallback`` only word the messages: where
    the file normally comes from, the variable that points at a mirror, and what to do without network.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        got = 0
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "modetune"})
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response, os.fdopen(fd, "wb") as out:
                fd = -1
                for block in iter(lambda: response.read(1 << 16), b""):
                    h.update(block)
                    out.write(block)
                    got += len(block)
                    if got > size:
                        break
                out.flush()
                os.fsync(out.fileno())
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and got < int(declared):
                    # urllib returns EOF quietly when the server closes early; the length says it did
                    raise ConnectionError(f"connection closed after {got} of {declared} bytes")
        except urllib.error.HTTPError as exc:
            raise FetchError(
                f"cannot download {url}: HTTP {exc.code} {exc.reason} (the file is not at that address; "
                f"check ${mirror_env} if you set it)"
            ) from None
        except urllib.error.URLError as exc:
            raise FetchError(
                f"cannot download {url}: {exc.reason}. This needs network access to {host} (or a mirror in "
                f"${mirror_env}); without it, {fallback}"
            ) from None
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            raise FetchError(
                f"download of {url} was interrupted ({type(exc).__name__}: {exc or 'connection closed'}); "
                "nothing was kept, run the command again"
            ) from None
        digest = h.hexdigest()
        if got != size or digest != sha256:
            raise FetchError(
                f"{url} does not have the pinned content ({got} bytes, sha256 {digest[:16]}...; expected "
                f"{size} bytes, sha256 {sha256[:16]}...); it was not kept. The mirror may be stale or "
                f"the download corrupted; try again or check ${mirror_env}"
            )
        os.replace(tmp, dest)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
