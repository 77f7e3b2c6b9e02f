"""`show` warns about what its estimates say will not finish."""

import subprocess
import sys


def test_show_warns_when_an_experiment_cannot_finish_within_its_time_limit_and_requeues(tmp_path):
    module = tmp_path / "long_runs.py"
    module.write_text("from experiments import gen_experim\n"
                      "LONGISH = gen_experim(1024, label='big', tokens_per_param=80, time_min=240)"
                      " + gen_experim(64, label='small', time_min=240)\n")
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(module), "show", "LONGISH"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: big needs ~")
    assert "more than its time_min 240 x (1 + 3 requeues) = 16.0h" in warnings[0]
