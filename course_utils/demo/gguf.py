"""Lesson 12's optional serving comparison: the chat model as a GGUF file, timed in llama.cpp (``llama-cpp-python``).

Needs ``make llamacpp``: it compiles llama-cpp-python :data:`LLAMACPP_VERSION` and unpacks llama.cpp's own converter
(``convert_hf_to_gguf.py``, its ``conversion`` package and ``gguf-py``, all from the same source release: the PyPI
``gguf`` of the same version number lacks what this converter uses) into ``<venv>/src``. Nothing here imports ``llama_cpp`` until :func:`time_llama_cpp` runs.

* :func:`merged_model_dir` — the 16-bit Hugging Face folder to convert: lesson 06's merged model when it is on disk,
  else the base model (the tiny stand-in in smoke mode); a GGUF file holds plain weights, so an adapter must be
  merged first;
* :func:`export_gguf` — llama.cpp's converter in a child process (its memory goes back when it ends), written
  atomically;
* :func:`time_llama_cpp` — decode tokens/s (end of sequence suppressed, so every run makes the same number of
  tokens) and the file's size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from course_utils.core.errors import MissingData

LLAMACPP_VERSION = "0.3.36"

# Runs llama.cpp's converter. A tokenizer the converter does not know (the course's tiny stand-in was trained on the
# course's text) is given Llama 3's pre-tokenizer instead of stopping; real Llama/Qwen tokenizers are recognised.
_LAUNCHER = """
import runpy, sys
script, args = sys.argv[1], sys.argv[2:]
here = __import__("pathlib").Path(script).parent
sys.path[:0] = [str(here / "gguf-py"), str(here)]  # the gguf package of the same llama.cpp release, then conversion/
import conversion.base as base
known = base.TextModel.get_vocab_base_pre
def pre_tokenizer(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        print("note: unknown pre-tokenizer (a tokenizer trained for the course): using llama-bpe's")
        return "llama-bpe"
base.TextModel.get_vocab_base_pre = pre_tokenizer
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def converter_script() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` as ``make llamacpp`` unpacked it (or ``$LLAMA_CPP_CONVERTER``)."""
    path = Path(os.environ.get("LLAMA_CPP_CONVERTER") or Path(sys.prefix) / "src" /
                f"llama_cpp_python-{LLAMACPP_VERSION}" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py")
    if not path.is_file():
        raise MissingData(f"llama.cpp's converter is not at {path}: run `make llamacpp` (it unpacks it next to the "
                          "compiled llama-cpp-python).")
    return path


def merged_model_dir(smoke: bool, artefacts_root: Path) -> Path:
    """The folder to convert: lesson 06's merged model (``<cache>/06_qlora/merged``) if present, else the base."""
    merged = Path(artefacts_root) / "06_qlora" / "merged"
    if (merged / "config.json").is_file():
        return merged
    if smoke:
        from course_utils.smoke.llm import tiny_llm_dir

        return tiny_llm_dir()
    from huggingface_hub import snapshot_download

    from course_utils.topics.llm import DEFAULT_MODEL_ID, DEFAULT_REVISION

    try:
        return Path(snapshot_download(DEFAULT_MODEL_ID, revision=DEFAULT_REVISION, local_files_only=True))
    except Exception:
        raise MissingData(f"{DEFAULT_MODEL_ID} is not in the Hugging Face cache: run lesson 05 once online (or lesson "
                          "06 with MERGE = True to convert your fine-tuned model).") from None


def export_gguf(smoke: bool, artefacts_root: Path, path: str | os.PathLike[str], outtype: str = "q8_0") -> Path:
    """Convert the chat model (merged with the learner's adapter when lesson 06 saved one) to one GGUF file."""
    import hashlib

    source = merged_model_dir(smoke, artefacts_root)
    stamp = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(source.glob("*.safetensors"))]
    key = hashlib.sha256(repr((str(source), stamp, outtype)).encode()).hexdigest()[:10]
    path = Path(path)
    path = path.with_name(f"{path.stem}-{key}{path.suffix}")  # a new merge or type, a new file
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(converter_script()), str(source), "--outfile", str(tmp),
                           "--outtype", outtype], capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise MissingData(f"llama.cpp's converter failed on {source}: {proc.stderr.strip().splitlines()[-1:]}")
    os.replace(tmp, path)
    return path


def time_llama_cpp(gguf_file: str | os.PathLike[str], prompt: str, n_tokens: int) -> dict[str, Any]:
    """Load the GGUF file in llama.cpp (all layers on the GPU when there is one) and time ``n_tokens`` of decoding."""
    import torch
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_file), n_ctx=512, n_gpu_layers=-1 if torch.cuda.is_available() else 0,
                seed=0, verbose=False)
    no_end = {llm.token_eos(): -1e9}  # the same number of tokens every run
    llm(prompt, max_tokens=4, temperature=0.0, logit_bias=no_end)  # warm-up
    start = time.perf_counter()
    out = llm(prompt, max_tokens=n_tokens, temperature=0.0, logit_bias=no_end)
    seconds = time.perf_counter() - start
    made = out["usage"]["completion_tokens"]
    del llm
    return {"tokens/s": made / seconds, "weights (MiB)": Path(gguf_file).stat().st_size / 2**20}
