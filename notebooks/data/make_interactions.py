"""Write ``streaming_items.csv`` and ``streaming_interactions.csv``: a small synthetic catalogue.

Written for this project (no real users): public interaction datasets such as
MovieLens cannot be downloaded where the platform has no internet access, and their
licences forbid redistribution. This script draws a dataset with the structure that
makes recommendation worth doing, so that ``recommendation.ipynb`` has something to
learn that a popularity ranking does not know:

- 400 titles in 10 genres; each title's popularity follows a power law (a few hits,
  a long tail), and each has a small "style" vector of its own;
- 800 viewers; each likes two or three genres (a Dirichlet draw) and has a style
  vector too; how much they watch varies (lognormal, 8 to 80 titles);
- a viewer watches a title with a probability proportional to
  ``popularity^0.6 * genre_taste * exp(style_viewer · style_title)``, without
  repeats, at increasing times over 2025.

    python notebooks/data/make_interactions.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SEED = 14
N_ITEMS, N_USERS, STYLE = 400, 800, 4
GENRES = ["action", "comedy", "drama", "science fiction", "documentary", "animation",
          "thriller", "romance", "history", "music"]
ADJECTIVES = ["Silent", "Last", "Hidden", "Golden", "Broken", "Northern", "Secret", "Lost",
              "Burning", "Quiet", "Crimson", "Distant", "Little", "Wild", "Electric", "Endless"]
NOUNS = ["Harbor", "Garden", "Signal", "Orchard", "Frontier", "Letter", "Machine", "River",
         "Kingdom", "Summer", "Station", "Island", "Promise", "Parade", "Lantern", "Voyage",
         "Circus", "Engine", "Winter", "Melody", "Empire", "Stranger", "Mountain", "Bridge", "Archive"]
START = 1735689600  # 2025-01-01T00:00:00Z
YEAR = 365 * 24 * 3600


def titles(rng: np.random.Generator, n: int) -> list[str]:
    pairs = [(a, b) for a in ADJECTIVES for b in NOUNS]
    order = rng.permutation(len(pairs))[:n]
    return [f"The {pairs[k][0]} {pairs[k][1]}" for k in order]


def main() -> None:
    rng = np.random.default_rng(SEED)
    genre = rng.integers(0, len(GENRES), N_ITEMS)
    popularity = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.9
    popularity = popularity[rng.permutation(N_ITEMS)]
    item_style = rng.normal(0, 0.8, (N_ITEMS, STYLE))
    user_taste = rng.dirichlet(np.full(len(GENRES), 0.25), N_USERS)
    user_style = rng.normal(0, 0.8, (N_USERS, STYLE))
    counts = np.clip(rng.lognormal(np.log(22), 0.6, N_USERS).astype(int), 8, 80)

    with open(HERE / "streaming_items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "genre"])
        for i, title in enumerate(titles(rng, N_ITEMS)):
            w.writerow([i, title, GENRES[genre[i]]])

    rows = []
    for u in range(N_USERS):
        weight = popularity ** 0.6 * user_taste[u, genre] * np.exp(item_style @ user_style[u])
        seen = rng.choice(N_ITEMS, size=counts[u], replace=False, p=weight / weight.sum())
        times = np.sort(rng.integers(START, START + YEAR, counts[u]))
        rows.extend((u, int(i), int(t)) for i, t in zip(seen, times))
    rows.sort(key=lambda r: r[2])
    with open(HERE / "streaming_interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        w.writerows(rows)
    print(f"{N_USERS} users, {N_ITEMS} items, {len(rows)} interactions -> {HERE}")


if __name__ == "__main__":
    main()
