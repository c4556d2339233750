"""The course doctor (course_utils/doctor.py): the real report on this machine, and each failure branch with the
machine faked at its boundary (torch.cuda, the NVIDIA driver, /proc, Windows' RAM, bitsandbytes, the hub, the disk),
each giving its one sentence."""

from __future__ import annotations

import shutil
import sys
import time
import types
from collections import namedtuple

import pytest
import torch

from course_utils import doctor
from course_utils.core import gpu
from course_utils.core.memory import GIB

ALL_LESSONS = {f"{n:02d}" for n in range(18)}
REAL_BNB_FORWARD = doctor.bitsandbytes_forward  # the fixture fakes it; the bitsandbytes test puts it back


def _one_finding(checkup: doctor.Checkup, *words: str) -> str:
    """The checkup found exactly one problem, a single sentence holding ``words``; it is in the pasted block."""
    assert len(checkup.findings) == 1, [f.text for f in checkup.findings]
    text = checkup.findings[0].text
    assert "\n" not in text and text.rstrip().endswith((".", ")")), text
    for word in words:
        assert word in text, f"{word!r} not in: {text}"
    assert text in str(checkup)
    return text


def test_the_real_report_on_this_machine_runs_in_seconds_with_every_section(capsys):
    start = time.perf_counter()
    code = doctor.main([])
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert code == 0 and seconds < 10, (code, seconds)
    block = out[out.index("```text"):]
    assert block.rstrip().endswith("```") and block.count("```") == 2, out
    for name in doctor.SECTIONS:
        assert f"\n{name} " in block, f"section {name!r} missing from:\n{block}"
    assert "skipped: offline" in block  # the tests run with HF_HUB_OFFLINE=1
    checkup = doctor.run()
    assert [c.name for c in checkup.checks] == list(doctor.SECTIONS) and all(c.line for c in checkup.checks)
    assert "01" in checkup.full_mode_lessons  # scikit-learn needs no GPU: its full mode starts anywhere
    if not torch.cuda.is_available():  # this CPU machine: the GPU lessons start in smoke mode only
        assert "05" not in checkup.full_mode_lessons and "skipped" in checkup.section("bitsandbytes").line


# ------------------------------------------------------------------------------------------ a faked machine


@pytest.fixture
def machine(monkeypatch):
    """A machine to describe: no driver, nothing on the disk or the hub to worry about, GPU probes faked."""
    monkeypatch.setattr(gpu, "_driver_version", lambda: None)
    monkeypatch.setattr(doctor, "_windows_ram_gib", lambda: None)
    monkeypatch.setattr(doctor, "_sdpa_runs", lambda torch, backend: None)
    monkeypatch.setattr(doctor, "bitsandbytes_forward", lambda torch: None)
    monkeypatch.setattr(doctor, "_commit", lambda: "abc1234")
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2000e9, 1000e9, 1000e9))

    def card(name: str = "NVIDIA GeForce RTX 4070 Ti", cc: tuple[int, int] = (8, 9), box_gb: int = 12,
             arch: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"),
             emulated_bf16: bool = True) -> None:
        total = (box_gb * 1024 - 6) * GIB // 1024  # a 12 GB card reports 12282 MiB
        props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1], total_memory=total)
        monkeypatch.setattr(gpu, "_driver_version", lambda: "580.95.05")
        monkeypatch.setattr(torch.version, "cuda", "13.0")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total - GIB, total))
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: cc >= (8, 0) or (including_emulation and emulated_bf16))

    return card


def test_a_healthy_12gb_card_has_no_problem_and_every_lesson_starts_in_full_mode(machine):
    machine()
    checkup = doctor.run()
    assert checkup.findings == [] and checkup.exit_code == 0, [f.text for f in checkup.findings]
    assert set(checkup.full_mode_lessons) == ALL_LESSONS
    assert "native" in checkup.section("bf16").line and "ran on the card" in checkup.section("bitsandbytes").line
    assert "runs CUDA 13.0" in checkup.section("driver").line


def test_an_8gb_card_starts_the_lessons_choose_device_lets_start(machine):
    machine(name="NVIDIA GeForce RTX 4060", box_gb=8)
    checkup = doctor.run()
    assert set(checkup.full_mode_lessons) == ALL_LESSONS - {"06", "13"}  # 06 asks 10 GB, 13 asks 11 GB
    assert "06 (needs 10 GB of VRAM); 13 (needs 11 GB of VRAM)" in checkup.section("full mode").line


def test_cpu_build_of_torch_on_a_machine_with_an_nvidia_driver(machine, monkeypatch):
    monkeypatch.setattr(gpu, "_driver_version", lambda: "580.95.05")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: [])
    checkup = doctor.run()
    _one_finding(checkup, "CPU-only build", "580.95.05", "reinstall")
    assert "CPU-only build" in checkup.section("torch").line and checkup.exit_code == 0


def test_a_card_newer_than_the_build_s_kernels(machine):
    machine(name="NVIDIA GeForce RTX 5070", cc=(12, 0), arch=("sm_75", "sm_80", "sm_86", "sm_90"))
    checkup = doctor.run()
    _one_finding(checkup, "RTX 5070", "compute capability 12.0", "cannot run this PyTorch", "smoke mode")
    assert "no kernels" in checkup.section("gpu").line
    assert checkup.full_mode_lessons == ["01", "16"]  # only the lessons that need no GPU


def test_wsl_cap_below_half_the_host_ram_says_how_to_write_wslconfig(machine, monkeypatch):
    files = {"/proc/sys/kernel/osrelease": "6.6.87.2-microsoft-standard-WSL2\n",
             "/proc/meminfo": "MemTotal:        8045000 kB\nMemFree: 1 kB\n"}
    monkeypatch.setattr(doctor, "_read_text", lambda path: files.get(path, ""))
    monkeypatch.setattr(doctor, "_windows_ram_gib", lambda: 32.0)
    text = _one_finding(doctor.run(), "7.7 GiB", "32.0 GiB", ".wslconfig", "memory=24GB", "UTF-8", "wsl --shutdown")
    assert "UTF-16" in text
    files["/proc/meminfo"] = "MemTotal:        16340000 kB\n"  # WSL's default: half of the host's 32 GiB
    checkup = doctor.run()
    assert checkup.findings == [] and "WSL2; Linux sees 15.6 GiB of RAM of the host's 32.0 GiB" in str(checkup)


def test_emulated_bf16_on_a_t4_is_not_taken_for_bf16(machine):
    machine(name="Tesla T4", cc=(7, 5), box_gb=16, emulated_bf16=True)
    assert torch.cuda.is_bf16_supported()  # what PyTorch says on a T4: True, through emulation
    checkup = doctor.run()
    _one_finding(checkup, "Tesla T4", "7.5", "emulation", "fp16 with a gradient scaler", "bf16_native")
    assert checkup.section("bf16").line.startswith("emulated only")


def test_bitsandbytes_failing_on_the_card(machine, monkeypatch):
    machine()
    monkeypatch.setattr(doctor, "bitsandbytes_forward", REAL_BNB_FORWARD)  # the real probe, on a fake library

    class Linear4bit:  # bitsandbytes quantises the weights when the layer moves to the card: where it breaks
        def __init__(self, *args, **kwargs):
            pass

        def to(self, device):
            raise RuntimeError("CUDA Setup failed despite GPU being available. Please run python -m bitsandbytes")

    fake = types.ModuleType("bitsandbytes")
    fake.nn = types.SimpleNamespace(Linear4bit=Linear4bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    checkup = doctor.run()
    _one_finding(checkup, "cannot run a 4-bit layer", "RTX 4070 Ti", "CUDA Setup failed", "python -m bitsandbytes")
    assert "FAILED" in checkup.section("bitsandbytes").line and checkup.exit_code == 0


def test_a_gated_model_answering_403_gives_the_licence_sentence(machine, monkeypatch):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(doctor, "_hub_reachable", lambda *args, **kwargs: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_not_a_real_token")
    asked = []

    def auth_check(repo_id, **kwargs):
        asked.append(repo_id)
        url = f"https://huggingface.co/api/models/{repo_id}/auth-check"
        raise GatedRepoError(f"Access to model {repo_id} is restricted and you are not in the authorized list.",
                             response=httpx.Response(403, request=httpx.Request("GET", url)))

    monkeypatch.setattr(huggingface_hub, "auth_check", auth_check)
    checkup = doctor.run()
    model = "meta-llama/Llama-3.1-8B-Instruct"
    assert asked == [model]
    _one_finding(checkup, model, "gated", f"https://huggingface.co/{model}", "Qwen/Qwen2.5-7B-Instruct")
    assert "a token is saved" in checkup.section("hub").line and "hf_not_a_real_token" not in str(checkup)


def test_low_disk_names_the_lessons_that_do_not_fit(machine, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100e9, 90e9, 10e9))
    text = _one_finding(doctor.run(), "Only 10.0 GB is free", "HF_HOME", "05", "11")
    declared = doctor.lesson_downloads()
    assert declared["05"] and doctor.shared_total(declared) < sum(sum(v) for v in declared.values())
    assert f"download {doctor.shared_total(declared):g} GB" in text


def test_a_broken_torch_import_is_the_one_exit_1(machine, monkeypatch, capsys):
    def broken():
        raise ImportError("libcudnn.so.9: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(doctor, "_import_torch", broken)
    assert doctor.main([]) == 1
    out = capsys.readouterr().out
    assert "libcudnn.so.9" in out and "rm -r .venv && make setup" in out and "[stops every lesson]" in out


def test_a_gpu_pytorch_sees_but_cannot_open_is_one_sentence_not_a_traceback(machine, monkeypatch):
    machine()

    def broken(device=None):
        raise RuntimeError("CUDA error: unknown error\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(torch.cuda, "get_device_properties", broken)
    checkup = doctor.run()
    _one_finding(checkup, "cannot use it", "RuntimeError: CUDA error: unknown error", "nvidia-smi")
    assert checkup.exit_code == 0 and "NVIDIA 580.95.05" in checkup.section("driver").line


def test_every_lesson_s_choose_device_call_is_read_from_its_notebook():
    needs = doctor.lesson_requirements()
    assert set(needs) == ALL_LESSONS and doctor.UNREAD not in {m for m, _ in needs.values()}
    assert needs["01"] == (None, False) and needs["06"] == (10, False) and needs["13"] == (11, False)
    assert doctor.full_mode_verdict(None, doctor.UNREAD, False) == "its choose_device call could not be read"
