"""Writes train.jsonl and test.jsonl: arithmetic for the calculator, questions for the search tool.

Arithmetic: products of two 2-digit numbers and sums of two 3-digit numbers (seeded; the test
questions are not in the training set). Questions: answerable from ``envs/data/search_mini.jsonl``,
split by hand so that no test question asks about a topic a training question asks about.

    python recipes/openai_agent/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TRAIN_QUESTIONS = [
    ("What is the capital of Canada?", ["Ottawa"]),
    ("Which river is the largest in the world by discharge volume?", ["Amazon"]),
    ("What is the chemical symbol of gold?", ["Au"]),
    ("Who discovered penicillin?", ["Fleming"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("Who painted the Mona Lisa?", ["Leonardo"]),
    ("Which is the largest planet in the Solar System?", ["Jupiter"]),
    ("Who wrote Hamlet?", ["Shakespeare"]),
    ("What is the highest mountain on Earth?", ["Everest"]),
    ("Who is credited with inventing the telephone?", ["Bell"]),
    ("What is the capital of Italy?", ["Rome"]),
    ("Which desert spans most of North Africa?", ["Sahara"]),
    ("Who developed the theory of relativity?", ["Einstein"]),
    ("In which city is the Eiffel Tower?", ["Paris"]),
    ("Who composed the Moonlight Sonata?", ["Beethoven"]),
    ("Which planet has the most famous ring system?", ["Saturn"]),
]
TEST_QUESTIONS = [
    ("What is the capital of Japan?", ["Tokyo"]),
    ("Which ocean is the largest and deepest?", ["Pacific"]),
    ("Who proposed the theory of evolution by natural selection?", ["Darwin"]),
    ("What is the capital of Germany?", ["Berlin"]),
    ("Which river flows through Egypt?", ["Nile"]),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
    ("What is the smallest planet in the Solar System?", ["Mercury"]),
    ("Who formulated the laws of motion and universal gravitation?", ["Newton"]),
    ("What is the capital of Egypt?", ["Cairo"]),
    ("Who won two Nobel Prizes for research on radioactivity?", ["Curie"]),
    ("What is the capital of Brazil?", ["Brasilia", "Brasília"]),
    ("Which mountain range contains Mount Everest?", ["Himalayas", "Himalaya"]),
]


def arithmetic(rng: random.Random, n: int, seen: set[str]) -> list[dict]:
    rows = []
    while len(rows) < n:
        if rng.random() < 0.5:
            a, b = rng.randint(12, 99), rng.randint(12, 99)
            q, ans = f"What is {a} * {b}?", a * b
        else:
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            q, ans = f"What is {a} + {b}?", a + b
        if q not in seen:
            seen.add(q)
            rows.append({"question": q, "answer": str(ans)})
    return rows


def main() -> None:
    here = Path(__file__).parent
    rng, seen = random.Random(0), set()
    train = arithmetic(rng, 32, seen) + [{"question": q, "answer": a} for q, a in TRAIN_QUESTIONS]
    test = arithmetic(rng, 20, seen) + [{"question": q, "answer": a} for q, a in TEST_QUESTIONS]
    rng.shuffle(train)
    for name, rows in (("train", train), ("test", test)):
        with open(here / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    main()
