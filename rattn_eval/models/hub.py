"""Hugging Face hub ids: `ORG/NAME[@REVISION]` -> a snapshot folder of huggingface_hub's cache, and the
cache listing of `rattn-eval ls models`.

A name is a hub id only when it is not an existing local path and looks like ORG/NAME (exactly one
slash, repo-id characters), so local folders and built-in names resolve as before. Only the files
load_model reads are fetched; the weights stay in the cache and load memory-mapped from there (no
converted copy). The cache is tried first without network, then the hub unless HF_HUB_OFFLINE is set.

    snap = snapshot_for("HuggingFaceTB/SmolLM2-135M@main")   # Snapshot(repo_id, revision, commit, path)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

# What load_model reads from an HF folder. Weights as save_pretrained names them (model.safetensors or
# model-0000k-of-0000n.safetensors + index): a bare "*.safetensors" would also fetch repos' duplicate
# exports (Mistral's consolidated.safetensors, subfolders), which we never read.
HUB_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "model*.safetensors", "model.safetensors.index.json")

# huggingface_hub's repo-id rules (validate_repo_id): 1-96 word characters, "-" or "." per part, a word
# character at both ends, no "--" or "..", no ".git" at the end
_PART = r"\w(?:[\w.-]{0,94}\w)?"
_HUB_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[\w.][\w./-]*))?")


@dataclass(frozen=True)
class Snapshot:
    """A cached snapshot: `revision` as asked ("main" by default), `commit` the hash it resolved to."""

    repo_id: str
    revision: str
    commit: str
    path: Path


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """("ORG/NAME", revision or None) when `name` looks like a hub id, else None (no look-up)."""
    m = _HUB_ID.fullmatch(name)
    if m is None or "--" in m["repo"] or ".." in m["repo"] or m["repo"].endswith(".git"):
        return None
    return m["repo"], m["revision"]


def cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (its constants are fixed at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def snapshot_for(name_or_path) -> Snapshot | None:
    """The snapshot of a hub id that is not an existing local path (fetched when missing and allowed), or
    None for anything else: a path, a built-in name, a PathLike."""
    if not isinstance(name_or_path, str) or os.path.exists(os.path.expanduser(name_or_path)):
        return None
    parsed = parse_hub_id(name_or_path)
    return None if parsed is None else snapshot(*parsed)


def snapshot(repo_id: str, revision: str | None = None) -> Snapshot:
    """The cached snapshot of `repo_id` at `revision` (default "main"): from the cache without network when
    it is there, else downloaded (HUB_FILES only) unless HF_HUB_OFFLINE is set. CheckpointError otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cache = cache_dir()
    asked = f"{repo_id}@{revision}" if revision else repo_id
    kwargs = dict(revision=revision, cache_dir=str(cache), allow_patterns=list(HUB_FILES))
    try:
        folder = snapshot_download(repo_id, local_files_only=True, **kwargs)
    except HFValidationError as e:  # a rule of huggingface_hub's that parse_hub_id does not know (yet)
        raise CheckpointError(f"{asked} is not a valid Hugging Face id ({' '.join(str(e).split()).rstrip('.')}).") from None
    except LocalEntryNotFoundError:  # also an incomplete snapshot
        if offline():
            raise CheckpointError(f"{asked} is not a local folder and not in the Hugging Face cache ({cache}), and "
                                  "HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE to download it, "
                                  "or pass a local folder.") from None
        try:
            folder = snapshot_download(repo_id, **kwargs)
        except RevisionNotFoundError:
            raise CheckpointError(f"{repo_id} has no revision {revision!r} on the Hugging Face hub.") from None
        except GatedRepoError:
            raise CheckpointError(f"{repo_id} is gated on the Hugging Face hub: accept its terms on the model page "
                                  "and log in (`hf auth login` or HF_TOKEN).") from None
        except RepositoryNotFoundError:
            raise CheckpointError(f"{asked} is neither a local folder nor a Hugging Face model (or it is private: "
                                  "log in with `hf auth login` or set HF_TOKEN).") from None
        except (HfHubHTTPError, OSError) as e:  # no connection, hub down, disk full
            cause = e.__cause__ or e
            why = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}".rstrip(": ")
            raise CheckpointError(f"{asked} is not a local folder nor in the Hugging Face cache ({cache}), and "
                                  f"downloading it failed ({why}); check the network, or pass a local folder.") from None
    folder = Path(folder)
    return Snapshot(repo_id=repo_id, revision=revision or "main", commit=folder.name, path=folder)


@dataclass(frozen=True)
class CachedModel:
    """One revision of a model repo in the cache, for `rattn-eval ls models`."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]
    size_on_disk: int
    model_type: str | None
    native: bool


def cached_models() -> list[CachedModel]:
    """Every cached model revision, by repo id then newest first; [] without a cache. Torch-free."""
    root = cache_dir()
    if not root.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    from .registry import HF_MODEL_TYPES

    out = []
    for repo in sorted(scan_cache_dir(root).repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: -r.last_modified):
            mtype = _model_type(rev.snapshot_path / "config.json")
            out.append(CachedModel(repo_id=repo.repo_id, commit=rev.commit_hash, refs=tuple(sorted(rev.refs)),
                                   size_on_disk=rev.size_on_disk, model_type=mtype, native=mtype in HF_MODEL_TYPES))
    return out


def _model_type(path: Path) -> str | None:
    try:
        mtype = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return mtype if isinstance(mtype, str) else None
