"""Registration, the command-line route, argument checks, and the no-silent-truncation rule,
on the built-in random `debug` model (byte tokenizer, fast)."""

import glob
import json
import os

import pytest
from lm_eval.api.instance import Instance

from lmeval_support import MC_TASK, TASKS_DIR
from rattn_eval.errors import BudgetError, ConfigError, NumericsError
from rattn_eval.integrations.lm_eval import RattnLM, cli_main
from rattn_eval.tokenizer import render_chat


@pytest.fixture(scope="module")
def debug_lm():
    return RattnLM("debug", backend="torch", device="cpu", batch_size=2, max_length=24)


def test_registered_after_lm_evals_own_models():
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    assert get_model("rattn") is RattnLM
    assert get_model("hf") is HFLM


def test_rattn_eval_lm_eval_command_runs_the_local_task(tmp_path):
    """`rattn-eval lm-eval --model-path debug --tasks rattn_local_mc ...`, end to end through lm-eval's CLI."""
    from click.testing import CliRunner

    from rattn_eval.cli import cli

    result = CliRunner().invoke(cli, [
        "lm-eval", "--model-path", "debug", "--tasks", MC_TASK, "--include_path", str(TASKS_DIR),
        "--model_args", "backend=torch", "max_length=256", "--batch_size", "4",
        "--output_path", str(tmp_path), "--log_samples"])
    assert result.exit_code == 0, result.output
    assert "rattn_local_mc" in result.output and "acc" in result.output  # lm-eval's results table
    [results_file] = glob.glob(str(tmp_path / "**" / "results_*.json"), recursive=True)
    results = json.loads(open(results_file).read())
    assert 0.0 <= results["results"][MC_TASK]["acc,none"] <= 1.0
    assert results["config"]["model"] == "rattn"
    assert results["config"]["rattn_backend"] == "torch"
    assert results["config"]["rattn_truncated_requests"] == 0
    [samples_file] = glob.glob(str(tmp_path / "**" / f"samples_{MC_TASK}_*.jsonl"), recursive=True)
    assert len(open(samples_file).read().splitlines()) == 12


def test_rattn_eval_lm_eval_help_and_errors():
    from click.testing import CliRunner

    from rattn_eval.cli import cli

    result = CliRunner().invoke(cli, ["lm-eval", "--help"])
    assert result.exit_code == 0 and "--model-path CKPT" in result.output and "--tasks" in result.output
    result = CliRunner().invoke(cli, ["lm-eval", "--tasks", MC_TASK])
    assert result.exit_code == 2 and "needs --model-path" in result.output


def test_cli_main_argument_errors():
    with pytest.raises(ConfigError, match="--model-path"):
        cli_main(["--tasks", MC_TASK])
    with pytest.raises(ConfigError, match="always 'rattn'"):
        cli_main(["--model-path", "debug", "--model", "hf"])
    # lm-eval passes these from its own flags: in --model_args they were a TypeError or a quiet override
    for model_args, match in (("device=cpu", "give device with --device"),
                              ("batch_size=4", "give batch_size with --batch_size"),
                              ("pretrained=tiny-full", "drop pretrained= from --model_args")):
        with pytest.raises(ConfigError, match=match):
            cli_main(["--model-path", "debug", "--tasks", MC_TASK, "--include_path", str(TASKS_DIR),
                      "--model_args", model_args])


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": "auto"}, "not 'auto'"),
    ({"max_length": 0}, "max_length"),
    ({"max_length": 10**9}, "exceeds the model's context"),
    ({"trust_remote_code": True}, "unknown rattn model_args"),
    ({"truncation": "maybe"}, "truncation must be true or false"),
])
def test_bad_model_args(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RattnLM("debug", backend="torch", device="cpu", **kwargs)


def test_string_model_args_from_the_command_line():
    lm = RattnLM.create_from_arg_string("pretrained=debug,backend=torch,max_length=64",
                                        {"batch_size": "3", "device": "cpu", "max_batch_size": None})
    assert (lm.batch_size, lm.max_length, lm.model_backend) == (3, 64, "torch")
    for text, on in (("no", False), ("off", False), ("False", False), ("0", False), ("yes", True), ("True", True),
                     (None, False), (1.0, True), (0, False)):
        assert RattnLM("debug", backend="torch", device="cpu", truncation=text).truncation is on, text


def test_over_long_loglikelihood_is_an_error_unless_truncation(debug_lm):
    context, continuation = "x" * 40, " yes"  # byte tokenizer: 1 + 40 + 4 tokens > max_length + 1
    request = Instance("loglikelihood", {}, (context, continuation), 0)
    with pytest.raises(BudgetError, match="truncation=True"):
        debug_lm.loglikelihood([request], disable_tqdm=True)

    lm = RattnLM("debug", backend="torch", device="cpu", max_length=24, truncation=True)
    short = Instance("loglikelihood", {}, ("x" * 10, continuation), 1)
    [(long_ll, _), (short_ll, _)] = lm.loglikelihood([request, short], disable_tqdm=True)
    assert lm.truncated_requests == 1
    assert lm.get_model_info()["rattn_truncated_requests"] == 1
    # Cut from the left: the last max_length input tokens, no BOS, exactly as scored on their own.
    kept = lm.tok_encode(context + continuation)[-(lm.max_length + 1):]
    [(direct, _)] = lm._loglikelihood_tokens([(None, kept[:-4], kept[-4:])], disable_tqdm=True)
    assert long_ll == direct and long_ll != short_ll


def test_over_long_generation_prompt_is_an_error_unless_truncation(debug_lm):
    request = Instance("generate_until", {}, ("y" * 30, {"until": [], "max_gen_toks": 4}), 0)
    with pytest.raises(BudgetError, match="max_gen_toks=4"):
        debug_lm.generate_until([request], disable_tqdm=True)
    lm = RattnLM("debug", backend="torch", device="cpu", max_length=24, truncation=True)
    [text] = lm.generate_until([request], disable_tqdm=True)
    assert isinstance(text, str) and lm.truncated_requests == 1


@pytest.mark.parametrize("gen_kwargs", [
    {"do_sample": True, "temperature": 0.7}, {"do_sample": True}, {"max_length": 10}, {"num_beams": 3},
    {"repetition_penalty": 1.5}, {"bogus_kw": 1}, {"num_beams": True}, {"stop": ["\n"]},
], ids=["sampling", "sampling-no-temperature", "max_length", "beams", "penalty", "unknown", "bool-beams", "stop"])
def test_generation_settings_greedy_decoding_cannot_follow_are_refused(debug_lm, gen_kwargs):
    request = Instance("generate_until", {}, ("hi", {"until": ["\n"], **gen_kwargs}), 0)
    with pytest.raises(ConfigError, match="greedily"):
        debug_lm.generate_until([request], disable_tqdm=True)


def test_generation_settings_of_greedy_decoding_pass(debug_lm):
    plain = Instance("generate_until", {}, ("hi", {"until": ["\n"], "max_gen_toks": 3}), 0)
    neutral = Instance("generate_until", {}, ("hi", {"until": ["\n"], "max_gen_toks": 3, "num_beams": "1",
                                                     "repetition_penalty": 1.0, "do_sample": False,
                                                     "temperature": 0.0, "top_p": 0.9}), 0)
    assert debug_lm.generate_until([neutral], disable_tqdm=True) == debug_lm.generate_until([plain], disable_tqdm=True)


def test_empty_context_is_conditioned_on_bos(debug_lm):
    [(empty_ll, _)] = debug_lm.loglikelihood([Instance("loglikelihood", {}, ("", "abc"), 0)], disable_tqdm=True)
    bos = debug_lm.tokenizer.bos_id
    [(direct, _)] = debug_lm._loglikelihood_tokens([(None, [bos], list(b"abc"))], disable_tqdm=True)
    assert empty_ll == direct


def test_chat_rendering_matches_transformers():
    """Our jinja rendering of SmolLM2's template equals transformers' apply_chat_template, with a generation
    prompt and with an open final assistant message (continue_final_message, used for answer prefixes)."""
    from transformers import AutoTokenizer

    from rattn_eval.tokenizer import load_tokenizer, smollm2_tokenizer_dir

    hf = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    ours = load_tokenizer(smollm2_tokenizer_dir())
    chats = [
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}], True),
        ([{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Answer:"}], False),
        # prefixes ending in whitespace (lm-eval's gen_prefix, e.g. "Answer: " or a code task's "...\n"):
        # SmolLM2's template renders the content verbatim, so the whitespace stays (lm-eval then adds no
        # space before the choices); it used to be cut off
        ([{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Answer: "}], False),
        ([{"role": "user", "content": "Write it."}, {"role": "assistant", "content": "The answer is\n"}], False),
        ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": " Answer:"}], False),
    ]
    for chat, add_generation_prompt in chats:
        want = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt,
                                      continue_final_message=not add_generation_prompt)
        got = render_chat(ours.chat_template, chat, add_generation_prompt=add_generation_prompt,
                          bos_token=ours.bos_token, eos_token=ours.eos_token)
        assert got == want


def test_chat_template_needs_one(debug_lm):
    assert debug_lm.chat_template(False) is None
    assert debug_lm.tokenizer_name == "bytes"
    with pytest.raises(ConfigError, match="no chat template"):
        debug_lm.apply_chat_template([{"role": "user", "content": "hi"}])


def test_requests_with_the_same_input_share_one_row(debug_lm, monkeypatch):
    """One-token choices of one question (and repeats) need one row of a forward pass, like `hf`'s logits cache;
    the scores equal those computed one request at a time."""
    requests = [Instance("loglikelihood", {}, ("Answer:", c), i) for i, c in enumerate([" a", " b", " c", " a"])]
    alone = [debug_lm.loglikelihood([r], disable_tqdm=True)[0] for r in requests]
    rows = []
    forward = debug_lm._forward
    monkeypatch.setattr(debug_lm, "_forward", lambda seqs: rows.extend(seqs) or forward(seqs))
    assert debug_lm.loglikelihood(requests, disable_tqdm=True) == alone
    assert len(rows) == 1 and len({a[0] for a in alone}) == 3


# ---- `rattn-eval lm-eval` refuses bad runs with one line and exit code 2 -------------------------

def lm_eval_cli(*args, model_path="debug", include_path=TASKS_DIR):
    """`rattn-eval lm-eval --model-path MODEL_PATH --include_path INCLUDE_PATH ... args`, in-process."""
    from click.testing import CliRunner

    from rattn_eval.cli import cli

    return CliRunner().invoke(cli, ["lm-eval", "--model-path", str(model_path), "--include_path", str(include_path),
                                    "--model_args", "backend=torch", "max_length=256", "--device", "cpu", *args])


def assert_one_line_error(result, *needles, only_line=True):
    """Exit code 2, no traceback, and the error is one line (the only line of stderr unless the run had started)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("rattn-eval: error: ")]
    assert errors == [lines[-1]], result.stderr
    assert all(n in lines[-1] for n in needles), lines[-1]
    if only_line:
        assert len(lines) == 1, result.stderr


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    """The debug model with every weight NaN, saved as a checkpoint."""
    import torch

    from rattn_eval.models import load_model

    model, _ = load_model("debug", backend="torch", device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model.save(tmp_path_factory.mktemp("nan_model") / "ckpt")


def test_nan_logits_stop_the_run(nan_checkpoint):
    result = lm_eval_cli("--tasks", MC_TASK, "--limit", "2", model_path=nan_checkpoint)
    assert_one_line_error(result, "NaN or inf", only_line=False)


def test_nan_logits_raise_for_every_request_type(nan_checkpoint):
    lm = RattnLM(str(nan_checkpoint), backend="torch", device="cpu")
    until = {"until": ["\n"], "max_gen_toks": 2}
    calls = [(lm.loglikelihood, Instance("loglikelihood", {}, ("Question:", " yes"), 0)),
             (lm.loglikelihood_rolling, Instance("loglikelihood_rolling", {}, ("some text",), 0)),
             (lm.generate_until, Instance("generate_until", {}, ("Question:", until), 0))]
    for method, request in calls:
        with pytest.raises(NumericsError, match="NaN or inf"):
            method([request], disable_tqdm=True)


@pytest.mark.parametrize("limit", ["-1", "0", "2.5", "nan", "abc"])
def test_bad_limit(limit):
    assert_one_line_error(lm_eval_cli("--tasks", MC_TASK, "--limit", limit), "--limit")


def test_limit_message_says_what_one_means():
    """1 is one document, so the fraction range is open at 1."""
    assert_one_line_error(lm_eval_cli("--tasks", MC_TASK, "--limit", "2.5"),
                          "a whole number of documents (1 or more) or a fraction of them in (0, 1), not 2.5")


def test_other_lm_eval_value_errors_are_one_line(monkeypatch):
    """A ValueError of lm-eval that is not an unknown task is one sentence, lm-eval's message kept."""
    from lm_eval._cli import HarnessCLI

    from rattn_eval.integrations import lm_eval as integration

    def execute(self, options):
        raise ValueError("boom")

    monkeypatch.setattr(HarnessCLI, "execute", execute)
    monkeypatch.setattr(integration, "_unknown_task_error", lambda options: None)  # MC_TASK is known
    assert_one_line_error(lm_eval_cli("--tasks", MC_TASK, "--limit", "2"), "rattn-eval: error: lm-eval: boom",
                          only_line=False)


def test_missing_include_path(tmp_path):
    assert_one_line_error(lm_eval_cli("--tasks", MC_TASK, include_path=tmp_path / "no_such_dir"), "--include_path")


def test_missing_tasks():
    assert_one_line_error(lm_eval_cli(), "--tasks")


def test_unknown_task_suggests_the_closest():
    assert_one_line_error(lm_eval_cli("--tasks", MC_TASK + "x"), repr(MC_TASK + "x"), f"Did you mean {MC_TASK!r}?",
                          only_line=False)


@pytest.mark.parametrize("where", ["under_a_file", "unwritable"])
def test_unwritable_output_path_is_refused_before_the_run(tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("")
        output_path = tmp_path / "file" / "out"
    else:  # root may write anywhere a chmod forbids, but nobody may create files in /proc
        if not os.path.isdir("/proc"):
            pytest.skip("needs /proc")
        output_path = "/proc/rattn_eval_out"
    assert_one_line_error(lm_eval_cli("--tasks", MC_TASK, "--limit", "2", "--output_path", str(output_path)),
                          "--output_path")


def test_results_that_cannot_be_saved_fail_the_run(tmp_path):
    (tmp_path / "debug").write_text("")  # lm-eval saves into OUTPUT_PATH/<model name>/, here a file
    result = lm_eval_cli("--tasks", MC_TASK, "--limit", "2", "--output_path", str(tmp_path))
    assert_one_line_error(result, "could not save", only_line=False)
