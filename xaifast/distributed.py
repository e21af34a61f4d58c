"""Runs on many processes and machines: `torchrun --nproc_per_node N -m xaifast explain ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. Each rank explains a contiguous part of the sorted
input (cut at batch windows: `pipeline.shard_range`; no DistributedSampler, which pads by
repeating samples), writes its own files or store shards and its own journal
(`explain/index.jsonl` for rank 0, `explain/index.rank-<r>.jsonl` for the others), and rank 0
merges the index once every rank has finished. The only collective is at the start (rank 0 makes
or picks the run folder and tells the others), so ranks that take hours longer than the others
hit no collective timeout: they say they are done with a marker file. Every rank reads every
journal on `--resume`, so a rank that died is redone without recomputing the others' images.
The work dir must be on a file system all ranks see (across nodes: a shared one).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def device(self, device: str) -> str:
        """This rank's device: its own GPU (cuda:LOCAL_RANK) when the run asks for CUDA."""
        if self.enabled and str(device).startswith("cuda") and ":" not in str(device):
            return f"cuda:{self.local_rank}"
        return device

    def broadcast(self, value):
        """Rank 0's value, on every rank (gloo: the process group is made for this and closed)."""
        if not self.enabled:
            return value
        import torch.distributed as td

        made = not td.is_initialized()
        if made:
            td.init_process_group(backend="gloo")
        try:
            box = [value if self.rank == 0 else None]
            td.broadcast_object_list(box, src=0)
            return box[0]
        finally:
            if made:
                td.destroy_process_group()

    def journal_name(self) -> str:
        return "index.jsonl" if self.rank == 0 else f"index.rank-{self.rank}.jsonl"

    def array_suffix(self) -> str:
        return "" if self.rank == 0 else f"_rank{self.rank}"

    # -------------------------------------------------------------- the end of a run
    def _marker(self, run_dir: Path, rank: int) -> Path:
        return Path(run_dir) / "explain" / ".ranks" / f"{rank}-of-{self.world}.done"

    def clear_markers(self, run_dir: Path) -> None:
        folder = Path(run_dir) / "explain" / ".ranks"
        if folder.is_dir():
            for p in folder.iterdir():
                p.unlink()

    def finish(self, run_dir: Path) -> None:
        marker = self._marker(run_dir, self.rank)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("done\n")

    def wait_for_all(self, run_dir: Path, poll: float = 0.5, say: Optional[callable] = None) -> None:
        """Rank 0: wait until every rank has finished (torchrun ends the job if one dies)."""
        others = [self._marker(run_dir, r) for r in range(1, self.world)]
        told = False
        while not all(m.is_file() for m in others):
            if say is not None and not told:
                say(f"rank 0 done; waiting for {sum(not m.is_file() for m in others)} other rank(s)")
                told = True
            time.sleep(poll)
