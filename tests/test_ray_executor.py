"""`mmsafe run --executor ray` on a local Ray cluster the test starts (a head and two worker nodes on 127.0.0.1):
the records and report of a one-process run; a worker killed mid-run loses nothing and doubles nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from mmsafe.config import load_config  # noqa: E402
from mmsafe.runner.ray_executor import NAMESPACE, RayOptions  # noqa: E402
from mmsafe.runner.run import run  # noqa: E402
from mmsafe.store import Store  # noqa: E402
from test_shards import N_ROWS, _config, _summary  # noqa: E402

PLANNED = N_ROWS * 2 * 2 * 2 * 2  # rows × models × attacks × defenses × judges


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    args = {"num_cpus": 1}  # on this machine (Ray binds to its own address, not 127.0.0.1)
    c = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    c.add_node(**args)
    c.add_node(**args)
    ray.init(address=c.address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _records_so_far(out: Path) -> int:
    """Records in the store a run is writing (0 before it exists or while it cannot be opened)."""
    try:
        with Store.open_existing(out) as st:
            return st.count_records()
    except Exception:
        return 0


def _keys(out: Path) -> list[str]:
    with Store.open_existing(out) as st:
        return st.record_keys()


def test_ray_workers_make_the_records_and_report_of_one_process(cluster, tmp_path: Path) -> None:
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    cfg = load_config(_config(tmp_path))
    res = run(cfg, tmp_path / "ray", progress=False, ray=RayOptions(workers=3))
    assert res.written == PLANNED and res.errors == 0
    run(cfg, tmp_path / "single", progress=False)
    assert sorted(_keys(tmp_path / "ray")) == sorted(_keys(tmp_path / "single"))
    assert _summary(tmp_path / "ray") == _summary(tmp_path / "single")
    again = run(cfg, tmp_path / "ray", progress=False, ray=RayOptions(workers=3))  # resumed: nothing to do
    assert again.written == 0 and again.skipped == PLANNED


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(cluster, tmp_path: Path) -> None:
    """SIGKILL one worker while records stream in: its batch goes to a new worker; every unit is written once."""
    cfg_path = _config(tmp_path)
    cfg = load_config(cfg_path)
    # delays and batch_size are runtime params: the same models (keys) as cfg's, only slower
    models = [
        m.model_copy(update={"params": {**m.params, "delays": {"Explain": 0.04}, "batch_size": 4}})
        for m in cfg.models
    ]
    slow = cfg.model_copy(update={"models": models})
    out = tmp_path / "killed"
    killed: dict[str, Any] = {}

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            n = _records_so_far(out)
            if n >= 40:
                names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                         if a["name"].startswith("mmsafe-")]  # fmt: skip
                if names:
                    actor = ray.get_actor(sorted(names)[0], namespace=NAMESPACE)
                    pid = ray.get(actor.pid.remote())
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, at=n)
                    return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = run(slow, out, progress=False, ray=RayOptions(workers=2))
    t.join(5)
    assert killed, "no worker was killed mid-run"
    assert killed["at"] < PLANNED
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == PLANNED  # 0 lost
    assert res.written == PLANNED and res.errors == 0  # 0 doubled: every record written once, none failed
    assert _summary(out) == _summary_of_single(cfg, tmp_path)


def _summary_of_single(cfg: Any, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "single-ref"
    run(cfg, out, progress=False)
    return _summary(out)


def test_a_batch_whose_workers_keep_dying_is_recorded_failed_not_lost(cluster, tmp_path: Path) -> None:
    """A poison batch (its worker dies every time: the scripted model exits on r000's prompt) fails its items with
    stage 'worker' after two tries; the rest of the run completes, and a rerun retries only those items."""
    cfg = load_config(_config(tmp_path))
    model = cfg.models[0]
    poison = model.model_copy(update={"params": {**model.params, "exit_on": ["(0)"], "batch_size": 2}})
    one = cfg.model_copy(
        update={"models": [poison], "attacks": cfg.attacks[:1], "defenses": cfg.defenses[:1]}
    )
    out = tmp_path / "poison"
    res = run(one, out, progress=False, ray=RayOptions(workers=2))
    with Store.open_existing(out) as st:
        failed = [r for r in st.iter_records() if r.error]
    assert failed and all(r.error_stage == "worker" and "died twice" in r.error for r in failed)
    assert {r.sample_id for r in failed} >= {"r000"} and len(failed) <= 2 * 2  # its batch of 2, both judges
    assert res.written == N_ROWS * 2 and res.errors == len(failed)
    # the crash injection is a runtime param: without it, the same model, whose rerun retries the failed items only
    healed = one.model_copy(
        update={"models": [model.model_copy(update={"params": {**model.params, "batch_size": 2}})]}
    )
    again = run(healed, out, progress=False, ray=RayOptions(workers=2))
    assert again.written == len(failed) and again.errors == 0
    assert json.loads((out / "summary.json").read_text())["n_errors"] == 0


def test_more_workers_than_cpus_share_them_instead_of_waiting_forever(cluster, tmp_path: Path) -> None:
    """6 workers asked of a 3-CPU cluster: each gets half a CPU, all start, the run completes."""
    cfg = load_config(_config(tmp_path))
    one = cfg.model_copy(update={"models": cfg.models[:1], "attacks": cfg.attacks[:1]})
    res = run(one, tmp_path / "six", progress=False, ray=RayOptions(workers=6))
    assert res.written == N_ROWS * 2 * 2 and res.errors == 0


def test_a_killed_driver_resumes_from_the_store(cluster, tmp_path: Path) -> None:
    """The driver (`mmsafe run --executor ray`, joining the test's cluster) SIGKILLed while records stream in: its
    workers go with it (they are its actors); the same command again finishes the grid, every unit once."""
    import subprocess
    import sys

    import yaml

    cfg_path = _config(tmp_path)
    doc = yaml.safe_load(cfg_path.read_text())
    for m in doc["models"]:
        m["params"].update({"delays": {"Explain": 0.05}, "batch_size": 2})  # runtime params: the same keys
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = tmp_path / "driver"
    cmd = [sys.executable, "-m", "mmsafe.cli", "run", str(slow), "--out", str(out), "--quiet",
           "--executor", "ray", "--ray-address", cluster.address, "--workers", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        n = _records_so_far(out)
        if n >= 40:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait(30)
    assert 40 <= n < PLANNED, f"the driver was not killed mid-run ({n} records)"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == PLANNED
    with Store.open_existing(out) as st:
        assert not [r for r in st.iter_records() if r.error]
