"""Helpers for the checkpoint tests: trained parts, a model_dir of saves, and ways to damage a file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from torch_estimator import checkpoint as ckpt

from .conftest import TinyNet


def trained_parts():
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def save_steps(model_dir, steps, keep=5):
    manager = ckpt.CheckpointManager(str(model_dir), keep_checkpoint_max=keep)
    for step in steps:
        torch.manual_seed(step)
        manager.save(step, {"model": TinyNet()})
    return manager


def truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 7])


def zero(path):
    Path(path).write_bytes(bytes(os.path.getsize(path)))


def flip_a_data_byte(path):
    data = bytearray(Path(path).read_bytes())
    data[-3] ^= 0x01
    Path(path).write_bytes(bytes(data))
