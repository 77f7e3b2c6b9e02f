"""submit orders experiments that start from another's output: a fine-tune after its base run."""

import pytest

from orchestrator import dependencies
from orchestrator.paths import RunPaths, atomic_write_json
from orchestrator.submission import Policy, _afterok, plan
from orchestrator.manifest import ArrayRecord, TaskRecord
from orchestrator.spec import make_spec

TINY = dict(hidden_dim=32, num_layers=2, num_heads=2, vocab_size=256, seq_length=32, precision="fp32",
            partition="local", target_effective_batch_size=4, train_samples=8)


def pretrain(label="base"):
    return make_spec("finetune", base_model="scratch", label=label, folder_name="deps", train_last_n_layers=None,
                     **TINY)


def finetune(base="deps/base", label="tuned"):
    return make_spec("finetune", base_model=f"run:{base}", label=label, folder_name="deps", train_last_n_layers=1,
                     **TINY)


def set_state(spec, state):
    paths = RunPaths.of(spec.folder_name, spec.label)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.status_json, {"state": state, "identity": spec.identity, "optimizer_step": 2})


def test_a_chain_is_submitted_in_waves_each_array_naming_what_it_waits_for():
    specs = [finetune("deps/tuned", "twice"), finetune(), pretrain()]
    arrays = plan("DEPS", specs, "local", check=False).arrays
    assert [[s.label for s in a.specs] for a in arrays] == [["base"], ["tuned"], ["twice"]]
    assert [a.needs for a in arrays] == [(), ("deps/base",), ("deps/tuned",)]


def test_a_completed_base_needs_no_waiting():
    base, tuned = pretrain(), finetune()
    set_state(base, "completed")
    result = plan("DEPS", [base, tuned], "local", check=False)
    assert [d.action for d in result.decisions] == ["completed", "submit"]
    assert [a.needs for a in result.arrays] == [()]


def test_a_finetune_of_a_failed_base_is_not_submitted_and_says_why():
    base, tuned = pretrain(), finetune()
    set_state(base, "failed")
    result = plan("DEPS", [base, tuned], "local", check=False)
    assert [d.action for d in result.decisions] == ["failed", "blocked"]
    assert "needs deps/base, which is failed and not submitted now" in result.decisions[1].reason
    assert not result.arrays
    retried = plan("DEPS", [base, tuned], "local", check=False, policy=Policy.retry_failed())
    assert [d.action for d in retried.decisions] == ["submit", "submit"]


def test_a_base_outside_the_registry_must_have_completed():
    result = plan("DEPS", [finetune("elsewhere/base")], "local", check=False)
    assert result.decisions[0].action == "blocked"
    assert "elsewhere/base, which is not in this registry and has not completed (no run)" in result.decisions[0].reason


def test_slurm_waits_for_exactly_the_base_tasks():
    earlier = [ArrayRecord(name="a", backend="slurm", resources={}, parallel=1, log_folder="", job_id="41",
                           tasks=[TaskRecord(0, "x", "base", "deps", "", "41_0"),
                                  TaskRecord(1, "y", "other", "deps", "", "41_1")])]
    arrays = plan("DEPS", [pretrain(), finetune()], "local", check=False).arrays
    assert _afterok(arrays[1], earlier) == "afterok:41_0" and _afterok(arrays[0], earlier) is None


def test_waiting_ends_with_the_base_and_fails_with_it():
    base = pretrain()
    set_state(base, "running")
    with pytest.raises(TimeoutError):
        dependencies.wait_for(["deps/base"], once=True)
    set_state(base, "diverged")
    with pytest.raises(dependencies.DependencyFailed, match="deps/base, which it starts from, ended diverged"):
        dependencies.wait_for(["deps/base"], poll_s=0)
    set_state(base, "completed")
    dependencies.wait_for(["deps/base"], poll_s=0)
