"""The live view of `study` in a terminal: every row is told apart by its full label, at 80 columns."""

import io
import time

import pytest
from rich.console import Console

from orchestrator.builders import gen_experim
from orchestrator.commands.study import progress_view
from orchestrator.status import ExperimentStatus


def statuses(labels):
    out = []
    for number, label in enumerate(labels):
        spec = gen_experim(16, label=label, folder_name="quickstart", partition="local", num_layers=2, seq_length=64,
                           target_effective_batch_size=32, train_tokens=4_000_000)[0]
        out.append(ExperimentStatus(spec=spec, state="running" if number % 2 else "completed", optimizer_step=1234,
                                    tokens_processed=2_527_232, loss=2.3456, val_loss=2.4567, tokens_per_s=23456.0))
    return out


def render(view, width=80) -> list[str]:
    out = io.StringIO()
    Console(width=width, file=out, force_terminal=True, color_system=None).print(view)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("labels", [
    ["qs_16d_1M", "qs_16d_2M", "qs_48d_1M", "qs_48d_2M"],
    ["scaling_1024d_80tpp_lr_3p16e-3", "scaling_1024d_80tpp_lr_1e-3", "scaling_512d_80tpp_lr_3p16e-3"],
    ["transformer_scaling_experiments_optimal_lr_512d_80tpp_a",
     "transformer_scaling_experiments_optimal_lr_512d_80tpp_b"],
])
def test_every_label_appears_in_full_at_80_columns(labels):
    lines = render(progress_view("STUDY", statuses(labels), time.monotonic()))
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if line.split() and line.split()[0] in labels]
    assert sorted(line.split()[0] for line in rows) == sorted(labels)
    assert all(line.split()[1] in ("running", "completed") for line in rows)  # the state is never cut either
    assert "…" not in "\n".join(lines)


def test_a_wide_terminal_shows_every_column_and_the_bar_on_its_own_line():
    lines = render(progress_view("STUDY", statuses(["qs_16d_1M", "qs_48d_2M"]), time.monotonic()), width=120)
    header = next(line for line in lines if line.startswith("run"))
    assert header.split() == ["run", "state", "step", "tokens", "tokens/s", "loss", "val", "loss"]
    assert any(set(line.strip()) <= set("━╸╺") for line in lines)  # the bar alone on its line
    assert any("qs_48d_2M" in line and "1234/1954" in line and "2.53M" in line and "2.457" in line for line in lines)


def test_a_narrow_terminal_drops_numbers_before_labels():
    labels = ["transformer_scaling_experiments_optimal_lr_512d_80tpp_a",
              "transformer_scaling_experiments_optimal_lr_512d_80tpp_b"]
    lines = render(progress_view("STUDY", statuses(labels), time.monotonic()))
    header = next(line for line in lines if line.startswith("run"))
    assert "tokens" not in header.split() and "tokens/s" not in header.split()
    assert "state" in header.split()
