"""The CPU thread policy of training processes (vlm.train.threads), checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from vlm.train import threads

PROBE = ("import json, os; from vlm.train import threads; threads.apply(); import torch; "
         "print(json.dumps([torch.get_num_threads(), os.environ['OMP_WAIT_POLICY']]))")


def _run(**env) -> list:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_threads_are_cores_over_local_processes_and_waiting_is_passive():
    cores = threads.cores()
    assert _run() == [cores, "PASSIVE"]
    assert _run(LOCAL_WORLD_SIZE=str(2 * cores)) == [1, "PASSIVE"]


def test_explicit_settings_win():
    assert _run(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == [1, "ACTIVE"]
    assert threads.env(2, {"OMP_NUM_THREADS": "3"}) == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.env(10**6, {})["OMP_NUM_THREADS"] == "1"


def test_every_vlm_command_and_the_steps_it_starts_wait_passively():
    """`vlm` sets the policy before any command runs, so pipeline steps (its child processes) inherit it."""
    script = ("import os, subprocess, sys; from vlm import cli; sys.argv = ['vlm', '--version']\n"
              "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
              "child = subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"OMP_WAIT_POLICY\"))'],"
              " capture_output=True, text=True).stdout.strip()\n"
              "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'), child)")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", script], env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False PASSIVE PASSIVE"
    out = subprocess.run([sys.executable, "-c", script], env={**base, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False ACTIVE ACTIVE"
