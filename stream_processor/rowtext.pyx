# cython: language_level=3, boundscheck=False, wraparound=False
"""The stored rows' text in C: the features JSON of each row (core.features_json) and the time
text (core.db_timestamp), what the Python code in core.py makes, character for character
(tests/test_compiled.py): the features text in about half the time (the rest is orjson writing
the numbers), the time text in under a tenth (docs/benchmarks.md). Compiled at install (setup.py);
core.py runs its Python code where this module is not compiled."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.datetime cimport (
    datetime,
    datetime_day,
    datetime_hour,
    datetime_microsecond,
    datetime_minute,
    datetime_month,
    datetime_second,
    datetime_tzinfo,
    datetime_year,
    import_datetime,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

import_datetime()


cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)


def features_rows(bytes numbers, list keys):
    """One JSON object a row: ``keys[0] + n0 + keys[1] + n1 + ... + keys[-1]``, where ``numbers``
    is orjson's text of a 2-D array (``[[n0,n1,...],[...]]``) with ``len(keys) - 1`` numbers a
    row and ``keys`` are ASCII bytes."""
    cdef Py_ssize_t width = len(keys) - 1
    cdef Py_ssize_t n = PyBytes_GET_SIZE(numbers)
    cdef const char *src = PyBytes_AS_STRING(numbers)
    cdef Py_ssize_t k, keys_len = 0
    for key in keys:
        keys_len += PyBytes_GET_SIZE(key)
    cdef const char **key_ptr = <const char **>PyMem_Malloc((width + 1) * sizeof(char *))
    cdef Py_ssize_t *key_len = <Py_ssize_t *>PyMem_Malloc((width + 1) * sizeof(Py_ssize_t))
    cdef char *buf = <char *>PyMem_Malloc(keys_len + n + 1)
    out = []
    cdef Py_ssize_t i = 1, start, size, column
    try:  # freed below, whichever failed (PyMem_Free(NULL) does nothing)
        if key_ptr == NULL or key_len == NULL or buf == NULL:
            raise MemoryError()
        for k in range(width + 1):
            key_ptr[k] = PyBytes_AS_STRING(keys[k])
            key_len[k] = PyBytes_GET_SIZE(keys[k])
        while i < n and src[i] == b'[':  # a row
            i += 1
            size = 0
            column = 0
            while True:
                memcpy(buf + size, key_ptr[column], key_len[column])
                size += key_len[column]
                start = i
                while i < n and src[i] != b',' and src[i] != b']':
                    i += 1
                if i == n:
                    raise ValueError("the numbers end inside a row")
                memcpy(buf + size, src + start, i - start)
                size += i - start
                column += 1
                if src[i] == b']':
                    break
                if column == width:
                    raise ValueError(f"a row of more than {width} numbers")
                i += 1  # the comma between numbers
            if column != width:
                raise ValueError(f"a row of {column} numbers, expected {width}")
            memcpy(buf + size, key_ptr[width], key_len[width])
            size += key_len[width]
            out.append(PyUnicode_DecodeASCII(buf, size, NULL))
            i += 2  # the row's ']' and the ',' (or the closing ']') after it
    finally:
        PyMem_Free(key_ptr)
        PyMem_Free(key_len)
        PyMem_Free(buf)
    return out


cdef inline void _digits(char *p, int value, int count):
    while count:
        count -= 1
        p[count] = <char>(48 + value % 10)
        value //= 10


def utc_text(datetime ts, object utc):
    """'YYYY-MM-DD HH:MM:SS[.ffffff]' of a datetime whose tzinfo is ``utc``; None otherwise
    (the caller converts it)."""
    if ts is None or datetime_tzinfo(ts) is not utc:
        return None
    cdef char buf[26]
    memcpy(buf, b"0000-00-00 00:00:00.", 20)  # the separators; the digits are written over
    _digits(buf, datetime_year(ts), 4)
    _digits(buf + 5, datetime_month(ts), 2)
    _digits(buf + 8, datetime_day(ts), 2)
    _digits(buf + 11, datetime_hour(ts), 2)
    _digits(buf + 14, datetime_minute(ts), 2)
    _digits(buf + 17, datetime_second(ts), 2)
    cdef int micro = datetime_microsecond(ts)
    if micro == 0:
        return PyUnicode_DecodeASCII(buf, 19, NULL)
    _digits(buf + 20, micro, 6)
    return PyUnicode_DecodeASCII(buf, 26, NULL)
