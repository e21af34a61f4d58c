"""Plain OpenVINO inference at its best throughput, the floor the engine benchmarks compare with:
an AsyncInferQueue-style loop of OPTIMAL_NUMBER_OF_INFER_REQUESTS requests (+1), one batch per
request, outputs copied out as a user would."""
from __future__ import annotations

import numpy as np


def async_floor(compiled, x: np.ndarray, batch: int):
    """A no-argument function that runs `compiled` over x in batches of `batch`, requests in flight."""
    depth = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    requests = [compiled.create_infer_request() for _ in range(depth + 1)]

    def run():
        pending = []
        for k, i in enumerate(range(0, x.shape[0], batch)):
            r = requests[k % len(requests)]
            r.start_async({0: x[i:i + batch]}, share_inputs=True)
            pending.append(r)
            while len(pending) > depth:
                done = pending.pop(0)
                done.wait()
                done.get_output_tensor(0).data.copy()
        for r in pending:
            r.wait()
            r.get_output_tensor(0).data.copy()

    return run
