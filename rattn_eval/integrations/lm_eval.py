"""lm-evaluation-harness model "rattn": any checkpoint our model layer loads, scored by lm-eval.

Importing this module registers `RattnLM` under the name "rattn", after lm-eval's own models
(lm-eval 0.4.x fills its registry with the built-in models only when the registry is empty, so
registering first would hide `hf`). lm-eval 0.4.x has no plugin discovery; the ways in are

    rattn-eval lm-eval --model-path smollm2-135m --tasks arc_easy --limit 20
    lm_eval.simple_evaluate(model=RattnLM("smollm2-135m", batch_size=8), tasks=["arc_easy"])
    python -c "import rattn_eval.integrations.lm_eval; from lm_eval.__main__ import cli_evaluate; cli_evaluate()" \\
        run --model rattn --model_args pretrained=CKPT --tasks arc_easy

Scores match lm-eval's `hf` model on the same weights: requests are tokenized by the same rules
(lm-eval's `TemplateLM`: trailing context spaces move into the continuation, the pair is encoded
whole and split, an empty context is conditioned on BOS, or EOS without one), the same positions
are scored, and `loglikelihood_rolling` cuts the same windows from the same `max_length`.

Unlike `hf`, nothing is left-truncated unless the user passes `truncation=True`; a request that
does not fit is an error. Truncated requests are counted (`RattnLM.truncated_requests`), logged,
and written into the results' `config` by `get_model_info`. `generate_until` decodes greedily with
`until` and `max_gen_toks`: any other generation setting that would change its output (sampling,
beams, a repetition penalty, `max_length`, an unknown key) is refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import lm_eval.models  # noqa: F401  (lm-eval's own models first; see the module docstring)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from rattn_eval.errors import BudgetError, ConfigError, NumericsError, did_you_mean
from rattn_eval.tokenizer import ChatTemplateRefused, render_chat

log = logging.getLogger(__name__)

MODEL_ARGS = ("pretrained", "backend", "device", "dtype", "batch_size", "max_length", "max_gen_toks",
              "truncation", "window")


@register_model("rattn")
class RattnLM(TemplateLM):
    """lm-eval LM over `rattn_eval.models.load_model`.

    Args (from `--model_args k=v`, except pretrained, device and batch_size, which `rattn-eval lm-eval`
    takes from --model-path, --device and --batch_size):
        pretrained: checkpoint folder, HF folder or built-in model name ("debug", "smollm2-135m", ...).
        backend: model backend, "auto" | "triton" | "torch" | "hf".
        device, dtype: where and in what precision the model runs (load_model's defaults when None).
        batch_size: requests per forward pass (an integer; lm-eval's "auto" search is not supported).
        max_length: token budget of one forward pass, default the model's context. It also sets the
            rolling-window size of `loglikelihood_rolling`, as `max_length` does for lm-eval's `hf`.
        max_gen_toks: generation budget when a task does not give one (256, as for `hf`).
        truncation: cut over-long requests from the left instead of raising BudgetError (true / false,
            1 / 0, yes / no, on / off).
        window: override the local-attention window of the checkpoint.
        max_batch_size: accepted because lm-eval always passes it; used only with "auto".
    """

    # lm-eval's own notion of backend (decoder-only vs encoder-decoder); the kernel path that
    # runs the model is `model_backend`.
    backend = "causal"

    def __init__(self, pretrained: str, backend: str = "auto", device: str | None = None, dtype: str | None = None,
                 batch_size: int | str = 1, max_batch_size: int | None = None, max_length: int | None = None,
                 max_gen_toks: int = 256, truncation: bool = False, window: int | None = None, **unknown):
        super().__init__()
        if unknown:
            raise ConfigError(f"unknown rattn model_args {sorted(unknown)}; accepted: {', '.join(MODEL_ARGS)}.")
        from rattn_eval.models import load_model

        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but CUDA is not available; pass --device cpu.")
        self.pretrained = str(pretrained)
        self.model, self.tokenizer = load_model(self.pretrained, backend=backend, device=device, dtype=dtype,
                                                window=window)
        if isinstance(self.model, torch.nn.Module):
            self.model.eval()
        self.model_backend = self.model.backend
        self._device = _model_device(self.model)
        self._batch_size = _positive_int(batch_size, "batch_size")
        limit = int(self.model.max_context)
        self._max_length = limit if max_length is None else _positive_int(max_length, "max_length")
        if self._max_length > limit:
            raise ConfigError(f"max_length={self._max_length} exceeds the model's context of {limit} tokens.")
        self._max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks")
        self.truncation = _bool_arg(truncation, "truncation")
        self.truncated_requests = 0
        eos_ids = sorted(self.tokenizer.eos_ids)
        main_eos = self.tokenizer.encode(self.tokenizer.eos_token) if self.tokenizer.eos_token else []
        if len(main_eos) == 1:
            self._eot_id = main_eos[0]
        elif eos_ids:
            self._eot_id = eos_ids[0]
        else:
            raise ConfigError(f"the tokenizer of {self.pretrained!r} has no end-of-sequence token, which lm-eval needs.")

    # ---- what lm-eval reads -------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._eot_id

    @property
    def prefix_token_id(self) -> int:
        """Token an empty context (and the first rolling window) is conditioned on: BOS, else EOS, as in `hf`."""
        bos = self.tokenizer.bos_id
        return self._eot_id if bos is None else bos

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's jinja chat template when one is asked for (None when chat_template is off)."""
        if chat_template is False or chat_template is None:
            return None
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"the tokenizer of {self.pretrained!r} has no chat template; "
                              "run without --apply_chat_template.")
        return self.tokenizer.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render a chat as the prompt string. Without a generation prompt the last (assistant) message is
        left open, as lm-eval's `hf` does for an answer prefix (transformers' continue_final_message)."""
        template = self.chat_template(True)
        try:
            return render_chat(template, chat_history, add_generation_prompt=add_generation_prompt,
                               bos_token=self.tokenizer.bos_token, eos_token=self.tokenizer.eos_token)
        except ChatTemplateRefused:
            # Some templates refuse a system turn; `hf` then retries without it, and so do we.
            log.warning("the chat template refused the chat; retrying without system messages.")
            chat_history = [m for m in chat_history if m["role"] != "system"]
            try:
                return render_chat(template, chat_history, add_generation_prompt=add_generation_prompt,
                                   bos_token=self.tokenizer.bos_token, eos_token=self.tokenizer.eos_token)
            except ChatTemplateRefused as err:
                raise ConfigError(f"{self.pretrained!r}: {err}") from None

    def get_model_info(self) -> dict:
        """Merged into lm-eval's results["config"] after the run."""
        return {
            "rattn_pretrained": self.pretrained,
            "rattn_revision": getattr(self.model, "revision", None),  # the hub commit of an ORG/NAME model
            "rattn_backend": self.model_backend,
            "rattn_max_length": self._max_length,
            "rattn_truncation": self.truncation,
            "rattn_truncated_requests": self.truncated_requests,
        }

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of `string`. None: BOS when the tokenizer adds one and the text does not already start
        with it (what an HF tokenizer does by default); True / False: force BOS on or off."""
        if add_special_tokens is None:
            return self.tokenizer.encode_prompt(string)
        ids = self.tokenizer.encode(string)
        if add_special_tokens and self.tokenizer.add_bos and self.tokenizer.bos_id is not None:
            return [self.tokenizer.bos_id] + ids
        return ids

    # ---- scoring --------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Score tokenized (key, context_ids, continuation_ids) requests.

        The model input is (context + continuation)[:-1]; the logits at its last len(continuation)
        positions predict the continuation. Distinct inputs run longest first in right-padded batches of
        `batch_size`, one forward pass each; results come back in the input order.

        Returns: (sum of continuation log-probs, whether every continuation token is the argmax) per request.
        """
        inputs: list[list[int]] = []
        for _, context, continuation in requests:
            if not context or not continuation:
                # a whitespace-only context moves into the continuation (lm-eval), and a continuation that
                # merges into the context's last token when the pair is encoded whole leaves no token of its own
                why = ("the context is empty: lm-eval moves a whitespace-only context into the continuation"
                       if not context else "the continuation has no token of its own: encoded together with the "
                       "context, its text merges into the context's last token")
                raise ConfigError(f"a loglikelihood request needs a context and a continuation of at least one "
                                  f"token each, got {len(context)} and {len(continuation)} ({why}).")
            if len(continuation) > self._max_length:
                raise BudgetError(f"a continuation of {len(continuation)} tokens does not fit max_length="
                                  f"{self._max_length}, even with truncation.")
            ids = context + continuation
            if len(ids) - 1 > self._max_length:
                if not self.truncation:
                    raise BudgetError(
                        f"a loglikelihood request needs {len(ids) - 1} input tokens, more than max_length="
                        f"{self._max_length}; raise max_length (up to the model's {self.model.max_context}) "
                        "or pass truncation=True to cut contexts from the left.")
                self._count_truncated(1, f"{len(ids) - 1} > max_length={self._max_length} input tokens")
                ids = ids[-(self._max_length + 1):]
            inputs.append(ids[:-1])

        # Requests with the same model input (e.g. the one-token choices of a multiple-choice question, or
        # a repeated request) share one row of the batch, as lm-eval's `hf` shares them through its logits cache.
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(inputs):
            rows.setdefault(tuple(ids), []).append(i)
        unique = sorted(rows.values(), key=lambda members: -len(inputs[members[0]]))

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # closed (ending its line) before an error propagates, so the error prints on a line of its own
        with tqdm(total=len(requests), disable=disable_tqdm, desc="rattn loglikelihood") as pbar:
            for start in range(0, len(unique), self._batch_size):
                batch = unique[start:start + self._batch_size]
                logits = self._forward([inputs[members[0]] for members in batch])  # (B, T, V)
                for row, members in enumerate(batch):
                    for i in members:
                        results[i] = self._score(logits[row], len(inputs[i]), requests[i])
                    pbar.update(len(members))
        return results

    def _score(self, logits: torch.Tensor, n_in: int, request) -> tuple[float, bool]:
        """(log-prob of the continuation, is it the greedy path) from one row's logits (T, V)."""
        key, _, continuation = request
        if not continuation:  # the empty string has probability 1
            return 0.0, True
        n_cont = len(continuation)
        scored = logits[n_in - n_cont:n_in]  # (n_cont, V)
        if not bool(torch.isfinite(scored).all()):
            raise NumericsError(f"{self.pretrained!r} produced NaN or inf logits on a loglikelihood request; "
                                "try dtype=float32 or a smaller input.")
        logprobs = F.log_softmax(scored.float(), dim=-1)  # (n_cont, V)
        target = torch.tensor(continuation, dtype=torch.long, device=logprobs.device)
        answer = (float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(dim=-1) == target).all()))
        if key is not None:  # rolling windows have no key; their total is cached per document
            self.cache_hook.add_partial("loglikelihood", key, answer)
        return answer

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each text, cut into the same disjoint windows as lm-eval's `hf`:
        `max_length` tokens per window, the first conditioned on `prefix_token_id`, each later window
        scoring only tokens no earlier window scored. Windows of all texts are batched together."""
        windows, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            token_windows = get_rolling_token_windows(token_list=self.tok_encode(text),
                                                      prefix_token=self.prefix_token_id,
                                                      max_seq_len=self._max_length, context_len=1)
            for context, continuation in map(make_disjoint_window, token_windows):
                windows.append((None, context, continuation))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores):  # window order, so the sum matches `hf` bit for bit
            totals[i] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string of `until` (EOS is always a stop).

        Requests with the same generation kwargs are batched longest prompt first through
        `model.generate`, which stops a row at EOS, at a stop string or at `max_gen_toks`.
        """
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)

        plans = []  # (request indices, prompt ids by index, stop strings, max_gen_toks), checked before any work
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self._max_gen_toks)
            temperature = kwargs.get("temperature")
            if kwargs.get("do_sample") and (temperature is None or float(temperature) > 0.0):
                raise ConfigError("rattn decodes greedily, but a task asks for sampling (do_sample without "
                                  "temperature 0).")
            _check_greedy_kwargs(kwargs)
            until = handle_stop_sequences(kwargs.get("until"), eos=self.tokenizer.eos_token)
            max_gen = int(kwargs["max_gen_toks"])
            room = self._max_length - max_gen
            if room < 1:
                raise ConfigError(f"max_gen_toks={max_gen} leaves no room for a prompt within max_length="
                                  f"{self._max_length}.")
            prompts = {}
            for i in indices:
                ids = self.tok_encode(requests[i].args[0]) or [self.prefix_token_id]
                if len(ids) > room:
                    if not self.truncation:
                        raise BudgetError(
                            f"a prompt of {len(ids)} tokens plus max_gen_toks={max_gen} exceeds max_length="
                            f"{self._max_length}; raise max_length or pass truncation=True to cut prompts from the left.")
                    self._count_truncated(1, f"prompt of {len(ids)} tokens > {room}")
                    ids = ids[-room:]
                prompts[i] = ids
            plans.append((indices, prompts, until, max_gen))

        out: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="rattn generate_until") as pbar:
            for indices, prompts, until, max_gen in plans:
                order = sorted(indices, key=lambda i: -len(prompts[i]))
                for start in range(0, len(order), self._batch_size):
                    batch = order[start:start + self._batch_size]
                    new_tokens = self.model.generate([prompts[i] for i in batch], max_new_tokens=max_gen,
                                                     stop=until, tokenizer=self.tokenizer)
                    for i, tokens in zip(batch, new_tokens):
                        text = postprocess_generated_text(self.tokenizer.decode(tokens), until, None)
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    pbar.update(len(batch))
        return out

    # ---- helpers --------------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, sequences: list[list[int]]) -> torch.Tensor:
        """Right-pad `sequences` into one batch and run it: -> logits (B, T, V)."""
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        ids = torch.full((len(sequences), int(lengths.max())), self.tokenizer.pad_id, dtype=torch.long)  # (B, T)
        for row, s in enumerate(sequences):
            ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        return self.model(ids.to(self._device), lengths=lengths.to(self._device))

    def _count_truncated(self, n: int, why: str) -> None:
        self.truncated_requests += n
        log.warning("truncation=True: cut a request from the left (%s); %d truncated so far.", why,
                    self.truncated_requests)


def cli_main(argv: list[str]) -> int:
    """`rattn-eval lm-eval --model-path CKPT [lm-eval run options]`.

    Runs lm-eval's own command line as `lm-eval run --model rattn --model_args '{"pretrained": CKPT}'`
    followed by every other argument unchanged (e.g. `--tasks`, `--limit`, `--include_path`, and more
    `--model_args k=v`, which lm-eval merges in). Returns the exit status.

    Raises ConfigError for bad options (checked before the model loads), for lm-eval's ValueErrors (an
    unknown task, or its message prefixed "lm-eval: ") and when lm-eval could not save the results; errors
    of the model itself (NumericsError, BudgetError) come through as raised.
    """
    rest, path = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--model-path":
            path = next(args, None)
        elif arg.startswith("--model-path="):
            path = arg.split("=", 1)[1]
        elif arg == "--model" or arg.startswith("--model="):
            raise ConfigError("the model is always 'rattn' here; give the checkpoint with --model-path.")
        else:
            rest.append(arg)
    from lm_eval._cli import HarnessCLI
    from lm_eval.loggers.evaluation_tracker import eval_logger as tracker_log
    from lm_eval.utils import setup_logging

    if "-h" in rest or "--help" in rest:
        print("usage: rattn-eval lm-eval --model-path CKPT [options of `lm-eval run`, below; the model is 'rattn']\n")
        path = path or "CKPT"
    if not path:
        raise ConfigError("rattn-eval lm-eval needs --model-path CKPT (a checkpoint folder or a built-in model name).")

    saved = sys.argv
    # lm-eval's CLI reads sys.argv itself; "run" is its evaluation subcommand.
    sys.argv = ["lm-eval", "run", "--model", "rattn", "--model_args", json.dumps({"pretrained": path}), *rest]
    if not any(a == "--device" or a.startswith("--device=") for a in rest):
        # lm-eval's own default is cuda:0 even on a machine without CUDA; ours is CUDA when present.
        sys.argv += ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
    save_failures = _SaveFailures()
    tracker_log.addHandler(save_failures)
    try:  # what lm-eval's cli_evaluate does, with our checks between parsing and running
        setup_logging()
        parser = HarnessCLI()
        options = _parse_args(parser)
        _check_run_args(options, path)
        try:
            parser.execute(options)
        except ValueError as err:  # lm-eval's answer to an unknown task name, among others
            unknown = _unknown_task_error(options)
            if unknown:
                raise unknown from None
            raise ConfigError(f"lm-eval: {' '.join(str(err).split())}") from None
    except SystemExit as stop:  # --help ends this way
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
        tracker_log.removeHandler(save_failures)
    if save_failures.failure:
        raise ConfigError(f"lm-eval {save_failures.failure} to --output_path {options.output_path!r} "
                          f"({save_failures.reason}).")
    return 0


def _parse_args(parser):
    """lm-eval's parse of sys.argv, with an argparse error as a ConfigError instead of usage + message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args()
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        message = stderr.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]
        raise ConfigError(f"{message}.") from None


def _check_run_args(args, path: str | None = None) -> None:
    """Refuse, before the model loads, options that lm-eval fails on with a traceback, late, or not at all."""
    if not args.tasks and not args.config:
        raise ConfigError("pass --tasks, e.g. --tasks arc_easy (`lm-eval ls tasks` lists them).")
    given = args.model_args if isinstance(args.model_args, dict) else {}
    if path is not None and str(given.get("pretrained", path)) != str(path):
        raise ConfigError("the checkpoint comes from --model-path; drop pretrained= from --model_args.")
    for key in ("device", "batch_size"):  # lm-eval passes both to the model from its own flags, always
        if key in given:
            raise ConfigError(f"give {key} with --{key}, not in --model_args.")
    limit = args.limit
    if limit is not None and not (0 < limit < 1 or (limit >= 1 and limit.is_integer())):
        raise ConfigError(f"--limit must be a whole number of documents (1 or more) or a fraction of them "
                          f"in (0, 1), not {limit:g}.")
    if args.include_path and not os.path.isdir(args.include_path):
        raise ConfigError(f"--include_path {args.include_path!r} is not a directory of task YAML files.")
    if args.output_path:
        _check_writable(args.output_path)


def _check_writable(output_path: str) -> None:
    """lm-eval writes into OUTPUT_PATH/ (beside it for a .json path) after the run, and only logs a failure."""
    folder = Path(output_path).absolute()
    if folder.suffix == ".json":
        folder = folder.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    why = f"cannot save results under --output_path {output_path!r}:"
    if not existing.is_dir():
        raise ConfigError(f"{why} {existing} is a file, not a directory.")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise ConfigError(f"{why} {existing} is not writable ({err.strerror}).") from None


def _unknown_task_error(args) -> ConfigError | None:
    """The error for the first --tasks name lm-eval does not know (it raises a bare ValueError), or None."""
    from lm_eval.tasks import TaskManager

    names = [t for task in args.tasks or [] for t in task.split(",")
             if t and not t.endswith(".yaml") and not os.path.isdir(t)]
    if not names:
        return None
    manager = TaskManager(include_path=args.include_path)  # seconds: it indexes every built-in task
    for name in names:
        if not manager.match_tasks([name]):
            return ConfigError(f"unknown lm-eval task {name!r} (`lm-eval ls tasks` lists them)."
                               f"{did_you_mean(name, manager.all_tasks)}")
    return None


class _SaveFailures(logging.Handler):
    """Remembers the failure lm-eval's EvaluationTracker logs when it cannot save results (a warning, then
    the exception), which it does instead of raising."""

    def __init__(self):
        super().__init__()
        self.failure: str | None = None
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Could not save"):
            self.failure = self.failure or message[0].lower() + message[1:]
        elif self.failure and self.reason is None:
            self.reason = message


# generation settings generate_until honours, and those it accepts only at the value greedy decoding has
_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature"}
_GREEDY_VALUES = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "top_k": None,
                  "top_p": None, "use_cache": None}


def _check_greedy_kwargs(kwargs: dict) -> None:
    """One ConfigError for a generation setting greedy decoding with stop strings cannot follow (max_length,
    beams, penalties, unknown keys), instead of ignoring it. top_k, top_p and use_cache change nothing
    without sampling and pass with any value."""
    for key, value in kwargs.items():
        if key in _GEN_KWARGS or (key in _GREEDY_VALUES and _greedy_value(value, _GREEDY_VALUES[key])):
            continue
        hint = {"max_length": " (give the token budget as max_gen_toks)", "stop": " (give stop strings as until)"}
        raise ConfigError(f"rattn's generate_until decodes greedily with `until` and `max_gen_toks` only; it cannot "
                          f"follow the generation setting {key}={value!r}{hint.get(key, '')}.")


def _greedy_value(value, expected) -> bool:
    """Whether a generation setting has the value greedy decoding has (any value when `expected` is None);
    numbers may come as numeric strings, never as booleans."""
    if expected is None:
        return True
    if isinstance(value, bool):
        return False
    try:
        return float(value) == float(expected)
    except (TypeError, ValueError):
        return False


def _bool_arg(value, name: str) -> bool:
    """A boolean model_arg given as a bool, 0 / 1, or true / false / yes / no / on / off (any case)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}.")


def _positive_int(value, name: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        hint = " (rattn takes a fixed batch size, not 'auto')" if name == "batch_size" else ""
        raise ConfigError(f"{name} must be a positive integer, not {value!r}{hint}.")
    return n


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device
