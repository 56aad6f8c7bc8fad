"""Sequence parallel (Ulysses) and FSDP2 sharding give the single-process output (issue: several GPUs).

Runs ``bench/sequence_parallel.py`` as CI's proof on the CPU: real processes, the gloo backend,
the WorldStereo memory transformer with GGM control, SSM references and the camera embedding.
Token counts (45 target, 30 reference) do not divide by 4, so the padding path runs too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from testsupport import REPO_ROOT

BENCH = REPO_ROOT / "bench" / "sequence_parallel.py"


def _run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--device", "cpu", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("nproc, fsdp", [(2, False), (4, True)])
def test_split_model_equals_one_process(nproc, fsdp):
    stdout = _run("--nproc", str(nproc), *(["--fsdp"] if fsdp else []))
    diff = float(re.search(r"max abs diff vs single process: (\S+)", stdout).group(1))
    scale = float(re.search(r"output scale .*: (\S+)", stdout).group(1))
    assert scale > 0.5  # a real output, not zeros
    assert diff <= 1e-4, stdout
    held = [float(x) for x in re.search(r"parameters held per rank: (.*) of the model", stdout).group(1).split(", ")]
    assert len(held) == nproc
    if fsdp:  # each rank keeps about 1/N of the weights
        assert all(abs(h - 1 / nproc) < 0.02 for h in held) and abs(sum(held) - 1) < 0.01  # printed to 3 decimals
    else:
        assert held == [1.0] * nproc
