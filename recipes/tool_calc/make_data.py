"""Writes the tool_calc recipe's word problems: train.jsonl (200) and the held-out test.jsonl (40).

Each row is ``{"question", "answer", "expression"}``: arithmetic a 135M model cannot do in its head (products of
two- and three-digit numbers, sums of four-digit ones), so a right answer needs the calculator. ``expression``
is what the environment's scripted oracle passes to the calculator (``--sft-data oracle``); the model never sees
it. Train and test come from different seeds and share no question.

    python recipes/tool_calc/make_data.py
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
TEMPLATES = [
    ("What is {a} * {b}?", "{a}*{b}"),
    ("A warehouse has {a} shelves and each shelf holds {b} boxes. How many boxes are there?", "{a}*{b}"),
    ("A school orders {a} packs of {b} pencils. How many pencils is that?", "{a}*{b}"),
    ("What is {c} + {d}?", "{c}+{d}"),
    ("A farm sold {c} apples on Monday and {d} on Tuesday. How many apples did it sell?", "{c}+{d}"),
    ("What is {c} - {e}?", "{c}-{e}"),
]


def rows(n: int, seed: int, avoid: set[str]) -> list[dict]:
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        question, expression = rng.choice(TEMPLATES)
        values = {"a": rng.randint(12, 99), "b": rng.randint(102, 999), "c": rng.randint(1000, 9999),
                  "d": rng.randint(1000, 9999), "e": rng.randint(100, 999)}
        q, expr = question.format(**values), expression.format(**values)
        if q in avoid:
            continue
        avoid.add(q)
        out.append({"question": q, "answer": str(eval(expr)), "expression": expr})  # noqa: S307 -- our own digits
    return out


if __name__ == "__main__":
    seen: set[str] = set()
    test = rows(40, 1, seen)
    train = rows(200, 0, seen)
    for name, data in (("train", train), ("test", test)):
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"wrote {len(train)} training and {len(test)} held-out problems to {HERE}")
