"""The kubernetes backend without a cluster: manifests checked by the Kubeflow SDK's models and
kubernetes_validate, and the client's HTTP calls answered by a tiny local server with the recorded
API responses of tests/fixtures/kubernetes/ (no API server can run on this machine)."""

import copy
import dataclasses
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import yaml

from orchestrator import kubernetes, manifest
from orchestrator.backends import resolve_backend
from orchestrator.cli import main
from orchestrator.paths import RunPaths, atomic_write_json, read_status
from orchestrator.profiles import get_profile
from orchestrator.spec import make_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kubernetes"
SUBMISSION = "20260501T100000-a1b2c3"  # the submission id every test here gets
NAMESPACE = "scaling-orchestrator"
JOBS_PATH = f"/apis/kubeflow.org/v1/namespaces/{NAMESPACE}/pytorchjobs"
REGISTRY = """
from orchestrator.builders import gen_experim

K8S = [s for n in range(5) for s in gen_experim(16, label=f"tiny_{n}", folder_name="k8s_tiny", seed=n,
                                                 partition="openshift", train_tokens=100_000)]
"""


def name(n: int) -> str:
    return f"orch-{SUBMISSION.lower()}-{n}"


def fixture(file: str) -> dict:
    return json.loads((FIXTURES / file).read_text())


class FakeApiServer(http.server.ThreadingHTTPServer):
    """The PyTorchJob paths of a Kubernetes API server, answered from the recorded bodies; every
    request is noted as (method, path, query, body). ``errors[method]`` names a recorded Status
    to answer with instead (its ``code`` is the HTTP status)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests, self.errors = [], {}
        self.jobs = fixture("list.json")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        server = self.server
        server.requests.append((method, url.path, query, body))
        if method in server.errors:
            status = fixture(server.errors[method])
            return self._answer(status["code"], status)
        if method == "POST" and url.path == JOBS_PATH:  # the object as stored: the server's metadata added
            stored = fixture("created.json")["metadata"]
            server_fields = ("creationTimestamp", "generation", "managedFields", "resourceVersion", "uid")
            return self._answer(201, {**body, "metadata": {**body["metadata"],
                                                           **{k: stored[k] for k in server_fields}}})
        if method == "GET" and url.path == JOBS_PATH:
            key, _, values = query["labelSelector"].partition(" in ")
            wanted = set(values.strip("()").split(","))
            listed = copy.deepcopy(server.jobs)
            listed["items"] = [i for i in listed["items"] if i["metadata"]["labels"].get(key) in wanted]
            return self._answer(200, listed)
        job = url.path.rpartition("/")[2]
        found = [i for i in server.jobs["items"] if i["metadata"]["name"] == job]
        if method == "DELETE" and url.path.startswith(JOBS_PATH + "/") and found:
            return self._answer(200, found[0])  # a custom resource's DELETE returns the object
        return self._answer(404, fixture("not-found.json"))

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")


@pytest.fixture
def fixed_submission_id(monkeypatch):
    new_submission = manifest.new_submission
    monkeypatch.setattr(manifest, "new_submission",
                        lambda registry, arrays: dataclasses.replace(new_submission(registry, arrays), id=SUBMISSION))


@pytest.fixture
def api(monkeypatch, fixed_submission_id):
    """The fake API server, and the client pointed at it (as a kube config would point it)."""
    from kubernetes import client

    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(kubernetes, "configuration", lambda: client.Configuration(host=server.url))
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def registry(tmp_path):
    module = tmp_path / "k8s_grid.py"
    module.write_text(REGISTRY)
    return str(module)


@pytest.fixture
def no_kube_config(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubernetes.configuration.cache_clear()
    yield
    kubernetes.configuration.cache_clear()


def submit(registry, *args) -> int:
    return main(["--registry-module", registry, "submit", "K8S", "--backend", "kubernetes", *args])


def statuses(registry, capsys, selector="K8S") -> dict:
    capsys.readouterr()
    assert main(["--registry-module", registry, "status", selector, "--json"]) == 0
    return {s["label"]: s for s in json.loads(capsys.readouterr().out)["K8S"]}


def written_manifests(registry="K8S") -> list[dict]:
    folders = (manifest.submissions_dir().parent / "_submitit" / registry).glob("*/manifests")
    return [yaml.safe_load(path.read_text()) for folder in folders for path in sorted(folder.glob("*.yaml"))]


def spec_on(partition="openshift", **fields):
    return make_spec("transformer", hidden_dim=16, label="m", folder_name="k8s_tiny", partition=partition,
                     train_tokens=100_000, **fields)


def one_job(spec, max_requeues=3, code_dir=None) -> dict:
    """The manifest of one experiment, as submit builds it."""
    from orchestrator.submission import resources

    root = str(manifest.submissions_dir().parent.resolve())
    task = manifest.TaskRecord(0, spec.identity, spec.label, spec.folder_name,
                               os.path.join(root, spec.folder_name, spec.label, "spec.json"))
    record = manifest.ArrayRecord(name=name(0), backend="kubernetes", resources=resources(spec), parallel=1,
                                  log_folder="", tasks=[task], max_requeues=max_requeues, code_dir=code_dir,
                                  namespace=NAMESPACE)
    return kubernetes.manifest(spec, record, SUBMISSION, "K8S")


def container(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


# --- the profile ---------------------------------------------------------------------------------

def test_the_openshift_profile_models_the_one_node_deployment():
    profile = get_profile("openshift")
    assert profile.backend == "kubernetes" and profile.max_gpus_per_job == 1
    assert (profile.gpu_mem_gb, profile.peak_bf16_tflops) == (23, 121)  # the L4 it has, not the L40S
    assert profile.mem_gb < 32 and profile.cpus_per_gpu < 8
    assert [v["claim"] for v in profile.kubernetes.volumes] == ["workspace-pvc", "training-data-pvc",
                                                                "trained-models-pvc"]
    assert spec_on().partition == "openshift"


def test_a_users_profile_replaces_single_kubernetes_keys(isolated_environment):
    profiles = isolated_environment / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "openshift.yaml").write_text("gpu_mem_gb: 48\nkubernetes:\n  namespace: my-project\n")
    profile = get_profile("openshift")
    assert profile.gpu_mem_gb == 48 and profile.kubernetes.namespace == "my-project"
    assert profile.kubernetes.results_dir == "/workspace/results"  # the shipped block's other keys stay


@pytest.mark.parametrize("override, message", [
    ("kubernetes:\n  namspace: x\n", "unknown kubernetes key in .*'namspace' \\(did you mean 'namespace'\\?\\)"),
    ("kubernetes:\n  results_dir: /elsewhere\n", "results_dir must be an absolute path under a writable mount"),
    ("kubernetes:\n  annotations: {prometheus.io/scrape: true}\n", "quote numbers and booleans"),
    ("backend: slurm\n", "a 'kubernetes' block goes with backend kubernetes"),
])
def test_a_bad_kubernetes_profile_is_one_error_naming_the_key(isolated_environment, override, message):
    profiles = isolated_environment / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "openshift.yaml").write_text(override)
    with pytest.raises(ValueError, match=message):
        get_profile("openshift")


# --- the manifest --------------------------------------------------------------------------------

def test_a_manifest_is_a_pytorchjob_whose_pytorch_container_runs_the_spec_from_the_pvc():
    job = one_job(spec_on())
    assert (job["apiVersion"], job["kind"], job["metadata"]["namespace"]) == ("kubeflow.org/v1", "PyTorchJob",
                                                                             NAMESPACE)
    assert job["metadata"]["labels"]["scaling-orchestrator/submission"] == SUBMISSION
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"] and master["replicas"] == 1
    assert master["restartPolicy"] == "OnFailure" and job["spec"]["nprocPerNode"] == "1"
    pod = container(job)
    assert pod["name"] == "pytorch"
    assert pod["command"] == ["python", "-m", "workloads.run", "/workspace/results/k8s_tiny/m/spec.json"]
    env = {e["name"]: e["value"] for e in pod["env"]}
    assert env["ORCHESTRATOR_JOB_ID"] == name(0) and env["ORCHESTRATOR_RESULTS_DIR"] == "/workspace/results"
    assert pod["resources"]["limits"] == {"cpu": "6", "memory": "24Gi", "nvidia.com/gpu": "1"}
    assert pod["resources"]["requests"] == pod["resources"]["limits"]
    claims = [v["persistentVolumeClaim"]["claimName"]
              for v in master["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["workspace-pvc", "training-data-pvc", "trained-models-pvc"]
    assert master["template"]["spec"]["terminationGracePeriodSeconds"] == 90
    assert job["spec"]["runPolicy"] == {"activeDeadlineSeconds": 240 * 60 * 4, "backoffLimit": 3,
                                        "cleanPodPolicy": "None"}
    assert kubernetes.check(job, "1.31") == ""


def test_the_code_snapshot_is_put_on_the_pods_pythonpath():
    snapshot = manifest.submissions_dir().parent / "_submitit" / "K8S" / SUBMISSION / "code"
    env = {e["name"]: e["value"] for e in container(one_job(spec_on(), code_dir=str(snapshot)))["env"]}
    assert env["PYTHONPATH"] == f"/workspace/results/_submitit/K8S/{SUBMISSION}/code"
    assert env["PYTHONSAFEPATH"] == "1"


def test_a_multi_gpu_run_gets_a_process_per_gpu_and_a_command_one_process(isolated_environment):
    from workloads.command import command_experim

    profiles = isolated_environment / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "openshift.yaml").write_text("max_gpus_per_job: 2\n")
    job = one_job(spec_on(gpus=2))
    assert job["spec"]["nprocPerNode"] == "2"
    assert container(job)["resources"]["limits"] == {"cpu": "12", "memory": "24Gi", "nvidia.com/gpu": "2"}
    command = command_experim("python train.py", label="cmd", steps=10, partition="openshift", gpus=2)[0]
    assert one_job(command)["spec"]["nprocPerNode"] == "1"  # it starts its own ranks
    assert kubernetes.check(job, "1.31") == "" and kubernetes.check(one_job(command), "1.31") == ""


def master_of(job):
    return job["spec"]["pytorchReplicaSpecs"]["Master"]


@pytest.mark.parametrize("change, problem", [
    (lambda j: master_of(j).update(replicass=1), "spec.pytorchReplicaSpecs.Master.replicass: not a field"),
    (lambda j: container(j).pop("name"), "not a PyTorchJob: Invalid value for `name`, must not be `None`"),
    (lambda j: master_of(j).update(replicas="1"), "Master.replicas must be an integer >= 1, got '1'"),
    (lambda j: master_of(j).update(replicas=True), "Master.replicas must be an integer >= 1, got True"),
    (lambda j: master_of(j).update(replicas=0), "replicas must be an integer >= 1, got 0"),
    (lambda j: j["spec"]["runPolicy"].update(backoffLimit=-1), "backoffLimit must be an integer >= 0, got -1"),
    (lambda j: j["spec"].update(nprocPerNode=2), "spec.nprocPerNode must be a string, got 2"),
    (lambda j: j["metadata"]["labels"].update(run=7), "metadata.labels.run must be a label value .*, got 7"),
    (lambda j: j["metadata"]["annotations"].update(run=7), "metadata.annotations.run: not a field .* its type"),
    (lambda j: container(j)["resources"]["limits"].update(cpu=6), "limits.cpu must be a quantity string"),
    (lambda j: container(j).update(name="trainer"), "no container named 'pytorch'"),
    (lambda j: master_of(j)["template"]["spec"].update(terminationGracePeriodSeconds="90"),
     "Master.template.spec.terminationGracePeriodSeconds: '90' is not of type 'integer'"),
    (lambda j: master_of(j)["template"]["spec"]["tolerations"][0].update(operatr="Exists"),
     "Master.template.spec.tolerations\\[0\\]: Additional properties are not allowed \\('operatr' was unexpected\\)"),
    (lambda j: j["spec"]["runPolicy"].update(backofLimit=3), "spec.runPolicy.backofLimit: not a field"),
    (lambda j: j["metadata"].update(name="Orch_1"), "metadata.name 'Orch_1' must be a DNS-1035 label"),
])
def test_check_names_the_first_field_that_is_not_a_pytorchjobs(change, problem):
    job = one_job(spec_on())
    change(job)
    assert re.search(problem, kubernetes.check(job, "1.31")), kubernetes.check(job, "1.31")


def test_a_pod_templates_problem_is_named_by_the_kubernetes_schema():
    job = one_job(spec_on())
    container(job)["imagePullPolicy"] = 3
    assert kubernetes.check(job, "1.31") == ("spec.pytorchReplicaSpecs.Master.template.spec.containers[0]"
                                             ".imagePullPolicy: 3 is not of type 'string', 'null' (Kubernetes 1.31)")


def test_a_typo_in_the_profiles_tolerations_fails_the_submit_naming_the_field(registry, isolated_environment,
                                                                             capsys, no_kube_config):
    profiles = isolated_environment / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "openshift.yaml").write_text("kubernetes:\n  tolerations: [{key: nvidia.com/gpu, operatr: Exists}]\n")
    assert submit(registry, "--dry-run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not validate: spec.pytorchReplicaSpecs.Master.template.spec" \
                                      ".tolerations[0]: Additional properties are not allowed ('operatr'" in err


# --- a dry run -----------------------------------------------------------------------------------

def test_a_dry_run_writes_one_valid_manifest_per_experiment_without_a_cluster(registry, capsys, no_kube_config,
                                                                              fixed_submission_id):
    assert submit(registry, "--dry-run") == 0
    out = capsys.readouterr().out
    jobs = written_manifests()
    assert [j["metadata"]["name"] for j in jobs] == [name(n) for n in range(5)]
    for job in jobs:
        assert job["metadata"]["name"] + ".yaml" in out  # each path is printed
        assert kubernetes.check(job, "1.31") == ""
    assert "would submit 5 experiments as 5 PyTorchJobs" in out
    assert not manifest.load_submissions("K8S")  # no record, no spec.json
    assert not (manifest.submissions_dir().parent / "k8s_tiny").exists()


def test_auto_picks_kubernetes_for_kubernetes_partitions_and_an_unknown_backend_lists_it(registry, capsys):
    assert resolve_backend("auto", {"openshift"}) == ("kubernetes", "auto: only Kubernetes partitions")
    with pytest.raises(ValueError, match="unknown backend 'kubrnetes' \\(did you mean 'kubernetes'\\?\\); "
                                         "known: auto, debug, kubernetes, local, slurm"):
        resolve_backend("kubrnetes", {"openshift"})
    with pytest.raises(SystemExit) as exited:
        submit(registry, "--backend", "kubrnetes")
    assert exited.value.code == 2 and "invalid choice: 'kubrnetes'" in capsys.readouterr().err


def test_a_kubernetes_experiment_on_slurm_is_refused_naming_the_backend(registry, capsys):
    assert submit(registry, "--dry-run", "--backend", "slurm") == 2
    assert "which is not a Slurm partition; use --backend kubernetes" in capsys.readouterr().err


def test_without_a_kube_config_submit_is_one_line_and_writes_nothing(registry, capsys, no_kube_config):
    assert submit(registry) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Kubernetes configuration: not in a pod, and no kube config") \
        and err.count("\n") == 1
    assert not manifest.submissions_dir().exists()


# --- the API calls against recorded responses ----------------------------------------------------

@pytest.fixture
def submitted(api, registry, capsys):
    assert submit(registry) == 0
    return capsys.readouterr().out


def test_submit_creates_one_pytorchjob_per_experiment_and_records_it(api, submitted):
    posts = [r for r in api.requests if r[0] == "POST"]
    assert [(method, path) for method, path, _, _ in posts] == [("POST", JOBS_PATH)] * 5
    assert [body for _, _, _, body in posts] == written_manifests()  # what was sent is what was written
    assert f"submitted 5 experiments as 5 PyTorchJobs [{', '.join(name(n) for n in range(5))}]" in submitted
    record = manifest.load_submissions("K8S")[0]
    assert record.state == "submitted"
    assert [(a.backend, a.job_id, a.namespace) for a in record.arrays] == [("kubernetes", name(n), NAMESPACE)
                                                                           for n in range(5)]
    spec_json = json.loads(Path(record.arrays[0].tasks[0].spec_path).read_text())
    assert spec_json["submission"] == {"registry": "K8S", "id": SUBMISSION, "array": 0, "index": 0}


def test_status_lists_the_jobs_in_one_call_and_maps_their_conditions(api, submitted, registry, capsys):
    from orchestrator.registry import load_registry

    done = load_registry("K8S", [registry])[2]  # the pod wrote its run directory on the PVC
    atomic_write_json(RunPaths.of(done.folder_name, done.label).status_json,
                      {"state": "completed", "identity": done.identity, "optimizer_step": 12})
    api.requests.clear()
    found = statuses(registry, capsys)
    assert api.requests == [("GET", JOBS_PATH, {"labelSelector": f"scaling-orchestrator/submission in ({SUBMISSION})"},
                             None)]
    assert {label: s["state"] for label, s in found.items()} == {
        "tiny_0": "pending", "tiny_1": "running", "tiny_2": "completed", "tiny_3": "failed", "tiny_4": "timeout"}
    assert found["tiny_3"]["reason"] == f"PyTorchJob {name(3)} is failed because 1 Master replica(s) failed."
    assert found["tiny_4"]["reason"].startswith("reached its deadline (activeDeadlineSeconds")
    assert found["tiny_2"]["elapsed"] == "0:21:04" and found["tiny_1"]["job_id"] == name(1)


def test_a_pytorchjobs_name_selects_its_experiment(api, submitted, registry, capsys):
    assert list(statuses(registry, capsys, selector=name(3))) == ["tiny_3"]


def test_cancel_deletes_the_active_jobs_and_marks_the_unstarted_cancelled(api, submitted, registry, capsys):
    from orchestrator.registry import load_registry

    api.requests.clear()
    assert main(["--registry-module", registry, "cancel", "K8S", "-y"]) == 0
    out = capsys.readouterr().out
    deletes = [(method, path, query) for method, path, query, _ in api.requests if method == "DELETE"]
    assert deletes == [("DELETE", f"{JOBS_PATH}/{name(n)}", {"propagationPolicy": "Background"}) for n in (0, 1)]
    assert f"cancelled 2 experiments: pytorchjob/{name(0)}, pytorchjob/{name(1)}" in out
    pending = load_registry("K8S", [registry])[0]
    assert read_status(RunPaths.of(pending.folder_name, pending.label))["state"] == "cancelled"
    api.jobs["items"] = api.jobs["items"][2:]  # deleted
    found = statuses(registry, capsys)
    assert found["tiny_0"]["state"] == "cancelled" and found["tiny_1"]["state"] == "missing"


def test_a_job_already_gone_is_no_error_for_cancel(api):
    kubernetes.delete([(NAMESPACE, name(9))])
    assert api.requests[-1][:2] == ("DELETE", f"{JOBS_PATH}/{name(9)}")


def test_an_existing_job_is_a_one_line_error_exit_1_and_leaves_no_record(api, registry, capsys):
    api.errors["POST"] = "already-exists.json"
    assert submit(registry) == 1
    err = capsys.readouterr().err
    assert err == (f"error: Kubernetes API: create PyTorchJob {name(0)} in namespace {NAMESPACE}: pytorchjobs."
                   f"kubeflow.org \"{name(0)}\" already exists (AlreadyExists, HTTP 409)\n")
    assert not manifest.load_submissions("K8S")


def test_a_forbidden_list_is_a_one_line_error_exit_1(api, submitted, registry, capsys):
    api.errors["GET"] = "forbidden.json"
    assert main(["--registry-module", registry, "status", "K8S"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: Kubernetes API: list PyTorchJobs in namespace {NAMESPACE}: pytorchjobs.kubeflow.org "
                          "is forbidden: User ") and err.endswith("(Forbidden, HTTP 403)\n") and err.count("\n") == 1


def test_no_api_server_answering_is_a_one_line_error_exit_1(registry, monkeypatch, capsys, fixed_submission_id):
    import socket

    from kubernetes import client

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(kubernetes, "configuration", lambda: client.Configuration(host=f"http://127.0.0.1:{port}"))
    assert submit(registry) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: Kubernetes API at http://127.0.0.1:{port}: create PyTorchJob {name(0)}") \
        and "no answer" in err and err.count("\n") == 1
    assert not manifest.load_submissions("K8S")


def test_jobs_created_by_a_submit_that_died_are_found_by_name_and_recorded_by_the_next(api, registry, capsys,
                                                                                      monkeypatch):
    from orchestrator import submission

    finish = submission._finish
    monkeypatch.setattr(submission, "_finish", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):  # died after creating the jobs, before recording them
        submit(registry)
    assert [a.job_id for a in manifest.load_submissions("K8S")[0].arrays] == [None] * 5
    found = statuses(registry, capsys)
    assert found["tiny_1"]["state"] == "running" and "was interrupted; the next submit records it" \
        in found["tiny_1"]["reason"]
    monkeypatch.setattr(submission, "_finish", finish)
    api.requests.clear()
    assert submit(registry) == 0
    assert f"repaired an interrupted submission {SUBMISSION}: submitted" in capsys.readouterr().out
    assert [a.job_id for a in manifest.load_submissions("K8S")[0].arrays] == [name(n) for n in range(5)]
    assert not [r for r in api.requests if r[0] == "POST"]  # nothing created twice


# --- conditions to states ------------------------------------------------------------------------

@pytest.mark.parametrize("condition, state", [
    (None, "pending"), ("Created", "pending"), ("Suspended", "pending"), ("Running", "running"),
    ("Restarting", "requeued"), ("Succeeded", "completed"), ("Failed", "failed")])
def test_the_condition_that_holds_last_is_the_state(condition, state):
    item = copy.deepcopy(fixture("list.json")["items"][0])
    item["status"]["conditions"].append({"type": condition or "Created", "status": "True" if condition else "False"})
    if condition is None:
        item["status"]["conditions"] = [{"type": "Created", "status": "False"}]
    assert kubernetes.job_state(item).state == state


def test_a_finished_condition_wins_over_one_appended_after_it():
    item = copy.deepcopy(fixture("list.json")["items"][2])  # Succeeded
    item["status"]["conditions"].append({"type": "Running", "status": "True"})
    assert kubernetes.job_state(item).state == "completed"


class _Entry:
    reason, elapsed, job_id = "", "", None


def test_a_recorded_job_that_is_not_listed_was_deleted_and_is_missing_at_once():
    attempt = manifest.Attempt("K8S", SUBMISSION, "2026-05-01T10:00:00+00:00", "kubernetes", name(0), "", 0, 0, 1,
                               "x", job_id=name(0), namespace=NAMESPACE)
    entry = _Entry()
    assert kubernetes.state_of(entry, attempt, {}, None) == "missing"
    assert entry.reason == f"PyTorchJob {name(0)} is gone (deleted) and the run never finished"


def test_a_job_that_succeeded_without_finishing_its_run_failed():
    attempt = manifest.Attempt("K8S", SUBMISSION, "2026-05-01T10:00:00+00:00", "kubernetes", name(2), "", 2, 0, 1,
                               "x", job_id=name(2), namespace=NAMESPACE)
    jobs = {name(2): kubernetes.job_state(fixture("list.json")["items"][2])}
    assert kubernetes.state_of(_Entry(), attempt, jobs, None) == "failed"
    assert kubernetes.state_of(_Entry(), attempt, jobs, "completed") == "completed"


# --- the task environment in a pod ---------------------------------------------------------------

@pytest.mark.parametrize("environ, ranks", [
    ({"PET_NPROC_PER_NODE": "2", "WORLD_SIZE": "2", "RANK": "0"}, 2),        # the pod's process
    ({"PET_NPROC_PER_NODE": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, 0),  # a rank torchrun started
    ({"PET_NPROC_PER_NODE": "1", "WORLD_SIZE": "1", "RANK": "0"}, 0),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, 0),                # Slurm's, exported by the task
])
def test_a_pytorchjob_pod_starts_its_ranks_itself_only_before_torchrun_has(environ, ranks):
    from workloads.run import pytorchjob_ranks

    assert pytorchjob_ranks(spec_on(partition="local", gpus=2), environ) == ranks


def test_workloads_run_in_a_two_process_pod_hands_the_spec_to_torchrun(monkeypatch, tmp_path):
    import workloads.run as run_module

    spec = spec_on(partition="local", gpus=2)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"spec": spec.to_dict()}))
    called = []
    monkeypatch.setattr(run_module, "run_torchrun", lambda p, root=None: called.append(p) or {"state": "completed"})
    monkeypatch.setattr(run_module, "run", lambda p, root=None: pytest.fail("trained without its other rank"))
    monkeypatch.setenv("PET_NPROC_PER_NODE", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert run_module.main([str(path)]) == 0 and called == [path]


def test_status_of_slurm_runs_does_not_import_the_kubernetes_client():
    code = ("import sys; from orchestrator.cli import main; main(['status']); "
            "print(sorted(m for m in ('kubernetes', 'kubeflow', 'kubernetes_validate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")


@pytest.mark.slow
def test_a_two_process_pytorchjob_pod_trains_with_two_ranks(tmp_path, data_cache):
    """The pod's process as the training operator starts it (its variables, WORLD_SIZE counting a rank
    that does not exist yet, a MASTER_ADDR only the cluster resolves): torchrun starts both ranks."""
    from workloads.data import TokenData

    spec = make_spec("transformer", hidden_dim=32, num_layers=2, num_heads=2, seq_length=32, label="pod",
                     folder_name="k8s_pod", partition="local", gpus=2, target_effective_batch_size=8,
                     train_tokens=8 * 32 * 10, log_interval_steps=5, eval_interval_steps=10, eval_batches=1,
                     cpus_per_gpu=1)
    TokenData.for_spec(spec, data_cache)  # once, here, not in two racing ranks
    root = tmp_path / "results"
    paths = RunPaths.of(spec.folder_name, spec.label, root)
    paths.run_dir.mkdir(parents=True)
    (paths.run_dir / "spec.json").write_text(json.dumps({"spec": spec.to_dict()}))
    env = {**os.environ, "ORCHESTRATOR_RESULTS_DIR": str(root), "ORCHESTRATOR_JOB_ID": name(0),
           "MASTER_ADDR": f"{name(0)}-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2", "RANK": "0",
           "PET_NPROC_PER_NODE": "2", "PET_NNODES": "1", "PET_NODE_RANK": "0", "PYTHONUNBUFFERED": "0"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, "-m", "workloads.run", str(paths.run_dir / "spec.json")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torchrun started 2 ranks" in done.stdout
    assert read_status(paths)["state"] == "completed"
    rows = paths.metrics_csv.read_text().splitlines()
    header = rows[0].split(",")
    assert rows[-1].split(",")[header.index("ranks")] == "2"


def test_the_seeds_finetune_run_dry_runs_to_a_valid_manifest(capsys, no_kube_config):
    """The lab's demo as it deploys: pythia-410m, last two layers, fp16, one L4 on OpenShift AI."""
    assert main(["submit", "PYTHIA_410M_LAST2_FP16_OPENSHIFT", "--backend", "kubernetes", "--dry-run"]) == 0
    (job,) = written_manifests("PYTHIA_410M_LAST2_FP16_OPENSHIFT")
    assert kubernetes.check(job, "1.31") == ""
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["command"][-1].endswith("finetune_openshift/pythia410m_last2_fp16/spec.json")
    claims = {v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["pytorchReplicaSpecs"]["Master"]
              ["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"training-data-pvc", "trained-models-pvc", "workspace-pvc"}
