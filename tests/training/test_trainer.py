"""The trainer end to end: it learns, it resumes exactly, it runs under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medblip_dicom import caption_dicom
from medblip_dicom.apps.main import main
from medblip_dicom.training.config import TrainConfig
from medblip_dicom.training.trainer import train


def test_tiny_blip_learns_the_synthetic_set_and_the_library_loads_it(synthetic_root, small_model_dir, tmp_path,
                                                                     capsys, td, validate_sr):
    run = tmp_path / "run"
    started = time.perf_counter()
    rc = main(["train", "--data", str(synthetic_root), "--base-model", str(small_model_dir), "--out", str(run),
               "--epochs", "30", "--batch-size", "16", "--lr", "2e-3", "--seed", "0", "--device", "cpu",
               "--max-length", "24", "--keep-last", "1", "--model-name", "synthetic-blip", "-q"])
    train_seconds = time.perf_counter() - started
    assert rc == 0
    # what a run writes
    assert json.loads((run / "config.json").read_text())["epochs"] == 30
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 30 and {"bleu4", "sentence_bleu4", "train_loss", "tokenisation"} <= set(json.loads(lines[-1]))
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "checkpoints").iterdir())) == 1
    provenance = json.loads((run / "best" / "medblip_provenance.json").read_text())
    assert provenance["model_name"] == "synthetic-blip" and provenance["data"]["layout"] == "roco"
    assert provenance["preprocessing"]["size"] == {"height": 64, "width": 64}

    # held-out images, through `medblip evaluate` (the inference path)
    capsys.readouterr()
    rc = main(["evaluate", "--model", str(run / "best"), "--data", str(synthetic_root), "--split", "test",
               "--device", "cpu", "--dtype", "float32", "--num-beams", "1", "-q"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    metrics = json.loads(out[-1])
    print(f"\ntrained in {train_seconds:.0f} s; held-out corpus BLEU-4 {metrics['bleu4']:.3f}, "
          f"sentence BLEU-4 {metrics['sentence_bleu4']:.3f} on {metrics['samples']} images")
    assert metrics["samples"] == 48
    assert metrics["bleu4"] >= 0.9

    # the exported directory is a model caption_dicom() loads as it is
    result = caption_dicom(td("RG1_UNCI.dcm"), model=run / "best", output_dir=tmp_path / "srs", device="cpu")
    assert "chest radiograph showing" in result.caption.lower()
    validate_sr(result.sr_path)
    assert json.loads((run / "best" / "medblip_provenance.json").read_text())["weights_sha256"] in str(
        result.sr.DeviceSerialNumber)


def _config(data: Path, model: Path, out: Path, **extra) -> TrainConfig:
    return TrainConfig(data=str(data), base_model=str(model), out=str(out), epochs=2, batch_size=4, lr=1e-3,
                       device="cpu", seed=3, max_length=24, save_every=5, keep_last=3, **extra)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").iterdir(), key=lambda p: p.name)[-1]
    return load_file(last / "model.safetensors")


def test_killed_run_resumes_to_the_same_weights(synthetic_root, tiny_model_dir, tmp_path):
    data_limit = {"max_train_samples": 160, "max_eval_samples": 8}
    straight = tmp_path / "straight"
    train(_config(synthetic_root, tiny_model_dir, straight, **data_limit), progress=False)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medblip_dicom", "train", "--data", str(synthetic_root), "--base-model",
           str(tiny_model_dir), "--out", str(killed), "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
           "--device", "cpu", "--seed", "3", "--max-length", "24", "--save-every", "5", "--keep-last", "3",
           "--max-train-samples", "160", "--max-eval-samples", "8", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoints" / "step-00000005").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    steps_at_kill = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert "step-00000080" not in steps_at_kill  # it really was stopped before the end

    state = train(_config(synthetic_root, tiny_model_dir, killed, **data_limit), resume=True, progress=False)
    assert state["epoch"] == 2 and state["step"] == 80
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # no half-written checkpoint is ever visible, and only the last K are kept
    names = [p.name for p in (killed / "checkpoints").iterdir()]
    assert len(names) == 3 and all(n.startswith("step-") for n in names)


def test_torchrun_two_processes_on_cpu(kaggle_root, tiny_model_dir, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medblip_dicom", "train", "--data", str(kaggle_root), "--base-model", str(tiny_model_dir),
           "--out", str(run), "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--max-length", "24",
           "--keep-last", "5", "-q"]
    # its own session, so that on a timeout the launcher and both ranks are stopped together
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    # 24 rows / (2 ranks x 4) = 3 steps per epoch: one checkpoint per epoch end, written once
    assert checkpoints == ["step-00000003", "step-00000006"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    assert json.loads(lines[-1])["samples"] == 8  # every validation row, gathered from both ranks
    assert (run / "best" / "model.safetensors").exists()


@pytest.mark.parametrize("bad, message", [({"epochs": 0}, "epochs"), ({"precision": "fp8"}, "precision"),
                                          ({"train_split": "dev"}, "unknown split")])
def test_config_is_validated(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", base_model="m", out=str(tmp_path), **bad)


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text('[train]\ndata = "roco"\nbase_model = "m"\nout = "run"\nepochs = 7\nlr = 0.001\n')
    config = TrainConfig.from_sources(cfg, {"epochs": 2, "lr": None})
    assert (config.epochs, config.lr, config.data) == (2, 0.001, "roco")
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_sources(None, {"data": "d", "base_model": "m", "out": "o", "epoch": 3})
