"""The README's commands are the ones CI and users really run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    return re.findall(r"```bash\n(python3 -m venv .*?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    main, tests = readme_commands()
    assert "pytest" in tests and "torch==2.13.0" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_both_commands_install_torch_before_the_package():
    for command in readme_commands():
        assert command.index("torch==2.13.0") < command.index("pip install -e")
