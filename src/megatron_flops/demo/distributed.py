"""The demo's distributed setting: one process, torchrun's data-parallel processes, or
DeepSpeed's; world size, rank and the two collectives the loop needs."""

import os


class Distributed:
    """World size, rank and the collectives the loop needs; a single process is world 1."""

    def __init__(self, device_kind: str, deepspeed: bool):
        import torch
        import torch.distributed as dist
        self.dist = dist
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        self.launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", env_world))
        if deepspeed and not self.launched:
            # deepspeed.initialize wants a process group even for one process
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
            self.launched = True
        self.backend = "nccl" if device_kind == "cuda" else "gloo"
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = False
        if self.launched and (env_world > 1 or deepspeed):
            if device_kind == "cuda":
                torch.cuda.set_device(self.local_rank)
            if deepspeed:
                import deepspeed as ds
                ds.init_distributed(dist_backend=self.backend, verbose=False)
            elif not dist.is_initialized():
                dist.init_process_group(self.backend)
            self.active = True
        # issue 24: the Ctrl-C agreement (any) runs every iteration: on CUDA through a CPU
        # (gloo) group, so that it never waits for the device
        self._flag_group = None
        if self.active and self.backend == "nccl":
            try:
                self._flag_group = dist.new_group(backend="gloo")
            except Exception:  # noqa: BLE001 - no gloo: the default group (one sync each)
                self._flag_group = None
        self.world_size = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0
        self.is_last_rank = self.rank == self.world_size - 1

    def mean(self, value: float) -> float:
        """Mean of a float over the ranks (one small all-reduce)."""
        if not self.active:
            return value
        import torch
        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        self.dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """Is ``flag`` set on any rank (one small all-reduce)?"""
        if not self.active:
            return flag
        import torch
        on_device = self.backend == "nccl" and self._flag_group is None
        device = f"cuda:{self.local_rank}" if on_device else "cpu"
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.MAX, group=self._flag_group)
        return bool(tensor.item())

    def detach(self) -> None:
        """Stop using the group (a peer is gone): from now on local values only, and no
        collective at close."""
        self.active = False

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.active and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
