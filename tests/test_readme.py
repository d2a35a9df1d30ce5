"""README's in-process example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_in_process_example_runs():
    (block,) = python_blocks("Pooling in-process")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["y"].shape == (1, 64, 56, 56) and scope["indices"].dtype.name == "int64"
    assert scope["dx"].shape == scope["x"].shape and scope["dx"].sum() == scope["y"].size
