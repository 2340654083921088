"""The line a run records about the machine its figures came from."""

from __future__ import annotations

import os
import re

import torch

from lm import machine

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu avx2
"""


def test_the_cpu_model_name_is_read_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_model_name() == "AMD EPYC 7B13 64-Core Processor"
    assert machine.device_name(torch.device("cpu")) == "AMD EPYC 7B13 64-Core Processor"


def test_a_cpuinfo_without_a_model_name_or_none_at_all_reads_as_cpu(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nCPU architecture: 8\n")  # an ARM kernel's layout
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_model_name() == "cpu"
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "absent")
    assert machine.cpu_model_name() == "cpu"


def test_the_machine_line_names_cores_and_the_thread_count_that_orders_the_sums(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = machine.describe_machine()
    finally:
        torch.set_num_threads(threads)
    cores = os.cpu_count()
    assert one == f"{machine.cpu_model_name()}, {cores} core{'s' * (cores > 1)}, 1 torch thread"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert re.search(r", \d+ torch threads?, 2 CUDA devices$", machine.describe_machine())
