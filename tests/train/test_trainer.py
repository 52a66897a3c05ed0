"""CPU smoke tests of the training loop: loss falls on a fixed batch, a short run saves a checkpoint
that loads back (by path) with the same outputs, and the schedule has the promised shape."""

import gzip
import json
import random

import numpy as np
import pytest
import torch
from closeness import assert_close, errors

from rattn_eval.models import load_model
from rattn_eval.models.config import ModelConfig
from rattn_eval.train.data import Batches, train_tokenizer
from rattn_eval.train.trainer import TrainConfig, build_for_training, lr_at, make_optimizer, train, train_step

WORDS = ("river hill stone cloud field window garden market letter bridge candle harbor meadow lantern "
         "orchard valley".split())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A miniature dataset in the layout build_dataset writes (tokenizer, stream, sentences, words)."""
    out = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "." for _ in range(400)]
    train_tokenizer(sentences + [str(rng.randint(0, 10**9)) for _ in range(200)], out / "tokenizer", vocab_size=300)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    ids = []
    for s in sentences:
        ids += [0] + tok.encode(s).ids + [1]
    np.save(out / "text_tokens.npy", np.asarray(ids, dtype=np.uint16))
    with gzip.open(out / "sentences.txt.gz", "wt") as f:
        f.write("\n".join(sentences) + "\n")
    (out / "words.json").write_text(json.dumps({"nouns": list(WORDS), "adjectives": ["red", "calm", "old", "bright"]}))
    return out


def small_model(vocab):
    return ModelConfig(name="smoke", vocab_size=vocab, width=48, n_heads=2, n_kv_heads=1, head_dim=24,
                       kinds=("rattn", "swa", "global"), intermediate_size=96, window=8, nope_global=True,
                       max_context=4096, tokenizer="tokenizer.json")


def test_batches_are_deterministic_and_well_formed(data_dir):
    a = next(Batches(data_dir, seq_len=64, batch_size=4, synthetic=0.5, seed=3))
    b = next(Batches(data_dir, seq_len=64, batch_size=4, synthetic=0.5, seed=3))
    c = next(Batches(data_dir, seq_len=64, batch_size=4, synthetic=0.5, seed=4))
    assert a.shape == (4, 65) and a.dtype == np.int64
    assert (a == b).all() and not (a == c).all()
    assert a.min() >= 0 and a.max() < 300


def test_loss_decreases_on_a_fixed_batch(data_dir):
    cfg = TrainConfig(name="smoke", model=small_model(300), data_dir=str(data_dir), out_dir="unused", seq_len=32,
                      batch_size=2, steps=20, lr=1e-2, warmup_steps=2, device="cpu")
    model = build_for_training(cfg, torch.device("cpu"))
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    batch = torch.from_numpy(next(Batches(data_dir, seq_len=32, batch_size=2, synthetic=0.5, seed=0)))
    losses = [float(train_step(model, opt, batch, cfg, s, torch.device("cpu"))[0]) for s in range(20)]
    assert losses[0] == pytest.approx(np.log(300), rel=0.1)  # near-uniform at init
    assert losses[-1] < 0.6 * losses[0], losses


def test_short_run_saves_a_checkpoint_that_reloads(data_dir, tmp_path):
    cfg = TrainConfig(name="smoke", model=small_model(300), data_dir=str(data_dir), out_dir=str(tmp_path / "run"),
                      seq_len=64, batch_size=4, steps=6, warmup_steps=2, log_every=2, device="cpu")
    summary = train(cfg, log=lambda *_: None)
    assert summary["steps"] == 6 and not summary["stopped_early"]
    log = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    ckpt = tmp_path / "run" / "checkpoint"
    assert {p.name for p in ckpt.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model, tok = load_model(ckpt, device="cpu", backend="torch")
    assert model.config.name == "smoke" and tok.vocab_size == 300
    ids = torch.tensor([tok.encode_prompt("River hill stone 12345.")])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], 300) and torch.isfinite(logits).all()


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(name="s", model=small_model(300), data_dir="d", out_dir="o", steps=100, warmup_steps=10,
                      lr=1e-3, min_lr=1e-4)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


@pytest.mark.parametrize("kinds", [("rattn", "swa", "global", "rattn"), ("swa", "global")], ids=["rattn", "swa"])
def test_the_triton_backend_trains_like_the_reference(kinds):
    """Training runs on a kernel backend: the loss and every parameter's gradient on the triton backend
    (Triton forward and backward kernels, here under the CPU interpreter) equal those of the torch
    backend (autograd through the chunked references), past the window, on a right-padded batch too."""
    from rattn_eval.models.config import preset
    from rattn_eval.models.model import Model
    from rattn_eval import kernels

    cfg = preset("debug").replace(kinds=kinds, window=8)
    ids = torch.randint(0, cfg.vocab_size, (2, 41), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([41, 23])
    grads, losses = {}, {}
    before = kernels.launches.copy()
    for backend in ("torch", "triton"):
        model = Model(cfg, backend=backend).init_weights(seed=1)
        for name, p in model.named_parameters():  # the test init is unit variance: tame it so softmaxes are not one-hot
            p.data.mul_(0.2 if p.dim() > 1 else 1.0)
        logits = model(ids[:, :-1], lengths - 1)
        mask = torch.arange(40)[None, :] < (lengths - 1)[:, None]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1), reduction="none")
        loss = (ce * mask.reshape(-1)).sum() / mask.sum()
        loss.backward()
        losses[backend] = loss.item()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    ran = kernels.launches - before
    assert ran["triton.swa"] >= 1 and (ran["triton.rattention"] >= 1 or "rattn" not in kinds)
    assert ran["triton.swa_grad"] >= 1 and (ran["triton.rattention_grad"] >= 1 or "rattn" not in kinds)
    assert abs(losses["triton"] - losses["torch"]) <= 1e-5 * abs(losses["torch"])
    for name, ref in grads["torch"].items():
        assert_close(grads["triton"][name], ref, 1e-4, f"gradient of {name}")


@pytest.mark.slow
def test_the_shipped_tiny_rattn_takes_the_same_steps_on_both_backends():
    """The shipped tiny-rattn, continued for three steps of stage 3's optimizer (AdamW 0.9 / 0.95, weight decay
    0.1, gradient clipping 1.0, peak lr 1e-3) on two random 512-token rows, on the triton backend (Triton
    forward and backward kernels, here under the CPU interpreter) and on the torch backend (autograd through
    the references): the same losses at every step and the same weights after."""
    from rattn_eval import kernels

    ids = torch.randint(0, 4096, (3, 2, 513), generator=torch.Generator().manual_seed(3))
    runs = {}
    before_launches = kernels.launches.copy()
    for backend in ("torch", "triton"):
        model, _ = load_model("tiny-rattn", backend=backend, device="cpu", dtype="float32")
        model.train().requires_grad_(True)  # loaded for evaluation
        cfg = TrainConfig(name="tiny-rattn", model=model.config, data_dir="-", out_dir="-", seq_len=512, batch_size=2,
                          steps=3, lr=1e-3, min_lr=1e-4, warmup_steps=1, device="cpu", backend=backend)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = make_optimizer(model, cfg, torch.device("cpu"))
        losses = [train_step(model, opt, ids[i], cfg, i, torch.device("cpu"))[0].item() for i in range(3)]
        runs[backend] = losses, {n: p.detach().clone() for n, p in model.named_parameters()}, before
    ran = kernels.launches - before_launches
    assert ran["triton.rattention_grad"] >= 1 and ran["triton.swa_grad"] >= 1, "the Triton backward did not run"
    (loss_ref, after_ref, before), (loss_got, after_got, _) = runs["torch"], runs["triton"]
    for step, (got, ref) in enumerate(zip(loss_got, loss_ref)):
        assert abs(got - ref) <= 1e-5 * abs(ref), f"step {step}: loss {got} on triton, {ref} on torch"
    moved = sum(float((after_ref[n] - before[n]).norm()) for n in before)
    assert moved > 1e-3, "the steps did not change the weights"
    # Whole-tensor relative RMS, not closeness's per-row bound: AdamW divides each gradient entry by its own
    # running RMS, so an entry whose gradient is tiny carries a large relative rounding into its update
    # while the tensor's update and weights stay within the bounds.
    for name, ref in after_ref.items():
        update_err = errors(after_got[name] - before[name], ref - before[name])[0]
        assert update_err <= 1e-3, f"update of {name}: relative RMS error {update_err:.3g}"
        weight_err = errors(after_got[name], ref)[0]
        assert weight_err <= 1e-5, f"weights {name} after the steps: relative RMS error {weight_err:.3g}"
