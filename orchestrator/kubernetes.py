"""The kubernetes backend: each experiment is one Kubeflow PyTorchJob (``kubeflow.org/v1``).

It targets the training operator v1, the PyTorchJob that Red Hat OpenShift AI ships as its
"training operator". Kubeflow has put v1 in maintenance, and Kubeflow Trainer v2 (``TrainJob``)
replaces it; a v2 backend would be a sibling of this module. It has not been run against a live
cluster: the API calls are tested against recorded responses (``tests/test_kubernetes.py``).

- One job per experiment (``submit`` plans arrays of one): a PyTorchJob has no array index, and
  its name (``orch-<submission id>-<n>``) is the job id that status, cancel and the run's claim
  (``ORCHESTRATOR_JOB_ID``) use. Labels carry the submission, so ``status`` lists every job of
  the submissions it asks about in one call per namespace.
- The pod (one ``Master`` replica: runs are single-node, as on Slurm) runs ``python -m
  workloads.run <spec.json>`` on the PVC that holds the results. A run of G > 1 GPUs whose
  workload wants a process per GPU gets ``nprocPerNode: G``: the operator then sets WORLD_SIZE=G,
  RANK=0 (the pod's rank) and PET_NPROC_PER_NODE=G for ranks nobody has started yet, and
  ``workloads.run`` starts them with torchrun (as Slurm's ``launcher: torchrun`` does), supervising
  them so the pod's SIGTERM reaches every rank. Chosen over a torchrun container command: every
  run has the same command, and the signal handling is the one the Slurm path already tests.
- Restarts: ``restartPolicy: OnFailure`` restarts the container after a non-zero exit (75 after a
  checkpoint on SIGTERM, or a crash) at most ``--max-requeues`` times (``runPolicy.backoffLimit``),
  and the trainer resumes from its checkpoint. The deadline (``activeDeadlineSeconds``) is
  ``time_min x (1 + max_requeues)``, the wall time a Slurm job gets over its requeues; at it the
  operator deletes the pods and their trainers get ``terminationGracePeriodSeconds`` (90 s, as
  Slurm's USR2@90) to checkpoint; ``retry`` resumes them.
- Validation (``check``): every manifest goes through the Kubeflow SDK's models and back
  (unknown or misspelt fields, missing required ones), then through our own type checks (the
  models coerce or ignore types), and each replica's pod template is validated as a v1
  ``PodTemplate`` by ``kubernetes_validate`` against the cluster's version (strict).
- The client: ``kubernetes.client.CustomObjectsApi`` with the standard configuration (in a pod,
  its service account; elsewhere $KUBECONFIG or ~/.kube/config). ``kubernetes`` and the Kubeflow
  SDK are imported only when this backend is used: ``status`` of Slurm runs never pays for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import re
from pathlib import Path

from orchestrator.backends import SIGNAL_DELAY_S
from orchestrator.errors import UsageError
from orchestrator.paths import atomic_write_text, results_root
from orchestrator.profiles import KubernetesSettings, get_profile
from orchestrator.scheduler import SchedulerError

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"   # the operator sets its variables and master port on the container of this name
MASTER_PORT = 23456     # the operator's default, on the port it looks for by name
GRACE_S = SIGNAL_DELAY_S  # SIGTERM to SIGKILL: the trainer's time to checkpoint (Slurm's USR2@90)
TIMEOUT_S = 30          # per API call
SUBMISSION_LABEL = "scaling-orchestrator/submission"
LABELS = {"app.kubernetes.io/managed-by": "scaling-orchestrator"}
# the condition that holds last -> our state; a job the operator has not seen yet has none: pending
CONDITION_STATES = {"Created": "pending", "Suspended": "pending", "Running": "running",
                    "Restarting": "requeued", "Succeeded": "completed", "Failed": "failed"}
DEADLINE_MESSAGE = "active longer than specified deadline"  # v1's Failed message at activeDeadlineSeconds
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035: the operator names services after the job
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")


def job_name(submission_id: str, number: int) -> str:
    """``orch-20260501t100000-a1b2c3-0``: unique, and short enough that ``<name>-master-0``
    (the pod and service the operator makes) stays within 63 characters."""
    return f"orch-{submission_id.lower()}-{number}"


def pod_path(path: str, settings: KubernetesSettings) -> str:
    """Where the pods see a path under this machine's results root (the same PVC)."""
    root = results_root().resolve()
    try:
        relative = Path(path).resolve().relative_to(root)
    except ValueError:
        raise UsageError(f"{path} is not under the results root {root}, the only directory the pods see "
                         f"(as {settings.results_dir}); set the profile's log_dir to null") from None
    return str(Path(settings.results_dir) / relative)


def manifest(spec, record, submission_id: str, registry: str) -> dict:
    """The PyTorchJob of one experiment (``record``: its one-task array), as the API takes it."""
    from kubeflow.training import ApiClient
    from kubeflow.training import models as kf
    from kubernetes import client as k

    settings = get_profile(record.resources["partition"]).kubernetes
    task, resources = record.tasks[0], record.resources
    gpus = resources["gpus"]
    nproc = gpus if type(spec).process_per_gpu else 1  # a command starts its own ranks
    spec_path = pod_path(task.spec_path, settings)
    limits = {"cpu": str(resources["cpus_per_gpu"] * gpus), "memory": f"{resources['mem_gb']}Gi"}
    if settings.gpu_resource:
        limits[settings.gpu_resource] = str(gpus)
    env = {"OMP_NUM_THREADS": str(resources["cpus_per_gpu"]), "PYTHONUNBUFFERED": "1", **settings.env,
           "ORCHESTRATOR_RESULTS_DIR": settings.results_dir, "ORCHESTRATOR_JOB_ID": record.name}
    if record.code_dir:  # the submission's code snapshot, as on Slurm (orchestrator.backends.code_setup)
        env.update(PYTHONPATH=pod_path(record.code_dir, settings), PYTHONSAFEPATH="1")
    claims = dict.fromkeys(v["claim"] for v in settings.volumes)
    labels = {**LABELS, SUBMISSION_LABEL: submission_id, "scaling-orchestrator/identity": task.identity}
    container = k.V1Container(
        name=CONTAINER, image=settings.image, image_pull_policy=settings.image_pull_policy,
        command=["python", "-m", "workloads.run", spec_path], working_dir=settings.results_dir,
        env=[k.V1EnvVar(name=name, value=value) for name, value in env.items()],
        resources=k.V1ResourceRequirements(requests=limits, limits=dict(limits)),  # equal: Guaranteed QoS
        ports=[k.V1ContainerPort(name="pytorchjob-port", container_port=MASTER_PORT)],
        volume_mounts=[k.V1VolumeMount(name=v["claim"], mount_path=v["mount"], read_only=v.get("read_only") or None,
                                       sub_path=v.get("sub_path")) for v in settings.volumes]
        + [k.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
        security_context=k.V1SecurityContext(  # what OpenShift's restricted-v2 admits
            allow_privilege_escalation=False, capabilities=k.V1Capabilities(drop=["ALL"]),
            seccomp_profile=k.V1SeccompProfile(type="RuntimeDefault")))
    # NCCL and data-loader workers need more shared memory than a container's default 64 MB
    volumes = [k.V1Volume(name=claim, persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(claim_name=claim))
               for claim in claims] + [k.V1Volume(name="dshm", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory"))]
    template = k.V1PodTemplateSpec(
        metadata=k.V1ObjectMeta(labels=labels, annotations=settings.annotations or None),
        spec=k.V1PodSpec(containers=[container], volumes=volumes, termination_grace_period_seconds=GRACE_S,
                         service_account_name=settings.service_account, tolerations=list(settings.tolerations) or None))
    job = kf.KubeflowOrgV1PyTorchJob(
        api_version=f"{GROUP}/{VERSION}", kind=KIND,
        metadata=k.V1ObjectMeta(name=record.name, namespace=settings.namespace, labels=labels, annotations={
            "scaling-orchestrator/registry": registry, "scaling-orchestrator/run": spec.run_name,
            "scaling-orchestrator/spec": spec_path}),
        spec=kf.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(nproc),
            run_policy=kf.KubeflowOrgV1RunPolicy(
                backoff_limit=record.max_requeues, clean_pod_policy="None",  # keep finished pods' logs
                active_deadline_seconds=resources["time_min"] * 60 * (1 + record.max_requeues)),
            pytorch_replica_specs={"Master": kf.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure",
                                                                          template=template)}))
    return ApiClient().sanitize_for_serialization(job)


class _Body:
    """What ``ApiClient.deserialize`` reads: a response's JSON text."""

    def __init__(self, data: dict):
        self.data = json.dumps(data)


def check(job: dict, kubernetes_version: str) -> str:
    """The first problem of a PyTorchJob manifest, or "" (see the module's docstring)."""
    import kubernetes_validate
    from kubeflow.training import ApiClient

    client = ApiClient()
    try:
        model = client.deserialize(_Body(job), "KubeflowOrgV1PyTorchJob")
    except (ValueError, TypeError, AttributeError) as exc:  # a required field missing, a list for a mapping
        return f"not a {KIND}: {exc}"
    # the pod templates first: the Kubernetes schema names a pod's problem best
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": job["metadata"]["name"]},
                    "template": replica.get("template") or {}}
        try:
            kubernetes_validate.validate(template, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
            return f"spec.pytorchReplicaSpecs.{role}{where}: {exc.message} (Kubernetes {exc.version})"
        except kubernetes_validate.utils.VersionNotSupportedError:
            known = kubernetes_validate.utils.all_versions()
            return (f"kubernetes_version {kubernetes_version!r} is not one kubernetes-validate knows "
                    f"({known[0]} to {known[-1]})")
    problem = _types(job)
    if problem:
        return problem
    # what the models did not keep as it was sent: an unknown field, or a value of another type
    problem = _difference(job, client.sanitize_for_serialization(model), "")
    if problem:
        return f"{problem}: not a field of a {GROUP}/{VERSION} {KIND}, or not of its type"
    return ""


def _difference(sent, back, path: str) -> str:
    """The path where ``back`` (what the models kept) differs from ``sent``; "" when equal."""
    if isinstance(sent, dict) and isinstance(back, dict):
        for key in sent:
            if key not in back:
                return f"{path}.{key}".lstrip(".")
            found = _difference(sent[key], back[key], f"{path}.{key}")
            if found:
                return found
        return ""
    if isinstance(sent, list) and isinstance(back, list) and len(sent) == len(back):
        return next(filter(None, (_difference(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(sent, back)))), "")
    return "" if type(sent) is type(back) and sent == back else path.lstrip(".")


def _types(job: dict) -> str:
    """What the models let through: ints that are strings or bools, quantities that are numbers,
    names the operator cannot turn into pod and service names."""
    def integer(value, at, least=0):
        if type(value) is not int or value < least:
            return f"{at} must be an integer >= {least}, got {value!r}"
        return ""

    name = job["metadata"].get("name", "")
    if not NAME.match(name) or len(name) > 63 - len("-master-0"):
        return f"metadata.name {name!r} must be a DNS-1035 label of at most 54 characters"
    for key, value in (job["metadata"].get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            return f"metadata.labels.{key} must be a label value (63 characters of A-Z a-z 0-9 -_.), got {value!r}"
    spec = job["spec"]
    if not isinstance(spec.get("nprocPerNode", ""), str):
        return f"spec.nprocPerNode must be a string, got {spec['nprocPerNode']!r}"
    for key, value in (spec.get("runPolicy") or {}).items():
        if key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            problem = integer(value, f"spec.runPolicy.{key}", 1 if key == "activeDeadlineSeconds" else 0)
            if problem:
                return problem
    for role, replica in spec["pytorchReplicaSpecs"].items():
        at = f"spec.pytorchReplicaSpecs.{role}"
        problem = integer(replica.get("replicas", 1), f"{at}.replicas", 1)
        if problem:
            return problem
        containers = (replica.get("template") or {}).get("spec", {}).get("containers", [])
        if CONTAINER not in [c.get("name") for c in containers]:
            return f"{at}: no container named {CONTAINER!r} (the operator configures only that one)"
        for number, container in enumerate(containers):
            for kind, quantities in (container.get("resources") or {}).items():
                for resource, quantity in (quantities or {}).items():
                    if not isinstance(quantity, str) or not QUANTITY.match(quantity):
                        return (f"{at}.template.spec.containers[{number}].resources.{kind}.{resource} must be a "
                                f"quantity string (\"6\", \"24Gi\", \"500m\"), got {quantity!r}")
    return ""


def manifests(plan, submission) -> list[dict]:
    """Each experiment's PyTorchJob, checked: a manifest that does not validate (a typo in the
    profile's tolerations, say) is one error naming the field, before anything is written."""
    jobs = []
    for array, record in zip(plan.arrays, submission.arrays):
        job = manifest(array.specs[0], record, submission.id, plan.registry)
        settings = get_profile(record.resources["partition"]).kubernetes
        problem = check(job, settings.kubernetes_version)
        if problem:
            raise UsageError(f"the {KIND} of {array.specs[0].run_name} (profile {record.resources['partition']!r}) "
                             f"does not validate: {problem}")
        jobs.append(job)
    return jobs


def manifest_path(submission, name: str) -> Path:
    """``<submission folder>/manifests/<job name>.yaml``: what is (or would be) sent, for review
    and for ``kubectl apply -f`` by hand."""
    return submission.folder / "manifests" / f"{name}.yaml"


def write(submission, jobs: list[dict]) -> list[Path]:
    import yaml

    paths = []
    for job in jobs:
        path = manifest_path(submission, job["metadata"]["name"])
        atomic_write_text(path, yaml.safe_dump(job, sort_keys=False), durable=False)
        paths.append(path)
    return paths


@functools.lru_cache(maxsize=1)
def configuration():
    """The standard configuration: in a pod, its service account; elsewhere $KUBECONFIG or
    ~/.kube/config (what ``oc login`` writes). Tests put their own in place of this function."""
    from kubernetes import client, config

    loaded = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=loaded)
        return loaded
    except config.ConfigException:
        pass
    try:
        config.load_kube_config(client_configuration=loaded)
    except (config.ConfigException, OSError) as exc:
        raise UsageError(f"no Kubernetes configuration: not in a pod, and no kube config ({exc}); log in with "
                         "`oc login` or `kubectl`, or set KUBECONFIG") from None
    return loaded


@contextlib.contextmanager
def _api(doing: str, missing_ok: bool = False):
    """A CustomObjectsApi; an API error or no answer is one line (SchedulerError: exit status 1).
    ``missing_ok``: a 404 (the object is gone already) is no error."""
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    configured = configuration()
    try:
        with client.ApiClient(configured) as api_client:
            yield client.CustomObjectsApi(api_client)
    except ApiException as exc:
        if not (missing_ok and exc.status == 404):
            raise SchedulerError(f"Kubernetes API: {doing}: {_message(exc)}") from None
    except urllib3.exceptions.HTTPError as exc:  # refused, timed out, TLS: no answer at all
        reason = getattr(exc, "reason", None) or exc
        raise SchedulerError(f"Kubernetes API at {configured.host}: {doing}: no answer ({reason})") from None


def _message(exc) -> str:
    """The API server's own words: a Status body's message and reason, with the HTTP status."""
    try:
        body = json.loads(exc.body)
        return f"{body['message']} ({body.get('reason') or exc.reason}, HTTP {exc.status})"
    except (TypeError, ValueError, KeyError):
        return f"{exc.reason} (HTTP {exc.status})"


def create(job: dict) -> str:
    """Create one PyTorchJob; its name, the job id the submission records."""
    meta = job["metadata"]
    with _api(f"create {KIND} {meta['name']} in namespace {meta['namespace']}") as api:
        created = api.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, job,
                                                      _request_timeout=TIMEOUT_S)
    return created["metadata"]["name"]


def list_jobs(namespace: str, submissions) -> list[dict]:
    """The PyTorchJobs of these submissions in one call (a set-based label selector)."""
    selector = f"{SUBMISSION_LABEL} in ({','.join(sorted(set(submissions)))})"
    with _api(f"list {KIND}s in namespace {namespace}") as api:
        found = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=selector,
                                                  _request_timeout=TIMEOUT_S)
    return found.get("items") or []


def delete(jobs) -> None:
    """Delete PyTorchJobs, given as (namespace, name); the operator's pods go with them (their
    trainers get the grace period to checkpoint). One already gone is no error."""
    for namespace, name in jobs:
        with _api(f"delete {KIND} {name} in namespace {namespace}", missing_ok=True) as api:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                propagation_policy="Background", _request_timeout=TIMEOUT_S)


@dataclasses.dataclass
class Job:
    """What the cluster says about one PyTorchJob, in the toolkit's words."""
    name: str
    state: str
    message: str = ""    # the holding condition's message
    elapsed: str = ""
    deadline: bool = False  # failed at activeDeadlineSeconds


def job_state(item: dict, now: datetime.datetime | None = None) -> Job:
    """A finished condition (Succeeded, Failed) wins; otherwise the last one that holds: the
    operator appends each new condition and turns the ones it replaces to False."""
    status = item.get("status") or {}
    holding = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    final = [c for c in holding if c.get("type") in ("Succeeded", "Failed")]
    current = (final or holding or [{}])[-1]
    state = CONDITION_STATES.get(current.get("type"), "pending")
    message = current.get("message") or ""
    elapsed = ""
    if state != "pending" and status.get("startTime"):
        start = _time(status["startTime"])
        end = _time(status["completionTime"]) if status.get("completionTime") else (
            now or datetime.datetime.now(datetime.timezone.utc))
        seconds = max(0, int((end - start).total_seconds()))
        elapsed = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return Job(item["metadata"]["name"], state, message, elapsed,
               state == "failed" and DEADLINE_MESSAGE in message)


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def query(attempts) -> dict[str, Job]:
    """Every PyTorchJob of these attempts' submissions, by name: one list call per namespace."""
    wanted: dict[str, set[str]] = {}
    for attempt in attempts:
        wanted.setdefault(attempt.namespace, set()).add(attempt.submission)
    jobs = {}
    for namespace, submissions in wanted.items():
        for item in list_jobs(namespace, submissions):
            job = job_state(item)
            jobs[job.name] = job
    return jobs


def state_of(entry, attempt, jobs: dict[str, Job], on_disk: str | None) -> str:
    """An attempt's state from its PyTorchJob and its run directory (``orchestrator.status`` has
    the precedence rules around this: a completed run on disk, a live claim). A recorded job was
    created before it was recorded, and a list is never behind a create (unlike sacct): one not
    listed has been deleted, with no grace period."""
    job = jobs.get(attempt.job_id or attempt.name)
    if attempt.job_id is None:  # the submit died between create and record: the job may exist
        if job is None:
            entry.reason = f"submission {attempt.submission} was interrupted; the next submit repairs it"
            return "not submitted"
        entry.job_id = job.name
        entry.reason = f"submission {attempt.submission} was interrupted; the next submit records it"
    if job is None:  # deleted (cancel, by hand): how it ended is the run directory's to say
        if on_disk in (None, "running"):
            entry.reason = f"{KIND} {attempt.job_id} is gone (deleted) and the run never finished"
        return "missing"
    entry.elapsed = job.elapsed
    if job.state == "failed" and job.deadline:
        entry.reason = (f"reached its deadline (activeDeadlineSeconds, time_min x (1 + max_requeues)); `retry` "
                        "resumes from its checkpoint")
        return "timeout"
    if job.state == "failed" and on_disk == "interrupted":
        return "interrupted"
    if job.state == "failed" and on_disk in (None, "running"):
        entry.reason = job.message
    if job.state == "completed" and on_disk != "completed":
        if on_disk in (None, "running"):
            entry.reason = entry.reason or f"{KIND} succeeded, but the run did not finish"
        return "failed"
    return job.state
