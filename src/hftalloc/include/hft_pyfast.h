/* CPython fast paths of the compiled bus: each one does what a public API call does,
 * minus its checks or call layers, on layouts known for the CPython versions listed.
 * On any other CPython (or the limited API) each falls back to the safe behaviour.
 */
#ifndef HFT_PYFAST_H
#define HFT_PYFAST_H

#include <Python.h>

#if PY_VERSION_HEX >= 0x03080000 && PY_VERSION_HEX < 0x030F0000 && !defined(Py_LIMITED_API)
#define HFT_KNOWN_LAYOUT 1
#else
#define HFT_KNOWN_LAYOUT 0
#endif

/* A memoryview may be kept (and recycled with its message) only if nothing else uses
 * its managed buffer: no buffer exported from the view itself, no other view (slice,
 * memoryview(view), toreadonly()) registered on the same buffer, and no weak reference
 * to it (a weakref would otherwise later reach the bytes of another message). With an
 * unknown layout every view counts as shared: it is then released and the message's
 * own export count decides (always correct, a little slower). */
static inline int hft_view_shared(PyObject* v) {
#if HFT_KNOWN_LAYOUT
    PyMemoryViewObject* m = (PyMemoryViewObject*)v;
    return m->exports != 0 || m->mbuf->exports != 1 || m->weakreflist != NULL;
#else
    (void)v;
    return 1;
#endif
}

/* list[i] = v for an index known to be in range (no bounds or type checks). */
static inline void hft_list_put(PyObject* list, Py_ssize_t i, PyObject* v) {
    PyObject* old = PyList_GET_ITEM(list, i);
    Py_INCREF(v);
    PyList_SET_ITEM(list, i, v);
    Py_XDECREF(old);
}

/* f(arg) through the callee's vectorcall slot (what PyObject_Vectorcall does, minus its
 * extra call layers); 0 on success, -1 with the exception set on failure. */
static inline int hft_call1(PyObject* f, PyObject* arg) {
    PyObject* args[2] = {NULL, arg};
    PyObject* r;
    vectorcallfunc vc = PyVectorcall_Function(f);
    if (vc != NULL)
        r = vc(f, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    else
        r = PyObject_CallOneArg(f, arg);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* Exact bytes and bytearray are read without the buffer protocol: bytes cannot change,
 * and a bytearray is pinned the way its own getbuffer does it (an export count that
 * forbids resizing) until hft_unpin. Returns 0 for any other type (and for bytearray on
 * a CPython whose layout is not known here): the caller then uses PyObject_GetBuffer. */
static inline int hft_pin(PyObject* o, char** buf, Py_ssize_t* len) {
    if (PyBytes_CheckExact(o)) {
        *buf = PyBytes_AS_STRING(o);
        *len = PyBytes_GET_SIZE(o);
        return 1;
    }
#if HFT_KNOWN_LAYOUT
    if (PyByteArray_CheckExact(o)) {
        ((PyByteArrayObject*)o)->ob_exports++;
        *buf = PyByteArray_AS_STRING(o);
        *len = PyByteArray_GET_SIZE(o);
        return 1;
    }
#endif
    return 0;
}

static inline void hft_unpin(PyObject* o) {
#if HFT_KNOWN_LAYOUT
    if (PyByteArray_CheckExact(o)) ((PyByteArrayObject*)o)->ob_exports--;
#endif
}

/* A C function that "raises" the exception already set, so that Cython code can catch
 * an error reported by hft_call1 with try/except. */
static inline int hft_pending_error(void) { return -1; }

/* A cached payload view whose block goes back to the pool stays with its message for the
 * block's next use. While the block is free its length (and shape) is 0, so that a read
 * through it (a view dug out by gc introspection) touches none of the freed memory;
 * hft_view_rearm gives it its length back when the message is handed out again. Returns
 * 0 when it cannot do that here (unknown layout, not a 1-d view): drop the view then. */
static inline int hft_view_disarm(PyObject* v) {
#if HFT_KNOWN_LAYOUT
    PyMemoryViewObject* m = (PyMemoryViewObject*)v;
    if (m->view.ndim != 1 || m->view.shape == NULL) return 0;
    m->view.len = 0;
    m->view.shape[0] = 0;
    return 1;
#else
    (void)v;
    return 0;
#endif
}

static inline void hft_view_rearm(PyObject* v, Py_ssize_t len) {
#if HFT_KNOWN_LAYOUT
    PyMemoryViewObject* m = (PyMemoryViewObject*)v;
    m->view.len = len;
    m->view.shape[0] = len;
#else
    (void)v; (void)len;
#endif
}

#endif
