"""Data-parallel evaluation under `torchrun`: one process per device, samples sharded by id.

    torchrun --nproc-per-node 2 -m rattn_eval.cli run -t niah -l 32k -m ./ckpt --out runs/a
    rattn-eval run -t niah -l 32k -m ./ckpt --out runs/a        # same directory, one process

The runner calls the hooks below; outside torchrun (no RANK / WORLD_SIZE / LOCAL_RANK in the
environment, or WORLD_SIZE 1) every hook is the plain single-process behaviour and no process
group is created.

How a sharded run stays exact and resumable:

- Every rank builds the same sample list (generation is deterministic) and reads the same
  records, so every rank computes the same set of missing sample ids, and `assign_shares`
  splits it the same way on every rank. Nothing is exchanged but barriers and small objects.
- Rank r appends its records to `records.rank{r}.jsonl` (flushed per record, like
  records.jsonl). Rank 0 folds every rank file into records.jsonl (`results.merge_rank_files`:
  dedupe by id, first occurrence wins, written to a temporary file and renamed) after the
  ranks finish, and also at the start of every run, before anyone reads the records. So a
  rank that dies leaves its finished records on disk, and the next run, with any number of
  ranks, starts from all of them and generates exactly the missing samples.
- Only rank 0 writes config.json, env.json and summary.json. Every file is written by
  `rattn_eval.results` (the run directory's one owner); this module only decides who writes when.

On several nodes the run directory must be on a file system every node sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

from rattn_eval import errors
from rattn_eval.errors import ConfigError, RattnError
from rattn_eval.results import RunDir, load_records

# Ranks wait at a barrier for the slowest one; a long RULER cell at 128k can keep one rank busy
# for hours while the others wait, far beyond the collectives' default 10-30 minute timeouts.
# A rank that dies does not leave the others hanging: torchrun stops the whole group.
BARRIER_TIMEOUT = timedelta(hours=48)


def torchrun_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, or None when they are not all set."""
    environ = os.environ if environ is None else environ
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(k in environ for k in keys):
        return None
    try:
        rank, world, local = (int(environ[k]) for k in keys)
    except ValueError:
        raise ConfigError(f"torchrun variables RANK/WORLD_SIZE/LOCAL_RANK are not integers: "
                          f"{[environ[k] for k in keys]}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun variables RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def is_main_process() -> bool:
    """True outside torchrun and on global rank 0 (cheap: reads the environment only)."""
    env = torchrun_env()
    return env is None or env[0] == 0


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run. `backend` is None when no process group exists."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.backend is not None

    # Collectives: no-ops (or identities) without a process group.

    def barrier(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable objects)."""
        if not self.sharded:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.sharded:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def env_info(self) -> dict[str, Any]:
        """Keys added to env.json."""
        return {"world_size": self.world_size, "dist_backend": self.backend}


def init(device: str | None = None, environ: Mapping[str, str] | None = None) -> DistContext:
    """Join the torchrun process group, if any, and pick this rank's device.

    Args:
        device: the user's --device. Under torchrun, None or a bare "cuda" becomes
            cuda:LOCAL_RANK (when CUDA is available); anything else is kept.
    Returns:
        A DistContext; outside torchrun, or with WORLD_SIZE 1, no process group is created.
        The group uses NCCL when this rank's device is CUDA, gloo otherwise.
    """
    env = torchrun_env(environ)
    if env is None:
        return DistContext(device=device)
    rank, world, local = env
    import torch

    if device in (None, "cuda") and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} has no GPU: this node has {torch.cuda.device_count()}; "
                              "use --nproc-per-node <= the number of GPUs")
        device = f"cuda:{local}"
    on_cuda = device is not None and str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(torch.device(device))
    if world == 1:
        return DistContext(rank=rank, world_size=1, local_rank=local, device=device)
    import torch.distributed as dist

    backend = "nccl" if on_cuda else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": BARRIER_TIMEOUT}
        if on_cuda:
            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(**kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend, device=device)


def assign_shares(pending: Sequence[Sequence[Any]], world_size: int) -> list[list[Any]]:
    """Split missing samples over ranks: one deal across all cells, each cell longest first.

    Args:
        pending: per cell (task, length), its missing samples (objects with id, num_tokens, index).
        world_size: number of ranks.
    Returns:
        For each rank, the ids it generates. Each cell is sorted as the runner batches it
        (longest first, then index) and dealt round robin, continuing the deal where the
        previous cell stopped, so every rank gets similar lengths within a cell and the ranks'
        totals differ by at most one sample. Depends only on the missing set, so every rank
        computes the same split, and a resume with another number of ranks splits what is
        missing then.
    """
    shares: list[list[Any]] = [[] for _ in range(world_size)]
    turn = 0
    for cell in pending:
        for s in sorted(cell, key=lambda s: (-s.num_tokens, s.index, s.id)):
            shares[turn % world_size].append(s.id)
            turn += 1
    return shares


# Hooks called by rattn_eval.runner.run, in this order.

def lock(ctx: DistContext, out: Path) -> RunDir:
    """RunDir.lock on rank 0, a run's first step (before the model loads); its verdict reaches every rank.

    Rank 0's RunDir holds the directory's lock for the whole launch, so a second run on it is refused at
    once while the other ranks, which never lock, work under it. A refusal (directory in use, not a run
    directory, unwritable) is raised on every rank with rank 0's message, so no rank waits at a barrier
    for nothing.
    """
    if not ctx.sharded:
        return RunDir.lock(out)
    rundir = RunDir(Path(out))
    return _on_main(ctx, lambda: RunDir.lock(out), rundir)


def open_run(ctx: DistContext, rundir: RunDir, config: dict[str, Any], *, overwrite: bool, repair: bool = False,
             model_revision: str | None = None, weights: str | None = None) -> None:
    """RunDir.open on rank 0 (the only writer of config.json), once the model is loaded; a refusal
    (config, model commit or weights mismatch) is raised on every rank. With `overwrite`, old rank files go
    too."""
    kw = dict(overwrite=overwrite, repair=repair, model_revision=model_revision, weights=weights)
    if not ctx.sharded:
        rundir.open(config, **kw)
        return
    _on_main(ctx, lambda: rundir.open(config, **kw), None)


def _on_main(ctx: DistContext, step, others: Any) -> Any:
    """`step()` on rank 0 (its result there, `others` elsewhere); its RattnError raised on every rank."""
    failure, result = None, others
    if ctx.is_main:
        try:
            result = step()
        except RattnError as e:
            failure = (type(e).__name__, str(e))
    failure = ctx.broadcast(failure)
    if failure is not None:
        name, message = failure
        raise getattr(errors, name, RattnError)(message)
    return result


def load_done(ctx: DistContext, rundir: RunDir) -> dict[str, dict[str, Any]]:
    """Records already finished by any earlier invocation, with any number of ranks, keyed by id."""
    if ctx.is_main:
        rundir.merge_ranks()
    ctx.barrier()
    return load_records(rundir.records_path, repair=ctx.is_main)


def shard(ctx: DistContext, pending: Sequence[Sequence[Any]], done: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    """What this rank skips and where it writes.

    Returns (skip, rank): `skip` maps every id the runner must not generate here (done, or dealt
    to another rank); records go to `RunDir.append(rank)`, this rank's own file (rank None:
    records.jsonl itself, without a process group).
    """
    if not ctx.sharded:
        return dict(done), None
    shares = assign_shares(pending, ctx.world_size)
    skip = dict(done)
    for r, ids in enumerate(shares):
        if r != ctx.rank:
            skip.update((i, None) for i in ids)
    return skip, ctx.rank


def collect(ctx: DistContext, rundir: RunDir) -> dict[str, dict[str, Any]]:
    """After generation: wait for every rank, fold the rank files into records.jsonl (rank 0) and
    return all records of the run directory, keyed by id, on every rank."""
    ctx.barrier()
    return load_done(ctx, rundir)


def record_timing(ctx: DistContext, rundir: RunDir, *, model_load_s: float, generate_s: float,
                  samples: int) -> dict[str, Any]:
    """Add this invocation's speed to the last entry of env.json's "sessions" (rank 0 writes).

    Args:
        model_load_s: this rank's model load time; the slowest rank's is recorded.
        generate_s: wall time from the common start of generation to the last rank's end.
        samples: samples generated in this invocation, over all ranks.
    Returns the timing dict: world_size, model_load_s, generate_s, samples, samples_per_s
    (samples / generate_s, model load excluded).
    """
    load = max(ctx.gather(model_load_s))
    timing = {"world_size": ctx.world_size, "model_load_s": round(load, 3), "generate_s": round(generate_s, 3),
              "samples": samples, "samples_per_s": round(samples / generate_s, 4) if generate_s > 0 else None}
    if ctx.is_main:
        rundir.add_session_timing(timing)
    return timing

