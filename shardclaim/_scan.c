/* shardclaim._scan: where the lines of a block end, and which are blank, walked in C.
 *
 * The optional accelerator behind shardclaim.dataset.lineends (whose numpy functions are the reference
 * and the fallback): count_and_blanks() and plan_runs() with the same arguments and results. Each
 * newline is found with memchr, which hops a 470-byte record in a few vector steps, so nothing runs
 * per byte in the interpreter and little per line: on 470-byte records 0.05 s per GiB in cache and
 * 0.19 s from memory, against numpy's 0.63 s (most of it np.flatnonzero).
 *
 * Guarantees: any C-contiguous buffer (bytes, bytearray, memoryview) is read through
 * PyObject_GetBuffer(PyBUF_SIMPLE) and released on every path; the range is checked before a byte is
 * read (ValueError, never a read out of bounds); the GIL is released for the walk, the results being
 * gathered in C arrays and turned into Python lists after it is taken back. A bytearray cannot be
 * resized meanwhile: it refuses while the buffer is exported (BufferError in the resizing thread).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>

/* A growable array of Py_ssize_t, filled without the GIL (so no Python allocator). */
typedef struct {
    Py_ssize_t *items;
    Py_ssize_t len;
    Py_ssize_t cap;
} ssize_vec;

static int
vec_push(ssize_vec *v, Py_ssize_t x)
{
    if (v->len == v->cap) {
        Py_ssize_t cap = v->cap ? v->cap * 2 : 64;
        Py_ssize_t *items;
        if ((size_t)cap > SIZE_MAX / sizeof(Py_ssize_t)) {
            return -1;
        }
        items = realloc(v->items, (size_t)cap * sizeof(Py_ssize_t));
        if (items == NULL) {
            return -1;
        }
        v->items = items;
        v->cap = cap;
    }
    v->items[v->len++] = x;
    return 0;
}

/* Index arguments. An int that does not fit a Py_ssize_t is clamped to one that does: as far out of
 * range as it was (the same ValueError as any other), or a share past any buffer's end. */
static int
to_ssize(PyObject *obj, void *out)
{
    Py_ssize_t x = PyNumber_AsSsize_t(obj, NULL);
    if (x == -1 && PyErr_Occurred()) {
        return 0;
    }
    *(Py_ssize_t *)out = x;
    return 1;
}

static int
check_range(const Py_buffer *buf, Py_ssize_t a, Py_ssize_t b, const char *na, const char *nb)
{
    if (a < 0 || a > b || b > buf->len) {
        PyErr_Format(PyExc_ValueError, "need 0 <= %s <= %s <= len(data), got %s=%zd, %s=%zd, len(data)=%zd",
                     na, nb, na, a, nb, b, buf->len);
        return -1;
    }
    return 0;
}

/* The buffer of `data` with the range checked: 0, or -1 with an exception set and nothing held. */
static int
get_range(PyObject *data, Py_buffer *buf, Py_ssize_t a, Py_ssize_t b, const char *na, const char *nb)
{
    if (PyObject_GetBuffer(data, buf, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (check_range(buf, a, b, na, nb) < 0) {
        PyBuffer_Release(buf);
        return -1;
    }
    return 0;
}

/* Whether line [begin, nl] (nl: its newline) is JSON whitespace only (a form feed is not). */
static inline int
is_blank(const unsigned char *p, Py_ssize_t begin, Py_ssize_t nl)
{
    for (Py_ssize_t i = begin; i < nl; i++) {
        unsigned char c = p[i];
        if (c != ' ' && c != '\t' && c != '\r') {
            return 0;
        }
    }
    return 1;
}

/* The offset of the first newline in p[from:to], or -1. */
static inline Py_ssize_t
next_newline(const unsigned char *p, Py_ssize_t from, Py_ssize_t to)
{
    const unsigned char *nl = memchr(p + from, '\n', (size_t)(to - from));
    return nl == NULL ? -1 : (Py_ssize_t)(nl - p);
}

/* Blank line ranges (pairs of offsets in `flat`) as a list of (begin, end) tuples. */
static PyObject *
ranges_list(const ssize_vec *flat)
{
    Py_ssize_t n = flat->len / 2;
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = Py_BuildValue("(nn)", flat->items[2 * i], flat->items[2 * i + 1]);
        if (pair == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    return list;
}

static PyObject *
ints_list(const ssize_vec *v)
{
    PyObject *list = PyList_New(v->len);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < v->len; i++) {
        PyObject *x = PyLong_FromSsize_t(v->items[i]);
        if (x == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, x);
    }
    return list;
}

PyDoc_STRVAR(count_and_blanks_doc,
             "count_and_blanks(data, a, b)\n--\n\n"
             "The newlines of data[a:b] (whole lines; a final line without one is not counted) and its blank\n"
             "lines as (begin, end) ranges.");

static PyObject *
count_and_blanks(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "a", "b", NULL};
    PyObject *data;
    Py_ssize_t a, b;
    Py_buffer buf;
    ssize_vec blanks = {NULL, 0, 0};
    Py_ssize_t count = 0;
    int nomem = 0;
    PyObject *list, *result = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&:count_and_blanks", kwlist, &data, to_ssize, &a,
                                     to_ssize, &b)) {
        return NULL;
    }
    if (get_range(data, &buf, a, b, "a", "b") < 0) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *p = buf.buf;
    Py_ssize_t pos = a, nl;
    while (pos < b && (nl = next_newline(p, pos, b)) >= 0) {
        count++;
        if (is_blank(p, pos, nl) && (vec_push(&blanks, pos) < 0 || vec_push(&blanks, nl + 1) < 0)) {
            nomem = 1;
            break;
        }
        pos = nl + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (nomem) {
        PyErr_NoMemory();
    }
    else if ((list = ranges_list(&blanks)) != NULL) {
        result = Py_BuildValue("(nN)", count, list);
    }
    free(blanks.items);
    return result;
}

PyDoc_STRVAR(plan_runs_doc,
             "plan_runs(data, start, end, share)\n--\n\n"
             "Cut data[start:end] (whole lines) into runs, each ending at the first line end at or after\n"
             "share bytes from its start (the last one at end): the blank lines, as (begin, end) ranges, and\n"
             "each run's newlines.");

static PyObject *
plan_runs(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"data", "start", "end", "share", NULL};
    PyObject *data;
    Py_ssize_t start, end, share;
    Py_buffer buf;
    ssize_vec blanks = {NULL, 0, 0}, counts = {NULL, 0, 0};
    int nomem = 0;
    PyObject *holes = NULL, *runs = NULL, *result = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&O&:plan_runs", kwlist, &data, to_ssize, &start,
                                     to_ssize, &end, to_ssize, &share)) {
        return NULL;
    }
    if (share <= 0) {
        PyErr_Format(PyExc_ValueError, "share must be positive, got %zd", share);
        return NULL;
    }
    if (get_range(data, &buf, start, end, "start", "end") < 0) {
        return NULL;
    }
    if (start < end && ((const unsigned char *)buf.buf)[end - 1] != '\n') {
        PyErr_SetString(PyExc_ValueError, "data[start:end] must be whole lines: it does not end in a newline");
        PyBuffer_Release(&buf);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *p = buf.buf;
    Py_ssize_t pos = start, run = start, in_run = 0, nl;
    /* The run from `run` ends at the first line end at or after run + share; once that is past the
     * end, the run takes the rest (written without run + share, which could overflow). */
    int last = end - run <= share;
    while (pos < end && (nl = next_newline(p, pos, end)) >= 0) {
        in_run++;
        if (is_blank(p, pos, nl) && (vec_push(&blanks, pos) < 0 || vec_push(&blanks, nl + 1) < 0)) {
            nomem = 1;
            break;
        }
        pos = nl + 1;
        if (!last && pos - run >= share) {
            if (vec_push(&counts, in_run) < 0) {
                nomem = 1;
                break;
            }
            run = pos;
            in_run = 0;
            last = end - run <= share;
        }
    }
    if (!nomem && run < end && vec_push(&counts, in_run) < 0) {
        nomem = 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (nomem) {
        PyErr_NoMemory();
    }
    else if ((holes = ranges_list(&blanks)) != NULL && (runs = ints_list(&counts)) != NULL) {
        result = PyTuple_Pack(2, holes, runs);
    }
    Py_XDECREF(holes);
    Py_XDECREF(runs);
    free(blanks.items);
    free(counts.items);
    return result;
}

static PyMethodDef scan_methods[] = {
    {"count_and_blanks", (PyCFunction)(void (*)(void))count_and_blanks, METH_VARARGS | METH_KEYWORDS,
     count_and_blanks_doc},
    {"plan_runs", (PyCFunction)(void (*)(void))plan_runs, METH_VARARGS | METH_KEYWORDS, plan_runs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    "shardclaim._scan",
    "Line ends and blank lines of a block, walked in C with memchr (see shardclaim.dataset.lineends).",
    0,
    scan_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&scan_module);
}
