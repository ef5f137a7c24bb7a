"""Multi-process training: sharding of the seeded epoch order, the per-example loss weights that make the gradient
independent of the number of processes, torchrun's environment; and (slow) real two-process gloo runs under
torchrun against one process with the same global batch, and their exact resume."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import cvae
from cvae import CVAEError, distributed
from cvae.checkpoint import latest_checkpoint, load_checkpoint
from cvae.data import TensorData, iterate_batches
from cvae.train import Trainer
from conftest import TINY_SETTINGS, load_tiny
from faults import differences, final_state, processes_drill, torchrun_command

SETS = [arg for item in TINY_SETTINGS for arg in ("--set", item)]


class Plain(Dataset):
    """A split that is not a TensorData: batches go through a DataLoader."""

    def __init__(self, data: TensorData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def _ids(batches) -> list[list[int]]:
    return [conds["id"].tolist() for conds, _ in batches]


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("n, batch_size, world", [(10, 4, 2), (10, 4, 3), (9, 3, 4), (7, 7, 2)])
def test_shards_of_each_batch_make_up_the_single_process_batch(n, batch_size, world, plain):
    data = TensorData(torch.zeros(n, 1), {"id": torch.arange(n)})
    split = Plain(data) if plain else data
    whole = _ids(iterate_batches(split, batch_size, shuffle=True, generator=torch.Generator().manual_seed(3)))
    shards = [_ids(iterate_batches(split, batch_size, shuffle=True, generator=torch.Generator().manual_seed(3),
                                   shard=(rank, world))) for rank in range(world)]
    for b, batch in enumerate(whole):
        taken = [shards[r][b] for r in range(world) if distributed.shard_size(len(batch), r, world)]
        assert sorted(sum(taken, [])) == sorted(batch)
        for r in range(world):
            share = distributed.shard_size(len(batch), r, world)
            assert len(shards[r][b]) == max(share, 1)  # an empty share still gets one example, weighted zero
            assert shards[r][b] == (batch[r::world] if share else batch[:1])
    # resuming mid-epoch starts every rank at the same global batch
    later = _ids(iterate_batches(split, batch_size, shuffle=True, generator=torch.Generator().manual_seed(3),
                                 start=1, shard=(world - 1, world)))
    assert later == shards[world - 1][1:]


def test_loss_weights_make_the_averaged_gradient_that_of_the_global_batch(tiny_config, monkeypatch):
    """What DistributedDataParallel computes (the mean over ranks of each rank's gradient) with the trainer's weights
    equals one process's gradient of the whole batch, for uneven and empty shares."""
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # no noise: both sides see the same z
    cfg = tiny_config()
    data = load_tiny()
    model = cvae.build_model(cfg, data.target, data.conditions)

    def grads(conds, y, weight=1.0):
        model.zero_grad()
        (model(conds, y).loss * weight).backward()
        return [p.grad.clone() for p in model.parameters()]

    for size, world in ((5, 2), (7, 3), (1, 2), (2, 4)):
        idx = torch.arange(size)
        whole = grads(*data.train.batch(idx))
        per_rank = []
        for rank in range(world):
            part = idx[rank::world] if rank < size else idx[:1]
            per_rank.append(grads(*data.train.batch(part), weight=distributed.loss_weight(size, rank, world)))
        for g, *gs in zip(whole, *per_rank):
            torch.testing.assert_close(sum(gs) / world, g, rtol=1e-5, atol=1e-6)


def test_the_context_comes_from_torchruns_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.context() == distributed.Context(0, 1, 0) and not distributed.context().distributed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = distributed.context()
    assert ctx.distributed and not ctx.is_main and ctx.local_rank == 1
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(CVAEError, match="RANK 2 is not within WORLD_SIZE 2"):
        distributed.context()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(CVAEError, match="must be integers"):
        distributed.context()


def test_a_rank_without_torchrun_says_how_to_start_one(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(CVAEError, match=r"cannot join the gloo process group as rank 0 of 2: .*start multi-process "
                                        r"runs with torchrun"):
        Trainer(tiny_config(), tmp_path / "run")


def test_noise_seeds_differ_by_rank_and_rank_0_keeps_the_runs_own():
    seeds = {distributed.noise_seed(5, r) for r in range(8)}
    assert len(seeds) == 8 and distributed.noise_seed(5, 0) == distributed.noise_seed(5, 0)


# -- real processes -------------------------------------------------------------------------------------------------


def torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(torchrun_command(2, ["train", *SETS, *args], tiny=True), capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_gloo_processes_follow_the_one_process_loss_curve_and_resume_exactly(tiny, tmp_path):
    """Same global batch (32): the loss curves differ only through the latent noise, which each rank draws from its
    own seed; a two-process run stopped after epoch 2 and resumed ends bitwise where an unstopped one does."""
    args = ["--set", "train.epochs=3"]
    result = processes_drill([*SETS, *args], tmp_path / "curves", nproc=2, tiny=True, timeout=300)
    print(json.dumps({k: v for k, v in result.items() if k != "stderr"}, indent=1))
    assert "(rank 1 of 2)" in result["stderr"] and "(rank 0 of 2)" in result["stderr"]
    assert result["max_relative_difference"]["loss"] < 0.01
    assert result["max_relative_difference"]["test_elbo"] < 0.01

    whole = tmp_path / "curves" / "2procs"
    state = load_checkpoint(latest_checkpoint(whole / "checkpoints"))
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])

    torchrun(tmp_path, "--set", "train.epochs=2", "--out", str(tmp_path / "cut"))
    torchrun(tmp_path, "--set", "train.epochs=3", "--out", str(tmp_path / "cut"), "--resume")
    assert differences(final_state(whole), final_state(tmp_path / "cut")) == []


def test_the_readme_gives_the_torchrun_command_and_the_security_switches():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "torchrun --standalone --nproc-per-node 2 -m cvae train --out runs/digits-2p" in readme
    assert "torchrun --standalone --nproc-per-node 2 -m cvae train --out runs/digits-2p --resume" in readme
    assert "`CVAE_LOAD_THIRD_PARTY=0`" in readme and "`CVAE_PLUGINS=`" in readme and "weights_only=True" in readme


def test_one_process_resumes_a_multi_process_checkpoint_with_rank_0s_noise(tiny_config, tmp_path):
    """A checkpoint written by two processes (faked here: rank 1's generator state added) resumes in one process,
    which continues with rank 0's generator; a rank without a saved state would get a fresh seeded stream."""
    Trainer(tiny_config("train.epochs=1"), tmp_path / "run").fit()
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = torch.load(path, weights_only=True)
    rank1 = torch.Generator().manual_seed(99).get_state()
    state.update(world_size=2, rng_ranks=[state["rng"], {"torch": rank1}])
    torch.save(state, path)
    torch.manual_seed(123)
    trainer = Trainer(tiny_config("train.epochs=2"), tmp_path / "run", resume=True)
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    trainer.fit()
    assert trainer.step == 12
