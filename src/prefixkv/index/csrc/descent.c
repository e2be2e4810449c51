/* The prefix index's descent over 8-byte token ids read in place (a CPython extension).
 *
 * SGLang keeps a request's token ids as an array('q'). The Python descent
 * (prefixkv/index/descent.py, the executable reference) first converts them to prefixkv's
 * canonical form (native uint32 bytes), which costs more than the descent itself on short
 * queries. This module walks the same tree (prefixkv.index.node.Node objects) reading the
 * int64 ids where they are: a label (uint32) and the ids are equal where every id equals
 * its label token as an integer, so an id outside [0, 2**32) never equals one.
 *
 * It mirrors descend() step by step, including how far it reads: ids are "read" (validated,
 * ValueError naming the first bad one, as prefixkv.tokens does) exactly as far as
 * TokenReader.read_to would read them in the Python descent, so both paths return the same
 * path and raise the same error for every query. The door (prefixkv/index/native.py) and
 * this file check every argument: a buffer of format 'q' or 'l' with 8-byte items, 1-D and
 * C-contiguous; Node objects of the given type whose label is a bytearray of exactly
 * len(values) blocks, values a list or an array.array (the index's value store); a dict of
 * children.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_TOKEN_ID 4294967295LL

static PyObject *s_label, *s_values, *s_children; /* interned attribute names */
static PyTypeObject *array_type; /* array.array: the int64 value store's runs */

/* The caller's ids: a 1-D C-contiguous buffer of 8-byte signed ints. */
typedef struct {
    Py_buffer view;
    const int64_t *ids;
    Py_ssize_t n;
} Ids;

static int open_ids(PyObject *source, Ids *out) {
    if (PyObject_GetBuffer(source, &out->view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Format(PyExc_TypeError, "ids: expected a C-contiguous buffer of 8-byte signed "
                     "ints (array('q')), got %.100s", Py_TYPE(source)->tp_name);
        return -1;
    }
    const char *format = out->view.format ? out->view.format : "B";
    if (format[0] == '@' || format[0] == '=') format++;
    int signed_wide = (format[0] == 'q' || format[0] == 'l') && format[1] == '\0';
    if (!signed_wide || out->view.itemsize != 8 || out->view.ndim != 1) {
        PyErr_Format(PyExc_TypeError, "ids: expected a 1-D buffer of 8-byte signed ints "
                     "(format 'q' or 'l'), got format %.20s, item size %zd, %d dimensions",
                     out->view.format ? out->view.format : "B", out->view.itemsize,
                     out->view.ndim);
        PyBuffer_Release(&out->view);
        return -1;
    }
    out->ids = (const int64_t *)out->view.buf;
    out->n = out->view.shape ? out->view.shape[0] : out->view.len / 8;
    return 0;
}

/* Validate ids [from, to): 0 if all lie in [0, 2**32), else ValueError naming the first. */
static int check_range(const int64_t *ids, Py_ssize_t from, Py_ssize_t to) {
    uint64_t high = 0;
    for (Py_ssize_t i = from; i < to; i++) high |= (uint64_t)ids[i] >> 32;
    if (!high) return 0;
    for (Py_ssize_t i = from; i < to; i++) {
        if ((uint64_t)ids[i] >> 32) {
            PyErr_Format(PyExc_ValueError, "token ids must be integers in [0, %lld]; "
                         "element %zd is %lld", MAX_TOKEN_ID, i, (long long)ids[i]);
            return -1;
        }
    }
    return 0; /* not reached */
}

/* ids [0, count) (validated) as canonical bytes: native uint32s. */
static PyObject *canonical(const int64_t *ids, Py_ssize_t count) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * 4);
    if (!out) return NULL;
    uint32_t *dst = (uint32_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) dst[i] = (uint32_t)ids[i];
    return out;
}

/* Whether label tokens [0, count) equal ids [0, count). */
static int same(const uint32_t *label, const int64_t *ids, Py_ssize_t count) {
    int64_t diff = 0;
    for (Py_ssize_t i = 0; i < count; i++) diff |= (int64_t)label[i] ^ ids[i];
    return diff == 0;
}

/* Chunk of tokens compared branch-free (vectorizable) before the first difference is
 * looked for inside it: a long node that differs early costs one chunk, not its length. */
#define CHUNK 256

/* The index of the first token where label and ids differ, or count if none does. */
static Py_ssize_t first_difference(const uint32_t *label, const int64_t *ids, Py_ssize_t count) {
    Py_ssize_t at = 0;
    while (at < count) {
        Py_ssize_t n = count - at < CHUNK ? count - at : CHUNK;
        if (!same(label + at, ids + at, n)) {
            while ((int64_t)label[at] == ids[at]) at++;
            return at;
        }
        at += n;
    }
    return count;
}

/* Leading blocks of label equal to ids, among the first num (of bs tokens each). */
static Py_ssize_t leading_blocks(const uint32_t *label, const int64_t *ids, Py_ssize_t num,
                                 Py_ssize_t bs) {
    return first_difference(label, ids, num * bs) / bs;
}

/* A node's fields, type-checked: its label (uint32 tokens) and number of blocks. */
typedef struct {
    PyObject *label; /* new reference to the bytearray */
    const uint32_t *tokens;
    Py_ssize_t blocks;
} Fields;

static int node_fields(PyObject *node, PyTypeObject *node_type, Py_ssize_t bs, Fields *out) {
    out->label = NULL;
    if (Py_TYPE(node) != node_type) { /* (exactly: a subclass could run code on reads) */
        PyErr_Format(PyExc_TypeError, "node: expected %.100s, got %.100s",
                     node_type->tp_name, Py_TYPE(node)->tp_name);
        return -1;
    }
    PyObject *label = PyObject_GetAttr(node, s_label);
    PyObject *values = label ? PyObject_GetAttr(node, s_values) : NULL;
    if (!values) goto fail;
    /* values: a run of the index's value store, a list or an array.array (exactly: their
     * lengths are read in C, no Python code runs) */
    int run = PyList_CheckExact(values) || Py_IS_TYPE(values, array_type);
    if (!PyByteArray_Check(label) || !run) {
        PyErr_SetString(PyExc_TypeError,
                        "node: label must be a bytearray, values a list or an array.array");
        goto fail;
    }
    out->blocks = Py_SIZE(values); /* (a list's and an array's item count) */
    if (PyByteArray_GET_SIZE(label) != out->blocks * bs * 4 || out->blocks < 1) {
        PyErr_Format(PyExc_ValueError, "node: a label of %zd bytes for %zd blocks of %zd "
                     "tokens", PyByteArray_GET_SIZE(label), out->blocks, bs);
        goto fail;
    }
    Py_DECREF(values);
    out->label = label;
    out->tokens = (const uint32_t *)PyByteArray_AS_STRING(label);
    return 0;
fail:
    Py_XDECREF(label);
    Py_XDECREF(values);
    return -1;
}

/* The child filed in `children` under the key of block ids [pos, pos + bs): a new
 * reference, NULL without an exception when there is none. */
static PyObject *child_at(PyObject *children, const int64_t *ids, Py_ssize_t pos,
                          Py_ssize_t bs, PyObject *key_fn) {
    if (!PyDict_Check(children)) {
        PyErr_SetString(PyExc_TypeError, "node: children must be a dict");
        return NULL;
    }
    PyObject *block = canonical(ids + pos, bs);
    if (!block) return NULL;
    PyObject *key = block;
    if (key_fn != Py_None) {
        key = PyObject_CallOneArg(key_fn, block);
        Py_DECREF(block);
        if (!key) return NULL;
    }
    PyObject *child = PyDict_GetItemWithError(children, key);
    Py_XINCREF(child); /* (before the key goes: its release may run code) */
    Py_DECREF(key);
    return child;
}

/* The descent's reading: ids [0, *read) are validated; extend to min(stop, limit). */
static int read_to(const Ids *q, Py_ssize_t *read, Py_ssize_t stop) {
    if (stop > q->n) stop = q->n;
    if (stop <= *read) return 0;
    if (check_range(q->ids, *read, stop) < 0) return -1;
    *read = stop;
    return 0;
}

static Py_ssize_t max_ssize(Py_ssize_t a, Py_ssize_t b) { return a > b ? a : b; }
static Py_ssize_t min_ssize(Py_ssize_t a, Py_ssize_t b) { return a < b ? a : b; }

/* descend() of prefixkv/index/descent.py, in tokens instead of bytes, from `child` (a
 * reference it takes over). Appends the path's nodes to `path`; returns the blocks used in
 * its last node, or -1 with an exception. */
static Py_ssize_t descend(PyObject *child, const Ids *q, Py_ssize_t *read, Py_ssize_t end,
                          Py_ssize_t bs, PyObject *key_fn, PyTypeObject *node_type,
                          PyObject *path) {
    Py_ssize_t pos = 0, used = 0, result = -1;
    for (;;) {
        Fields f;
        if (node_fields(child, node_type, bs, &f) < 0) break;
        Py_ssize_t stop = pos + f.blocks * bs;
        if (*read < min_ssize(stop, end)) {
            if (!same(f.tokens, q->ids + pos, bs)) { /* a child key collision: stop here */
                result = used;
            } else if (read_to(q, read, min_ssize(end, max_ssize(stop, 2 * *read))) < 0) {
                result = -1;
            } else {
                result = -2; /* (go on) */
            }
            if (result != -2) {
                Py_DECREF(f.label);
                break;
            }
        }
        /* tokens of the node equal to the query's from pos (-1: the query ends inside it) */
        Py_ssize_t equal = stop <= end ? first_difference(f.tokens, q->ids + pos, stop - pos) : -1;
        if (equal == stop - pos) {
            Py_DECREF(f.label);
            result = -1;
            if (PyList_Append(path, child) < 0) break;
            result = used = f.blocks;
            if (stop == end) break;
            pos = stop;
            result = -1;
            if (*read < pos + bs &&
                read_to(q, read, min_ssize(end, max_ssize(pos + bs, 2 * *read))) < 0)
                break;
            PyObject *children = PyObject_GetAttr(child, s_children);
            if (!children) break;
            PyObject *below = child_at(children, q->ids, pos, bs, key_fn);
            Py_DECREF(children);
            if (!below) {
                result = PyErr_Occurred() ? -1 : used;
                break;
            }
            Py_SETREF(child, below);
            continue;
        }
        /* some block differs, or the query ends inside this node */
        Py_ssize_t common = equal >= 0 ? equal / bs
                                       : leading_blocks(f.tokens, q->ids + pos, (end - pos) / bs, bs);
        Py_DECREF(f.label);
        result = used;
        if (common) result = PyList_Append(path, child) < 0 ? -1 : common;
        break;
    }
    Py_DECREF(child);
    return result;
}

PyDoc_STRVAR(find_doc,
"find(children, ids, block_size, key, node_type) -> (path, used, view)\n\n"
"The longest indexed path for ids (a 1-D buffer of 8-byte signed ints) below a namespace\n"
"root whose children dict is `children` (None: no root): the path's nodes, the blocks used\n"
"in its last one, and the canonical bytes of the ids read. `key` maps a block's bytes to\n"
"its child key (None: the bytes themselves). Same result and errors as the Python descent.");

static PyObject *find_path(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "find() takes 5 arguments");
        return NULL;
    }
    PyObject *children = args[0], *key_fn = args[3];
    if (!PyType_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "node_type: expected a type");
        return NULL;
    }
    PyTypeObject *node_type = (PyTypeObject *)args[4];
    Py_ssize_t bs = PyLong_AsSsize_t(args[2]);
    if (bs == -1 && PyErr_Occurred()) return NULL;
    if (bs < 1 || bs > (PY_SSIZE_T_MAX >> 4)) {
        PyErr_Format(PyExc_ValueError, "block_size: expected a positive int, got %zd", bs);
        return NULL;
    }
    if (children != Py_None && !PyDict_Check(children)) {
        PyErr_SetString(PyExc_TypeError, "children: expected a dict or None");
        return NULL;
    }
    if (key_fn != Py_None && !PyCallable_Check(key_fn)) {
        PyErr_SetString(PyExc_TypeError, "key: expected a callable or None");
        return NULL;
    }
    Ids q;
    if (open_ids(args[1], &q) < 0) return NULL;
    PyObject *path = PyList_New(0), *result = NULL;
    Py_ssize_t read = 0, used = 0, end = q.n / bs * bs;
    if (!path || read_to(&q, &read, bs) < 0) goto done; /* TokenReader's head */
    if (children != Py_None && end) {
        PyObject *child = child_at(children, q.ids, 0, bs, key_fn);
        if (child) used = descend(child, &q, &read, end, bs, key_fn, node_type, path);
        if (PyErr_Occurred()) goto done;
    }
    PyObject *view = canonical(q.ids, read);
    if (view) result = Py_BuildValue("(NnN)", path, PyList_GET_SIZE(path) ? used : 0, view);
    path = NULL; /* (stolen by the result, or released with it) */
done:
    Py_XDECREF(path);
    PyBuffer_Release(&q.view);
    return result;
}

PyDoc_STRVAR(read_doc,
"read(ids, stop) -> bytes\n\n"
"The canonical bytes of ids[:stop] (stop clamped to len(ids)); ValueError naming the first\n"
"id outside [0, 2**32), as prefixkv.tokens does.");

static PyObject *read_ids(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read() takes 2 arguments");
        return NULL;
    }
    Py_ssize_t stop = PyLong_AsSsize_t(args[1]);
    if (stop == -1 && PyErr_Occurred()) return NULL;
    if (stop < 0) {
        PyErr_Format(PyExc_ValueError, "stop: expected a non-negative int, got %zd", stop);
        return NULL;
    }
    Ids q;
    if (open_ids(args[0], &q) < 0) return NULL;
    Py_ssize_t count = min_ssize(stop, q.n);
    PyObject *out = check_range(q.ids, 0, count) < 0 ? NULL : canonical(q.ids, count);
    PyBuffer_Release(&q.view);
    return out;
}

PyDoc_STRVAR(page_firsts_doc,
"page_firsts(slots, page_size) -> bytes\n\n"
"The first slot of each page of slots (a 1-D buffer of 8-byte signed ints, a whole number\n"
"of pages) as native int64 bytes, checking that the slots of every page are consecutive\n"
"(ValueError if not).");

static PyObject *page_firsts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "page_firsts() takes 2 arguments");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (size < 1) {
        PyErr_Format(PyExc_ValueError, "page_size: expected a positive int, got %zd", size);
        return NULL;
    }
    Ids q;
    if (open_ids(args[0], &q) < 0) return NULL;
    PyObject *out = NULL;
    if (q.n % size) {
        PyErr_Format(PyExc_ValueError, "slots: %zd slots are not whole pages of %zd", q.n, size);
        goto done;
    }
    for (Py_ssize_t page = 0; page < q.n; page += size) {
        const int64_t *first = q.ids + page;
        uint64_t off = 0;
        for (Py_ssize_t i = 1; i < size; i++) /* (unsigned: wraps as NumPy's int64) */
            off |= ((uint64_t)first[i] - (uint64_t)first[0]) ^ (uint64_t)i;
        if (off) {
            PyErr_SetString(PyExc_ValueError,
                            "value: the slots of a page must be consecutive (a paged allocator's)");
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, q.n / size * 8); /* (no Python int per page) */
    if (out) {
        int64_t *dst = (int64_t *)PyBytes_AS_STRING(out);
        for (Py_ssize_t page = 0; page < q.n / size; page++) dst[page] = q.ids[page * size];
    }
done:
    PyBuffer_Release(&q.view);
    return out;
}

static PyMethodDef methods[] = {
    {"page_firsts", (PyCFunction)(void (*)(void))page_firsts, METH_FASTCALL, page_firsts_doc},
    {"find", (PyCFunction)(void (*)(void))find_path, METH_FASTCALL, find_doc},
    {"read", (PyCFunction)(void (*)(void))read_ids, METH_FASTCALL, read_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "prefixkv_descent",
    "The prefix index's descent over 8-byte token ids read in place.", -1, methods,
};

PyMODINIT_FUNC PyInit_prefixkv_descent(void) {
    s_label = PyUnicode_InternFromString("label");
    s_values = PyUnicode_InternFromString("values");
    s_children = PyUnicode_InternFromString("children");
    if (!s_label || !s_values || !s_children) return NULL;
    PyObject *array_module = PyImport_ImportModule("array");
    if (!array_module) return NULL;
    array_type = (PyTypeObject *)PyObject_GetAttrString(array_module, "array");
    Py_DECREF(array_module);
    if (!array_type) return NULL;
    if (!PyType_Check(array_type)) {
        PyErr_SetString(PyExc_TypeError, "array.array is not a type");
        return NULL;
    }
    return PyModule_Create(&module);
}
