"""collect: one tidy table of every run with its config fields and final metrics."""

import subprocess
import sys

import pandas as pd
import pytest

REGISTRY = """
from experiments import gen_experim
TWO = [s for w in (16, 24) for s in gen_experim(w, label=f"c{w}", folder_name="two", partition="local",
       seq_length=32, target_effective_batch_size=8, train_tokens=2048, eval_batches=2)]
THREE = TWO + gen_experim(32, label="c32", folder_name="two", partition="local")
"""


def orchestrate(*args):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_collect_writes_parquet_and_csv_with_config_fields_and_metrics(tmp_path):
    module = tmp_path / "two.py"
    module.write_text(REGISTRY)
    assert orchestrate("--registry-module", str(module), "submit", "TWO", "--backend", "debug").returncode == 0
    for name in ("table.parquet", "table.csv"):
        result = orchestrate("--registry-module", str(module), "collect", "THREE", "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        assert "wrote 2 runs" in result.stdout and "no metrics: two/c32" in result.stderr
        table = pd.read_parquet(tmp_path / name) if name.endswith("parquet") else pd.read_csv(tmp_path / name)
        assert list(table["label"]) == ["c16", "c24"] and set(table["state"]) == {"completed"}
        for column in ("N", "N_non_embedding", "D", "C", "final_val_loss", "final_train_loss", "loss", "steps",
                       "identity", "hidden_dim", "num_layers", "num_heads", "learning_rate", "seq_length",
                       "target_effective_batch_size", "activation", "seed", "partition"):
            assert column in table.columns, column
        assert (table["D"] == table["steps"] * 8 * 32).all()


def test_collect_rejects_an_unknown_format(tmp_path):
    result = orchestrate("collect", "QUICKSTART", "--out", str(tmp_path / "table.xlsx"))
    assert result.returncode == 2 and "--out must end in .parquet or .csv" in result.stderr
