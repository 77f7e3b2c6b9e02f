"""Planning a submission: what is skipped, how arrays are grouped and split (no cluster needed)."""

import pytest

from experiments import gen_experim
from orchestrator import scheduler, submission
from orchestrator.paths import RunPaths, atomic_write_json
from orchestrator.submission import Policy, plan


@pytest.fixture
def cluster(monkeypatch):
    """What plan() asks the cluster: the partitions exist, MaxArraySize is small."""
    nodes = {"sphinx": scheduler.NodeLimits("sphinx", cpus=64, mem_gb=500, gpus=8),
             "miso": scheduler.NodeLimits("miso", cpus=96, mem_gb=2000, gpus=4)}
    monkeypatch.setattr(scheduler, "partition_limits", lambda: nodes)
    monkeypatch.setattr(scheduler, "max_array_size", lambda: 3)


def specs(n, **fields):
    return [s for i in range(n) for s in gen_experim(16, label=f"e{i}", seed=i, **fields)]


def finish(spec, state="completed"):
    atomic_write_json(RunPaths.of(spec.folder_name, spec.label).status_json,
                      {"state": state, "identity": spec.identity, "optimizer_step": 1})


def test_arrays_are_split_at_the_clusters_max_array_size(cluster):
    planned = plan("R", specs(7), "slurm")
    assert [len(a.specs) for a in planned.arrays] == [3, 3, 1]
    assert [s.label for a in planned.arrays for s in a.specs] == [f"e{i}" for i in range(7)]


def test_one_array_per_resource_group_in_registry_order(cluster):
    mixed = specs(2) + [s.replace(label=f"m{i}", partition="miso") for i, s in enumerate(specs(2))] + \
        [s.replace(label="long", time_min=600) for s in specs(1)]
    planned = plan("R", mixed, "slurm", parallel=2)
    assert [[s.label for s in a.specs] for a in planned.arrays] == [["e0", "e1"], ["m0", "m1"], ["long"]]
    assert [a.resources["partition"] for a in planned.arrays] == ["sphinx", "miso", "sphinx"]
    assert {a.parallel for a in planned.arrays} == {2}


def test_completed_runs_are_skipped_and_the_limit_takes_the_next_in_order(cluster):
    registry = specs(6)
    finish(registry[0])
    finish(registry[2])
    planned = plan("R", registry, "slurm", limit=2)
    assert [d.action for d in planned.decisions] == ["completed", "submit", "completed", "submit",
                                                     "over limit", "over limit"]
    assert planned.count("submit") == 2


def test_force_reruns_completed_runs_from_scratch(cluster):
    registry = specs(2)
    finish(registry[0])
    planned = plan("R", registry, "slurm", Policy(force=True))
    assert [(d.action, d.fresh_start) for d in planned.decisions] == [("submit", True), ("submit", False)]


def test_failed_and_diverged_runs_wait_for_a_retry(cluster):
    registry = specs(3)
    finish(registry[0], "failed")
    finish(registry[1], "diverged")
    assert [d.action for d in plan("R", registry, "slurm").decisions] == ["failed", "failed", "submit"]
    retried = plan("R", registry, "slurm", Policy.retry_failed())
    assert [(d.action, d.fresh_start) for d in retried.decisions] == [
        ("submit", False), ("submit", True), ("submit", False)]


def test_archiving_moves_old_outputs_aside_and_deletes_nothing():
    spec = specs(1)[0]
    paths = RunPaths.of(spec.folder_name, spec.label)
    finish(spec)
    paths.metrics_csv.write_text("optimizer_step\n1\n")
    target = submission.archive_outputs(spec)
    assert not paths.run_dir.exists() and not paths.metrics_csv.exists()
    assert (target / "e0.csv").read_text() == "optimizer_step\n1\n" and (target / "e0" / "status.json").exists()


@pytest.mark.parametrize("option, value", [("limit", 0), ("parallel", 0), ("max_requeues", -1)])
def test_bad_options_are_usage_errors(cluster, option, value):
    with pytest.raises(ValueError):
        plan("R", specs(1), "slurm", **{option: value})


@pytest.mark.parametrize("fields, message", [
    (dict(mem_gb=5000), "asks for 5000 GB of memory, but the largest node of partition 'sphinx' has 500"),
    (dict(partition="miso", gpus=8), "asks for 8 GPUs, but the largest node of partition 'miso' has 4"),
    (dict(gpus=8, cpus_per_gpu=9), "asks for 72 CPUs, but the largest node of partition 'sphinx' has 64"),
    (dict(time_min=2), "time_min=2 leaves no room for the checkpoint signal"),
    (dict(hidden_dim=8192, num_layers=64), "does not fit on partition 'sphinx' even at batch 1: needs ~"),
])
def test_what_no_node_can_run_is_refused_in_the_plan_and_nothing_is_written(cluster, fields, message):
    width = fields.pop("hidden_dim", 16)
    bad = gen_experim(width, label="bad", **fields)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("~", "")) as refused:
        plan("R", specs(2) + bad, "slurm")
    assert len(str(refused.value).splitlines()) == 1
    assert not RunPaths.of(bad[0].folder_name, "bad").run_dir.exists()


def test_a_short_time_limit_is_fine_where_no_signal_is_needed(cluster):
    assert plan("R", specs(1, time_min=1, partition="local"), "local").count("submit") == 1
