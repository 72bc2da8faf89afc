"""Batches of cached teacher states on the training device (docs/science.md §4): resident on the device when they
fit, else streamed from the (memory-mapped) array through pinned host memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


class StateBatches:
    """Batches of teacher states [B, L+1, T, D] from an array of [N, L+1, T, D].

    The whole array is moved to the device once when it fits under `device_budget`
    bytes (no host traffic in the step loop: the epoch's order goes to the device once
    and batches are gathered there); otherwise batches stream from the (memory-mapped)
    array through pinned host memory with non-blocking copies, the next batch read by a
    background thread while the current one trains.
    """

    def __init__(
        self,
        states: np.ndarray,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        device_budget: int | None = None,
    ):
        self.states, self.batch_size, self.device = states, batch_size, device
        self.rank, self.world_size = rank, world_size
        budget = device_budget if device_budget is not None else default_budget(device)
        self.resident = torch.from_numpy(np.array(states)).to(device) if states.nbytes <= budget else None

    def __len__(self) -> int:
        per_rank = len(self.states) // self.world_size
        return max(1, per_rank // self.batch_size)

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)

    def _read(self, idx: torch.Tensor) -> torch.Tensor:
        host = torch.from_numpy(self.states[np.sort(idx.numpy())])
        return host.pin_memory() if self.device.type == "cuda" else host

    def epoch(self, epoch: int, seed: int):
        order = torch.randperm(len(self.states), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        shard = order[self.rank :: self.world_size]
        chunks = [shard[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]
        if self.resident is not None:
            on_device = self._to_device(shard)  # one copy per epoch; no host sync per step
            for i in range(len(self)):
                yield torch.index_select(self.resident, 0, on_device[i * self.batch_size : (i + 1) * self.batch_size])
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._read, chunks[0])
            for i in range(len(chunks)):
                host = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self._read, chunks[i + 1])
                yield host.to(self.device, non_blocking=True)


def default_budget(device: torch.device) -> int:
    """Bytes of states kept on `device` rather than streamed: half the free GPU memory; 8 GiB of host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 8 << 30  # host RAM: load up to 8 GiB, else stream from the memmap
