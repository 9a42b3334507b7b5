# Compiled on the fly by bench_core.py when cymem is installed: cymem's C-level alloc/free.
from cymem.cymem cimport Pool
from libc.stdint cimport uint64_t

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC


cdef uint64_t _now():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


def batch_ns(size_t size, Py_ssize_t batch, Py_ssize_t rounds):
    """ns per block: cymem Pool.alloc x batch, then Pool.free each (cymem needs the GIL)."""
    cdef Pool pool = Pool()
    cdef void** ptrs = <void**>pool.alloc(batch, sizeof(void*))
    cdef Py_ssize_t r, i
    cdef uint64_t t0 = _now()
    for r in range(rounds):
        for i in range(batch):
            ptrs[i] = pool.alloc(1, size)
        for i in range(batch):
            pool.free(ptrs[i])
    return (_now() - t0) / <double>(batch * rounds)
