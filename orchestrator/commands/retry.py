"""Resubmit the failed, timed-out, cancelled, diverged and missing experiments a selector names.

The same as ``submit --retry-failed``, restricted to those experiments: runs resume from
their last checkpoint; diverged ones start again from scratch (old outputs archived).
"""

from __future__ import annotations

from orchestrator.commands.submit import add_submit_options, submit_specs
from orchestrator.selector import select


def add_arguments(parser) -> None:
    parser.add_argument("selector", nargs="?", default=None,
                        help="registry, job id or label glob (default: every submitted registry)")
    add_submit_options(parser)


def run(args) -> int:
    from orchestrator.status import RETRYABLE_STATES, experiment_states_of
    from orchestrator.submission import Policy

    for registry, states in experiment_states_of(select(args.selector, args.registry_module)).items():
        retry = [s.spec for s in states if s.state in RETRYABLE_STATES]
        submit_specs(args, registry, retry, Policy.retry_failed())
    return 0
