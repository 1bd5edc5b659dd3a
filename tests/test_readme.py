"""The README's Python example runs as written (at reduced size) and its commands exist."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no example marked {name!r}"
    return match.group(1)


def test_readme_opens_with_the_install_and_run_and_test_commands():
    first_block = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    assert "pip install -e . && distill run recipes/quickstart.toml" in first_block
    assert "pip install -e '.[dev]' && pytest" in first_block


def test_readme_distillation_example_runs_and_prints_both_accuracies(capsys):
    code = readme_example("digits")
    assert "EPOCHS = 20" in code
    exec(compile(code.replace("EPOCHS = 20", "EPOCHS = 2"), "README.md", "exec"), {})
    out = capsys.readouterr().out
    accuracies = [float(v) for v in re.findall(r"(?:teacher|student) (\d\.\d+)", out)]
    assert len(accuracies) == 2
    assert all(a > 0.5 for a in accuracies), out  # 2 epochs already learn digits
