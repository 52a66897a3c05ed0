"""Parity with lm-eval's own `hf` model: the same weights through `rattn` (our native model on the
`torch` backend) and through `hf` (transformers) give the same per-request log-likelihoods
(within 1e-4 * max(1, |ref|), fp32, CPU), the same is_greedy flags and the same accuracy, on a local
multiple-choice task and a loglikelihood_rolling task cut into the same windows."""

import pytest

from lmeval_support import (GEN_TASK, MC_TASK, PPL_TASK, TINY_MAX_LENGTH, export_hf_dir, run_tasks,
                            smollm2_hf_dir_from_transformers)


def assert_same_scores(ours: dict, ref: dict, tasks) -> None:
    for task in tasks:
        assert len(ours[task]) == len(ref[task]) > 0, task
        for doc, (got_doc, ref_doc) in enumerate(zip(ours[task], ref[task])):
            assert len(got_doc) == len(ref_doc), (task, doc)
            for got, want in zip(got_doc, ref_doc):
                got_ll, want_ll = (got[0], want[0]) if isinstance(want, tuple) else (got, want)
                assert abs(got_ll - want_ll) <= 1e-4 * max(1.0, abs(want_ll)), (task, doc, got_ll, want_ll)
                if isinstance(want, tuple):
                    assert got[1] == want[1], (task, doc, "is_greedy differs")


@pytest.fixture(scope="module")
def tiny_lms(tiny_dirs):
    """(ours, ref): the tiny Llama through `rattn` (converted, native, torch) and through lm-eval's `hf`."""
    from lm_eval.models.huggingface import HFLM

    from rattn_eval.integrations.lm_eval import RattnLM

    hf_dir, ours_dir = tiny_dirs
    ours_lm = RattnLM(str(ours_dir), backend="torch", device="cpu", dtype="float32", batch_size=4,
                      max_length=TINY_MAX_LENGTH)
    assert ours_lm.model_backend == "torch" and type(ours_lm.model).__name__ == "Model"  # our native model
    ref_lm = HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=4, max_length=TINY_MAX_LENGTH)
    return ours_lm, ref_lm


@pytest.fixture(scope="module")
def tiny_results(tiny_lms, task_manager):
    """Both models on the three local tasks, batch 4, max_length 32."""
    ours_lm, ref_lm = tiny_lms
    tasks = (MC_TASK, PPL_TASK, GEN_TASK)
    return run_tasks(ours_lm, task_manager, tasks), run_tasks(ref_lm, task_manager, tasks), ours_lm


def test_tiny_llama_loglikelihood_parity(tiny_results):
    (ours, ours_out), (ref, ref_out), _ = tiny_results
    assert_same_scores(ours, ref, (MC_TASK, PPL_TASK))
    for metric in ("acc,none", "acc_norm,none"):
        assert ours_out["results"][MC_TASK][metric] == ref_out["results"][MC_TASK][metric]


def test_tiny_llama_rolling_uses_several_windows(tiny_results):
    """The rolling task really exercises windowing: texts are longer than max_length, so a different
    max_length changes the totals (the comparison above would otherwise not test the window cut)."""
    from lm_eval.api.instance import Instance

    (ours, _), _, lm = tiny_results
    import json

    texts = [json.loads(line)["text"] for line in open("tests/lm_eval/data/local_text.jsonl")]
    assert max(len(lm.tok_encode(t)) for t in texts) > 3 * TINY_MAX_LENGTH
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    lm._max_length = 2 * TINY_MAX_LENGTH
    try:
        wider = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    finally:
        lm._max_length = TINY_MAX_LENGTH
    narrow = [doc[0] for doc in ours[PPL_TASK]]
    assert any(abs(a - b) > 1e-3 for a, b in zip(wider, narrow))


def test_tiny_llama_generate_until_parity(tiny_results):
    """Greedy generations (stop strings "\\n" and ".", max_gen_toks 8) equal lm-eval's `hf` ones."""
    (ours, _), (ref, _), _ = tiny_results
    assert ours[GEN_TASK] == ref[GEN_TASK]
    assert any(doc[0] for doc in ref[GEN_TASK])  # not all empty


def test_tiny_llama_chat_template_parity(tiny_lms, task_manager):
    """With --apply_chat_template (and a system instruction) the prompts lm-eval builds through our
    template rendering score the same as through transformers'."""
    ours_lm, ref_lm = tiny_lms
    kwargs = dict(apply_chat_template=True, system_instruction="Answer briefly.", limit=4)
    ours_lm._max_length = ref_lm._max_length = 128  # chat markup makes the prompts longer
    try:
        ours, ours_out = run_tasks(ours_lm, task_manager, (MC_TASK,), **kwargs)
        ref, _ = run_tasks(ref_lm, task_manager, (MC_TASK,), **kwargs)
    finally:
        ours_lm._max_length = ref_lm._max_length = TINY_MAX_LENGTH
    context = ours_out["samples"][MC_TASK][0]["arguments"][0][0]
    assert context.startswith("<|im_start|>system\nAnswer briefly.") and context.endswith("<|im_start|>assistant\n")
    assert_same_scores(ours, ref, (MC_TASK,))


def smollm2_parity(hf_dir, task_manager):
    from lm_eval.models.huggingface import HFLM

    from rattn_eval.integrations.lm_eval import RattnLM

    tasks = (MC_TASK, PPL_TASK)
    ref_lm = HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=8, max_length=64)
    ref, ref_out = run_tasks(ref_lm, task_manager, tasks)
    del ref_lm
    ours_lm = RattnLM("smollm2-135m", backend="torch", device="cpu", dtype="float32", batch_size=8, max_length=64)
    assert type(ours_lm.model).__name__ == "Model"
    ours, ours_out = run_tasks(ours_lm, task_manager, tasks)
    assert_same_scores(ours, ref, tasks)
    assert ours_out["results"][MC_TASK]["acc,none"] == ref_out["results"][MC_TASK]["acc,none"]
    return ours_out


def test_smollm2_parity(tmp_path, task_manager):
    """SmolLM2-135M imported from its GGUF ("smollm2-135m", our native model) vs lm-eval's `hf` loading the
    same weights saved in HF format."""
    out = smollm2_parity(export_hf_dir("smollm2-135m", tmp_path), task_manager)
    assert out["results"][MC_TASK]["acc,none"] >= 0.5  # a real model: most of the easy questions right


@pytest.mark.slow
def test_smollm2_parity_against_transformers_gguf_import(task_manager):
    """As above, but the `hf` side holds the weights transformers itself dequantized from the GGUF, so our
    importer is checked too. Slow: the first run spends about a minute in transformers' GGUF reader."""
    smollm2_parity(smollm2_hf_dir_from_transformers(), task_manager)


def test_rattn_runs_an_hf_folder_on_the_hf_backend(tiny_dirs, tiny_results, task_manager):
    """`rattn` also serves an HF folder through our `hf` backend (an unmodified transformers model)."""
    from rattn_eval.integrations.lm_eval import RattnLM

    _, (ref, _), _ = tiny_results
    lm = RattnLM(str(tiny_dirs[0]), backend="hf", device="cpu", dtype="float32", batch_size=4,
                 max_length=TINY_MAX_LENGTH)
    assert lm.model_backend == "hf"
    got, _ = run_tasks(lm, task_manager, (MC_TASK, GEN_TASK))
    assert_same_scores(got, ref, (MC_TASK,))
    assert got[GEN_TASK] == ref[GEN_TASK]


def test_whitespace_only_context_is_a_clear_error(tiny_lms):
    """lm-eval moves a context's trailing whitespace into the continuation: with a tokenizer that adds no
    BOS, " " + "x" leaves no context tokens (lm-eval's hf stops on an assert; ours used to fail on a
    tensor shape): one clear ConfigError."""
    from lm_eval.api.instance import Instance

    from rattn_eval.errors import ConfigError

    ours_lm, _ = tiny_lms
    with pytest.raises(ConfigError, match="the context is empty"):
        ours_lm.loglikelihood([Instance("loglikelihood", {}, (" ", "x"), 0)], disable_tqdm=True)
    # a continuation that merges into the context's last token when the pair is encoded whole
    with pytest.raises(ConfigError, match="the continuation has no token of its own"):
        ours_lm.loglikelihood([Instance("loglikelihood", {}, ("Hello wor", "ld"), 0)], disable_tqdm=True)
