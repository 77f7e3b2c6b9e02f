"""Data-loader worker planning from the CPUs a process may really use."""

from orchestrator.workers import available_cpus, plan_workers


def test_slurm_cpus_per_task_caps_the_affinity_mask():
    assert available_cpus({"SLURM_CPUS_PER_TASK": "4"}, affinity=64) == 4
    assert available_cpus({}, affinity=6) == 6
    assert available_cpus({"SLURM_CPUS_PER_TASK": "junk"}, affinity=6) == 6


def test_workers_leave_one_cpu_for_training_and_differ_by_workload():
    assert plan_workers("transformer", environ={}, affinity=16, load_average=0) == 2
    assert plan_workers("lstm", environ={}, affinity=16, load_average=0) == 1
    assert plan_workers("transformer", environ={}, affinity=2, load_average=0) == 1
    assert plan_workers("transformer", environ={}, affinity=1, load_average=0) == 0


def test_ranks_on_one_node_split_the_cpus():
    assert plan_workers("transformer", ranks_per_node=8, environ={}, affinity=8, load_average=0) == 0
    assert plan_workers("transformer", ranks_per_node=2, environ={}, affinity=8, load_average=0) == 2


def test_a_busy_shared_machine_gets_fewer_workers():
    assert plan_workers("transformer", environ={}, affinity=4, load_average=0) == 2
    assert plan_workers("transformer", environ={}, affinity=4, load_average=10) == 1


def test_conservative_mode_loads_in_the_training_process():
    assert plan_workers("transformer", conservative=True, environ={}, affinity=64, load_average=0) == 0
