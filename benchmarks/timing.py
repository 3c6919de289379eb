"""Side-by-side timing of compiled train steps: interleaved rounds, the fastest kept.

Example:
    >>> import numpy as np
    >>> from keras_wsol.methods import CAM
    >>> model = CAM(num_classes=2, backbone="small", image_size=32)
    >>> model.compile(optimizer="adam")
    >>> times = fastest_train_steps({"cam": model}, np.zeros((2, 32, 32, 3), "float32"), np.array([0, 1]), rounds=2)
    >>> sorted(times), times["cam"] > 0
    (['cam'], True)
"""

import time

import numpy as np


def fastest_train_steps(models: dict, x: np.ndarray, y: np.ndarray, rounds: int) -> dict[str, float]:
    """Seconds of one train step of each compiled model on ``(x, y)``: the fastest of ``rounds`` interleaved rounds.

    Every model is traced and warmed up first; the rounds interleave the
    models so drift on the machine hits all alike, and the fastest round is
    the least disturbed by other work.
    """
    for model in models.values():
        for _ in range(2):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}
