"""What a resumable evaluation run is, so that a resumed run never mixes its results with another run's.

Every protocol that keeps partial results (DAVIS sequences, SPair categories, TokenCut predictions, probe states)
saves this identity beside them and compares it before reusing them: the protocol, its settings less those that
only say how a call is carried out, the upsampler, the backbone and the code (version and commit).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from wrc import provenance


class StaleRunError(ValueError):
    """A run directory holds partial results of another run (other settings, upsampler, backbone or code): they are
    never mixed with this run's. Callers that own the folder as a cache (the synthetic benchmark) start it over."""


def plain(value: Any) -> Any:
    """The JSON form of ``value`` (tuples become lists, paths strings), as it will read back from disk."""
    return json.loads(json.dumps(value, default=str))


def run_identity(protocol: str, settings: Any, extractor: Any, *, run_only: Iterable[str] = (),
                 **extra: Any) -> dict[str, Any]:
    """``{"protocol", "settings", "upsampler", "weights", "backbone", "code", **extra}`` in JSON form; ``settings``
    is a dataclass whose ``run_only`` fields are left out (which items this call runs, caches, workers...).
    ``weights`` is the upsampler's state digest: an upsampler trained in memory has no checkpoint path to tell it
    from another training of the same method, so its spec alone would let a resumed run reuse another's results."""
    skipped = set(run_only)
    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k not in skipped}
    return plain({"protocol": protocol, "settings": kept, "upsampler": extractor.upsampler_spec(),
                  "weights": provenance.weights_digest(getattr(extractor, "upsampler", None)),
                  "backbone": extractor.backbone.spec(), "code": provenance.code_identity(), **extra})


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for what differs, one level into dict values (``settings.tau: None -> 0.5``);
    keys saved but absent now read ``key: value -> (absent)``, keys new now ``key: None -> value``."""
    differences = []
    for key, value in current.items():
        old = saved.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            differences += [f"{key}.{k}: {old.get(k)!r} -> {v!r}" for k, v in value.items() if old.get(k) != v]
            differences += [f"{key}.{k}: {old[k]!r} -> (absent)" for k in old if k not in value]
        elif old != value:
            differences.append(f"{key}: {old!r} -> {value!r}")
    differences += [f"{key}: {saved[key]!r} -> (absent)" for key in saved if key not in current]
    return differences


def refuse_another_run(saved: dict[str, Any], current: dict[str, Any], holder: str, remedy: str) -> None:
    """Raise StaleRunError when ``saved``, the identity kept beside partial results, is not ``current``'s: the
    message is ``"<holder> of another run (<differences>): <remedy>"``, or ``made by other code`` (whose results are
    never mixed) when the code or a partial-results format differs. ``holder``: e.g. ``"<path> holds predictions"``."""
    differences = identity_differences(saved, current)
    if not differences:
        return
    other_code = any(saved.get(key) != current.get(key) for key in saved.keys() | current.keys()
                     if key == "code" or key.endswith("_version"))
    raise StaleRunError(f"{holder} {'made by other code' if other_code else 'of another run'} "
                        f"({'; '.join(differences)}): "
                        f"{'results of two code versions are not mixed; ' if other_code else ''}{remedy}")
