"""Write the quickstart's arithmetic prompts: ``train.jsonl`` and a held-out ``test.jsonl``.

Sums of two numbers from 1 to 30: SmolLM2-135M-Instruct gets about a third of them right at
the start (it rambles past the answer), which leaves room to learn within minutes. Train and
test use different seeds and no test question appears in train. Run: ``python recipes/quickstart/make_data.py``.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def problems(seed: int, n: int, exclude: set[str] = frozenset()) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        question = f"What is {a} + {b}?"
        if question in seen:
            continue
        seen.add(question)
        rows.append({"prompt": question, "label": str(a + b)})
    return rows


def main() -> None:
    test = problems(seed=2024, n=100)
    train = problems(seed=7, n=700, exclude={r["prompt"] for r in test})
    for name, rows in (("train", train), ("test", test)):
        with open(HERE / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"wrote {len(rows)} rows to {HERE / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
