"""generate_until through `rattn`: greedy tokens equal an independent argmax loop over full forward
passes, `max_gen_toks` bounds the output, text is cut at the first stop string, and neither batch size
nor request order changes any output."""

import pytest
import torch
from lm_eval.api.instance import Instance

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Once upon a time",
    "The",
    "Trains in the old valley line ran twice a day, once in the morning and once at night, and the",
    "A good loaf of bread needs",
]
BUDGET = 10


@pytest.fixture(scope="module")
def lm(tiny_dirs):
    from rattn_eval.integrations.lm_eval import RattnLM

    return RattnLM(str(tiny_dirs[1]), backend="torch", device="cpu", dtype="float32", batch_size=1, max_length=128)


def generate(lm, prompts, gen_kwargs, batch_size=1):
    requests = [Instance("generate_until", {}, (p, dict(gen_kwargs)), i) for i, p in enumerate(prompts)]
    lm._batch_size = batch_size
    try:
        return lm.generate_until(requests, disable_tqdm=True)
    finally:
        lm._batch_size = 1


def argmax_loop(lm, prompt: str, n: int) -> list[int]:
    """Greedy decoding the slow, obvious way: a full forward pass per new token, no cache."""
    ids = lm.tok_encode(prompt)
    eos = set(lm.tokenizer.eos_ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(lm.model(torch.tensor([ids + out]))[0, -1].argmax())
            if token in eos:
                break
            out.append(token)
    return out


@pytest.fixture(scope="module")
def unstopped(lm):
    """Outputs with no stop string but EOS, budget BUDGET, batch 1."""
    return generate(lm, PROMPTS, {"until": [], "max_gen_toks": BUDGET})


def test_max_gen_toks_and_greedy_tokens(lm, unstopped):
    for prompt, text in zip(PROMPTS[:2], unstopped[:2]):
        tokens = argmax_loop(lm, prompt, BUDGET + 3)
        assert len(tokens) > BUDGET  # the random model does not stop by itself, so the budget is what ends it
        assert text == lm.tokenizer.decode(tokens[:BUDGET])


def test_stop_strings_cut_at_first_occurrence(lm, unstopped):
    # Stop strings taken from the first output, so they do occur there: `early` first occurs at k > 0,
    # `late` only after it; listing `late` first checks that the earliest occurrence wins, not the list order.
    text = unstopped[0]
    firsts = [k for k in range(1, len(text) - 2) if text.find(text[k:k + 3]) == k and text[k:k + 3].strip()]
    k = firsts[0]
    j = next(j for j in firsts if j > k + 3)
    early, late = text[k:k + 3], text[j:j + 3]
    got = generate(lm, PROMPTS, {"until": [late, early], "max_gen_toks": BUDGET})
    for full, cut in zip(unstopped, got):
        expected = full
        for stop in (late, early):
            expected = expected.split(stop)[0]
        assert cut == expected
    assert got[0] == text[:text.find(early)]


def test_batching_and_order_do_not_change_outputs(lm, unstopped):
    mixed = [{"until": [], "max_gen_toks": BUDGET}, {"until": ["\n"], "max_gen_toks": 4}] * 3
    prompts = (PROMPTS * 2)[:len(mixed)]
    requests = [Instance("generate_until", {}, (p, k), i) for i, (p, k) in enumerate(zip(prompts, mixed))]
    one = []
    for r in requests:
        one += lm.generate_until([r], disable_tqdm=True)
    lm._batch_size = 4
    try:
        batched = lm.generate_until(requests, disable_tqdm=True)
    finally:
        lm._batch_size = 1
    assert batched == one
    assert one[0] == unstopped[0]
    assert generate(lm, PROMPTS, {"until": [], "max_gen_toks": BUDGET}, batch_size=4) == unstopped
