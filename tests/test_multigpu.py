"""Lesson 13's plumbing: the ZeRO estimator held to DeepSpeed's own, the shipped accelerate/DeepSpeed configs, and a
multi-process launch that never hangs a cell (a dead or hung rank is stopped and named)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from course_utils.core.memory import (GIB, LLAMA_3_1_8B, estimate_training_vram, estimate_zero_model_states)
from course_utils.topics.multigpu import ACCELERATE_CONFIGS, LaunchFailed, accelerate_command, free_port, launch

SIZES = (125e6, 1.3e9, 8.03e9, 13.0e9, 70e9)
WORLDS = (1, 2, 4, 8, 16)


@pytest.mark.parametrize("offload", [False, True], ids=["on-gpu", "offload"])
def test_estimator_matches_deepspeeds_own_for_zero2_and_zero3(offload):
    """The table of the lesson: model sizes x GPU counts x stages, GPU and CPU memory, against DeepSpeed 0.19.8."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    worst = 0.0
    for n in SIZES:
        largest = int(n / 40)
        for world in WORLDS:
            ds_cpu2, ds_gpu2 = estimate_zero2_model_states_mem_needs(int(n), world, 1, cpu_offload=offload)
            ours2 = estimate_zero_model_states(n, world, 2, offload_optimizer=offload)
            ds_cpu3, ds_gpu3, _ = estimate_zero3_model_states_mem_needs(int(n), largest, world, 1, cpu_offload=offload,
                                                                        cpu_offload_params=offload)
            ours3 = estimate_zero_model_states(n, world, 3, offload_optimizer=offload, offload_params=offload,
                                               largest_layer_params=largest)
            for ours, ds in ((ours2.gpu_gb, ds_gpu2), (ours2.cpu_gb, ds_cpu2), (ours3.gpu_gb, ds_gpu3),
                             (ours3.cpu_gb, ds_cpu3)):
                worst = max(worst, abs(ours - ds / GIB) / (ds / GIB))
    assert worst <= 1e-6, f"the course's ZeRO estimate is {worst:.2%} off DeepSpeed's"


def test_zero3_with_only_the_optimizer_offloaded_matches_deepspeed():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    n, largest = 13.0e9, int(13.0e9 / 40)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(int(n), largest, 4, 1, cpu_offload=True, cpu_offload_params=False)
    ours = estimate_zero_model_states(n, 4, 3, offload_optimizer=True, largest_layer_params=largest)
    assert ours.gpu_gb == pytest.approx(gpu / GIB, rel=1e-6) and ours.cpu_gb == pytest.approx(cpu / GIB, rel=1e-6)


def test_each_stage_splits_more_and_stage_1_splits_only_the_optimizer_state():
    n, world = LLAMA_3_1_8B.n_params, 8
    per_gpu = [estimate_zero_model_states(n, world, s, largest_layer_params=218e6).gpu_gb for s in (0, 1, 2, 3)]
    assert per_gpu == sorted(per_gpu, reverse=True) and per_gpu[0] > 3 * per_gpu[3]
    # DDP (stage 0): 20 bytes a parameter on every GPU; stage 1: 16-bit weights and gradients whole, the rest / N
    assert per_gpu[0] == pytest.approx(n * 20 / GIB)
    assert per_gpu[1] == pytest.approx(n * (2 + 2 + 16 / world) / GIB)
    with pytest.raises(ValueError, match="stage"):
        estimate_zero_model_states(n, world, 4)
    with pytest.raises(ValueError, match="stage 3"):
        estimate_zero_model_states(n, world, 2, offload_params=True)


def test_optimizer_offload_on_one_card_moves_the_state_off_and_changes_nothing_else():
    base = estimate_training_vram(LLAMA_3_1_8B, method="full", weight_bits=16, optimizer="adamw")
    off = estimate_training_vram(LLAMA_3_1_8B, method="full", weight_bits=16, optimizer="adamw", offload_optimizer=True)
    assert base.parts["optimizer state"] == pytest.approx(LLAMA_3_1_8B.n_params * 8 / GIB)
    assert off.parts["optimizer state"] == 0 and "CPU RAM" in off.notes[-1]
    assert base.total_gb - off.total_gb == pytest.approx(base.parts["optimizer state"])
    assert estimate_training_vram(LLAMA_3_1_8B).total_gb == estimate_training_vram(
        LLAMA_3_1_8B, offload_optimizer=False).total_gb  # the default is what it was


def test_shipped_configs_load_as_accelerate_and_deepspeed_read_them():
    from accelerate.commands.config.config_args import load_config_from_file
    from deepspeed.runtime.config import DeepSpeedConfig

    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED",
                "zero2_offload": "DEEPSPEED"}
    for name, kind in expected.items():
        config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
        assert str(config.distributed_type).split(".")[-1] == kind, name
        if kind == "FSDP":
            assert config.fsdp_config["fsdp_reshard_after_forward"] is True  # full shard
            assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"
        if kind == "DEEPSPEED":
            ds_file = ACCELERATE_CONFIGS.parents[1] / config.deepspeed_config["deepspeed_config_file"]
            ds = json.loads(ds_file.read_text())
            ds.update(train_micro_batch_size_per_gpu=2, train_batch_size=2)  # accelerate fills the "auto" values
            ds["bf16"]["enabled"] = True
            parsed = DeepSpeedConfig(ds)
            assert parsed.zero_optimization_stage == (3 if name == "zero3" else 2)
            assert (str(parsed.zero_config.offload_optimizer.device).endswith("cpu")
                    if name == "zero2_offload" else parsed.zero_config.offload_optimizer is None
                    or str(parsed.zero_config.offload_optimizer.device).endswith("none"))


def test_accelerate_command_uses_the_shipped_config_and_a_free_port():
    cmd = accelerate_command("fsdp", ["--max_steps", 3], num_processes=2, port=free_port())
    assert cmd[1:3] == ["launch", "--config_file"] and cmd[3].endswith("configs/accelerate/fsdp.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[-2:] == ["--max_steps", "3"]
    assert accelerate_command(None, ["--x", 1])[1].endswith("recipes/train_multi.py")


def test_a_run_whose_rank_dies_fails_with_its_name_and_exit_code():
    with pytest.raises(LaunchFailed, match=r"(?s)fsdp on 2 processes: exited with code 7.*rank 1 lost its GPU"):
        launch([sys.executable, "-c", "print('rank 1 lost its GPU'); raise SystemExit(7)"], "fsdp on 2 processes",
               timeout_s=60, echo=False)


def test_a_hung_run_is_stopped_at_its_limit_with_the_workers_it_started(tmp_path):
    pid_file = tmp_path / "worker.pid"
    launcher = ("import subprocess, sys, time\n"
                "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                f"open({str(pid_file)!r}, 'w').write(str(w.pid)); print('rank 0 waiting in all_reduce', flush=True)\n"
                "w.wait()")
    start = time.monotonic()
    with pytest.raises(LaunchFailed, match=r"(?s)ddp: still running after 2 s.*all_reduce"):
        launch([sys.executable, "-c", launcher], "ddp", timeout_s=2, echo=False)
    assert time.monotonic() - start < 15
    pid = int(pid_file.read_text())
    time.sleep(0.2)
    alive = Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    assert not alive, "the worker of the stopped run is still running"
