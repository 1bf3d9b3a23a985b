"""DDP: 2 gloo ranks of batch B give the parameter gradients of 1 rank of batch 2B (both heads)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detloss.detection.data import SyntheticScenes, collate
from detloss.detection.train import TrainConfig, build_loss_fn, build_model, training_loss

BATCH = 3
SIZE = 32


def config(head: str = "yolov3") -> TrainConfig:
    return TrainConfig(head=head, image_size=SIZE, train_images=2 * BATCH, val_images=1, width=8, box_loss="ciou")


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _rank(rank: int, world_size: int, port: int, folder: str, head: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = config(head)
        data = SyntheticScenes(2 * BATCH, SIZE, seed=0)
        model = build_model(cfg, data)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        # rank r takes images r*B .. r*B + B - 1 of the 2B of the single-process batch
        images, targets = collate([data[i] for i in range(rank * BATCH, (rank + 1) * BATCH)])
        out = training_loss(ddp, build_loss_fn(cfg), images, targets, SIZE)
        out["objective"].backward()
        torch.save({"grads": gradients(model), "loss": out["loss"].detach()}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("head", ["yolov3", "anchor-free"])
def test_two_ranks_of_b_equal_one_rank_of_2b(tmp_path: Path, head: str) -> None:
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path), head), nprocs=2, join=True)
    cfg = config(head)
    data = SyntheticScenes(2 * BATCH, SIZE, seed=0)
    model = build_model(cfg, data)
    images, targets = collate([data[i] for i in range(2 * BATCH)])
    assert sum(len(t["boxes"]) for t in targets) > 2 * BATCH  # several objects per image
    out = training_loss(model, build_loss_fn(cfg), images, targets, SIZE)
    out["objective"].backward()
    single = gradients(model)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # each rank's loss is its share of the global loss: the shares add up to it
    torch.testing.assert_close(ranks[0]["loss"] + ranks[1]["loss"], out["loss"].detach(), rtol=1e-5, atol=1e-6)
    assert set(single) == set(ranks[0]["grads"]) and len(single) > 10
    for rank in ranks:
        for name, grad in single.items():
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the check can fail: without the world-size factor the gradients would be half as large
    name = max(single, key=lambda n: float(single[n].abs().max()))
    assert not torch.allclose(ranks[0]["grads"][name] / 2, single[name], rtol=1e-4, atol=1e-6)
