/* The MaxMind DB search tree, walked without decoding the record.
 *
 * maxminddb's lookups decode the matched record into Python dicts (about
 * 4 us for a city record), but the DNS answer cache only needs to know which
 * record a client falls into and the prefix length of its network: networks
 * that share a record share its offset. This walks the tree in the mapped file
 * and returns the raw record value; the caller decodes a record the first time
 * it sees its value only, with `record`, from the same mapping (a second
 * mapping, maxminddb's, would double what RSS counts for the file).
 *
 *   Tree(buffer, node_count, record_size, ip_version)
 *   Tree.find(packed: bytes) -> (value | None, prefix)
 *   Tree.record(value) -> the decoded record (dict, as maxminddb returns it)
 *
 * `packed` is an address in network byte order, 4 or 16 bytes. An IPv4
 * address in an IPv6 tree is looked up under ::/96, its prefix counted in IPv4
 * bits, as maxminddb does; a 6to4 address (2002::/16) by the IPv4 address it
 * embeds, its prefix 16 + the IPv4 prefix. The value is the record's data pointer (> node_count),
 * None when the database has no data for the address. Format:
 * https://maxmind.github.io/MaxMind-DB/ ("Search Tree Section").
 *
 * Safe on any file: the tree must fit in the buffer, checked once at
 * construction; the buffer is held (not copied) for the Tree's lifetime.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    Py_buffer buf;
    int held;
    uint64_t node_count;
    int record_size;
    int ip_version;
    uint64_t ipv4_start;
    int ipv4_start_depth;
} Tree;

static uint64_t
walk(const Tree *t, uint64_t node, const unsigned char *ip, int bits, int *depth_out)
{
    const unsigned char *tree = t->buf.buf;
    const uint64_t node_bytes = (uint64_t)t->record_size / 4;
    int depth = 0;
    while (depth < bits && node < t->node_count) {
        const unsigned char *p = tree + node * node_bytes;
        int bit = (ip[depth >> 3] >> (7 - (depth & 7))) & 1;
        uint32_t value;
        if (t->record_size == 24) {
            p += bit * 3;
            value = ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
        } else if (t->record_size == 28) {
            if (bit)
                value = ((uint32_t)(p[3] & 0x0F) << 24) | ((uint32_t)p[4] << 16) | ((uint32_t)p[5] << 8) | p[6];
            else
                value = ((uint32_t)(p[3] & 0xF0) << 20) | ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
        } else {
            p += bit * 4;
            value = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
        }
        node = value;
        depth++;
    }
    *depth_out = depth;
    return node;
}

static int
Tree_init(Tree *self, PyObject *args, PyObject *kwds)
{
    unsigned long long node_count;
    int record_size, ip_version;
    if (self->held) {
        PyErr_SetString(PyExc_TypeError, "Tree is already initialised");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "y*Kii", &self->buf, &node_count, &record_size, &ip_version))
        return -1;
    self->held = 1;
    if (record_size != 24 && record_size != 28 && record_size != 32) {
        PyErr_Format(PyExc_ValueError, "unsupported record size %d", record_size);
        return -1;
    }
    if (ip_version != 4 && ip_version != 6) {
        PyErr_Format(PyExc_ValueError, "unsupported IP version %d", ip_version);
        return -1;
    }
    if (node_count > (unsigned long long)self->buf.len / ((unsigned long long)record_size / 4)) {
        PyErr_SetString(PyExc_ValueError, "search tree larger than the file");
        return -1;
    }
    self->node_count = node_count;
    self->record_size = record_size;
    self->ip_version = ip_version;
    self->ipv4_start = 0;
    self->ipv4_start_depth = 0;
    if (ip_version == 6) {
        static const unsigned char zeros[12] = {0};
        self->ipv4_start = walk(self, 0, zeros, 96, &self->ipv4_start_depth);
    }
    return 0;
}

/* ---- Record decoding (the data section), so that one mapping serves both ----
 *
 * Types from the spec's "Data Section": pointer 1, string 2, double 3, bytes 4,
 * uint16 5, uint32 6, map 7, int32 8, uint64 9, uint128 10, array 11, boolean
 * 14, float 15. Decoded to what maxminddb returns (dict, list, str, int,
 * float, bool, bytes). Every read is bounds-checked and nesting is limited,
 * so a corrupt or hostile file raises ValueError instead of crashing.
 */
#define MAX_DEPTH 32

typedef struct {
    const unsigned char *data;   /* the data section */
    Py_ssize_t size;
} Section;

static PyObject *decode_at(const Section *s, Py_ssize_t *pos, int depth);

static int
need(const Section *s, Py_ssize_t pos, Py_ssize_t n)
{
    if (pos < 0 || n < 0 || pos > s->size || n > s->size - pos) {
        PyErr_SetString(PyExc_ValueError, "record runs past the data section");
        return -1;
    }
    return 0;
}

static unsigned long long
be(const unsigned char *p, Py_ssize_t n)
{
    unsigned long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static PyObject *
decode_at(const Section *s, Py_ssize_t *pos, int depth)
{
    if (depth > MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "record nested too deeply");
        return NULL;
    }
    if (need(s, *pos, 1) < 0)
        return NULL;
    unsigned char ctrl = s->data[(*pos)++];
    int type = ctrl >> 5;
    if (type == 1) { /* pointer: decode there, continue after the pointer here */
        int size = (ctrl >> 3) & 0x3;
        Py_ssize_t n = size + 1;
        if (need(s, *pos, n) < 0)
            return NULL;
        unsigned long long base = ctrl & 0x7;
        unsigned long long target;
        const unsigned char *p = s->data + *pos;
        if (size == 0)
            target = (base << 8) | p[0];
        else if (size == 1)
            target = ((base << 16) | be(p, 2)) + 2048;
        else if (size == 2)
            target = ((base << 24) | be(p, 3)) + 526336;
        else
            target = be(p, 4);
        *pos += n;
        if (target >= (unsigned long long)s->size) {
            PyErr_SetString(PyExc_ValueError, "pointer past the data section");
            return NULL;
        }
        Py_ssize_t there = (Py_ssize_t)target;
        return decode_at(s, &there, depth + 1);
    }
    if (type == 0) { /* extended */
        if (need(s, *pos, 1) < 0)
            return NULL;
        type = 7 + s->data[(*pos)++];
    }
    Py_ssize_t size = ctrl & 0x1F;
    if (size >= 29) {
        Py_ssize_t extra = size - 28;
        if (need(s, *pos, extra) < 0)
            return NULL;
        unsigned long long v = be(s->data + *pos, extra);
        *pos += extra;
        size = (Py_ssize_t)(extra == 1 ? 29 + v : extra == 2 ? 285 + v : 65821 + v);
    }
    const unsigned char *p;
    switch (type) {
    case 2: /* string */
        if (need(s, *pos, size) < 0)
            return NULL;
        p = s->data + *pos;
        *pos += size;
        return PyUnicode_DecodeUTF8((const char *)p, size, "strict");
    case 4: /* bytes */
        if (need(s, *pos, size) < 0)
            return NULL;
        p = s->data + *pos;
        *pos += size;
        return PyBytes_FromStringAndSize((const char *)p, size);
    case 3: { /* double */
        if (size != 8 || need(s, *pos, 8) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "double of the wrong size");
            return NULL;
        }
        unsigned long long bits = be(s->data + *pos, 8);
        *pos += 8;
        double d;
        memcpy(&d, &bits, 8);
        return PyFloat_FromDouble(d);
    }
    case 15: { /* float */
        if (size != 4 || need(s, *pos, 4) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "float of the wrong size");
            return NULL;
        }
        uint32_t bits = (uint32_t)be(s->data + *pos, 4);
        *pos += 4;
        float f;
        memcpy(&f, &bits, 4);
        return PyFloat_FromDouble((double)f);
    }
    case 5: case 6: case 9: case 10: { /* unsigned ints: 2, 4, 8, 16 bytes at most */
        Py_ssize_t max = type == 5 ? 2 : type == 6 ? 4 : type == 9 ? 8 : 16;
        if (size > max || need(s, *pos, size) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "integer too long");
            return NULL;
        }
        p = s->data + *pos;
        *pos += size;
        return _PyLong_FromByteArray(p, (size_t)size, 0, 0);
    }
    case 8: { /* int32 */
        if (size > 4 || need(s, *pos, size) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "int32 too long");
            return NULL;
        }
        uint32_t v = (uint32_t)be(s->data + *pos, size);
        *pos += size;
        return PyLong_FromLong((long)(int32_t)v);
    }
    case 14: /* boolean: the value is the size */
        if (size > 1) {
            PyErr_SetString(PyExc_ValueError, "boolean larger than 1");
            return NULL;
        }
        return PyBool_FromLong((long)size);
    case 7: { /* map */
        PyObject *map = PyDict_New();
        if (map == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < size; i++) {
            PyObject *key = decode_at(s, pos, depth + 1);
            if (key == NULL) {
                Py_DECREF(map);
                return NULL;
            }
            if (!PyUnicode_Check(key)) {
                Py_DECREF(key);
                Py_DECREF(map);
                PyErr_SetString(PyExc_ValueError, "map key is not a string");
                return NULL;
            }
            PyObject *value = decode_at(s, pos, depth + 1);
            if (value == NULL || PyDict_SetItem(map, key, value) < 0) {
                Py_DECREF(key);
                Py_XDECREF(value);
                Py_DECREF(map);
                return NULL;
            }
            Py_DECREF(key);
            Py_DECREF(value);
        }
        return map;
    }
    case 11: { /* array */
        if (size > s->size) {
            PyErr_SetString(PyExc_ValueError, "array longer than the data section");
            return NULL;
        }
        PyObject *list = PyList_New(size);
        if (list == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < size; i++) {
            PyObject *value = decode_at(s, pos, depth + 1);
            if (value == NULL) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, i, value);
        }
        return list;
    }
    default:
        PyErr_Format(PyExc_ValueError, "unknown data type %d", type);
        return NULL;
    }
}

static PyObject *
Tree_record(Tree *self, PyObject *arg)
{
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
    if (value == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    const unsigned long long node_bytes = (unsigned long long)self->record_size / 4;
    const unsigned long long tree_size = self->node_count * node_bytes;
    if (value <= self->node_count || tree_size + 16 > (unsigned long long)self->buf.len) {
        PyErr_SetString(PyExc_ValueError, "not a data pointer of this tree");
        return NULL;
    }
    Section s = {(const unsigned char *)self->buf.buf + tree_size + 16, (Py_ssize_t)(self->buf.len - tree_size - 16)};
    Py_ssize_t pos = (Py_ssize_t)(value - self->node_count - 16);
    if (pos < 0 || pos >= s.size) {
        PyErr_SetString(PyExc_ValueError, "data pointer past the data section");
        return NULL;
    }
    return decode_at(&s, &pos, 0);
}

static PyObject *
Tree_find(Tree *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "find() takes bytes");
        return NULL;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(arg);
    const unsigned char *ip = (const unsigned char *)PyBytes_AS_STRING(arg);
    uint64_t value;
    int depth;
    if (len == 4) {
        value = walk(self, self->ipv4_start, ip, 32, &depth);
    } else if (len == 16 && ip[0] == 0x20 && ip[1] == 0x02) {
        /* 6to4 (2002::/16): located by the IPv4 address it embeds, as gdnsd does; the
         * prefix counts the 16 bits of 2002::/16 too (GeoDatabase.find documents it). */
        value = walk(self, self->ipv4_start, ip + 2, 32, &depth);
        depth += 16;
    } else if (len == 16) {
        if (self->ip_version == 4)
            return Py_BuildValue("Oi", Py_None, 0);  /* an IPv6 address in an IPv4-only database */
        value = walk(self, 0, ip, 128, &depth);
    } else {
        PyErr_SetString(PyExc_ValueError, "an address is 4 or 16 bytes");
        return NULL;
    }
    if (value <= self->node_count)
        return Py_BuildValue("Oi", Py_None, depth);
    return Py_BuildValue("Ki", (unsigned long long)value, depth);
}

static void
Tree_dealloc(Tree *self)
{
    if (self->held)
        PyBuffer_Release(&self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Tree_methods[] = {
    {"find", (PyCFunction)Tree_find, METH_O, "find(packed) -> (record value | None, prefix length)"},
    {"record", (PyCFunction)Tree_record, METH_O, "record(value) -> the decoded record a value from find() points to"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TreeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "geodns.geo._tree.Tree",
    .tp_basicsize = sizeof(Tree),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A MaxMind DB search tree over a buffer (the mapped file).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tree_init,
    .tp_dealloc = (destructor)Tree_dealloc,
    .tp_methods = Tree_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tree", "MaxMind DB search tree walk.", -1, NULL};

PyMODINIT_FUNC
PyInit__tree(void)
{
    if (PyType_Ready(&TreeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TreeType);
    if (PyModule_AddObject(m, "Tree", (PyObject *)&TreeType) < 0) {
        Py_DECREF(&TreeType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
