"""Hub checkpoints: ``hf-hub:`` ids resolved through a huggingface_hub cache laid out by hand (offline) or served by a
local fake hub (online), and ``push_to_hub`` with a recording api. The oracle is always the upsampler that was saved:
what comes back must compute the same function."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

import wrc
from wrc import create_upsampler, load_upsampler
from wrc.checkpoint import META, WEIGHTS, save_checkpoint
from wrc.hub import HubCheckpointError, download_checkpoint, parse_hub_id, push_to_hub

SHA_A, SHA_B = "a" * 40, "b" * 40  # commit hashes: 40 hex digits
BACKBONE = {"name": "test_vit", "weights": "random", "layer": -1, "facet": "token", "final_norm": True,
            "size_policy": "resize", "precision": "fp32"}


def trained_lift(seed: int, channels: int = 8, patch: int = 4) -> torch.nn.Module:
    """A small LiFT with weights moved away from their initialisation (so two seeds give two functions)."""
    generator = torch.Generator().manual_seed(seed)
    up = create_upsampler("lift", channels, patch, image_channels=4)
    with torch.no_grad():
        for p in up.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return up.eval()


def save_run(run_dir: Path, up: torch.nn.Module, step: int = 7, **meta) -> Path:
    """A run directory as training writes it: checkpoints/step_*/ with the pair (wrc.checkpoint's own save)."""
    config = {"objective": {"name": "lift_multiscale"}, "optimizer": {"name": "adamw", "lr": 1e-3},
              "data": {"name": "samples", "batch_size": 2}, "precision": "fp32", "seed": 0}
    return save_checkpoint(run_dir / "checkpoints" / f"step_{step:07d}", up,
                           {"backbone": BACKBONE, "step": step, "metrics": {"loss": 0.25}, "config": config,
                            "code_version": {"version": "0.1.0", "commit": "abc1234", "dirty": False}, **meta})


def hub_cache(cache: Path, repo_id: str, commits: dict[str, Path | dict[str, bytes]], refs: dict[str, str]) -> Path:
    """Lay out ``repo_id`` as huggingface_hub's cache does: ``models--org--name/{refs/<ref>, blobs/<sha256>,
    snapshots/<commit>/<file> -> ../../blobs/<sha256>}``; a commit is a checkpoint directory or {file: bytes}."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    for commit, files in commits.items():
        if isinstance(files, Path):
            files = {name: (files / name).read_bytes() for name in (WEIGHTS, META)}
        for name, data in files.items():
            blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = storage / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("..", "..", "blobs", blob.name))
    for ref, commit in refs.items():
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return storage


def same_function(a: torch.nn.Module, b: torch.nn.Module, channels: int = 8, patch: int = 4) -> bool:
    features = torch.randn(1, channels, 3, 4, generator=torch.Generator().manual_seed(1))
    image = torch.rand(1, 3, 3 * patch, 4 * patch, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return torch.allclose(a(features, image), b(features, image), atol=1e-6)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """org/tiny in a cache under tmp_path (HF_HUB_CACHE, HF_HUB_OFFLINE=1): commit A tagged v1, commit B = main."""
    old, new = trained_lift(0), trained_lift(1)
    cache = tmp_path / "hub"
    hub_cache(cache, "org/tiny", {SHA_A: save_run(tmp_path / "a", old).resolve(),
                                  SHA_B: save_run(tmp_path / "b", new).resolve()}, {"main": SHA_B, "v1": SHA_A})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, old, new


def test_hub_ids_load_the_branch_tag_or_commit_they_name(offline_cache):
    cache, old, new = offline_cache
    assert not same_function(old, new)  # the checks below can tell the two commits apart
    assert same_function(wrc.load_upsampler("hf-hub:org/tiny"), new)
    assert same_function(load_upsampler("hf-hub:org/tiny@v1"), old)
    assert same_function(load_upsampler(f"hf-hub:org/tiny@{SHA_A}"), old)
    snapshot = download_checkpoint("hf-hub:org/tiny", revision="v1")
    assert snapshot == cache / "models--org--tiny" / "snapshots" / SHA_A
    assert wrc.checkpoint.read_checkpoint_meta("hf-hub:org/tiny")["backbone"] == BACKBONE


def test_cache_dir_argument_wins_over_the_environment(offline_cache, tmp_path, monkeypatch):
    cache, _, new = offline_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert same_function(load_upsampler(download_checkpoint("hf-hub:org/tiny", cache_dir=cache)), new)


def test_offline_cache_misses_say_what_is_missing_and_what_to_pass(offline_cache, tmp_path):
    cache, _, _ = offline_cache
    hub_cache(cache, "org/half", {SHA_A: {META: (tmp_path / "a/checkpoints/step_0000007" / META).read_bytes()}},
              {"main": SHA_A})
    cases = {"hf-hub:org/missing": "org/missing is not in the local huggingface_hub cache",
             "hf-hub:org/tiny@v9": r"revision 'v9' of org/tiny is not in the local cache .*\['main', 'v1'\]",
             "hf-hub:org/half": f"{WEIGHTS} of org/half@main is not in the local cache"}
    for spec, expected in cases.items():
        with pytest.raises(HubCheckpointError, match=expected) as err:
            load_upsampler(spec)
        message = str(err.value)
        assert "HF_HUB_OFFLINE=1" in message and "unset HF_HUB_OFFLINE" in message and "\n" not in message
        assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize(("spec", "revision", "expected"), [
    ("hf-hub:tiny", None, "<org>/<name>"),
    ("hf-hub:org/a/b", None, "<org>/<name>"),
    ("hf-hub:org/bad name", None, "bad Hugging Face Hub repo id"),
    ("hf-hub:org/tiny@", None, "ends with '@'"),
    ("hf-hub:org/tiny@v1", "v2", "pins revision 'v1' but revision='v2'"),
])
def test_malformed_ids_are_refused_before_any_lookup(spec, revision, expected):
    with pytest.raises(ValueError, match=expected):
        parse_hub_id(spec, revision)


def test_parse_hub_id_splits_the_revision():
    assert parse_hub_id("hf-hub:org/tiny@v1") == ("org/tiny", "v1")
    assert parse_hub_id("hf-hub:org/tiny", revision=SHA_A) == ("org/tiny", SHA_A)
    assert parse_hub_id("hf-hub:org/tiny") == ("org/tiny", None)


class FakeHub(BaseHTTPRequestHandler):
    """The hub's ``/<org>/<name>/resolve/<revision>/<file>`` endpoint over ``repos``: {repo: (refs, commits)}."""

    repos: dict[str, tuple[dict[str, str], dict[str, dict[str, bytes]]]] = {}
    send_commit = True  # False: answer without X-Repo-Commit, as a server that is no hub would

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo not in self.repos:
            return self._error("RepoNotFound")
        refs, commits = self.repos[repo]
        commit = refs.get(revision, revision)
        if commit not in commits:
            return self._error("RevisionNotFound")
        if filename not in commits[commit]:
            return self._error("EntryNotFound", commit)
        data = commits[commit][filename]
        self.send_response(200)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data))}
        for key, value in headers.items():
            if key != "X-Repo-Commit" or self.send_commit:
                self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, code: str, commit: str | None = None) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """An online hub on localhost (offline mode off for this test only) and an empty cache; yields the endpoint."""
    from huggingface_hub import constants

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    FakeHub.repos, FakeHub.send_commit = {}, True


def test_online_download_pins_revisions_and_then_works_offline(fake_hub, tmp_path, monkeypatch):
    old, new = trained_lift(0), trained_lift(1)
    files = {sha: {name: (save_run(tmp_path / sha[0], up) / name).read_bytes() for name in (WEIGHTS, META)}
             for sha, up in ((SHA_A, old), (SHA_B, new))}
    FakeHub.repos = {"org/tiny": ({"main": SHA_B, "v1": SHA_A}, files)}
    assert same_function(load_upsampler(download_checkpoint("hf-hub:org/tiny", endpoint=fake_hub)), new)
    assert same_function(load_upsampler(download_checkpoint("hf-hub:org/tiny@v1", endpoint=fake_hub)), old)
    FakeHub.repos = {}  # the hub forgets everything: the cache alone must serve it now
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same_function(load_upsampler("hf-hub:org/tiny@v1"), old)


def test_online_errors_name_the_missing_repo_revision_or_file(fake_hub):
    FakeHub.repos = {"org/empty": ({"main": SHA_A}, {SHA_A: {"README.md": b"not a checkpoint"}})}
    cases = {"hf-hub:org/nothing": "no such Hugging Face Hub model repo",
             "hf-hub:org/empty@v7": "repo org/empty has no revision 'v7'",
             "hf-hub:org/empty": f"the repo has no {META}, so it is not a wrc upsampler checkpoint"}
    for spec, expected in cases.items():
        with pytest.raises(HubCheckpointError, match=expected) as err:
            download_checkpoint(spec, endpoint=fake_hub)
        assert "\n" not in str(err.value)


def test_a_hub_that_does_not_answer_with_an_empty_cache_says_so(fake_hub):
    """A server that is no hub (huggingface_hub's case of a down or misconfigured endpoint, without its 23 s of
    retries that a closed port costs) and nothing cached."""
    FakeHub.repos = {"org/tiny": ({}, {"main": {META: b"{}"}})}
    FakeHub.send_commit = False
    with pytest.raises(HubCheckpointError, match=r"could not be reached \(or did not answer as a hub does\) and "
                                                 "org/tiny is not in the local huggingface_hub cache"):
        download_checkpoint("hf-hub:org/tiny", endpoint=fake_hub)


class RecordingApi:
    """HfApi's three calls push_to_hub makes, recorded (with the uploaded files' bytes, read during the call)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = {name: (folder / name).read_bytes() for name in kwargs["allow_patterns"]}
        return "commit-info"


def write_fidelity_record(run_dir: Path, name: str, checkpoint: str | None, cosine: float) -> None:
    """A result record where the training report puts it (evaluation/fidelity/<name>/result.json)."""
    folder = run_dir / "evaluation" / "fidelity" / name
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "protocol": "fidelity", "dataset": {"name": "samples"}, "upsampler": {"name": name, "checkpoint": checkpoint},
        "metrics": {"cosine": cosine, "rel_l2": 0.5}, "command": "python train_wrc.py experiment=quickstart"}))


def test_push_uploads_the_same_pair_with_a_model_card(tmp_path):
    up = trained_lift(3)
    step = save_run(tmp_path / "run", up, step=300)
    write_fidelity_record(tmp_path / "run", "bilinear", None, 0.81234)
    write_fidelity_record(tmp_path / "run", "lift", str(step), 0.93456)
    api = RecordingApi()
    result = wrc.push_to_hub(tmp_path / "run", "org/tiny-lift", api=api, revision="v1")

    assert [name for name, _ in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    upload = api.calls[-1][1]
    assert upload["repo_id"] == "org/tiny-lift" and upload["revision"] == "v1" and result.commit == "commit-info"
    for name in (WEIGHTS, META):  # byte for byte what the checkpoint holds
        assert api.uploaded[name] == (step / name).read_bytes()
    card = api.uploaded["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "wrc" and "lift" in front["tags"] and front["wrc"]["backbone"] == BACKBONE
    assert front["wrc"]["step"] == 300
    assert "```bash\npython train_wrc.py experiment=quickstart\n```" in card
    assert "| lift (this model) | fidelity | samples | cosine 0.9346, rel_l2 0.5 |" in card
    assert "| bilinear | fidelity | samples | cosine 0.8123, rel_l2 0.5 |" in card
    assert 'wrc.load_upsampler("hf-hub:org/tiny-lift")' in card and "lift_multiscale" in card
    assert result.zoo_row == ("| `hf-hub:org/tiny-lift` | lift | test_vit (layer -1, token, random weights) | "
                              "lift_multiscale, 300 steps, batch 2, lr 0.001 | fidelity: cosine 0.9346, rel_l2 0.5 |")


def test_dry_run_stages_a_loadable_folder_and_uploads_nothing(tmp_path):
    up = trained_lift(4)
    save_run(tmp_path / "run", up, command="python train_wrc.py model=lift")
    result = push_to_hub(tmp_path / "run" / "checkpoints", "org/tiny", dry_run=True,
                         staging_dir=tmp_path / "staged")
    assert result.commit is None and result.folder == tmp_path / "staged"
    assert same_function(load_upsampler(result.folder), up)  # the staged pair is a checkpoint by itself
    card = (result.folder / "README.md").read_text()
    assert "python train_wrc.py model=lift" in card and "No evaluation records" in card
    assert "not evaluated" in result.zoo_row


def test_push_refuses_a_bad_repo_id_and_a_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="<org>/<name>"):
        push_to_hub(tmp_path, "just-a-name", dry_run=True)
    with pytest.raises(FileNotFoundError, match="no upsampler checkpoint"):
        push_to_hub(tmp_path, "org/name", dry_run=True)
    with pytest.raises(ValueError, match="run_dir='hf-hub:org/other' is a hub id"):
        push_to_hub("hf-hub:org/other", "org/name", dry_run=True)
