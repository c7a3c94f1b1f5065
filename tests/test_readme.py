"""The README's Python examples run as written (documentation that lies is a bug)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", re.findall(r"```python\n(.*?)```", README.read_text(), re.S),
                         ids=lambda b: b.splitlines()[0][:30])
def test_readme_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files into the current folder
    exec(compile(block, str(README), "exec"), {})
