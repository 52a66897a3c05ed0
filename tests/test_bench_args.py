"""`rattn-eval bench ...` arguments: lengths read as `run --len` reads them (4k = 4096), and every bad value
stops the command at the argument (argparse's exit 2) or with one ConfigError line, before any work."""

import argparse

import pytest
import torch
from click.testing import CliRunner

from rattn_eval.bench import e2e, int_at_least, int_list, kernels, run_script, single_length, tasks, train_step, tune
from rattn_eval.cli import cli
from rattn_eval.errors import ConfigError

MODULES = {"kernels": kernels, "e2e": e2e, "train": train_step, "tasks": tasks, "tune": tune}


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Every benchmark's real work fails the test: the commands must stop before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a benchmark started work on a bad argument")

    monkeypatch.setattr(kernels, "bench_prefill", refuse)
    monkeypatch.setattr(kernels, "bench_backward", refuse)
    monkeypatch.setattr(kernels, "bench_decode", refuse)
    monkeypatch.setattr(e2e, "load_model", refuse)
    monkeypatch.setattr(e2e, "build_backend", refuse)
    monkeypatch.setattr(e2e, "native_weights", refuse)
    monkeypatch.setattr(train_step, "time_step", refuse)
    monkeypatch.setattr(tasks, "bench_ours", refuse)
    monkeypatch.setattr(tune, "copy_bandwidth", refuse)


def test_lengths_read_like_run_len():
    assert int_list("4096,4k,32K, 1m") == [4096, 4096, 32768, 1 << 20]
    assert single_length("32k") == 32768 and int_at_least(0)("0") == 0
    for text in ("4kk", "4.5k", "-5", "0", "", ",", "k", "4g", "8,a"):
        with pytest.raises(argparse.ArgumentTypeError, match="integers >= 1"):
            int_list(text)
    for text in ("0", "4kk", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="length >= 1"):
            single_length(text)
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1, got '0'"):
        int_at_least(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0, got '4k'"):
        int_at_least(0)("4k")


@pytest.mark.parametrize("name,args", [
    ("kernels", ["--lengths", "4kk"]), ("kernels", ["--lengths", "0"]), ("kernels", ["--kv-heads", "0"]),
    ("kernels", ["--window", "-1"]),
    ("e2e", ["--contexts", "-5"]), ("e2e", ["--contexts", "4kk"]), ("e2e", ["--batch-sizes", "0"]),
    ("e2e", ["--windows", "-1"]), ("e2e", ["--new-tokens", "-1"]), ("e2e", ["--repeats", "0"]),
    ("e2e", ["--threads", "0"]),
    ("train", ["--lengths", "4kk"]), ("train", ["--tokens", "0"]), ("train", ["--window", "-1"]),
    ("train", ["--steps", "0"]), ("train", ["--warmup", "-1"]),
    ("tasks", ["--length", "4kk"]), ("tasks", ["-n", "0"]), ("tasks", ["--lm-eval-n", "-1"]),
    ("tune", ["--lengths", "4kk"]), ("tune", ["--lengths", "0"]),
])
def test_a_bad_value_stops_at_its_argument(name, args, capsys):
    with pytest.raises(SystemExit) as e:
        MODULES[name].main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {args[0]}" in err and "Traceback" not in err, err
    assert f"rattn-eval bench {name}: error:" in err


@pytest.mark.parametrize("name,args,match", [
    ("kernels", ["--kv-heads", "16,5"], "--kv-heads must divide the 16 query heads, got 16, 5"),
    ("e2e", ["--model", "tiny-rattn", "--contexts", "100000", "--backends", "torch"],
     r"--contexts 100000 with --new-tokens 32 is more than tiny-rattn's context of 32768 tokens; .* 32736"),
    ("e2e", ["--model", "tiny-rattn", "--contexts", "32k", "--backends", "torch"], "--contexts 32768 with"),
    ("e2e", ["--model", "gemma3-270m", "--random-weights", "--contexts", "4k,64k", "--backends", "torch"],
     "--contexts 65536 .* gemma3-270m's context of 32768"),
    ("e2e", ["--model", "debug", "--contexts", "64", "--backends", "torch,foo"], "unknown backend 'foo'"),
    ("e2e", ["--model", "debug", "--contexts", "64", "--backends", ","], "--backends names no backend"),
    ("e2e", ["--model", "tiny-rattn", "--contexts", "64", "--backends", "torch,hf"], "transformers cannot run"),
    ("e2e", ["--model", "nope", "--random-weights"], "unknown model 'nope'"),
    ("train", ["--variants", "rattn,mamba"], "--variants: unknown variant 'mamba'"),
    ("train", ["--lengths", "4k,1"], "--lengths 1: .* at least 2 tokens"),
])
def test_a_bad_combination_is_one_config_error(name, args, match):
    with pytest.raises(ConfigError, match=match):
        MODULES[name].main(args)


def test_lengths_take_the_k_suffix(monkeypatch):
    seen = {}
    monkeypatch.setattr(kernels, "bench_kernels", lambda **kw: seen.update(kernels=kw["lengths"]))
    kernels.main(["--lengths", "4k,32768", "--kv-heads", "4"])
    monkeypatch.setattr(e2e, "bench_e2e", lambda model, contexts, *a, **kw: seen.update(e2e=contexts) or [])
    e2e.main(["--model", "tiny-rattn", "--contexts", "1k,4K", "--backends", "torch"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train_step, "time_step", lambda variant, T, batch, **kw: seen.setdefault("train", []).append(
        (T, batch)) or dict(variant=variant, seq_len=T, batch=batch, error="skipped"))
    train_step.main(["--lengths", "4k", "--tokens", "16k", "--variants", "swa"])
    assert seen == {"kernels": [4096, 32768], "e2e": [1024, 4096], "train": [(4096, 4)]}


def test_tune_takes_the_k_suffix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):  # past the parsing and the shape check
        tune.main(["--what", "rla-backward", "--lengths", "4k,8K"])


@pytest.mark.parametrize("name", list(MODULES))
def test_help_names_the_bench_command(name, capsys):
    with pytest.raises(SystemExit) as e:
        MODULES[name].main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: rattn-eval bench {name} [-h]")


@pytest.mark.parametrize("args,words", [
    (["bench", "e2e", "--model", "tiny-rattn", "--contexts", "100000"], ["--contexts 100000", "32768"]),
    (["bench", "train", "--variants", "x"], ["--variants"]),
    (["bench", "kernels", "--kv-heads", "3"], ["--kv-heads"]),
])
def test_the_cli_prints_one_error_line(args, words):
    r = CliRunner().invoke(cli, args)
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("rattn-eval: error:"), r.output
    assert all(w in lines[0] for w in words), r.output


def test_the_cli_stops_a_malformed_length_at_the_argument():
    r = CliRunner().invoke(cli, ["bench", "kernels", "--lengths", "4kk"])
    assert r.exit_code == 2 and "argument --lengths" in r.output and "Traceback" not in r.output, r.output


def test_python_m_prints_one_error_line(capsys):
    def main():
        raise ConfigError("--contexts 9 is wrong")

    assert run_script(main, "rattn-eval bench e2e") == 2
    assert capsys.readouterr().err == "rattn-eval bench e2e: error: --contexts 9 is wrong\n"
    assert run_script(lambda: None, "rattn-eval bench e2e") == 0
