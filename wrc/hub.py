"""Upsampler checkpoints on the Hugging Face Hub: ``hf-hub:<org>/<name>[@revision]`` ids and ``push_to_hub``.

A hub repo holds what a checkpoint directory holds for inference: ``upsampler.safetensors`` + ``upsampler.json``
at its root (wrc/checkpoint.py), plus a generated ``README.md`` model card. Loading goes through huggingface_hub's
cache, so a repo is downloaded once and then read from ``snapshots/<commit>/``:

- ``wrc.load_upsampler("hf-hub:org/name")`` (the ``main`` branch), ``"hf-hub:org/name@v1"`` or ``revision="<sha>"``
  (a branch, tag or commit hash: a commit hash pins the weights for good).
- Offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, now or when huggingface_hub was imported) nothing is
  requested: the files come from the cache or the error says what is missing and what to pass.
- The cache is ``cache_dir=``, else ``HF_HUB_CACHE`` as set now (huggingface_hub reads it once, at import), else
  huggingface_hub's default.

``push_to_hub(run_dir, repo_id)`` stages the pair and the card in ``<run_dir>/hub/`` (kept, so what was uploaded can
be read; ``dry_run=True`` stops there) and uploads it with ``HfApi.upload_folder``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrc.checkpoint import META, WEIGHTS, resolve_checkpoint

log = logging.getLogger("wrc")

PREFIX = "hf-hub:"
CARD = "README.md"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
LOCAL_HELP = "or pass a local checkpoint directory instead"
RECIPE_KEYS = ("objective", "optimizer", "data", "train", "precision", "seed")  # config groups a card lists
ZOO_HEADER = "| hub name | upsampler | backbone | recipe | metrics |\n| --- | --- | --- | --- | --- |"


class HubCheckpointError(FileNotFoundError):
    """A hub checkpoint could not be found or fetched; the one-line message says why and what to pass instead."""


def is_hub_id(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_hub_id(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """``"hf-hub:org/name@rev"`` -> ``("org/name", "rev")``; ``revision`` pins it when the id does not."""
    if not is_hub_id(spec):
        raise ValueError(f"a hub checkpoint id must look like 'hf-hub:<org>/<name>[@revision]'; got {spec!r}")
    repo_id, at, pinned = spec[len(PREFIX):].partition("@")
    if at and not pinned:
        raise ValueError(f"{spec!r} ends with '@': name a revision after it (a branch, tag or commit) or drop the '@'")
    if pinned and revision is not None and pinned != revision:
        raise ValueError(f"{spec!r} pins revision {pinned!r} but revision={revision!r} was passed: give one of them")
    return check_repo_id(repo_id, spec), pinned or revision


def check_repo_id(repo_id: str, given: str | None = None) -> str:
    """``repo_id`` if it is ``<org>/<name>`` with characters the hub accepts, else a ValueError saying so."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = None if repo_id.count("/") == 1 and all(repo_id.split("/")) else "it needs the form <org>/<name>"
    if problem is None:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            problem = str(err).splitlines()[0]
    if problem is not None:
        raise ValueError(f"bad Hugging Face Hub repo id {given or repo_id!r}: {problem}")
    return repo_id


def offline_reason() -> str | None:
    """Why nothing may be requested from the hub now (an offline variable, now or at import), or None."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable}={os.environ[variable]}"
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE was set when huggingface_hub was imported" if constants.HF_HUB_OFFLINE else None


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``HF_HUB_CACHE`` as set now, else huggingface_hub's default cache."""
    from huggingface_hub import constants

    return Path(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser()


def download_checkpoint(
    spec: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None, force_download: bool = False, token: str | bool | None = None,
    endpoint: str | None = None,
) -> Path:
    """The local snapshot directory holding the checkpoint pair of ``spec`` (downloaded unless cached).

    ``local_files_only``: None = only when offline (module docstring). ``endpoint``: another hub server than
    ``HF_ENDPOINT`` / huggingface.co. The weights are fetched at the commit the JSON came from, so the pair always
    belongs together even while the branch moves.
    """
    from huggingface_hub import errors, hf_hub_download

    repo_id, revision = parse_hub_id(spec, revision)
    reason = offline_reason() if local_files_only is None else ("local_files_only=True" if local_files_only else None)
    cache = cache_directory(cache_dir)
    where = f"{PREFIX}{repo_id}@{revision or 'main'}"
    filename, snapshot_revision = META, revision
    try:
        for filename in (META, WEIGHTS):
            path = Path(hf_hub_download(repo_id, filename, revision=snapshot_revision, cache_dir=cache,
                                        local_files_only=reason is not None, force_download=force_download,
                                        token=token, endpoint=endpoint, library_name="wrc"))
            snapshot_revision = path.parent.name  # snapshots/<commit>/upsampler.json
    except errors.LocalEntryNotFoundError:
        raise HubCheckpointError(_cache_miss(where, repo_id, revision, filename, cache, reason, endpoint)) from None
    except errors.GatedRepoError:
        raise HubCheckpointError(f"{where}: the repo is gated: accept its conditions on its hub page, then log in "
                                 f"(`hf auth login`) or set HF_TOKEN, {LOCAL_HELP}") from None
    except errors.RepositoryNotFoundError:
        raise HubCheckpointError(f"{where}: no such Hugging Face Hub model repo (or it is private: log in with "
                                 f"`hf auth login` or set HF_TOKEN); check the name, {LOCAL_HELP}") from None
    except errors.RevisionNotFoundError:
        raise HubCheckpointError(f"{where}: repo {repo_id} has no revision {revision!r} (expected a branch, tag or "
                                 "commit hash of that repo)") from None
    except getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError):  # huggingface_hub < 1.0
        raise HubCheckpointError(f"{where}: the repo has no {filename}, so it is not a wrc upsampler checkpoint "
                                 f"(expected {WEIGHTS} + {META} at its root, as wrc.push_to_hub puts them)") from None
    return path.parent


def _cache_miss(where: str, repo_id: str, revision: str | None, filename: str, cache: Path, reason: str | None,
                endpoint: str | None) -> str:
    """What the cache lacks (the repo, the revision or one file) and what to do about it, in one line."""
    from huggingface_hub.file_download import repo_folder_name

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    refs = sorted(p.relative_to(storage / "refs").as_posix() for p in (storage / "refs").rglob("*") if p.is_file())
    snapshots = sorted(p.name for p in (storage / "snapshots").glob("*")) if storage.is_dir() else []
    rev = revision or "main"
    if not storage.is_dir():
        missing = f"{repo_id} is not in the local huggingface_hub cache {cache}"
    elif rev not in refs and rev not in snapshots:
        missing = f"revision {rev!r} of {repo_id} is not in the local cache {cache} (cached refs: {refs or 'none'})"
    else:
        missing = f"{filename} of {repo_id}@{rev} is not in the local cache {cache}"
    if reason is None:
        from huggingface_hub import constants

        return (f"{where}: the hub ({endpoint or constants.ENDPOINT}) could not be reached (or did not answer as a "
                f"hub does) and {missing}: check the network and HF_ENDPOINT, {LOCAL_HELP}")
    variable = reason.split("=")[0]
    undo = (f"unset {variable}" if variable in OFFLINE_VARIABLES else "pass local_files_only=False"
            if variable == "local_files_only" else "start Python without HF_HUB_OFFLINE")
    return (f"{where}: {missing}, and downloads are off ({reason}): {undo} to download it, point HF_HUB_CACHE "
            f"(or cache_dir=) at a cache that holds it, {LOCAL_HELP}")


@dataclass
class PushResult:
    """What ``push_to_hub`` staged (``folder``: the pair + README.md) and, unless a dry run, what the hub answered."""

    repo_id: str
    folder: Path
    card: str
    zoo_row: str
    commit: Any = None
    files: list[str] = field(default_factory=list)


def push_to_hub(
    run_dir: str | os.PathLike, repo_id: str, *, api: Any = None, token: str | None = None,
    private: bool | None = None, revision: str | None = None, commit_message: str | None = None,
    staging_dir: str | os.PathLike | None = None, dry_run: bool = False,
) -> PushResult:
    """Upload a run's checkpoint pair with a generated model card to the hub repo ``repo_id`` (``<org>/<name>``).

    ``run_dir``: a run directory, its checkpoints/ folder or one step directory (the newest complete checkpoint
    is taken). ``api``: an ``HfApi``-like object (``create_repo``, ``create_branch``, ``upload_folder``); a new
    ``HfApi(token=token)`` by default. ``staging_dir``: where the upload is assembled (``<run_dir>/hub``).
    """
    repo_id = check_repo_id(repo_id.removeprefix(PREFIX))
    if is_hub_id(run_dir):
        raise ValueError(f"run_dir={run_dir!r} is a hub id: push_to_hub uploads a local run directory, checkpoints/ "
                         "folder or step directory (to copy a hub repo, duplicate it on the hub)")
    step_dir = resolve_checkpoint(run_dir)
    run_root = step_dir.parent.parent if step_dir.parent.name == "checkpoints" else step_dir.parent
    summary = run_summary(step_dir)
    card = model_card(summary, repo_id)
    folder = Path(staging_dir) if staging_dir is not None else run_root / "hub"
    folder.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, META):
        shutil.copyfile(step_dir / name, folder / name)  # copies, never links: the upload reads them after we return
    (folder / CARD).write_text(card)
    result = PushResult(repo_id, folder, card, zoo_row(summary, repo_id), files=[WEIGHTS, META, CARD])
    if dry_run:
        log.info("dry run: %s staged in %s, nothing uploaded", repo_id, folder)
        return result
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    message = commit_message or f"wrc: {summary['name']} on {summary['backbone'].get('name')}, step {summary['step']}"
    result.commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                      commit_message=message, allow_patterns=result.files)
    log.info("pushed %s (%s) to the hub repo %s", step_dir, ", ".join(result.files), repo_id)
    return result


def run_summary(step_dir: Path) -> dict[str, Any]:
    """What a model card says about a checkpoint: its recipe, its backbone, the evaluation records of its run and
    the command that trained it (from the checkpoint's metadata, else from the records the training run wrote)."""
    step_dir = Path(step_dir)
    meta = json.loads((step_dir / META).read_text())
    config = meta.get("config") or {}
    run_root = step_dir.parent.parent if step_dir.parent.name == "checkpoints" else None
    records = _run_records(run_root) if run_root is not None else []
    report = [r for r in records if r["source"].startswith("evaluation/fidelity/")]  # written by the training run
    command = meta.get("command") or next((r["command"] for r in report if r["command"]), None)
    return {
        "name": meta["name"], "kwargs": meta.get("kwargs", {}), "backbone": meta.get("backbone") or {},
        "step": meta.get("step"), "objective": config.get("objective") or {}, "optimizer": config.get("optimizer"),
        "data": config.get("data"), "train": config.get("train"), "precision": config.get("precision"),
        "seed": config.get("seed"), "training_metrics": meta.get("metrics") or {}, "records": records,
        "command": command, "code_version": meta.get("code_version") or {},
    }


def _run_records(run_root: Path) -> list[dict[str, Any]]:
    """The result records (evaluation/records.py) under a run directory, reduced to what a card shows."""
    found = []
    for path in sorted(run_root.rglob("result.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(data, dict) or "protocol" not in data or not isinstance(data.get("metrics"), dict):
            continue
        upsampler = data.get("upsampler") or {}
        found.append({"source": path.relative_to(run_root).as_posix(), "protocol": data["protocol"],
                      "dataset": (data.get("dataset") or {}).get("name"), "upsampler": upsampler.get("name"),
                      "trained": bool(upsampler.get("checkpoint")), "metrics": data["metrics"],
                      "command": data.get("command") or ""})
    return found


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_text(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_number(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))


def _compact(value: Any) -> str:
    """JSON for everything but plain strings (``true``, ``null``, ``{"name": "adamw"}``), as in upsampler.json."""
    return value if isinstance(value, str) else json.dumps(value, default=str, separators=(", ", ": "))


def backbone_text(backbone: Mapping[str, Any]) -> str:
    """``vit_small_patch14_dinov2.lvd142m (layer -1, token, random weights)``."""
    details = [f"layer {backbone.get('layer', -1)}", str(backbone.get("facet", "token"))]
    if backbone.get("weights") == "random":
        details.append("random weights")
    return f"{backbone.get('name', 'unknown')} ({', '.join(details)})"


def recipe_text(summary: Mapping[str, Any]) -> str:
    """``lift_multiscale, 300 steps, batch 8, lr 0.001``: the zoo table's one-phrase recipe."""
    parts = [str(summary["objective"].get("name", "unknown objective")), f"{summary['step']} steps"]
    if (summary.get("data") or {}).get("batch_size") is not None:
        parts.append(f"batch {summary['data']['batch_size']}")
    if (summary.get("optimizer") or {}).get("lr") is not None:
        parts.append(f"lr {_number(summary['optimizer']['lr'])}")
    return ", ".join(parts)


def zoo_row(summary: Mapping[str, Any], repo_id: str) -> str:
    """One row of the README's model-zoo table (``ZOO_HEADER``): the trained model's own records only."""
    own = [f"{r['protocol']}: {_metrics_text(r['metrics'])}" for r in summary["records"]
           if r["trained"] and r["upsampler"] == summary["name"]]
    return (f"| `{PREFIX}{repo_id}` | {summary['name']} | {backbone_text(summary['backbone'])} | "
            f"{recipe_text(summary)} | {'; '.join(own) or 'not evaluated'} |")


def model_card(summary: Mapping[str, Any], repo_id: str) -> str:
    """The README.md of a hub repo: YAML front matter (tags, and the summary under ``wrc``) and the sections
    backbone, recipe, metrics, training command and use."""
    name, backbone = summary["name"], summary["backbone"]
    front = {"library_name": "wrc", "pipeline_tag": "image-feature-extraction",
             "tags": ["wrc", "feature-upsampling", name, str(backbone.get("name", "unknown"))],
             "wrc": {"upsampler": name, "backbone": backbone, "recipe": recipe_text(summary),
                     "step": summary["step"]}}
    lines = ["---", *(f"{key}: {json.dumps(value, default=str)}" for key, value in front.items()), "---", "",
             f"# {repo_id.split('/')[-1]}", "",
             f"A **{name}** feature upsampler for the frozen backbone `{backbone_text(backbone)}`, trained with the "
             f"`{summary['objective'].get('name', 'unknown')}` objective for {summary['step']} steps "
             "(the wrc framework: a frozen timm ViT followed by a swappable upsampler).", "",
             "## Use", "", "```python", "import wrc", "",
             f'upsampler = wrc.load_upsampler("{PREFIX}{repo_id}")  # features (B, C, h, w) + image -> dense features',
             "# or backbone + upsampler in one object, from a wrc checkout:",
             "import torch", "",
             f'extractor = torch.hub.load("<wrc checkout>", "upsampler", "{PREFIX}{repo_id}", source="local")',
             "features = extractor(image)  # image (B, 3, H, W) RGB in [0, 1]", "```", "",
             "## Backbone", "", "| key | value |", "| --- | --- |",
             *(f"| {key} | `{_compact(value)}` |" for key, value in backbone.items()), "",
             "## Recipe", "", "| key | value |", "| --- | --- |",
             f"| upsampler | `{name}` |", f"| upsampler kwargs | `{_compact(summary['kwargs'])}` |",
             *(f"| {key} | `{_compact(summary[key])}` |" for key in RECIPE_KEYS if summary.get(key) is not None),
             f"| steps trained | {summary['step']} |", "",
             "## Metrics", ""]
    if summary["records"]:
        lines += ["| method | protocol | dataset | metrics |", "| --- | --- | --- | --- |",
                  *(f"| {r['upsampler']}{' (this model)' if r['trained'] else ''} | {r['protocol']} | "
                    f"{r['dataset'] or ''} | {_metrics_text(r['metrics'])} |" for r in summary["records"])]
    else:
        lines.append("No evaluation records in the run directory.")
    if summary["training_metrics"]:
        lines += ["", f"Training losses at the last logged step: {_metrics_text(summary['training_metrics'])}."]
    code = summary["code_version"]
    lines += ["", "## Training command", ""]
    lines += ["```bash", summary["command"], "```"] if summary["command"] else ["Not recorded with the checkpoint."]
    lines += ["", f"Code: wrc {code.get('version', '?')}, commit {code.get('commit') or 'unknown'}"
              f"{' (uncommitted changes)' if code.get('dirty') else ''}.", ""]
    return "\n".join(lines)
