/* The MaxMind DB search tree, walked without decoding the record.
 *
 * maxminddb's lookups decode the matched record into Python dicts (about
 * 4 us for a city record), but the DNS answer cache only needs to know which
 * record a client falls into and the prefix length of its network: networks
 * that share a record share its offset. This walks the tree in the mapped file
 * and returns the raw record value; the caller decodes a record (with
 * maxminddb) the first time it sees its value only.
 *
 *   Tree(buffer, node_count, record_size, ip_version)
 *   Tree.find(packed: bytes) -> (value | None, prefix)
 *
 * `packed` is an address in network byte order, 4 or 16 bytes. An IPv4
 * address in an IPv6 tree is looked up under ::/96, its prefix counted in IPv4
 * bits, as maxminddb does. The value is the record's data pointer (> node_count),
 * None when the database has no data for the address. Format:
 * https://maxmind.github.io/MaxMind-DB/ ("Search Tree Section").
 *
 * Safe on any file: the tree must fit in the buffer, checked once at
 * construction; the buffer is held (not copied) for the Tree's lifetime.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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
