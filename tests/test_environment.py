"""Provenance records: versions, commit of an editable checkout, device, backends."""
from __future__ import annotations

import subprocess

import torch

from exvae_fast import environment


def test_record_names_versions_device_and_backends():
    record = environment.environment_record("cpu")
    assert record["torch"] == torch.__version__ and record["python"]
    assert record["device"] == {"type": "cpu", "name": f"CPU: {environment.cpu_model()}"}
    assert set(record["backends"]) == set(environment.OPS)
    assert record["backends"]["mixture_log_density"]["auto"] == "torch"  # CPU: the reference
    assert record["time"].endswith("Z") and isinstance(record["argv"], list)


def test_commit_is_that_of_the_source_checkout():
    checkout = environment.source_checkout()
    if checkout is None:  # an installed (non-editable) copy reports no commit
        assert environment.git_info() == {"commit": None, "dirty": None}
        return
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
    assert environment.git_info()["commit"] == head.stdout.strip()


def test_a_copy_without_git_reports_the_commit_it_is_told(monkeypatch):
    monkeypatch.setattr(environment, "source_checkout", lambda: None)
    monkeypatch.delenv(environment.COMMIT_VARIABLE, raising=False)
    assert environment.git_info() == {"commit": None, "dirty": None}
    monkeypatch.setenv(environment.COMMIT_VARIABLE, "0123abc")
    assert environment.git_info() == {"commit": "0123abc", "dirty": None}


def test_a_folder_that_is_not_a_checkout_reports_nothing(tmp_path):
    assert environment.git_info(tmp_path) == {"commit": None, "dirty": None}


def test_missing_packages_have_no_version():
    assert environment.package_version("no_such_package_exvae") is None
    assert environment.package_version("torch") == torch.__version__.split("+")[0] or \
        environment.package_version("torch") == torch.__version__
