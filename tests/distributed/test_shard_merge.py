"""The pieces of sharded evaluation that need no process group: torchrun detection, the deal of
missing samples over ranks, and the merge of per-rank record files."""

import json
from types import SimpleNamespace

import pytest

from rattn_eval import distributed as D
from rattn_eval import results as R
from rattn_eval.errors import ConfigError, DataError
from rattn_eval.results import load_records


def sample(task, length, index, num_tokens):
    return SimpleNamespace(id=f"{task}/{length}/s0/{index}", index=index, num_tokens=num_tokens)


def cells():
    # 3 cells with 5, 4 and 3 missing samples; token counts deliberately not in index order
    return [[sample("a", 1024, i, 1000 - (i * 7) % 5) for i in range(5)],
            [sample("a", 2048, i, 2000 + i) for i in range(4)],
            [sample("b", 1024, i, 990) for i in (0, 2, 5)]]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shares_partition_missing_and_balance(world):
    shares = D.assign_shares(cells(), world)
    flat = [i for s in shares for i in s]
    assert sorted(flat) == sorted(s.id for c in cells() for s in c)  # every missing id exactly once
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1  # the deal continues across cells, so totals stay balanced
    assert D.assign_shares(cells(), world) == shares  # deterministic: every rank computes the same split


def test_shares_follow_runner_batch_order():
    shares = D.assign_shares(cells()[:1], 2)
    order = sorted(cells()[0], key=lambda s: (-s.num_tokens, s.index))
    assert shares == [[s.id for s in order[0::2]], [s.id for s in order[1::2]]]
    assert D.assign_shares([[]], 4) == [[], [], [], []]


def test_torchrun_env():
    assert D.torchrun_env({}) is None
    assert D.torchrun_env({"RANK": "1", "WORLD_SIZE": "4"}) is None  # all three or none
    assert D.torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ConfigError, match="inconsistent"):
        D.torchrun_env({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="not integers"):
        D.torchrun_env({"RANK": "x", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_init_without_torchrun_creates_no_group():
    import torch.distributed as dist

    ctx = D.init("cpu", environ={})
    assert not ctx.sharded and ctx.is_main and ctx.world_size == 1 and ctx.device == "cpu"
    assert not dist.is_initialized()
    assert ctx.broadcast(7) == 7 and ctx.gather(7) == [7]
    one = D.init(None, environ={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert not one.sharded and not dist.is_initialized()


def line(rid, extra=""):
    """A sample record as the runner writes it (the fields aggregation needs) plus a marker."""
    return json.dumps({"id": rid, "task": "t", "length": 1, "score": 0.0, "v": extra}) + "\n"


def test_merge_keeps_order_dedupes_and_repairs(tmp_path):
    (tmp_path / "records.jsonl").write_text(line("x1", "main") + line("x2", "main"))
    (tmp_path / "records.rank0.jsonl").write_text(line("x3", "r0") + line("x1", "r0-dup") + '{"id": "x9", "v"')
    (tmp_path / "records.rank1.jsonl").write_text(line("x4", "r1") + line("x3", "r1-dup"))
    (tmp_path / "records.rank10.jsonl").write_text(line("x5", "r10"))
    (tmp_path / "records.rankX.jsonl").write_text("not a rank file")
    assert [f.name for f in R.rank_files(tmp_path)] == ["records.rank0.jsonl", "records.rank1.jsonl",
                                                        "records.rank10.jsonl"]
    assert R.merge_rank_files(tmp_path) == 3
    lines = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    # records.jsonl first and untouched, then rank order; first occurrence wins; torn x9 dropped
    assert [(r["id"], r["v"]) for r in lines] == [("x1", "main"), ("x2", "main"), ("x3", "r0"), ("x4", "r1"),
                                                  ("x5", "r10")]
    assert R.rank_files(tmp_path) == [] and (tmp_path / "records.rankX.jsonl").exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert R.merge_rank_files(tmp_path) == 0  # idempotent


def test_merge_without_main_file_and_corrupt_rank_file(tmp_path):
    (tmp_path / "records.rank1.jsonl").write_text(line("y1") + line("y2"))
    assert R.merge_rank_files(tmp_path) == 2
    assert list(load_records(tmp_path / "records.jsonl")) == ["y1", "y2"]
    (tmp_path / "records.rank0.jsonl").write_text(line("y3") + "garbage\n" + line("y4"))
    with pytest.raises(DataError, match="corrupt"):
        R.merge_rank_files(tmp_path)
    assert list(load_records(tmp_path / "records.jsonl")) == ["y1", "y2"]  # nothing lost on refusal
    assert (tmp_path / "records.rank0.jsonl").exists()
