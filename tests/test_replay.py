"""The replay history against a model: a deque with maxlen holds exactly what it must."""

from __future__ import annotations

import random
from collections import deque

import pytest

from watchd.replay import Held, History


def held(seq: int) -> Held:
    return (seq, "w", 1, f"/{seq}", b"")


@pytest.mark.parametrize("seed", range(40))
def test_the_history_holds_what_a_bounded_deque_holds(seed: int) -> None:
    # Batches smaller and larger than the history, single events, and resizes (the same size
    # too, as every reload does), in random order; after each, every range read must match.
    rng = random.Random(seed)
    size = rng.choice([1, 2, 3, 5, 8, 13, 50])
    history, model, seq = History(size), deque[Held](maxlen=size), 0
    for _ in range(300):
        op = rng.random()
        if op < 0.15:
            size = rng.choice([1, 2, 3, 5, 8, 13, 50, size, size])
            history.resize(size)
            model = deque(model, maxlen=size)
        elif op < 0.4:
            seq += 1
            history.append(held(seq))
            model.append(held(seq))
        else:
            batch = [held(seq + i + 1) for i in range(rng.choice([0, 1, 2, 3, 7, 20, 60, 120]))]
            seq += len(batch)
            history.extend(batch)
            model.extend(batch)
        oldest = model[0][0] if model else seq + 1
        assert (history.last_seq, len(history), history.oldest) == (seq, len(model), oldest)
        for _ in range(3):
            start = rng.randint(oldest - 2, seq + 2)
            stop = rng.randint(start, seq + 3)
            assert history.between(start, stop) == [e for e in model if start <= e[0] < stop]
