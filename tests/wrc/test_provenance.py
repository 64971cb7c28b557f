"""wrc.provenance: the dirty flag says whether the code differs from its commit; committed results do not count."""

from __future__ import annotations

import subprocess

import pytest

from wrc import provenance


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout with one code file and one committed result, standing in for the repository."""
    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "wrc").mkdir()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "wrc" / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("| a |\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "initial")
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    return tmp_path


def test_a_rewritten_result_is_not_a_dirty_tree_but_a_code_edit_is(checkout):
    assert provenance.code_version()["dirty"] is False and provenance.code_version()["commit"]
    (checkout / "benchmarks" / "results" / "table.md").write_text("| b |\n")  # a benchmark rewrote its table
    assert provenance.code_version()["dirty"] is False
    (checkout / "wrc" / "code.py").write_text("x = 2\n")
    assert provenance.code_version()["dirty"] is True


def test_cpu_device_names_the_model_where_the_os_tells_it(tmp_path, monkeypatch):
    """Two CPUs of one architecture give different results: the model is named (from /proc/cpuinfo's first
    'model name', whitespace collapsed), else the architecture alone."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD   EPYC 7B13\nflags\t: avx2\n"
                       "processor\t: 1\nmodel name\t: another\n")
    assert provenance._cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"
    assert provenance._cpu_model(str(tmp_path / "absent")) == ""
    (tmp_path / "bare").write_text("processor\t: 0\n")
    assert provenance._cpu_model(str(tmp_path / "bare")) == ""
    monkeypatch.setattr(provenance.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(provenance, "_cpu_model", lambda: "AMD EPYC 7B13")
    assert provenance.device_name("cpu").startswith("AMD EPYC 7B13 (x86_64), ")
    monkeypatch.setattr(provenance, "_cpu_model", lambda: "")
    assert provenance.device_name("cpu").startswith("x86_64 CPU, ")
    assert provenance.device_name("cpu").endswith(" threads")
