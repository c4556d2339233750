"""Lesson 13's plumbing: the ZeRO estimator held to DeepSpeed's own (and the lesson's prose to the estimator), the
shipped accelerate/DeepSpeed configs, a multi-process launch that never hangs a cell (a dead or hung rank is stopped
and named), and ``make engines``: ZeRO-2 and ZeRO-3 trained on two CPU processes, and a non-zero exit when an engine
leaves the single-process loss curve."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from course_utils.core.memory import (GIB, LLAMA_3_1_8B, QWEN2_5_7B, ModelShape, estimate_training_vram,
                                      estimate_zero_model_states)
from course_utils.core.paths import REPO_ROOT
from course_utils.topics import multigpu
from course_utils.topics.multigpu import (ACCELERATE_CONFIGS, CURVE_TOLERANCE, LaunchFailed, accelerate_command,
                                          curve_problems, free_port, launch)

MODEL_STATES = ("weights", "gradients", "optimizer state")

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


def test_full_training_in_16_bit_counts_what_deepspeed_counts_on_one_gpu():
    """16-bit weights train with fp32 master weights and fp32 gradients (2 + 2 + 4 + 4 + 8 = 20 bytes a parameter with
    AdamW): the one-card plan is DeepSpeed's own estimate for one GPU, ZeRO stage 0 of the course's estimator, and
    with ZeRO-Offload the card keeps the 16-bit weights, as DeepSpeed's cpu_offload estimate says."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    for shape in (LLAMA_3_1_8B, QWEN2_5_7B, ModelShape.from_params(125e6)):
        n = shape.n_params
        plans = {off: estimate_training_vram(shape, method="full", weight_bits=16, optimizer="adamw",
                                             offload_optimizer=off) for off in (False, True)}
        for off, est in plans.items():
            _, ds_gpu = estimate_zero2_model_states_mem_needs(int(n), 1, 1, cpu_offload=off)
            assert sum(est.parts[k] for k in MODEL_STATES) == pytest.approx(ds_gpu / GIB, rel=1e-6), (shape.name, off)
        assert sum(plans[False].parts[k] for k in MODEL_STATES) == pytest.approx(
            estimate_zero_model_states(n, 1, 0).gpu_gb)
        # the optimizer state is the fp32 master copy and AdamW's two moments (12 bytes): what the lesson calls it
        assert plans[False].parts["optimizer state"] == pytest.approx(n * 12 / GIB)
        assert "CPU RAM" in plans[True].notes[-1]
        # offloading moves model states only: activations, logits and overhead stay
        rest = [k for k in plans[False].parts if k not in MODEL_STATES]
        assert all(plans[True].parts[k] == plans[False].parts[k] for k in rest)


def test_pure_16_bit_and_fp32_training_count_no_master_copy():
    n = LLAMA_3_1_8B.n_params
    pure = estimate_training_vram(LLAMA_3_1_8B, method="full", weight_bits=16, optimizer="paged_adamw_8bit",
                                  master_weights=False)
    assert sum(pure.parts[k] for k in MODEL_STATES) == pytest.approx(n * (2 + 2 + 2) / GIB)
    fp32 = estimate_training_vram(LLAMA_3_1_8B, method="full", optimizer="adamw")  # the weights are the master
    assert sum(fp32.parts[k] for k in MODEL_STATES) == pytest.approx(n * (4 + 4 + 8) / GIB)
    assert estimate_training_vram(LLAMA_3_1_8B).total_gb == estimate_training_vram(
        LLAMA_3_1_8B, offload_optimizer=False).total_gb  # the default is what it was


def _lesson_13():
    return {c["id"]: "".join(c["source"]) for c in
            json.loads((REPO_ROOT / "notebooks" / "13_beyond_one_card.ipynb").read_text())["cells"]}


def test_lesson_13_prose_says_what_its_plan_computes():
    """The numbers in part 1's prose are the ones the lesson's plan cell computes with the estimator."""
    import course_utils as cu

    cells = _lesson_13()
    scope = {"cu": cu, "GIB": GIB, "ModelShape": ModelShape, "estimate_training_vram": estimate_training_vram,
             "OPT_MODEL_ID": "Qwen/Qwen2.5-1.5B", "print": lambda *a, **k: None}
    exec(cells["b2361245"], scope)  # the plan cell: opt_plan (GiB per plan), adamw_parts, model_states_gb
    intro = " ".join((cells["4392579f"] + " " + cells["3596e23a"]).split())  # part 1's intro, in two cells
    after = " ".join((cells["1e3c6c84"] + " " + cells["845a3896"]).split())
    per_param = scope["model_states_gb"] * GIB / scope["qwen_1_5b"].n_params
    plan = scope["opt_plan"]
    expected = {intro: [f"costs {per_param:.0f} bytes a parameter", f"is ~{scope['model_states_gb']:.0f} GiB",
                        f"optimizer state alone (~{scope['adamw_parts']['optimizer state']:.0f} GiB)"],
                after: [f"AdamW on the card: ~{plan['AdamW on the card']:.0f} GiB",
                        f"in CPU RAM: ~{plan['AdamW, state in CPU RAM (ZeRO-Offload)']:.1f} GiB",
                        f"on bf16 weights: ~{plan['paged 8-bit AdamW, bf16 weights']:.1f} GiB",
                        f"{plan['paged 8-bit AdamW, bf16 weights']:.1f} GiB is over the line"]}
    for text, phrases in expected.items():
        for phrase in phrases:
            assert phrase in text, f"lesson 13's prose should say {phrase!r} (the estimator's number): {text[:200]}"
    assert per_param == pytest.approx(20)


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


# --- make engines ------------------------------------------------------------------------------------------------
def _run(losses, engine="DEEPSPEED"):
    return {"engine": engine, "history": {"loss": list(losses)},
            "ranks": [{"rank": 0, "param_bytes": 4, "grad_bytes": 4, "optimizer_bytes": 8}]}


def test_curve_check_names_the_engine_that_strays_and_a_reference_that_learned_nothing():
    single = [4.0, 3.5, 3.0]
    ok = {"single": _run(single, "NO"), "zero2": _run([4.0, 3.5 + 5e-5, 3.0])}
    assert curve_problems(ok, CURVE_TOLERANCE["no"]) == []
    off = {**ok, "zero3": _run([4.0, 3.5, 3.002])}
    (problem,) = curve_problems(off, CURVE_TOLERANCE["no"])
    assert problem.startswith("zero3:") and "2.00e-03 (step 2)" in problem
    assert curve_problems({**ok, "ddp": _run([4.0, float("nan"), 3.0])}, 1e-4)  # NaN is no match
    assert "steps" in curve_problems({**ok, "fsdp": _run([4.0, 3.5])}, 1e-4)[0]
    flat = {"single": _run([4.0, 4.0, 4.0], "NO"), "ddp": _run([4.0, 4.0, 4.0])}
    assert "did not fall" in curve_problems(flat, 1e-4)[0]


def test_make_engines_exits_non_zero_when_an_engine_leaves_the_curve(monkeypatch, tmp_path, capsys):
    """main() as `make engines` runs it, with launches that write the runs' metrics: exit 0 when every engine follows
    the single process, 1 (and a sentence naming the engine) when one strays by more than the tolerance."""
    curves = {"single": [4.0, 3.6, 3.2, 3.0], "ddp": [4.0, 3.6, 3.2, 3.0], "zero3": [4.0, 3.6, 3.2, 3.0]}

    def fake_launch(cmd, name, **kwargs):
        out = Path(cmd[cmd.index("--output_dir") + 1])
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(_run(curves[out.name])))
        return ""

    monkeypatch.setattr(multigpu, "launch", fake_launch)
    assert multigpu.main(["--engines", "ddp", "zero3", "--output_dir", str(tmp_path / "a")]) == 0
    curves["zero3"] = [4.0, 3.6, 3.2 + 1e-3, 3.0]  # the defect: one engine's curve strays at step 2
    assert multigpu.main(["--engines", "ddp", "zero3", "--output_dir", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "zero3: its loss left the single-process curve by 1.00e-03" in err and "ddp" not in err


def test_make_engines_trains_zero2_and_zero3_on_two_cpu_processes(tmp_path, capsys, monkeypatch):
    """DeepSpeed ZeRO-2 and ZeRO-3 for real (gloo, nothing compiled): the single-process loss curve within 1e-4, and
    each rank holds what its stage splits: ZeRO-2 the whole fp32 weights, ZeRO-3 half of them. Every run goes through
    tests/collective_guard.py: a collective given a tensor the recipe made without ``device=accelerator.device`` fails
    the run, as NCCL would on GPUs (tests/test_collectives.py holds the guard to that)."""
    extensions = tmp_path / "torch_extensions"  # where DeepSpeed would build its CPU ops
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    monkeypatch.setattr(multigpu, "RECIPE", Path(__file__).with_name("collective_guard.py"))
    start = time.monotonic()
    rc = multigpu.main(["--engines", "zero2", "zero3", "--max_steps", "4", "--output_dir", str(tmp_path),
                        "--timeout_s", "240"])
    assert rc == 0, capsys.readouterr().err
    runs = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("single", "zero2", "zero3")}
    full = runs["single"]["ranks"][0]
    for name in ("zero2", "zero3"):
        run = runs[name]
        assert run["engine"] == "DEEPSPEED" and run["world_size"] == 2 and run["backend"] == "gloo"
        assert len(run["history"]["loss"]) == 4 and run["val_loss"] < run["first_val_loss"]
        shares = [r["param_bytes"] / full["param_bytes"] for r in run["ranks"]]
        assert shares == pytest.approx([1.0, 1.0] if name == "zero2" else [0.5, 0.5], abs=0.01), (name, shares)
        # AdamW's two moments and the fp32 master weights, split over 2 ranks: (8 + 4) / 2 of the single's 8 bytes
        assert [r["optimizer_bytes"] / full["optimizer_bytes"] for r in run["ranks"]] == pytest.approx([0.75, 0.75],
                                                                                                       abs=0.01)
    assert not extensions.exists(), f"DeepSpeed compiled an op on CPU: {sorted(p.name for p in extensions.iterdir())}"
    print(f"single + ZeRO-2 + ZeRO-3, 4 steps, guarded: {time.monotonic() - start:.0f} s")


def test_the_lessons_ddp_and_sharding_by_hand_follow_one_rank_and_split_the_bytes():
    """Lesson 13's train_by_hand (the engines written out): N ranks, whole or sharded (3 ranks: uneven pieces), give
    one rank's loss curve, and a sharded rank keeps its piece of every weight, gradient and AdamW moment."""
    import math

    import torch
    from tqdm.auto import tqdm

    from course_utils.topics.gpt import GPT, GPTConfig

    cells = _lesson_13()
    scope = {"torch": torch, "math": math, "tqdm": tqdm}
    exec(next(src for src in cells.values() if "def train_by_hand(" in src), scope)
    text = (REPO_ROOT / "datasets" / "course" / "tiny_corpus" / "lamplighter.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    tokens = torch.tensor([chars.index(c) for c in text[:20_000]])
    config = GPTConfig(vocab_size=len(chars), block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    runs = {}
    for world, shard in ((1, False), (2, False), (3, True)):
        torch.manual_seed(0)
        runs[world] = scope["train_by_hand"](GPT(config), tokens, world, shard, steps=4, block_size=16, global_batch=6,
                                             lr=3e-3, warmup=1, seed=0)
    one, (one_rank,) = runs[1][0], runs[1][1]
    for world in (2, 3):
        assert max(abs(a - b) for a, b in zip(one, runs[world][0])) <= 1e-5, f"{world} ranks left one rank's curve"
    assert runs[2][1] == [one_rank, one_rank], "every DDP rank keeps everything"
    for kind in one_rank:
        assert sum(r[kind] for r in runs[3][1]) == one_rank[kind], f"the three pieces of {kind} add up to the whole"
        assert max(r[kind] for r in runs[3][1]) < 0.4 * one_rank[kind], f"a sharded rank keeps ~1/3 of {kind}"
