# C types for features.py, which Cython compiles when the package is installed (setup.py). The
# code is features.py's; this file only says which values are C doubles and integers, so the
# per-event arithmetic runs without Python floats. Without a compiler, features.py runs as it is.
cimport cython
from cpython cimport array

cdef Py_ssize_t _WIDTH
cdef double _DAY, _PI, _TAU_1D, _TAU_7D, _TAU_30D, _NO_GAP_S, _MIN_TRAVEL_H, _SMALL_AMOUNT


# The features of the event being computed: struct Row, one C double a feature of
# features.FEATURES, in declaration order. setup.py writes it from that declaration
# (build/cython/features_row.pxi): a feature is declared in features.py only.
include "features_row.pxi"


cdef inline tuple _row_fields():
    """Row's fields in their order (a struct converts to a dict of its fields)."""
    cdef Row row
    cdef dict fields
    if sizeof(Row) != _WIDTH * sizeof(double):
        raise ImportError("features.pxd's struct Row must hold one double a feature")
    fields = row
    return tuple(fields)


# Read in place (features.py's plain-Python versions go through Python floats): an array('d')'s
# value, and the bisect module's two searches over one.
cdef inline double _at(array.array values, Py_ssize_t i) noexcept:
    return values.data.as_doubles[i]


cdef inline Py_ssize_t _bisect_left(
    array.array values, double x, Py_ssize_t lo, Py_ssize_t hi
) noexcept:
    cdef double* v = values.data.as_doubles
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if v[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline Py_ssize_t _bisect_right(
    array.array values, double x, Py_ssize_t lo, Py_ssize_t hi
) noexcept:
    cdef double* v = values.data.as_doubles
    cdef Py_ssize_t mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if x < v[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef class AccountState:
    cdef public array.array times, amounts, by_amount
    cdef public dict merchants, locations
    cdef public Py_ssize_t seen
    cdef public double last_time
    cdef public object last_location, home_location
    cdef public double decay_time, count_1d, count_7d, count_30d, sum_1d, sum_7d, sum_30d


cdef class MerchantState:
    cdef public double decay_time, count_1h, count_1d, count_7d, count_30d, sum_30d


cdef class AccountStates:
    cdef public Py_ssize_t max_accounts, history, max_places, max_merchants, evicted
    cdef public object _accounts, _merchants
    cdef Row _row

    @cython.locals(
        state=AccountState, merchant=MerchantState, t=double, amount=double, log_amount=double,
        n=Py_ssize_t, base=Py_ssize_t, out="double[::1]",
    )
    cpdef object transform(self, object txns)

    @cython.locals(state=AccountState)
    cdef AccountState _state(self, object account_id)

    @cython.locals(state=MerchantState)
    cdef MerchantState _merchant(self, object name)

    @cython.locals(n=Py_ssize_t, mid=Py_ssize_t, median=double, c1=double, c7=double, c30=double)
    @cython.final
    cdef _account_amounts(self, AccountState s, double log_amount)

    @cython.locals(
        times=array.array, amounts=array.array, hi=Py_ssize_t, lo24=Py_ssize_t,
        lo1h=Py_ssize_t, lo10=Py_ssize_t, sum24=double, small=Py_ssize_t, k=Py_ssize_t,
        age=double,
    )
    @cython.final
    cdef _account_windows(self, AccountState s, double t)

    @cython.locals(has_history=bint, gap=double, speed=double)
    @cython.final
    cdef _travel(self, AccountState s, object txn, double t)

    @cython.locals(hour=double, day=Py_ssize_t)
    @cython.final
    cdef _calendar(self, double t)

    @cython.locals(m_age=double, m_1h=double, m_7d=double)
    @cython.final
    cdef _merchant_profile(self, MerchantState m, double log_amount, double t)

    @cython.locals(
        age=double, f1=double, f7=double, f30=double, at=Py_ssize_t, n=Py_ssize_t, gone=double,
        times=array.array, amounts=array.array, by_amount=array.array,
    )
    cpdef _learn_account(self, AccountState s, object txn, double amount, double t)


@cython.locals(age=double, f30=double)
cpdef learn_merchant(MerchantState m, double amount, double t)


@cython.locals(t=double, a=double, b=double, f30=double, g30=double)
cpdef add_merchant(MerchantState m, MerchantState part, double sign=*)


cdef inline int _emit(AccountStates states, double[::1] out, Py_ssize_t base) except -1:
    """The row into ``out[base:base + WIDTH]``: column k is the row's k-th double."""
    cdef double* row = <double*>&states._row
    cdef Py_ssize_t k
    for k in range(_WIDTH):
        out[base + k] = row[k]
    return 0
