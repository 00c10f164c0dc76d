"""Interleaved timing shared by the benchmarks that compare our code with a peer in one process."""
import statistics
import time


def time_sides(items, sides, repeat):
    """Run every side of ``sides`` (``{name: function}``) over ``items``, ``repeat`` times, the sides interleaved.

    CPU time (``time.process_time``) is recorded next to wall time: on a shared machine the wall time also counts
    the time other jobs held the cores.

    Returns
    -------
    times : dict
        ``{side: {"wall": [s, ...], "cpu": [s, ...]}}``.
    outputs : dict
        ``{side: [function(item) for item in items]}`` of the last repetition.
    """
    times = {side: {"wall": [], "cpu": []} for side in sides}
    outputs = {}
    for _ in range(repeat):
        for side, function in sides.items():
            wall, cpu = time.perf_counter(), time.process_time()
            result = [function(item) for item in items]
            times[side]["cpu"].append(time.process_time() - cpu)
            times[side]["wall"].append(time.perf_counter() - wall)
            outputs[side] = result
    return times, outputs


def summarise(times, n):
    """Fastest and median run of one side's ``times`` (see :func:`time_sides`), per clock, in seconds and in
    milliseconds per item."""
    out = {}
    for clock in ("wall", "cpu"):
        best, median = min(times[clock]), statistics.median(times[clock])
        out[clock] = {"seconds_min": best, "seconds_median": median, "ms_per_image_min": 1e3 * best / n,
                      "ms_per_image_median": 1e3 * median / n, "runs": times[clock]}
    return out
