# C types for features.py, which Cython compiles when the package is installed (setup.py). The
# code is features.py's; this file only says which values are C doubles and integers, so the
# per-event arithmetic runs without Python floats. Without a compiler, features.py runs as it is.
cimport cython
from cpython cimport array

cdef Py_ssize_t _WIDTH
cdef double _DAY, _PI, _TAU_1D, _TAU_7D, _TAU_30D, _NO_GAP_S, _MIN_TRAVEL_H, _SMALL_AMOUNT


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

    @cython.locals(
        state=AccountState, merchant=MerchantState, t=double, amount=double, n=Py_ssize_t,
        base=Py_ssize_t, out="double[::1]",
    )
    cpdef object transform(self, object txns)

    @cython.locals(state=AccountState)
    cdef AccountState _state(self, object account_id)

    @cython.locals(state=MerchantState)
    cdef MerchantState _merchant(self, object name)

    @cython.locals(
        log_amount=double, hi=Py_ssize_t, lo24=Py_ssize_t, lo1h=Py_ssize_t, lo10=Py_ssize_t,
        c10=Py_ssize_t, c1h=Py_ssize_t, c24=Py_ssize_t, sum24=double, small=Py_ssize_t,
        k=Py_ssize_t, n=Py_ssize_t, mid=Py_ssize_t, median=double, vs_median=double,
        has_history=bint, age=double, c1=double, c7=double, c30=double, vs_1d=double,
        vs_7d=double, vs_30d=double, count_7d=double, gap=double, speed=double, hour=double,
        day=Py_ssize_t, weekday_sin=double, weekday_cos=double, m_age=double, m_vs=double,
        m_1h=double, m_1d=double, m_7d=double, times=array.array, amounts=array.array,
        by_amount=array.array,
    )
    cdef _features(
        self, AccountState s, MerchantState m, object txn, double amount, double t,
        double[::1] out, Py_ssize_t base,
    )

    @cython.locals(
        age=double, f1=double, f7=double, f30=double, at=Py_ssize_t, n=Py_ssize_t, gone=double,
        times=array.array, amounts=array.array, by_amount=array.array,
    )
    cpdef _learn_account(self, AccountState s, object txn, double amount, double t)


@cython.locals(age=double, f7=double, f30=double)
cdef _learn_merchant(MerchantState m, double amount, double t)
