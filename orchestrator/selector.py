"""The selector grammar shared by status, cancel and retry.

    REGISTRY      every experiment of a registry            TRANSFORMER_SCALING
    JOBID         the experiments of a job array or task    1234, 1234_7
                  (on Kubernetes: a PyTorchJob's name)      orch-20260501t100000-a1b2c3-0
    LABEL-GLOB    experiments whose label (or folder/label) matches, in submitted registries
    (nothing)     every registry that has been submitted

A selector that names nothing is one error with the closest name, compared case-folded as
``errors.unknown`` compares registry names: ``quickstart`` suggests ``QUICKSTART``, a label
glob suggests a label it would match ignoring case, or the label nearest to it.
"""

from __future__ import annotations

import difflib
import fnmatch
import re

from orchestrator import manifest
from orchestrator.errors import UsageError
from orchestrator.registry import all_registries, check_duplicates
from orchestrator.spec import ExperimentSpec

JOB_ID = re.compile(r"^\d+(_\d+)?$")
PYTORCHJOB = re.compile(r"^orch-[0-9a-z-]+$")  # orchestrator.kubernetes.job_name


def select(selector: str | None, extra_modules=()) -> dict[str, list[ExperimentSpec]]:
    """registry name -> the selected experiments of that registry, in registry order."""
    registries = all_registries(extra_modules)
    if selector in registries:
        check_duplicates(selector, registries[selector])
        return {selector: registries[selector]}
    submissions = manifest.load_submissions()
    submitted = sorted({s.registry for s in submissions if s.registry in registries})
    if selector is None:
        return {name: registries[name] for name in submitted}
    if JOB_ID.match(selector) or PYTORCHJOB.match(selector):
        wanted: dict[str, set[str]] = {}
        array_id, _, index = selector.partition("_")
        for submission in submissions:
            for array in submission.arrays:
                if array.job_id == array_id:
                    wanted.setdefault(submission.registry, set()).update(
                        t.identity for t in array.tasks if not index or str(t.index) == index)
        chosen = {name: [s for s in registries[name] if s.identity in ids]
                  for name, ids in wanted.items() if name in registries}
    else:
        chosen = {name: [s for s in registries[name]
                         if fnmatch.fnmatchcase(s.label, selector) or fnmatch.fnmatchcase(s.run_name, selector)]
                  for name in submitted}
    chosen = {name: specs for name, specs in chosen.items() if specs}
    if not chosen:
        specs = [spec for name in submitted for spec in registries[name]]
        close = suggestion(selector, registries, [s.label for s in specs] + [s.run_name for s in specs])
        hint = (f" (did you mean {close!r}?)" if close
                else "" if submitted else " (nothing has been submitted yet)")
        raise UsageError(f"{selector!r} is not a registry, a submitted job id, or a label pattern matching a "
                         f"submitted experiment{hint}; registries: {', '.join(sorted(registries))}")
    return chosen


def suggestion(selector: str, registries, labels) -> str | None:
    """The registry or submitted label (or folder/label) the user most likely meant, or None.

    A glob (``*?[``) that matches labels ignoring case suggests the first such label;
    otherwise the closest registry or label, case-folded (difflib alone rates
    ``quickstart`` too far from ``QUICKSTART`` to suggest it).
    """
    if JOB_ID.match(selector):
        return None
    if any(c in selector for c in "*?["):
        folded_pattern = selector.casefold()
        for label in labels:
            if fnmatch.fnmatchcase(label.casefold(), folded_pattern):
                return label
    folded = {}
    for name in [*sorted(registries), *labels]:  # a registry wins a tie with a label spelled the same
        folded.setdefault(name.casefold(), name)
    close = difflib.get_close_matches(selector.casefold(), folded, n=1, cutoff=0.6)
    return folded[close[0]] if close else None
