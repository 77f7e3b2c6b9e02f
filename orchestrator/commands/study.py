"""Run a whole study on one command: submit, watch it live, then fit the scaling law.

Reruns reuse finished runs (nothing is retrained) and pick interrupted ones up from their
checkpoints. Ctrl-C stops a study on this machine cleanly (runs checkpoint and are marked
cancelled; the next run of this command continues them); on Slurm it only stops watching.
``kill -INT`` and ``kill -TERM`` do the same, also for a study started in the background.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time

from orchestrator import fmt
from orchestrator.profiles import DEFAULT_MAX_REQUEUES
from orchestrator.commands import analyze, submit

REFRESH_S = {"slurm": 30.0, "kubernetes": 30.0, "local": 2.0, "debug": 0.0}
PROGRESS_LINE_S = 30.0  # under a pipe or in a log: at least this often, and whenever a run finishes


def add_arguments(parser) -> None:
    parser._negative_number_matcher = analyze.NEGATIVE_NUMBER  # --budget -1e15 is a value, not a flag
    parser.add_argument("registry", nargs="?", help="registry name, e.g. QUICKSTART")
    parser.add_argument("--backend", default="auto", choices=("auto", "slurm", "local", "kubernetes"),
                        help="auto: kubernetes for Kubernetes partitions; slurm when a partition needs it and a "
                             "Slurm controller answers; else local")
    parser.add_argument("--parallel", type=int, default=None, metavar="K", help="run at most K tasks at once")
    parser.add_argument("--budget", nargs="+", action="extend", default=[], metavar="FLOPS",
                        help="FLOP budgets for the compute-optimal prediction (default: the study's largest, x10, x100)")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples (default 200)")


LIVE_COLUMNS = ("run", "state", "step", "tokens", "tokens/s", "loss", "val loss")
# What a narrow terminal gives up first: the header counts the tokens and the bar shows the
# progress; the run's label and state are never given up, nor cut.
NARROW_DROP_ORDER = ("tokens", "tokens/s", "val loss", "step", "loss")
COMPLETED_SHOWN = 4  # the latest finished runs under the running ones


class ProgressView:
    """The live view: a header, a bar, and a table of the running runs and the latest finished.

    Laid out for the width it is drawn at (rich asks, on every refresh, so a resized terminal
    is followed): every label in full, at its own width, and the numeric columns dropped in
    ``NARROW_DROP_ORDER`` until the rest fits; a label is the only thing that tells rows
    apart, and ``qs_48d_...`` three times tells nothing.
    """

    def __init__(self, registry: str, statuses, started: float):
        from orchestrator.status import summarize

        self.planned = sum(map(_planned_tokens, statuses))
        self.done = _tokens_done(statuses)
        counts = summarize(statuses)
        self.header = (f"[bold]{registry}[/]: {counts.get('completed', 0)}/{len(statuses)} runs done, "
                       f"{counts.get('running', 0)} running, {counts.get('pending', 0)} pending"
                       + "".join(f", [red]{n} {state}[/]" for state, n in counts.items()
                                 if state not in ("completed", "running", "pending"))
                       + f"   {fmt.count(self.done)}/{fmt.count(self.planned)} tokens, "
                         f"{fmt.duration(time.monotonic() - started)}")
        shown = ([s for s in statuses if s.state == "running"]
                 + [s for s in statuses if s.state == "completed"][-COMPLETED_SHOWN:])
        self.rows = [dict(zip(LIVE_COLUMNS, (
            s.spec.label, s.state, f"{s.optimizer_step or 0}/{s.spec.optimizer_steps}",
            fmt.count(s.tokens_processed or 0), fmt.count(s.tokens_per_s) if s.tokens_per_s else "",
            f"{s.loss:.3f}" if s.loss is not None else "", f"{s.val_loss:.3f}" if s.val_loss else "")))
            for s in shown]
        self.label_width = max((len(s.spec.label) for s in statuses), default=3)

    def columns(self, width: int) -> list[str]:
        """The columns that fit in ``width``, two spaces apart, in their order."""
        widths = {c: max([len(c)] + [len(row[c]) for row in self.rows]) for c in LIVE_COLUMNS}
        widths["run"] = max(widths["run"], self.label_width)
        kept = list(LIVE_COLUMNS)
        for column in NARROW_DROP_ORDER:
            if sum(widths[c] for c in kept) + 2 * (len(kept) - 1) <= width:
                break
            kept.remove(column)
        return kept

    def __rich_console__(self, console, options):
        from rich.progress_bar import ProgressBar
        from rich.segment import Segment
        from rich.table import Table
        from rich.text import Text

        width = options.max_width
        yield Text.from_markup(self.header)
        yield ProgressBar(total=max(self.planned, 1), completed=self.done, width=min(60, width))
        yield Segment.line()  # the bar does not end its line
        table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
        kept = self.columns(width)
        for column in kept:
            table.add_column(column, justify="left" if column in ("run", "state") else "right", no_wrap=True,
                             min_width=self.label_width if column == "run" else None,
                             overflow="fold" if column == "run" else "ellipsis")
        for row in self.rows:
            table.add_row(*(row[c] for c in kept))
        yield table


def progress_view(registry: str, statuses, started: float) -> ProgressView:
    return ProgressView(registry, statuses, started)


def progress_line(registry: str, statuses, started: float, tokens_at_start: int) -> str:
    """One plain line for a pipe or a log: runs, tokens, throughput since the start, ETA."""
    from orchestrator.status import summarize

    planned = sum(map(_planned_tokens, statuses))
    done = _tokens_done(statuses)
    counts = summarize(statuses)
    elapsed = time.monotonic() - started
    rate = (done - tokens_at_start) / elapsed if elapsed > 0 else 0.0
    eta = fmt.duration((planned - done) / rate) if rate > 0 and done < planned else "-"
    others = "".join(f", {n} {state}" for state, n in counts.items() if state not in ("completed", "running", "pending"))
    return (f"{registry}: {counts.get('completed', 0)}/{len(statuses)} runs done, {counts.get('running', 0)} running, "
            f"{counts.get('pending', 0)} pending{others} | {fmt.count(done)}/{fmt.count(planned)} tokens, "
            f"{fmt.count(rate)} tokens/s, ETA {eta} | {fmt.duration(elapsed)}")


def _planned_tokens(status) -> int:
    """The run's token budget; a command that did not give one counts what it has done."""
    return status.spec.tokens if status.spec.tokens is not None else (status.tokens_processed or 0)


def _tokens_done(statuses) -> int:
    return sum(_planned_tokens(s) if s.state == "completed" else (s.tokens_processed or 0) for s in statuses)


def final_table(statuses):
    rows = [(s.spec.label, s.state, f"{s.optimizer_step or 0}/{s.spec.optimizer_steps}",
             fmt.count(s.tokens_processed or 0), "" if s.loss is None else f"{s.loss:.3f}",
             "" if s.val_loss is None else f"{s.val_loss:.3f}") for s in statuses]
    return fmt.table_text(("run", "state", "step", "tokens", "loss", "val loss"), rows,
                          right={"step", "tokens", "loss", "val loss"})


def watch(registry: str, backend: str, extra_modules) -> dict:
    """A live view in a terminal; under a pipe or in a log, a progress line every
    ``PROGRESS_LINE_S`` (and when a run finishes) and the final table."""
    from orchestrator.commands.status import collect
    from orchestrator.status import ACTIVE_STATES

    started = time.monotonic()
    statuses = collect(registry, extra_modules)[registry]
    console = fmt.console()
    if console.is_terminal:
        from rich.live import Live

        with Live(progress_view(registry, statuses, started), console=console, refresh_per_second=4) as live:
            while any(s.state in ACTIVE_STATES for s in statuses):
                time.sleep(REFRESH_S[backend])
                statuses = collect(registry, extra_modules)[registry]
                live.update(progress_view(registry, statuses, started))
        return statuses
    tokens_at_start = _tokens_done(statuses)
    print(progress_line(registry, statuses, started, tokens_at_start), flush=True)
    printed, finished = time.monotonic(), sum(s.state == "completed" for s in statuses)
    while any(s.state in ACTIVE_STATES for s in statuses):
        time.sleep(REFRESH_S[backend])
        statuses = collect(registry, extra_modules)[registry]
        now_finished = sum(s.state == "completed" for s in statuses)
        if now_finished != finished or time.monotonic() - printed >= PROGRESS_LINE_S:
            print(progress_line(registry, statuses, started, tokens_at_start), flush=True)
            printed, finished = time.monotonic(), now_finished
    console.print(final_table(statuses), soft_wrap=True)
    return statuses


@contextlib.contextmanager
def stop_signals():
    """SIGINT and SIGTERM raise KeyboardInterrupt while the study runs, whatever it inherited.

    A study started with ``&``, ``nohup`` or from a batch script inherits SIGINT ignored, and
    Python then never raises KeyboardInterrupt, so ``kill -INT`` would do nothing; SIGTERM
    would end it and leave the local runs training with no one watching. ``detached_children``
    ignores SIGINT only while it starts the runner, then puts these handlers back for the watch.
    """
    saved = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def run(args) -> int:
    with stop_signals():
        return _run(args)


def _run(args) -> int:
    from orchestrator.commands import cancel
    from orchestrator.registry import load_registry
    from orchestrator.submission import INTERRUPTED_STATES, Policy

    registry, budgets = analyze.take_target(args.registry, args.budget, "study needs a REGISTRY")
    budgets = analyze.parse_budgets(budgets)  # bad input fails before anything starts
    specs = load_registry(registry, args.registry_module)
    submitted = argparse.Namespace(n=None, parallel=args.parallel, backend=args.backend,
                                   max_requeues=DEFAULT_MAX_REQUEUES,
                                   dry_run=False, json=False, registry_module=args.registry_module)
    plan = submit.submit_specs(submitted, registry, specs, Policy(retry=INTERRUPTED_STATES))
    try:
        statuses = watch(registry, plan.backend, args.registry_module)
    except KeyboardInterrupt:
        console = fmt.console()
        if plan.backend == "local":
            _, pids, count, _ = cancel.targets({registry: specs})
            cancel.stop_local(pids)
            console.print(f"\nstopped {count} runs; they saved checkpoints. Run the same command again to continue.")
        else:
            console.print("\nstopped watching; the jobs go on (`python -m orchestrator status "
                          f"{registry}`). Run the same command again to analyse when they are done.")
        return 130
    failed = [s for s in statuses if s.state != "completed"]
    for s in failed:
        fmt.console().print(f"[red]{s.spec.run_name} {s.state}[/] {s.reason}")
    return analyze.run(argparse.Namespace(
        target=registry, budget=[str(b) for b in budgets], bootstrap=args.bootstrap, seed=0, params="total",
        include_incomplete=False, include_diverged=False, out=None, json=False,
        registry_module=args.registry_module))
