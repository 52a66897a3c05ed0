"""Tokenizers behind one small interface: built-in byte-level and GPT-2 BPE, and HF `tokenizer.json` folders.

Every prompt token count in the project goes through `Tokenizer.encode_prompt`, so the BOS
convention of the tokenizer is counted once, here, and nowhere else.

    tok = load_tokenizer("gpt2")                # or "bytes", or a folder with tokenizer.json
    ids = tok.encode_prompt("Hello")            # list[int], BOS added when the tokenizer wants one
    text = tok.apply_chat_template("Hi there")  # the user turn plus the assistant header, as a string
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path

from rattn_eval.errors import ConfigError, did_you_mean

BUILTIN_TOKENIZERS = ("bytes", "gpt2")


def cache_root() -> Path:
    """Root of the on-disk caches (converted tokenizers and models)."""
    return Path.home() / ".cache" / "rattn-eval"


class Tokenizer:
    """Common interface; subclasses implement `_encode` and `_decode`.

    Attributes:
        name: identity string for cache keys ("bytes", "gpt2", or "hf-<16 hex>").
        vocab_size: number of ids, special tokens included.
        bos_id: id of the beginning-of-sequence token, or None.
        bos_token: its string form (for chat templates), or None.
        eos_ids: ids that end generation.
        eos_token: string form of the main EOS token, or None.
        pad_id: id used to pad batches.
        add_bos: whether a prompt starts with `bos_id` (see `encode_prompt`).
        chat_template: jinja source of the chat template, or None.
    """

    name: str
    vocab_size: int
    bos_id: int | None
    bos_token: str | None
    eos_ids: set[int]
    eos_token: str | None
    pad_id: int
    add_bos: bool
    chat_template: str | None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, adding no special tokens (special-token strings in the text are recognised)."""
        return self._encode(text)

    def decode(self, ids) -> str:
        """Text of `ids`, special tokens skipped; invalid byte sequences become U+FFFD."""
        return self._decode([int(i) for i in ids])

    def decode_with_special(self, ids) -> str:
        """Text of `ids` with special tokens written out (`<|im_end|>`, ...): what stop strings are matched
        against, as lm-eval's `hf` model does, so a stop string that is a special token ends a row."""
        return self._decode_special([int(i) for i in ids])

    def _decode_special(self, ids: list[int]) -> str:
        return self._decode(ids)

    def encode_prompt(self, text: str) -> list[int]:
        """Ids a model sees for a prompt: `[bos] + encode(text)` when the tokenizer adds BOS
        and the text does not already start with the BOS string (a chat template may put it there)."""
        ids = self._encode(text)
        return [self.bos_id] + ids if self._prepended_bos(text) else ids

    def count_prompt(self, text: str) -> int:
        """len(encode_prompt(text)), the number every length budget is checked against."""
        return len(self.encode_prompt(text))

    def token_index(self, text: str, char_pos: int, ids: list[int] | None = None) -> int:
        """Index in `encode_prompt(text)` of the token holding character `char_pos` of `text`.

        `ids` may pass the already computed `encode_prompt(text)`; the generic version counts
        the tokens of the prefix instead, which agrees wherever tokens do not straddle `char_pos`.
        """
        return len(self.encode_prompt(text[:char_pos]))

    def token_indices(self, text: str, char_positions: list[int], ids: list[int] | None = None) -> list[int]:
        """token_index for several character offsets at once."""
        return [self.token_index(text, p, ids) for p in char_positions]

    def _prepended_bos(self, text: str) -> int:
        return int(self.add_bos and self.bos_id is not None and not (self.bos_token and text.startswith(self.bos_token)))

    def apply_chat_template(self, user_text: str) -> str:
        """Render `user_text` as one user message followed by the assistant header (generation prompt)."""
        if self.chat_template is None:
            raise ConfigError(f"tokenizer {self.name!r} has no chat template; run without one.")
        return render_chat_template(self.chat_template, user_text, bos_token=self.bos_token, eos_token=self.eos_token)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, plus <bos>=256, <eos>=257, <pad>=258 (vocab 259)."""

    SPECIALS = {"<bos>": 256, "<eos>": 257, "<pad>": 258}
    _SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")
    _SPECIAL_NAMES = {v: k for k, v in SPECIALS.items()}

    def __init__(self, chat_template: str | None = None):
        self.name = "bytes"
        self.vocab_size = 259
        self.bos_id, self.bos_token = 256, "<bos>"
        self.eos_ids, self.eos_token = {257}, "<eos>"
        self.pad_id = 258
        # The byte vocabulary has a dedicated BOS id, so prompts start with it, as for Llama-style models.
        self.add_bos = True
        self.chat_template = chat_template

    def _encode(self, text: str) -> list[int]:
        if "<" not in text:  # fast path: no special-token string can be present
            return list(text.encode("utf-8"))
        ids: list[int] = []
        for part in self._SPECIAL_RE.split(text):
            if part in self.SPECIALS:
                ids.append(self.SPECIALS[part])
            elif part:
                ids.extend(part.encode("utf-8"))
        return ids

    def _decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def _decode_special(self, ids: list[int]) -> str:
        out, run = [], []
        for i in ids:
            if i in self._SPECIAL_NAMES:
                out.append(self._decode(run) + self._SPECIAL_NAMES[i])
                run = []
            else:
                run.append(i)
        return "".join(out) + self._decode(run)

    def count_prompt(self, text: str) -> int:
        if "<" in text:
            return len(self.encode_prompt(text))
        return len(text.encode("utf-8")) + self._prepended_bos(text)

    def token_index(self, text: str, char_pos: int, ids: list[int] | None = None) -> int:
        if "<" in text[:char_pos]:
            return len(self.encode_prompt(text[:char_pos]))
        return len(text[:char_pos].encode("utf-8")) + self._prepended_bos(text)


class Gpt2Tokenizer(Tokenizer):
    """GPT-2 BPE (r50k ranks) from the file shipped in the `openai-whisper` package, run by tiktoken."""

    def __init__(self):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        spec = importlib.util.find_spec("whisper")  # locate only: importing whisper pulls in torch audio code
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                "the 'gpt2' tokenizer needs the openai-whisper package (pip install --no-deps openai-whisper)."
            )
        ranks_file = Path(spec.submodule_search_locations[0]) / "assets" / "gpt2.tiktoken"
        from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenisation regex

        self._enc = tiktoken.Encoding(
            "gpt2", pat_str=r50k_pat_str, mergeable_ranks=load_tiktoken_bpe(str(ranks_file)),
            special_tokens={"<|endoftext|>": 50256},
        )
        self.name = "gpt2"
        self.vocab_size = self._enc.n_vocab
        self.bos_id, self.bos_token = 50256, "<|endoftext|>"
        self.eos_ids, self.eos_token = {50256}, "<|endoftext|>"
        self.pad_id = 50256
        self.add_bos = False  # GPT-2 prompts start directly with text
        self.chat_template = None

    def _encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")

    def token_indices(self, text: str, char_positions: list[int], ids: list[int] | None = None) -> list[int]:
        return _token_indices_by_bytes(self, self._enc, text, char_positions, ids)

    def token_index(self, text: str, char_pos: int, ids: list[int] | None = None) -> int:
        return self.token_indices(text, [char_pos], ids)[0]

    def _decode(self, ids: list[int]) -> str:
        return self._enc.decode([i for i in ids if i != 50256], errors="replace")

    def _decode_special(self, ids: list[int]) -> str:
        return self._enc.decode(ids, errors="replace")


class HFTokenizer(Tokenizer):
    """A folder holding an HF `tokenizer.json` (and optionally tokenizer_config.json / chat_template.jinja)."""

    def __init__(self, folder: str | os.PathLike):
        from tokenizers import Tokenizer as _HFTok

        folder = Path(folder)
        tk_path = folder / "tokenizer.json"
        spec = _read_json(tk_path)
        raw = tk_path.read_bytes()
        try:
            self._tk = _HFTok.from_str(raw.decode("utf-8"))
        except Exception as e:  # the tokenizers library raises a bare Exception for a spec it refuses
            raise ConfigError(f"{tk_path} is not a tokenizer the tokenizers library can read ({e}).") from None
        cfg_path = folder / "tokenizer_config.json"
        cfg = _read_json(cfg_path)
        template = _chat_template(cfg.get("chat_template"), cfg_path)
        if template is None and (folder / "chat_template.jinja").is_file():
            template = _read_text(folder / "chat_template.jinja")
        self.chat_template = template

        self.bos_token = _token_str(cfg.get("bos_token"), cfg_path, "bos_token")
        self.eos_token = _token_str(cfg.get("eos_token"), cfg_path, "eos_token")
        self.bos_id = self._tk.token_to_id(self.bos_token) if self.bos_token else None
        eos_ids = set()
        if self.eos_token and self._tk.token_to_id(self.eos_token) is not None:
            eos_ids.add(self._tk.token_to_id(self.eos_token))
        gen_path = folder / "generation_config.json"  # instruct models often list extra stop ids
        extra = _read_json(gen_path).get("eos_token_id")
        extra = [extra] if isinstance(extra, int) else (extra or [])
        if not isinstance(extra, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in extra):
            raise ConfigError(f"{gen_path}: eos_token_id must be a token id or a list of them, got {extra!r}.")
        eos_ids.update(extra)
        self.eos_ids = eos_ids
        pad = _token_str(cfg.get("pad_token"), cfg_path, "pad_token")
        pad_id = self._tk.token_to_id(pad) if pad else None
        self.pad_id = pad_id if pad_id is not None else (min(eos_ids) if eos_ids else 0)
        if "add_bos_token" in cfg:
            self.add_bos = bool(cfg["add_bos_token"])
        else:  # no flag: the post-processor of tokenizer.json tells whether BOS is prepended
            self.add_bos = self._post_processor_adds(self.bos_token, spec.get("post_processor"))
        self.add_bos = self.add_bos and self.bos_id is not None
        self.vocab_size = self._tk.get_vocab_size(with_added_tokens=True)
        self._fast = _tiktoken_twin(spec, self._tk)
        h = hashlib.sha256(raw)
        h.update((template or "").encode("utf-8"))
        h.update(f"|{self.add_bos}|{self.bos_token}|{self.eos_token}".encode("utf-8"))
        self.name = "hf-" + h.hexdigest()[:16]
        self.folder = folder

    @staticmethod
    def _post_processor_adds(bos_token: str | None, post: dict | None) -> bool:
        if not bos_token or not post:
            return False
        procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        for p in procs:
            if p.get("type") == "TemplateProcessing":
                first = (p.get("single") or [{}])[0]
                return first.get("SpecialToken", {}).get("id") == bos_token
        return False

    def _encode(self, text: str) -> list[int]:
        if self._fast is not None and (self._fast[1] is None or not self._fast[1].search(text)):
            return self._fast[0].encode(text, allowed_special="all")
        return self._tk.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        return self._tk.decode(ids, skip_special_tokens=True)

    def _decode_special(self, ids: list[int]) -> str:
        return self._tk.decode(ids, skip_special_tokens=False)

    def token_indices(self, text: str, char_positions: list[int], ids: list[int] | None = None) -> list[int]:
        if self._fast is None or (self._fast[1] is not None and self._fast[1].search(text)):
            # the character offsets of the tokens: the token holding a character is the first one ending
            # after it (counting the tokens of the prefix instead is one too many wherever a token
            # straddles the offset, e.g. " One" holding the space before a needle)
            enc = self._tk.encode(text, add_special_tokens=False)
            skip = self._prepended_bos(text)
            ends = [e for _, e in enc.offsets]
            if ids is not None and len(ids) != skip + len(ends):
                return [super(HFTokenizer, self).token_index(text, p, ids) for p in char_positions]
            return [skip + bisect.bisect_right(ends, p) for p in char_positions]
        return _token_indices_by_bytes(self, self._fast[0], text, char_positions, ids)

    def token_index(self, text: str, char_pos: int, ids: list[int] | None = None) -> int:
        return self.token_indices(text, [char_pos], ids)[0]


_BYTE_LENGTHS: dict[int, object] = {}


def _token_indices_by_bytes(tok: Tokenizer, enc, text: str, char_positions: list[int],
                            ids: list[int] | None) -> list[int]:
    """token_index for tiktoken encoders: walk the byte lengths of the ids up to each byte offset."""
    import numpy as np

    lengths = _BYTE_LENGTHS.get(id(enc))
    if lengths is None:
        lengths = np.zeros(enc.max_token_value + 1, dtype=np.int64)
        for i in range(enc.max_token_value + 1):
            try:
                lengths[i] = len(enc.decode_single_token_bytes(i))
            except KeyError:  # holes in the id space
                pass
        _BYTE_LENGTHS[id(enc)] = lengths
    if ids is None:
        ids = tok.encode_prompt(text)
    skip = tok._prepended_bos(text)
    ends = np.cumsum(lengths[np.fromiter(ids[skip:], dtype=np.int64, count=len(ids) - skip)])
    byte_pos = [len(text[:p].encode("utf-8")) for p in char_positions]
    return [skip + int(i) for i in np.searchsorted(ends, byte_pos, side="right")]


# The regex of the `ByteLevel(use_regex=True)` pre-tokenizer of HF tokenizers (GPT-2's pattern).
_BYTELEVEL_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PROBE = (
    "Hello, world! It's 2024-05-01; café déjà-vu — naïve 1234567 tokens.\n\n\tTabs  and   spaces \n"
    "<|im_start|>user\nWhat's the UUID 3f2b9c1e-8a7d-4e6f-b5c4-1d2e3f4a5b6c?<|im_end|>\n 日本語のテキスト 🙂 "
    "VAR ABCDE = 12345\n1. apple\n2. banana\n.... ...  'll 've 're 'd 'm 's 't  \r\n\u00a0end   "
)


def _tiktoken_twin(spec: dict, hf_tok):
    """A tiktoken encoder giving the same ids as a GPT-2-style byte-level BPE `tokenizer.json`, or None.

    tiktoken encodes about 8x faster than `tokenizers` on one core, which matters because task
    generation measures every prompt exactly. It is only built when the file is the plain
    byte-level BPE that tiktoken implements (no normalizer, GPT-2 regex, merges in id order,
    added tokens matched literally), and only kept when it reproduces `tokenizers` on a probe text.
    """
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (model.get("type") != "BPE" or spec.get("normalizer") is not None or model.get("dropout")
            or model.get("byte_fallback") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix") or pre.get("type") != "ByteLevel"
            or not pre.get("use_regex", True) or pre.get("add_prefix_space")):
        return None
    added = spec.get("added_tokens") or []
    if any(a.get("lstrip") or a.get("rstrip") or a.get("single_word") or a.get("normalized") for a in added):
        return None
    vocab: dict[str, int] = model["vocab"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    merged_ids = [vocab.get(a + b) for a, b in merges]
    if None in merged_ids or any(x >= y for x, y in zip(merged_ids, merged_ids[1:])):
        return None  # tiktoken merges by id, so merge order must equal id order
    import tiktoken

    byte_of = _bytelevel_decoder()
    specials = {a["content"]: a["id"] for a in added}
    try:
        ranks = {bytes(byte_of[c] for c in tok): i for tok, i in vocab.items() if tok not in specials}
        enc = tiktoken.Encoding("hf-twin", pat_str=_BYTELEVEL_RE, mergeable_ranks=ranks, special_tokens=specials)
    except (KeyError, ValueError):
        return None
    # Some vocabularies lack a few single bytes (rare control characters, unused UTF-8 lead bytes);
    # tiktoken cannot encode text containing them, so such text goes to `tokenizers` instead.
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    unsafe = _chars_with_bytes(missing)
    ok = all(enc.encode(t, allowed_special="all") == hf_tok.encode(t, add_special_tokens=False).ids
             for t in (_PROBE, _PROBE.strip(), " " + _PROBE))
    return (enc, unsafe) if ok else None


class _UnsafeChars:
    """`search(text)` is truthy when `text` holds a character from `ranges` (inclusive code point pairs).

    ASCII members are found with substring search and the rest with a regex run only on
    non-ASCII text, which keeps the check to well under a millisecond for a 32k-token prompt.
    """

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ascii = [chr(c) for lo, hi in ranges if lo < 0x80 for c in range(lo, min(hi, 0x7F) + 1)]
        wide = [(max(lo, 0x80), hi) for lo, hi in ranges if hi >= 0x80]
        self.wide = re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in wide) + "]") if wide else None
        self.astral_only = all(lo >= 0x10000 for lo, _ in wide)

    def search(self, text: str) -> bool:
        if any(c in text for c in self.ascii):
            return True
        if self.wide is None or text.isascii():
            return False
        if self.astral_only and len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text):
            return False  # no character beyond U+FFFF: a cheap C-level pre-check before the regex
        return self.wide.search(text) is not None


def _chars_with_bytes(missing: list[int]):
    """Matcher for characters whose UTF-8 encoding contains one of the `missing` bytes, or None."""
    if not missing:
        return None
    ranges = []
    for b in missing:
        if b < 0x80:
            ranges.append((b, b))
        elif 0xC2 <= b <= 0xDF:  # lead byte of a 2-byte sequence
            ranges.append(((b & 0x1F) << 6, ((b & 0x1F) << 6) | 0x3F))
        elif 0xE0 <= b <= 0xEF:
            ranges.append(((b & 0x0F) << 12, ((b & 0x0F) << 12) | 0xFFF))
        elif 0xF0 <= b <= 0xF4:
            ranges.append(((b & 0x07) << 18, min(0x10FFFF, ((b & 0x07) << 18) | 0x3FFFF)))
        elif 0x80 <= b <= 0xBF:  # a continuation byte occurs in too many characters to list: give up
            ranges.append((0x80, 0x10FFFF))
        # 0xC0, 0xC1, 0xF5..0xFF never occur in valid UTF-8
    return _UnsafeChars(ranges) if ranges else None


def _bytelevel_decoder() -> dict[str, int]:
    """GPT-2's printable-character stand-ins for bytes, inverted: char -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _read_text(path: Path) -> str:
    """A UTF-8 file's text; an unreadable or undecodable file is a ConfigError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror}).") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None


def _read_json(path: Path) -> dict:
    """The JSON object in `path`, {} when the file is absent; garbled or truncated files (often a cut
    download) are a ConfigError naming the file rather than a traceback from json."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(_read_text(path))
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}, expected an object.")
    return data


def _token_str(tok, path: Path, key: str) -> str | None:
    """tokenizer_config.json writes special tokens either as strings or as {"content": ...} dicts."""
    if isinstance(tok, dict):
        tok = tok.get("content")
    if tok is not None and not isinstance(tok, str):
        raise ConfigError(f"{path}: {key} must be a token string or {{\"content\": string}}, got {tok!r}.")
    return tok


def _chat_template(template, path: Path) -> str | None:
    """The chat_template of tokenizer_config.json: a string, or a list of {"name", "template"} entries
    of which the one named "default" is used."""
    if isinstance(template, list):
        if not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in template):
            raise ConfigError(f"{path}: chat_template must be a string or a list of {{\"name\", \"template\"}} "
                              "objects.")
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise ConfigError(f"{path}: chat_template must be a string, not {type(template).__name__}.")
    return template


class ChatTemplateRefused(ConfigError):
    """A chat template called raise_exception (e.g. it does not accept a system turn)."""


_CHAT_ENV = None
_TEMPLATES: dict[str, object] = {}


def _compiled(template: str):
    global _CHAT_ENV
    if _CHAT_ENV is None:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ChatTemplateRefused(f"the chat template refused the chat: {message}")

        _CHAT_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        _CHAT_ENV.globals["raise_exception"] = raise_exception
        _CHAT_ENV.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    compiled = _TEMPLATES.get(template)
    if compiled is None:
        from jinja2 import TemplateSyntaxError

        try:
            compiled = _CHAT_ENV.from_string(template)
        except TemplateSyntaxError as err:
            raise ConfigError(f"the chat template is not valid jinja (line {err.lineno}: {err.message}).") from None
        _TEMPLATES[template] = compiled
    return compiled


def render_chat(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None) -> str:
    """Render an HF-style jinja chat template over `messages`: the one renderer of the project.

    With add_generation_prompt the assistant header is appended; without it the final message is left
    open: the text is cut right after that message's content, dropping its end-of-turn marker, so the
    model continues it (transformers' `continue_final_message`, which lm-eval's `hf` uses).
    A template that fails while rendering (an undefined filter, a bad operation) is a ConfigError.
    """
    from jinja2 import TemplateError

    compiled = _compiled(template)
    tag = "CONTINUE_FINAL_MESSAGE_TAG "
    cont = not add_generation_prompt and bool(messages)
    if cont:  # mark the end of the final message, as transformers does, to find where to cut
        final = messages[-1]["content"]
        messages = [*messages[:-1], {**messages[-1], "content": final + tag}]
    try:
        text = compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token or "", eos_token=eos_token or "")
    except TemplateError as err:
        raise ConfigError(f"the chat template failed to render: {err}.") from None
    if cont:
        if final.strip() not in text or tag.strip() not in text:
            raise ConfigError("the chat template dropped the final message, so it cannot be continued.")
        at = text.rindex(tag.strip())
        # a template that renders the message verbatim keeps its trailing whitespace ("Answer: " stays
        # "Answer: "); one that trims it is cut after the trimmed text
        text = text[:at] if text[at:at + len(tag)] == tag else text[:at].rstrip()
    return text


def render_chat_template(template: str, user_text: str, *, bos_token: str | None = None,
                         eos_token: str | None = None) -> str:
    """One user message plus the generation prompt, rendered by `render_chat`."""
    return render_chat(template, [{"role": "user", "content": user_text}], add_generation_prompt=True,
                       bos_token=bos_token, eos_token=eos_token)


_BUILTIN_CACHE: dict[str, Tokenizer] = {}


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer by built-in name ("bytes", "gpt2"), from a folder, or by the name of a built-in model
    whose weights are a packaged GGUF ("smollm2-135m": its tokenizer, rebuilt from the GGUF).

    A folder is read as an HF tokenizer when it holds `tokenizer.json`; otherwise its
    `config.json` must name a built-in tokenizer under the key "tokenizer".
    """
    key = str(name_or_path)
    if key in BUILTIN_TOKENIZERS:
        if key not in _BUILTIN_CACHE:
            _BUILTIN_CACHE[key] = ByteTokenizer() if key == "bytes" else Gpt2Tokenizer()
        return _BUILTIN_CACHE[key]
    path = Path(key).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path)
        named = _read_json(path / "config.json").get("tokenizer")
        if isinstance(named, str) and named in BUILTIN_TOKENIZERS:
            return load_tokenizer(named)
        raise ConfigError(
            f"{key!r} has no tokenizer.json and its config.json names no built-in tokenizer "
            f"(expected \"tokenizer\": one of {', '.join(BUILTIN_TOKENIZERS)})."
        )
    from rattn_eval.models.registry import PackagedGGUF, names

    gguf_models = names(PackagedGGUF)  # a built-in model's name: its tokenizer, rebuilt from its GGUF
    if key in gguf_models:
        return HFTokenizer(gguf_tokenizer_dir(key))
    known = [*BUILTIN_TOKENIZERS, *gguf_models]
    hint = did_you_mean(key, known)
    raise ConfigError(f"unknown tokenizer {key!r}: not a built-in ({', '.join(known)}) nor a folder.{hint}")


def gguf_tokenizer_dir(name: str) -> Path:
    """Folder with the tokenizer files of built-in model `name` (a packaged GGUF in models/registry.py),
    rebuilt from the GGUF on first use.

    The folder is shared with the model importer, so other files in it are left alone; the
    tokenizer files are written to a temporary folder first and moved in, tokenizer.json last,
    so its presence means the set is complete.
    """
    from rattn_eval.models.registry import entry

    target = cache_root() / "tokenizers" / name
    if (target / "tokenizer.json").is_file():
        return target
    gguf = entry(name).source.gguf_path(name)
    from transformers import AutoTokenizer

    target.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tok.save_pretrained(tmp)
        names = sorted(os.listdir(tmp), key=lambda n: n == "tokenizer.json")
        for n in names:
            os.replace(os.path.join(tmp, n), target / n)
    return target


def smollm2_tokenizer_dir() -> Path:
    """Folder with SmolLM2-135M-Instruct's tokenizer files (see gguf_tokenizer_dir)."""
    return gguf_tokenizer_dir("smollm2-135m")
