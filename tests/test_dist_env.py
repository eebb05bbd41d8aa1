"""nmt.training.distributed: rank/world/rendezvous from torchrun's or Slurm's variables, Slurm
host lists, and a real 2-process gloo group (torchrun, and two processes given Slurm's variables)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.errors import UserError
from nmt.training.distributed import DistEnv, detect, expand_hostlist, init

HERE = Path(__file__).parent
SCRIPT = HERE / "distributed" / "dist_env_allreduce.py"

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500"}
SLURM = {"SLURM_JOB_ID": "123456", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
         "SLURM_NODELIST": "gpu[017-020]", "SLURM_STEP_ID": "0"}


@pytest.mark.parametrize("hostlist, hosts", [
    ("node7", ["node7"]),
    ("node[1-3,5],gpu7", ["node1", "node2", "node3", "node5", "gpu7"]),
    ("host-[01-02]", ["host-01", "host-02"]),
    ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
    ("a1,b[2-3],c.cluster", ["a1", "b2", "b3", "c.cluster"]),
    ("rack[1-2]-n[09-10]", ["rack1-n09", "rack1-n10", "rack2-n09", "rack2-n10"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["", "node[1-3", "node[3-1]", "node[a]", "a,,b", "node]1["])
def test_expand_hostlist_rejects_malformed_lists(bad):
    with pytest.raises(UserError, match="node list"):
        expand_hostlist(bad)


def test_no_variables_is_a_single_process():
    assert detect({}) == DistEnv(0, 1, 0, "127.0.0.1", 0, "single")


def test_torchrun_variables():
    assert detect(TORCHRUN) == DistEnv(3, 4, 1, "10.0.0.7", 29500, "torchrun")


def test_torchrun_with_one_process_is_single():
    env = detect({**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert env.source == "single" and env.world_size == 1


def test_slurm_variables_first_host_and_port_from_job_id():
    assert detect(SLURM) == DistEnv(5, 8, 1, "gpu017", 15000 + 123456 % 20000, "slurm")


def test_slurm_port_and_address_from_the_environment_when_set():
    env = detect({**SLURM, "MASTER_PORT": "12345", "MASTER_ADDR": "10.1.2.3"})
    assert (env.master_addr, env.master_port) == ("10.1.2.3", 12345)


def test_slurm_port_is_deterministic_and_in_range():
    ports = {detect({**SLURM, "SLURM_JOB_ID": str(j)}).master_port for j in (1, 19999, 20000, 987654321)}
    assert all(15000 <= p < 35000 for p in ports) and len(ports) == 4
    assert detect(SLURM).master_port == detect(dict(SLURM)).master_port


def test_slurm_job_with_one_task_is_single():
    env = detect({**SLURM, "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"})
    assert env.source == "single" and env.world_size == 1


def test_torchrun_takes_precedence_over_slurm():
    """``srun torchrun ...``: torchrun's per-process variables describe this process."""
    assert detect({**SLURM, **TORCHRUN}).source == "torchrun"
    assert detect({**SLURM, **TORCHRUN}).rank == 3


@pytest.mark.parametrize("environ, variable", [
    ({**TORCHRUN, "RANK": "4"}, "RANK=4 must be < WORLD_SIZE=4"),
    ({**TORCHRUN, "RANK": "x"}, "RANK='x' is not an integer"),
    ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
    ({k: v for k, v in TORCHRUN.items() if k != "LOCAL_RANK"}, "LOCAL_RANK is not set"),
    ({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}, "MASTER_ADDR is not set"),
    ({**SLURM, "SLURM_PROCID": "8"}, "SLURM_PROCID=8 must be < SLURM_NTASKS=8"),
    ({**SLURM, "SLURM_NTASKS": "-2"}, "SLURM_NTASKS=-2 must be >= 1"),
    ({k: v for k, v in SLURM.items() if k != "SLURM_NTASKS"}, "SLURM_NTASKS is not set"),
    ({k: v for k, v in SLURM.items() if k != "SLURM_STEP_ID"}, "not one of the tasks"),
    ({**SLURM, "SLURM_NODELIST": "gpu[1-"}, "node list"),
])
def test_bad_environment_names_the_variable(environ, variable):
    with pytest.raises(UserError, match=variable.replace("[", r"\[").replace("(", r"\(")):
        detect(environ)


def test_init_does_nothing_for_one_process(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    init(detect({}), "cpu")
    assert "MASTER_ADDR" not in os.environ


def _run_two(commands: list[list[str]], envs: list[dict[str, str]]) -> list[str]:
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, env in zip(commands, envs, strict=True)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def test_torchrun_two_ranks_gloo_all_reduce():
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    (out,) = _run_two([[str(torchrun), "--standalone", "--nproc_per_node=2", str(SCRIPT)]],
                      [{**env, "OMP_NUM_THREADS": "1"}])
    # both ranks print to one pipe: their lines may interleave, so match the records, not lines
    assert sorted(re.findall(r"OK torchrun \d/\d \d", out)) == ["OK torchrun 0/2 3", "OK torchrun 1/2 3"]


def test_slurm_variables_two_ranks_gloo_all_reduce():
    """What srun gives each task (no torchrun): both processes find rank 0 from the node list."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    base.update(OMP_NUM_THREADS="1", MASTER_PORT=str(port), SLURM_JOB_ID="77", SLURM_NTASKS="2",
                SLURM_NODELIST="localhost", SLURM_STEP_ID="0")
    envs = [{**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)]
    outs = _run_two([[sys.executable, str(SCRIPT)]] * 2, envs)
    assert [o.strip() for o in outs] == ["OK slurm 0/2 3", "OK slurm 1/2 3"]
