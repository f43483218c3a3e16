"""The README's ```python blocks, by section, so that tests can run them and they cannot rot."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no section {section!r}"
    return re.findall(r"```python\n(.*?)```", match.group(1), re.S)
