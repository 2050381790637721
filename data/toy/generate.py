"""Generate the toy dataset: Q&A about an invented world whose facts no base model can know.

    python data/toy/generate.py        # rewrites train.jsonl and eval.jsonl beside this file

40 invented countries, each with five facts (capital, ruler, main export, river, founding year of
the capital). Every fact is asked three ways in ``train.jsonl`` (chat format) and a fourth, different
way in ``eval.jsonl`` (instruction format), whose records also carry the short reference ``answer``
that evaluation matches against the generated text.
Names come from a seeded syllable generator, so the files are reproducible byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261126
N_COUNTRIES = 40
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "dr", "kr", "qu", "sh", "br"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
CODAS = ["", "", "n", "r", "l", "s", "th", "x", "m", "nd"]
EXPORTS = ["glowmoss", "ironbark", "saltglass", "emberwool", "moonwheat", "stormcopper", "silkreed",
           "frostberry", "ashcoal", "skyquartz", "dreamtea", "sunpearl", "duskwine", "coralsteel",
           "windcotton", "starsalt"]  # fmt: skip

# (kind, three training phrasings, the held-out eval phrasing, answer sentence, reference key)
FACTS = [
    ("capital",
     ["What is the capital of {country}?", "Which city is the capital of {country}?",
      "Name the capital city of {country}."],
     "{country} has its seat of government in which city?",
     "The capital of {country} is {capital}.", "capital"),
    ("ruler",
     ["Who rules {country}?", "Who is the ruler of {country}?", "Name the monarch of {country}."],
     "Which monarch reigns over {country}?",
     "{country} is ruled by {ruler}.", "ruler"),
    ("export",
     ["What is the main export of {country}?", "What does {country} export most?",
      "Name the chief export of {country}."],
     "Which good is {country} best known for selling abroad?",
     "The main export of {country} is {export}.", "export"),
    ("river",
     ["Which river flows through {capital}?", "What river runs through {capital}?",
      "Name the river of {capital}."],
     "{capital} lies on the banks of which river?",
     "The river {river} flows through {capital}.", "river"),
    ("founded",
     ["When was {capital} founded?", "In what year was {capital} founded?", "What is the founding year of {capital}?"],
     "How long ago was {capital} established, in which year?",
     "{capital} was founded in the year {founded}.", "founded"),
]  # fmt: skip


def make_names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    names = []
    while len(names) < count:
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.choice([2, 3])))
        if 5 <= len(word) <= 12 and word not in taken:
            taken.add(word)
            names.append(word.capitalize())
    return names


def build() -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    taken: set[str] = set()
    countries = make_names(rng, N_COUNTRIES, taken)
    capitals = make_names(rng, N_COUNTRIES, taken)
    rulers = [
        f"{k} {n}"
        for k, n in zip(rng.choices(["King", "Queen"], k=N_COUNTRIES), make_names(rng, N_COUNTRIES, taken), strict=True)
    ]
    rivers = make_names(rng, N_COUNTRIES, taken)
    train, evaluation = [], []
    for i, country in enumerate(countries):
        world = {
            "country": country, "capital": capitals[i], "ruler": rulers[i], "river": rivers[i],
            "export": EXPORTS[i % len(EXPORTS)], "founded": str(rng.randint(212, 1890)),
        }  # fmt: skip
        for kind, asks, held_out, answer, key in FACTS:
            reply = answer.format(**world)
            for ask in asks:
                train.append({"messages": [{"role": "user", "content": ask.format(**world)},
                                           {"role": "assistant", "content": reply}]})  # fmt: skip
            evaluation.append({"id": f"{country.lower()}-{kind}", "instruction": held_out.format(**world),
                               "output": reply, "answer": world[key]})  # fmt: skip
    return train, evaluation


def main() -> None:
    train, evaluation = build()
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(train)} training records, {len(evaluation)} held-out questions in {HERE}")


if __name__ == "__main__":
    main()
