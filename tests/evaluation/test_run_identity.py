"""The identity every resumable protocol saves beside its partial results."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from evaluation.run_identity import StaleRunError, identity_differences, refuse_another_run, run_identity
from wrc import provenance


@dataclass
class Settings:
    root: str = "/data"
    tau: float = 0.2
    stop_after: int | None = None
    size: tuple[int, int] = (2, 3)


class Extractor:
    class backbone:  # noqa: N801 - stands in for a backbone object
        @staticmethod
        def spec():
            return {"name": "vit", "layer": -1}

    @staticmethod
    def upsampler_spec():
        return {"name": "bilinear"}


def test_identity_holds_settings_less_run_only_keys_and_the_code_without_its_dirty_flag(monkeypatch):
    monkeypatch.setattr(provenance, "code_identity", lambda: {"version": "1.0", "commit": "abc"})
    identity = run_identity("p", Settings(), Extractor(), run_only=("stop_after",), extra=7)
    assert identity == {"protocol": "p", "settings": {"root": "/data", "tau": 0.2, "size": [2, 3]},
                        "upsampler": {"name": "bilinear"}, "weights": None, "backbone": {"name": "vit", "layer": -1},
                        "code": {"version": "1.0", "commit": "abc"}, "extra": 7}


def test_the_weights_digest_tells_apart_the_same_upsampler_with_other_weights():
    import torch

    torch.manual_seed(0)
    first, same = torch.nn.Conv2d(2, 3, 1), torch.nn.Conv2d(2, 3, 1)
    same.load_state_dict(first.state_dict())
    assert provenance.weights_digest(first) == provenance.weights_digest(same)
    with torch.no_grad():
        same.bias[0] += 1e-6  # one value, one ulp-scale step
    assert provenance.weights_digest(first) != provenance.weights_digest(same)
    renamed = torch.nn.Sequential(first)  # same values under other names
    assert provenance.weights_digest(renamed) != provenance.weights_digest(first)
    assert provenance.weights_digest(torch.nn.Identity()) == provenance.weights_digest(torch.nn.ReLU())  # no state
    assert provenance.weights_digest(None) is None


def test_code_identity_is_version_and_commit_only():
    assert set(provenance.code_identity()) == {"version", "commit"}


def test_identity_differences_name_changed_new_and_vanished_keys():
    saved = {"protocol": "p", "settings": {"tau": None, "old": 1}, "gone": 3}
    current = {"protocol": "p", "settings": {"tau": 0.5}, "code": {"commit": "b"}}
    assert identity_differences(saved, current) == [
        "settings.tau: None -> 0.5", "settings.old: 1 -> (absent)", "code: None -> {'commit': 'b'}",
        "gone: 3 -> (absent)"]
    assert identity_differences(current, current) == []


def test_refusing_another_run_names_each_difference_and_says_when_the_code_differs():
    current = {"settings": {"seed": 1}, "code": {"commit": "b"}, "partial_version": 2}
    refuse_another_run(current, current, "x holds results", "delete x")  # the same run: nothing raised
    with pytest.raises(StaleRunError, match=r"^x holds results of another run \(settings.seed: 0 -> 1\): delete x$"):
        refuse_another_run({**current, "settings": {"seed": 0}}, current, "x holds results", "delete x")
    for saved in ({**current, "code": {"commit": "a"}}, {**current, "partial_version": 1}):
        with pytest.raises(StaleRunError, match=r"^x holds results made by other code \(.*\): results of two code "
                                                r"versions are not mixed; delete x$"):
            refuse_another_run(saved, current, "x holds results", "delete x")
