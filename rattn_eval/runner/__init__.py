"""The evaluation pipeline behind `rattn-eval run`: samples -> preflight -> batched greedy
generation -> scores -> a resumable run directory.

    from rattn_eval.runner import RunConfig, run
    summary = run(RunConfig(tasks=("niah_single_1",), lengths=(4096,), model="debug", n=4))

`run` is a plain function of a frozen config; the CLI only builds the config. Nothing runs before
every sample has been checked to fit the model's context (prompt + generation budget), so a
prompt is never truncated; records are appended and flushed one by one, so a killed run resumes
where it stopped with nothing lost or scored twice.

Modules: `config` (RunConfig, its checks, the default run directory, the resolved config.json),
`pipeline` (run), `interface` (what the runner needs of a model and a tokenizer), `progress`
(progress bars), `oracle` (pipeline checks with known answers). The run directory itself is `rattn_eval.results`'s.
"""

from rattn_eval.runner.config import (BACKENDS, DEFAULT_MODEL, DEFAULT_RUNS_DIR, RunConfig, default_out_dir,
                                      resolved_config)
from rattn_eval.runner.pipeline import builtin_models, load_model_for_run, run, write_samples

__all__ = ["BACKENDS", "DEFAULT_MODEL", "DEFAULT_RUNS_DIR", "RunConfig", "builtin_models", "default_out_dir",
           "load_model_for_run", "resolved_config", "run", "write_samples"]
