"""course_utils.topics.llm (one-sentence hub errors, the disk check, the loader) and course_utils.smoke.llm (the tiny
offline Llama: built once, 4-bit, chats)."""

from __future__ import annotations

import os
from collections import namedtuple

import pytest

from course_utils.smoke import llm as smoke_llm
from course_utils.topics import llm
from course_utils.core.errors import CourseError, MissingData

from course_utils.core import hub  # noqa: E402
from course_utils.core.memory import GIB  # noqa: E402




def _http_error(kind, status: int, message: str):
    import httpx

    response = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
    return kind(message, response=response)


def _fail_config_with(monkeypatch, exc: BaseException) -> None:
    """Make AutoConfig.from_pretrained fail the way transformers wraps a hub error (an OSError from the hub's)."""
    import transformers

    def fake(*args, **kwargs):
        raise OSError(f"wrapped by transformers: {exc}") from exc

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake)


def test_gated_model_is_one_sentence_saying_what_to_do(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    _fail_config_with(monkeypatch, _http_error(GatedRepoError, 403, "Access to model is restricted."))
    with pytest.raises(llm.ModelAccessError) as info:
        llm.load_causal_lm(device="cpu")
    message = str(info.value)
    assert isinstance(info.value, MissingData)
    assert info.value.__suppress_context__, "the learner should see the sentence, not the hub's traceback"
    assert llm.DEFAULT_MODEL_ID in message and "licence" in message
    assert "huggingface-cli login" in message and "HF_TOKEN" in message
    assert llm.UNGATED_MODEL_ID in message and "smoke" in message.lower()
    assert message.count("\n") == 0


def test_missing_token_401_is_explained(monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    _fail_config_with(monkeypatch, _http_error(HfHubHTTPError, 401, "401 Client Error: Unauthorized for url"))
    with pytest.raises(llm.ModelAccessError, match="token") as info:
        llm.load_causal_lm(device="cpu")
    assert "huggingface-cli login" in str(info.value)


def test_offline_and_not_cached_is_explained_for_real():
    # no monkeypatch: the test session is offline (HF_HUB_OFFLINE=1) and the 8B model is not in its cache
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(llm.ModelAccessError, match="not in the local Hugging Face cache") as info:
        llm.load_causal_lm(device="cpu")
    assert "smoke" in str(info.value).lower()


def test_unrelated_errors_are_not_disguised():
    assert llm.explain_hub_error(ValueError("shape mismatch"), "x/y") is None


def test_bad_quantization_is_a_course_error():
    with pytest.raises(CourseError, match="4bit"):
        llm.load_causal_lm(smoke=True, quantization="3bit")


def test_download_estimate_from_config():
    from transformers import LlamaConfig

    from course_utils.core import memory

    config = LlamaConfig(**{k: getattr(memory.LLAMA_3_1_8B, a) for k, a in [
        ("hidden_size", "hidden_size"), ("num_hidden_layers", "n_layers"), ("num_attention_heads", "n_heads"),
        ("num_key_value_heads", "n_kv_heads"), ("head_dim", "head_dim"), ("intermediate_size", "intermediate_size"),
        ("vocab_size", "vocab_size")]}, dtype="bfloat16")
    gb = llm.estimate_download_gb(config)
    assert 14.5 < gb < 15.5, f"Llama-3.1-8B in bf16 is ~15 GiB of safetensors, estimate says {gb:.1f}"


def test_disk_check_says_how_much_is_needed(monkeypatch, tmp_path):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: usage(100 * GIB, 97 * GIB, 3 * GIB))
    with pytest.raises(llm.NotEnoughDisk) as info:
        llm.check_disk_space(15.0, tmp_path / "not-yet-created" / "hub", what="meta-llama/Llama-3.1-8B-Instruct")
    message = str(info.value)
    assert "17.0 GiB" in message and "3.0 GiB is free" in message and "HF_HOME" in message
    # enough room, or already downloaded: no error
    assert llm.check_disk_space(0.5, tmp_path) == pytest.approx(3.0)
    assert llm.check_disk_space(15.0, tmp_path, already_gb=15.0) == pytest.approx(3.0)


def test_disk_check_runs_before_the_download(monkeypatch):
    import transformers
    from transformers import LlamaConfig

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: usage(100 * GIB, 99 * GIB, 1 * GIB))
    big = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, intermediate_size=14336, vocab_size=128256)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: big)

    def no_download(*args, **kwargs):
        raise AssertionError("the tokenizer/model download started before the disk check")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_download)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_download)
    with pytest.raises(llm.NotEnoughDisk, match=r"needs about 1[67]\.\d GiB"):
        llm.load_causal_lm(device="cpu")


def test_tiny_model_builds_once_and_is_cached(tiny_cache, monkeypatch):
    folder = smoke_llm.tiny_llm_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (folder / name).is_file(), f"{name} missing from the tiny model folder"

    def must_not_rebuild(*args, **kwargs):
        raise AssertionError("tiny_llm_dir() rebuilt a model that was already cached")

    monkeypatch.setattr(smoke_llm, "build_tiny_llm", must_not_rebuild)
    assert smoke_llm.tiny_llm_dir() == folder


def test_tiny_model_loads_in_4bit_chats_and_generates(tiny_cache):
    import bitsandbytes as bnb
    import torch
    from transformers import LlamaForCausalLM

    model, tokenizer = llm.load_causal_lm(smoke=True, quantization="4bit", device="cpu")
    assert isinstance(model, LlamaForCausalLM) and not model.training
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 7 * model.config.num_hidden_layers, "every q/k/v/o/gate/up/down projection should be 4-bit"
    assert model.get_memory_footprint() < 2e6
    assert tokenizer.pad_token is not None

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is NF4?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") and "What is NF4?<|eot_id|>" in text

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        second = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert first.shape[1] > inputs["input_ids"].shape[1], "generate() added no tokens"
    assert torch.equal(first, second), "greedy decoding must be deterministic"
    assert isinstance(tokenizer.decode(first[0], skip_special_tokens=True), str)


def test_tokenizer_round_trips_any_text_and_takes_extra_tokens():
    tokenizer = smoke_llm.train_tiny_tokenizer(["a small corpus about GPUs and memory"] * 5, vocab_size=300,
                                         extra_special_tokens=["<image>"])
    text = "Ünïcödé ✓ 12 GB — {\"x\": 1}"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text, "byte-level BPE must round-trip any string"
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer("look <image> here").input_ids.count(image_id) == 1


def test_run_notes_data_set_is_the_generators_output_and_well_formed():
    import importlib.util
    import json

    from course_utils.core.paths import REPO_ROOT

    folder = REPO_ROOT / "datasets" / "course" / "run_notes_json"
    spec = importlib.util.spec_from_file_location("make_run_notes", folder / "make_run_notes.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    train, dev = generator.generate()
    shipped = {name: [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()] for name in ("train", "dev")}
    assert shipped == {"train": train, "dev": dev}, "the shipped JSONL differs from make_run_notes.py: rerun the generator"
    assert (len(train), len(dev)) == (300, 60)
    notes = [row["messages"][1]["content"] for row in train + dev]
    assert len(set(notes)) == len(notes), "a note appears twice (dev would leak into train)"
    for row in train + dev:
        answer = json.loads(row["messages"][2]["content"])
        assert list(answer) == list(generator.KEYS) and answer["method"] in ("qlora", "lora", "full")
    # dev is worded with held-out phrasings (issue 20): no variant of any phrasing is shared by the two splits...
    tables = [generator.MODEL_CLAUSES, generator.BATCH_CLAUSES, generator.GPU_CLAUSES, generator.ACCUM_CLAUSES,
              generator.VRAM_CLAUSES, generator.LEADS, generator.DISTRACTORS, *generator.METHOD_WORDS.values(),
              *generator.SEQ_WORDS.values()]
    for table in tables:
        assert table["dev"] and not (set(table["train"]) & set(table["dev"])), f"a phrasing is shared by train and dev: {table}"
    # ... and the notes show it: "<method> on <model>" and "2k context" are dev's wording alone
    for split, rows in (("train", train), ("dev", dev)):
        for row in rows:
            note, answer = row["messages"][1]["content"], json.loads(row["messages"][2]["content"])
            assert (f" on {answer['model']}" in note) == (split == "dev"), f"{split} note worded like the other split: {note}"
            assert (" context" in note) == (split == "dev" and answer["seq_len"] is not None), note


def test_loader_takes_the_config_object_a_lesson_builds(tiny_cache):
    """Lesson 06 writes its BitsAndBytesConfig in a cell and passes it in: the loader must use it as given."""
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False,
                                bnb_4bit_compute_dtype=torch.float32)
    model, tokenizer = llm.load_causal_lm(smoke=True, quantization=config, device="cpu")
    layer = model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit" and layer.weight.quant_state.quant_type == "fp4", "the given config was not used"
    assert tokenizer.pad_token is not None
    with pytest.raises(CourseError, match="BitsAndBytesConfig"):
        llm.load_causal_lm(smoke=True, quantization=4, device="cpu")


def test_topics_module_keeps_loaders_only():
    """The tiny builders live in course_utils.smoke.llm, not also in topics (one name per idea)."""
    for name in ("build_tiny_llm", "tiny_llm_dir", "train_tiny_tokenizer", "TINY_LLAMA_CONFIG"):
        assert hasattr(smoke_llm, name) and not hasattr(llm, name), f"{name} should live in course_utils.smoke.llm only"


def test_lesson_vram_budgets_follow_the_estimator():
    """Lessons 05 and 06 state a VRAM budget (metadata and title table): it is the estimator's figure for their
    largest setting, rounded up by less than 1 GiB — so a change to the estimator shows up here."""
    import json
    import math

    import course_utils as cu
    from course_utils.core.memory import LLAMA_3_1_8B
    from course_utils.core.paths import REPO_ROOT

    plans = {
        "05_llm_inference_4bit": cu.estimate_inference_vram(LLAMA_3_1_8B, bits=4, seq_len=8192),  # its largest context
        "06_qlora_finetune_8b": cu.estimate_training_vram(LLAMA_3_1_8B, "qlora", seq_len=2048, batch_size=1,
                                                          optimizer="paged_adamw_8bit", lora_rank=16),
    }
    for stem, plan in plans.items():
        notebook = json.loads((REPO_ROOT / "notebooks" / f"{stem}.ipynb").read_text())
        budget = notebook["metadata"]["course"]["vram_gb"]
        assert budget == math.ceil(plan.total_gb), f"{stem}: vram_gb {budget} but the estimator says {plan.total_gb:.2f} GiB"
        title = "".join(notebook["cells"][0]["source"])
        assert f"{plan.total_gb:.1f} GiB" in title and f"≤ {budget} GiB" in title, f"{stem}: the title table's budget is stale"
        for name, (op, value, *_) in notebook["metadata"]["course"]["targets"]["full"].items():
            if name.endswith("vram_gb"):
                assert op == "<=" and value <= budget < cu.REFERENCE_CARD_GB, f"{stem}: {name} target above the budget"
