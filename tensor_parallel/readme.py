"""Copy the generated tables of tensor_parallel/results/ into README.md (between the
``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers), so no result is typed by hand.

    python -m tensor_parallel.readme
"""
from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def update(readme: Path = HERE / "README.md", results: Path = HERE / "results") -> list[str]:
    text = readme.read_text()
    done = []
    for name in re.findall(r"<!-- table:(\w+) -->", text):
        md = results / f"{name}.md"
        if not md.is_file():
            raise FileNotFoundError(f"{md} is missing; run make reproduce-tensor_parallel and "
                                    f"make bench-tensor_parallel first")
        body = md.read_text().split("\n", 1)[1].strip()      # drop the '# title' line
        text = re.sub(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)",
                      lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
        done.append(name)
    readme.write_text(text)
    return done


def main():
    print("updated tables:", ", ".join(update()))


if __name__ == "__main__":
    main()
