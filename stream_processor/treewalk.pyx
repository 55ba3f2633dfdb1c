# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""FlatTrees.totals in C: each row walks each tree to its leaf, the leaf values summed in tree
order. What the NumPy walk in model.py computes, bit for bit (tests/test_compiled.py), without
its (rows x trees) temporary arrays, which cost the NumPy walk more than the walk itself.
Compiled at install (setup.py); model.py falls back to the NumPy walk
where it is not."""

import numpy as np

ctypedef fused real:
    float
    double


def totals(
    const real[:, ::1] x,
    const int[::1] roots,
    const int[::1] feature,
    const real[::1] threshold,
    const int[::1] children,
    const double[::1] value,
    int depth,
    const unsigned char[::1] nan_right,
    double start,
):
    """``start`` (when not 0) plus the leaf values each row of ``x`` reaches, tree by tree.

    ``nan_right`` may be empty: then a NaN goes left, as a comparison with NaN is false."""
    cdef Py_ssize_t n = x.shape[0], trees = roots.shape[0], i, t, step
    cdef int node, right
    cdef real v
    cdef bint nan_rule = nan_right.shape[0] > 0
    out = np.full(n, start, dtype=np.float64)
    cdef double[::1] total = out
    cdef int[::1] nodes = np.empty(n, dtype=np.int32)
    with nogil:
        # Tree by tree, all rows a level at a time: the rows' walks are independent, so the
        # CPU overlaps their memory reads (one row at a time, each step waits for the last).
        for t in range(trees):
            nodes[:] = roots[t]
            for step in range(depth):
                for i in range(n):  # no branch on the comparison: a coin toss to predict
                    node = nodes[i]
                    v = x[i, feature[node]]
                    right = v > threshold[node]
                    if nan_rule:
                        right = right | ((v != v) & nan_right[node])
                    nodes[i] = children[2 * node + right]
            if t == 0 and start == 0:  # as NumPy's cumsum starts: the first value itself
                for i in range(n):
                    total[i] = value[nodes[i]]
            else:
                for i in range(n):
                    total[i] = total[i] + value[nodes[i]]
    return out
