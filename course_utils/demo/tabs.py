"""What each tab of the demo does, without any web framework: checks the input, asks the manager for a model, runs it.

:class:`Demo` is what ``app.py`` puts behind Gradio and FastAPI, and what lesson 12 calls directly to time each tab::

    demo = Demo(smoke=True)
    pieces = list(demo.chat_stream("What is QLoRA?"))      # the reply, a piece at a time
    demo.ask_notes("How do I resume training?")            # answer + cited notes
    demo.transcribe("clip.wav", post_edit=False)           # VAD segments + transcript
    demo.ask_image("bus.jpg", "What is in the picture?")
    demo.detect("bus.jpg")                                 # boxes + the picture with boxes drawn
    demo.generate("a red circle", seed=0, width=64, height=64)

Every model comes from the lessons' loaders (``course_utils.topics.*``); when what a learner trained is on disk (the
QLoRA adapter of lesson 06, the fine-tuned Whisper of lesson 10, the detector of lesson 08, the SD LoRA of lesson 09,
the LLaVA adapter of lesson 11) it is used and the tab says so (the detector, a pickle, only while its sha256 is
the one lesson 08 recorded beside it). Bad input raises :class:`BadInput` (one sentence) before any model is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course_utils.core.errors import BadParameter, CourseError, MissingData
from course_utils.core.paths import atomic_write, cache_dir, data_dir
from course_utils.demo.models import ModelManager, ModelSpec

#: The limits the app states on its first page.
MAX_UPLOAD_MB = 10
MAX_PROMPT_CHARS = 2000
MAX_AUDIO_SECONDS = 120
#: A chat keeps at most this many earlier turns (user and assistant only: the system prompt is the server's), and
#: drops the oldest ones past this many characters.
MAX_HISTORY_TURNS = 20
MAX_HISTORY_CHARS = 4 * MAX_PROMPT_CHARS
#: The longest wait for the next piece of a streamed reply once generation has started.
STREAM_TIMEOUT_S = 120
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class BadInput(BadParameter):
    """An upload or a prompt the app cannot use; the message says what it accepts."""

    kind = "bad input"


# ------------------------------------------------------------------------------------------------- input checks


def check_prompt(text: Any, what: str = "message") -> str:
    """A non-empty prompt of at most :data:`MAX_PROMPT_CHARS` characters."""
    text = "" if text is None else str(text)
    if not text.strip():
        raise BadInput(f"The {what} is empty: type something first.")
    if len(text) > MAX_PROMPT_CHARS:
        raise BadInput(f"The {what} has {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}: shorten it.")
    return text.strip()


def check_upload(path: Any, suffixes: tuple[str, ...], what: str) -> Path:
    """An uploaded file that exists, has an accepted type, is not empty and is under :data:`MAX_UPLOAD_MB`."""
    if path is None or str(path) == "":
        raise BadInput(f"No {what} was uploaded: choose a {'/'.join(suffixes)} file.")
    if isinstance(path, dict):  # a Gradio FileData
        path = path.get("path")
    path = Path(str(path))
    if path.suffix.lower() not in suffixes:
        raise BadInput(f"{path.name} is not a file type the app reads as {what}: upload a {', '.join(suffixes)} file.")
    if not path.is_file():
        raise BadInput(f"The uploaded {what} {path.name} is missing: upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise BadInput(f"{path.name} is empty (0 bytes): upload a real {what}.")
    if size > MAX_UPLOAD_MB * 2**20:
        raise BadInput(f"{path.name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB: upload a smaller {what}.")
    return path


def read_image(path: Any) -> Any:
    """The uploaded picture as an RGB PIL image, or one sentence if it is not a readable image."""
    from PIL import Image

    path = check_upload(path, IMAGE_SUFFIXES, "image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except Exception as err:  # UnidentifiedImageError, a truncated file, a decoder plugin that is not installed...
        raise BadInput(f"{path.name} is not a readable image: upload a PNG or JPEG.") from None


def read_audio(path: Any) -> Any:
    """The uploaded clip as 16 kHz mono float32 (``topics.speech.load_audio``), or one sentence. Its length is read
    from the file's header first: a clip over :data:`MAX_AUDIO_SECONDS` is refused before it is decoded."""
    import soundfile as sf

    from course_utils.topics.speech import SAMPLE_RATE, load_audio

    path = check_upload(path, AUDIO_SUFFIXES, "audio clip")
    try:
        header = sf.info(str(path))
    except Exception:  # LibsndfileError, or a header that claims nonsense
        raise BadInput(f"{path.name} is not readable audio: upload a WAV, FLAC or OGG file.") from None
    if header.duration > MAX_AUDIO_SECONDS:
        raise BadInput(f"{path.name} lasts {header.duration:.0f} s; the limit is {MAX_AUDIO_SECONDS} s: cut it.")
    try:
        audio = load_audio(path)
    except (BadParameter, MissingData) as err:
        raise BadInput(f"{path.name} is not readable audio: upload a WAV, FLAC or OGG file.") from None
    except Exception as err:  # a truncated file can fail deeper in the decoder
        raise BadInput(f"{path.name} is not readable audio ({type(err).__name__}): upload a WAV or FLAC file.") from None
    if len(audio) == 0:
        raise BadInput(f"{path.name} holds no audio samples: record or upload a real clip.")
    if len(audio) > MAX_AUDIO_SECONDS * SAMPLE_RATE:
        raise BadInput(f"{path.name} lasts {len(audio) / SAMPLE_RATE:.0f} s; the limit is {MAX_AUDIO_SECONDS} s: cut it.")
    return audio


# ------------------------------------------------------------------------------------------------- what is on disk


@dataclass(frozen=True)
class Artefacts:
    """Where the lessons leave what a learner trained (their defaults: ``cu.cache_dir()``)."""

    root: Path
    smoke: bool

    @property
    def qlora_adapter(self) -> Path:          # lesson 06: <cache>/06_qlora/adapter
        return self.root / "06_qlora" / "adapter"

    @property
    def whisper(self) -> Path:                # lesson 10: <cache>/<RUN_NAME>/model
        return self.root / ("whisper-domain-smoke" if self.smoke else "whisper-domain") / "model"

    @property
    def detector(self) -> Path:               # lesson 08: <cache>/ultralytics/runs/08_yolov8_detection/train/weights
        return self.root / "ultralytics" / "runs" / "08_yolov8_detection" / "train" / "weights" / "best.pt"

    @property
    def sd_lora(self) -> Path:                # lesson 09: <cache>/09_sd15_lora/lora-mine
        return self.root / "09_sd15_lora" / "lora-mine"

    @property
    def llava_adapter(self) -> Path:          # lesson 11: <cache>/adapters/llava-shapes-lora
        return self.root / "adapters" / "llava-shapes-lora"


def _vram_estimates() -> dict[str, float]:
    """Full-mode VRAM per model (GiB) from the course's estimator; the CUDA context is counted once, in the budget."""
    from course_utils.core.defaults import safe_defaults
    from course_utils.core.memory import LLAMA_3_1_8B, LLAVA_1_5_7B, MODEL_CATALOG, ModelShape, estimate_inference_vram

    card = {"vram_gb": 12.0, "bf16": True}  # the reference card: the plan is the same whatever this machine has
    chat_len = safe_defaults("llm-inference", **card).max_seq_len
    vlm_len = safe_defaults("vlm-inference", **card).max_seq_len
    return {
        "chat": estimate_inference_vram(LLAMA_3_1_8B, bits=4, seq_len=chat_len, overhead_gb=0).total_gb,
        "notes": estimate_inference_vram(ModelShape.from_params(22.7e6, "all-MiniLM-L6-v2", 0.05), bits=16,
                                         overhead_gb=0).total_gb,
        "speech": estimate_inference_vram(MODEL_CATALOG["whisper-small"], bits=16, overhead_gb=0).total_gb,
        "vision": estimate_inference_vram(LLAVA_1_5_7B, bits=4, seq_len=vlm_len, overhead_gb=0).total_gb,
        "detector": estimate_inference_vram(MODEL_CATALOG["YOLOv8n (640 px)"], bits=32, overhead_gb=0).total_gb,
        "image": estimate_inference_vram(MODEL_CATALOG["SD 1.5 (512 px)"], bits=16, overhead_gb=0).total_gb,
    }


def card_budget_gb(card_gb: float | None = None) -> float:
    """What the models may hold: the card (this GPU, else the 12 GB reference) less the CUDA context and the
    course's 1 GiB margin (``fits_card``). ``DEMO_BUDGET_GB`` in the environment overrides it."""
    from course_utils.core.memory import CUDA_CONTEXT_GB, REFERENCE_CARD_GB

    if os.environ.get("DEMO_BUDGET_GB"):
        return float(os.environ["DEMO_BUDGET_GB"])
    if card_gb is None:
        from course_utils.core.gpu import gpu_report

        card_gb = gpu_report().total_vram_gb or REFERENCE_CARD_GB
    return card_gb - CUDA_CONTEXT_GB - 1.0


# ------------------------------------------------------------------------------------------------- the demo


class Demo:
    """The six tabs' logic over one :class:`ModelManager`."""

    def __init__(self, smoke: bool, artefacts_dir: str | os.PathLike[str] | None = None,
                 budget_gb: float | None = None, device: str | None = None):
        import torch
        import transformers

        # transformers resolves its names lazily, and that is not thread-safe: resolve what request threads use now
        self._iterator_streamer = transformers.TextIteratorStreamer
        self.smoke = smoke
        self.device = device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        root = artefacts_dir or os.environ.get("DEMO_ARTEFACTS_DIR") or cache_dir()
        self.artefacts = Artefacts(Path(root), smoke)
        self.manager = ModelManager(self._specs(), budget_gb if budget_gb is not None else card_budget_gb())
        self.max_new_tokens = 32 if smoke else 256
        self.sd_steps = 4 if smoke else 25
        self.max_image_side = 128 if smoke else 768
        self.detect_conf = 0.0001 if smoke else 0.25  # random smoke weights score everything ~1e-4

    # ----------------------------------------------------------------------------------------- specs
    def _specs(self) -> dict[str, ModelSpec]:
        a, smoke = self.artefacts, self.smoke
        vram = _vram_estimates()
        base = {"chat": "tiny random Llama (smoke)" if smoke else "Llama-3.1-8B-Instruct, 4-bit",
                "speech": "tiny random Whisper (smoke)" if smoke else "openai/whisper-small",
                "vision": "tiny random LLaVA (smoke)" if smoke else "llava-1.5-7b, 4-bit",
                "detector": "YOLOv8n, random weights (smoke)" if smoke else "YOLOv8n COCO-pretrained",
                "image": "tiny random Stable Diffusion (smoke)" if smoke else "Stable Diffusion 1.5"}
        have = {"chat": (a.qlora_adapter / "adapter_config.json").is_file(),
                "speech": (a.whisper / "config.json").is_file(),
                "vision": (a.llava_adapter / "adapter_config.json").is_file(),
                "detector": self._detector_checked(),
                "image": any(a.sd_lora.glob("*.safetensors")) if a.sd_lora.is_dir() else False}
        mine = {"chat": f"your QLoRA adapter (lesson 06, {a.qlora_adapter}) on {base['chat']}",
                "speech": f"your fine-tuned Whisper (lesson 10, {a.whisper})",
                "vision": f"your LLaVA adapter (lesson 11, {a.llava_adapter}) on {base['vision']}",
                "detector": f"your detector (lesson 08, {a.detector})",
                "image": f"your LoRA (lesson 09, {a.sd_lora}) on {base['image']}"}

        def source(name: str) -> str:
            if name == "detector" and self.detector_refused:
                return f"the base model: {base[name]} ({self.detector_refused})"
            return mine[name] if have[name] else f"the base model: {base[name]} (no lesson artefact on disk)"

        loaders = {"chat": self._load_chat, "notes": self._load_notes, "speech": self._load_speech,
                   "vision": self._load_vision, "detector": self._load_detector, "image": self._load_image}
        specs = {}
        for name, load in loaders.items():
            if name == "notes":
                specs[name] = ModelSpec(name, load, vram[name], "all-MiniLM-L6-v2 over the course's notes "
                                        "(datasets/course/rag_notes), answers by the chat model")
            else:
                specs[name] = ModelSpec(name, load, vram[name], source(name), have[name])
        return specs

    def source(self, name: str) -> str:
        return self.manager.spec(name).source

    def _detector_checked(self) -> bool:
        """Lesson 08's ``best.pt`` is used only if its sha256 is the one the lesson recorded beside it: Ultralytics
        unpickles checkpoints (``torch.load(weights_only=False)`` can run code). Otherwise one sentence (in the tab's
        model line and the server's log) and the base model."""
        from course_utils.topics.yolo import verify_recorded

        self.detector_refused = ""
        if not self.artefacts.detector.is_file():
            return False
        try:
            verify_recorded(self.artefacts.detector)
            return True
        except CourseError as err:
            self.detector_refused = str(err)
            return False

    # ----------------------------------------------------------------------------------------- loaders
    def _load_chat(self) -> tuple[Any, Any]:
        from course_utils.topics.llm import load_causal_lm

        # 4-bit on every card, as _vram_estimates sizes it: the six models share one budget (a 20 GB card would
        # otherwise get the 15 GiB 16-bit model that load_causal_lm picks there)
        model, tokenizer = load_causal_lm(smoke=self.smoke, device=self.device,
                                          quantization="16bit" if self.device == "cpu" else "4bit")
        if self.manager.specs["chat"].uses_artefact:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(self.artefacts.qlora_adapter)).eval()
            except Exception as err:
                raise MissingData(f"The QLoRA adapter in {self.artefacts.qlora_adapter} does not fit this base model "
                                  f"({type(err).__name__}); move it away to chat with the base model.") from None
        return model, tokenizer

    def _load_notes(self) -> dict[str, Any]:
        """The embedder and the notes' sections with their vectors (an index saved once in the cache, atomically)."""
        import numpy as np

        from course_utils.topics.rag import load_documents, load_embedder

        embedder = load_embedder(device=self.device)
        sections = []
        for doc in load_documents():
            for heading, body in _sections(doc.text):
                sections.append({"source": doc.source, "heading": heading, "text": body})
        key = hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:16]
        index_file = cache_dir("demo") / f"notes-index-{key}.npy"
        if index_file.is_file():
            vectors = np.load(index_file)
        else:
            vectors = embedder.encode([f"{s['heading']}\n{s['text']}" for s in sections], batch_size=64,
                                      normalize_embeddings=True, convert_to_numpy=True)
            with atomic_write(index_file) as handle:
                np.save(handle, vectors)
        return {"embedder": embedder, "sections": sections, "vectors": vectors}

    def _load_speech(self) -> dict[str, Any]:
        from course_utils.topics.speech import load_silero_vad, load_whisper

        if self.manager.specs["speech"].uses_artefact:
            from transformers import WhisperForConditionalGeneration, WhisperProcessor

            processor = WhisperProcessor.from_pretrained(str(self.artefacts.whisper))
            model = WhisperForConditionalGeneration.from_pretrained(str(self.artefacts.whisper)).to(self.device).eval()
        else:
            model, processor = load_whisper(smoke=self.smoke, device=self.device)
        return {"model": model, "processor": processor, "vad": load_silero_vad()}

    def _load_vision(self) -> tuple[Any, Any]:
        from course_utils.topics.vlm import load_llava

        model, processor = load_llava(smoke=self.smoke, device=self.device,
                                      quantization="16bit" if self.device == "cpu" else "4bit")
        if self.manager.specs["vision"].uses_artefact:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(self.artefacts.llava_adapter)).eval()
            except Exception as err:
                raise MissingData(f"The LLaVA adapter in {self.artefacts.llava_adapter} does not fit this base model "
                                  f"({type(err).__name__}); move it away to use the base model.") from None
        return model, processor

    def _load_detector(self) -> Any:
        from course_utils.topics.yolo import load_yolo, setup_ultralytics

        setup_ultralytics()  # offline, quiet, a local font: before Ultralytics is imported
        spec = self.manager.specs["detector"]
        if spec.uses_artefact:
            if self._detector_checked():  # again: the file may have changed since the app started
                return load_yolo(str(self.artefacts.detector))
            spec.uses_artefact, spec.source = False, self._specs()["detector"].source
            print(f"detector: {spec.source}", flush=True)
        return load_yolo("yolov8n.yaml" if self.smoke else "yolov8n.pt")

    def _load_image(self) -> Any:
        from course_utils.topics.diffusion import load_sd_pipeline

        pipe = load_sd_pipeline(smoke=self.smoke, device=self.device)
        pipe.set_progress_bar_config(disable=True)
        if self.manager.specs["image"].uses_artefact:
            pipe.load_lora_weights(str(self.artefacts.sd_lora))
        return pipe

    # ----------------------------------------------------------------------------------------- tabs
    def _generate_text(self, messages: list[dict[str, str]], max_new_tokens: int | None = None,
                       seed: int = 0) -> Iterator[str]:
        """Stream a chat model's reply through transformers' ``TextIteratorStreamer`` (lesson 05's loop): a worker
        thread holds the manager (and its lock), makes the streamer once the model is loaded, hands it over and
        generates into it; this generator yields each piece of text as soon as it is decoded. An error in the thread
        (a load that fails, an OOM half-way) ends the stream and is raised here; a model that sends nothing for
        :data:`STREAM_TIMEOUT_S` seconds becomes one sentence."""
        handoff: queue.Queue = queue.Queue()  # the streamer, or None when the thread failed before making it
        failed: list[BaseException] = []
        max_new_tokens = max_new_tokens or self.max_new_tokens

        def work() -> None:
            streamer = None
            try:
                import torch

                with self.manager.use("chat") as (model, tokenizer):
                    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                           return_dict=True).to(model.device)
                    streamer = self._iterator_streamer(tokenizer, skip_prompt=True, skip_special_tokens=True,
                                                       timeout=STREAM_TIMEOUT_S)
                    handoff.put(streamer)
                    torch.manual_seed(seed)
                    model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                   streamer=streamer)
            except BaseException as err:  # raised in the caller's thread, once the stream has ended
                failed.append(err)
                if streamer is None:
                    handoff.put(None)
                else:
                    streamer.end()  # wake the reader now, not after the timeout

        worker = threading.Thread(target=work, daemon=True, name="demo-generate")
        worker.start()
        streamer = handoff.get()  # no timeout: the request may wait for the lock and for the model to load
        if streamer is not None:
            try:
                for piece in streamer:
                    if piece:
                        yield piece
            except queue.Empty:
                raise CourseError(f"The chat model sent nothing for {STREAM_TIMEOUT_S} s and is still busy: try again "
                                  "in a minute with a shorter message.") from None
        worker.join()
        if failed:
            raise failed[0]

    def chat_stream(self, message: Any, history: list[dict[str, str]] | None = None,
                    max_new_tokens: int | None = None) -> Iterator[str]:
        """The chat tab: the reply to ``message`` (after ``history``), a piece at a time."""
        message = check_prompt(message)
        turns = bounded_history(history)  # keep the context short: the last turns, user and assistant only
        yield from self._generate_text(turns + [{"role": "user", "content": message}], max_new_tokens)

    def chat(self, message: Any, history: list[dict[str, str]] | None = None) -> str:
        return "".join(self.chat_stream(message, history))

    def retrieve(self, question: str, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` sections of the notes closest to ``question`` (cosine similarity of MiniLM vectors)."""
        import numpy as np

        with self.manager.use("notes") as notes:
            query = notes["embedder"].encode([question], normalize_embeddings=True, convert_to_numpy=True)[0]
            scores = notes["vectors"] @ query
            best = np.argsort(-scores)[:k]
            return [{**notes["sections"][i], "score": round(float(scores[i]), 3)} for i in best]

    def ask_notes(self, question: Any, k: int = 3) -> dict[str, Any]:
        """The notes tab: retrieve, answer from the retrieved sections only, cite them as [1], [2], ..."""
        question = check_prompt(question, "question")
        hits = self.retrieve(question, k)
        context = "\n\n".join(f"[{i}] ({h['source']} > {h['heading']})\n{h['text'][:1200]}" for i, h in enumerate(hits, 1))
        messages = [{"role": "system", "content": "Answer from the numbered notes only and cite them like [1]. If "
                     "they do not say, answer: the notes do not cover this."},
                    {"role": "user", "content": f"Notes:\n{context}\n\nQuestion: {question}"}]
        answer = "".join(self._generate_text(messages)).strip()
        sources = [{"n": i, "source": h["source"], "heading": h["heading"], "score": h["score"],
                    "quote": h["text"][:300]} for i, h in enumerate(hits, 1)]
        return {"answer": answer, "sources": sources, "model": self.source("chat")}

    def transcribe(self, audio_path: Any, post_edit: bool = False) -> dict[str, Any]:
        """The speech tab: Silero VAD finds the speech, Whisper transcribes it, the chat model may post-edit it."""
        import torch
        from silero_vad import get_speech_timestamps

        from course_utils.topics.speech import SAMPLE_RATE, trim_silence

        audio = read_audio(audio_path)
        with self.manager.use("speech") as speech:
            found = get_speech_timestamps(torch.from_numpy(audio), speech["vad"], sampling_rate=SAMPLE_RATE,
                                          return_seconds=True)
            segments = [(float(s["start"]), float(s["end"])) for s in found]
            if not segments:
                return {"text": "", "segments": [], "seconds": len(audio) / SAMPLE_RATE, "edited": None,
                        "note": "no speech found in the clip", "model": self.source("speech")}
            voiced = trim_silence(audio, segments=segments)
            model, processor = speech["model"], speech["processor"]
            window = processor.feature_extractor.n_samples  # 30 s (5 s for the smoke model): one window at a time
            texts = []
            for start in range(0, len(voiced), window):
                features = processor(voiced[start:start + window], sampling_rate=SAMPLE_RATE,
                                     return_tensors="pt").input_features.to(model.device, model.dtype)
                with torch.no_grad():
                    ids = model.generate(features, language="en", task="transcribe",
                                         max_new_tokens=24 if self.smoke else 200)
                texts.append(processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        text = " ".join(t for t in texts if t)
        edited = None
        if post_edit and text:
            messages = [{"role": "system", "content": "Fix the punctuation, casing and technical terms of this speech "
                         "transcript. Change no words otherwise. Reply with the transcript only."},
                        {"role": "user", "content": text}]
            edited = "".join(self._generate_text(messages)).strip()
        return {"text": text, "segments": [[round(a, 2), round(b, 2)] for a, b in segments],
                "seconds": round(len(audio) / SAMPLE_RATE, 2), "edited": edited, "model": self.source("speech")}

    def ask_image(self, image_path: Any, question: Any) -> dict[str, Any]:
        """The image-question tab: LLaVA (or the learner's adapter on it) answers about the picture."""
        import torch

        question = check_prompt(question, "question")
        image = read_image(image_path)
        with self.manager.use("vision") as (model, processor):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
            inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=16 if self.smoke else 120, do_sample=False)
            answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        return {"answer": answer, "model": self.source("vision")}

    def detect(self, image_path: Any, conf: float | None = None) -> tuple[Any, list[dict[str, Any]]]:
        """The detection tab: ``(picture with the boxes drawn, [{"label", "score", "box": [x0, y0, x1, y1]}])``."""
        from PIL import Image

        conf = self.detect_conf if conf is None else float(conf)
        if not 0.0 < conf < 1.0:
            raise BadInput(f"The confidence threshold must be between 0 and 1, not {conf}.")
        image = read_image(image_path)
        with self.manager.use("detector") as yolo:
            result = yolo.predict(image, imgsz=128 if self.smoke else 640, conf=conf, device=self.device,
                                  max_det=20 if self.smoke else 100, verbose=False)[0]
            drawn = Image.fromarray(result.plot()[..., ::-1])  # Ultralytics draws in BGR
            boxes = [{"label": result.names[int(c)], "score": float(f"{s:.3g}"), "box": [round(float(v), 1) for v in b]}
                     for b, c, s in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), result.boxes.conf.tolist())]
        return drawn, boxes

    def generate(self, prompt: Any, seed: int = 0, width: int = 512, height: int = 512,
                 steps: int | None = None) -> Any:
        """The image tab: Stable Diffusion (with the learner's LoRA when on disk) at a seed: same seed, same image."""
        import torch

        prompt = check_prompt(prompt, "prompt")
        for name, side in (("width", width), ("height", height)):
            if not isinstance(side, (int, float)) or int(side) != side or side % 8 or not 8 <= side <= self.max_image_side:
                raise BadInput(f"The {name} must be a multiple of 8 from 8 to {self.max_image_side} pixels, not {side}.")
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise BadInput(f"The seed must be a whole number, not {seed!r}.") from None
        with self.manager.use("image") as pipe:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            with torch.no_grad():
                image = pipe(prompt, width=int(width), height=int(height), num_inference_steps=steps or self.sd_steps,
                             generator=generator).images[0]
        return image


def _sections(markdown: str) -> list[tuple[str, str]]:
    """Split a note at its ``#`` headings: ``(heading, text)`` pairs (the text before the first heading: "intro")."""
    parts, heading, lines = [], "intro", []
    for line in markdown.splitlines():
        match = re.match(r"^#{1,4}\s+(.*)", line)
        if match:
            if "".join(lines).strip():
                parts.append((heading, "\n".join(lines).strip()))
            heading, lines = match.group(1).strip(), []
        else:
            lines.append(line)
    if "".join(lines).strip():
        parts.append((heading, "\n".join(lines).strip()))
    return parts


def bounded_history(history: Any) -> list[dict[str, str]]:
    """The turns of a chat history the model may see: user and assistant text only (a client cannot send a system
    prompt), the last :data:`MAX_HISTORY_TURNS`, then the oldest dropped past :data:`MAX_HISTORY_CHARS` characters."""
    turns = [{"role": t["role"], "content": t["content"]} for t in (history if isinstance(history, list) else [])
             if isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)]
    turns = turns[-MAX_HISTORY_TURNS:]
    total = sum(len(t["content"]) for t in turns)
    while turns and total > MAX_HISTORY_CHARS:
        total -= len(turns.pop(0)["content"])
    return turns


def describe_error(err: BaseException) -> str:
    """The message a user sees for a failed request: the course's sentence, or a short generic one."""
    if isinstance(err, CourseError):
        return str(err)
    return f"The request failed ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})."
