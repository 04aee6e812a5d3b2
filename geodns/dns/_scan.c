/* The common shape of a DNS query, read in C.
 *
 * `geodns.dns.wire.parse_query` reads the shape nearly every resolver sends
 * (one question, no answer or authority records, nothing or one OPT record
 * holding nothing or one well-formed ECS option, no trailing bytes) in one
 * pass, and hands anything else to the full parser, which decides and names
 * every error. This is that one pass without the interpreter: it costs about
 * a third as much, and a cache-miss storm parses every query it gets.
 *
 *   bind(Query, Edns, ECSOption)   the classes to build (geodns.dns.wire's)
 *   scan(data: bytes) -> Query | None
 *
 * None means "not the common shape": the caller runs the full parser, so this
 * never raises for bad input. The rules are exactly the Python fast path's in
 * wire.py (`_scan_common`); tests/dns/test_hotpath.py checks the three
 * parsers agree on valid, mutated and random packets.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *Query, *Edns, *ECSOption;

static const unsigned char NO_TRAILING_BITS[8] = {0xFF, 0x7F, 0x3F, 0x1F, 0x0F, 0x07, 0x03, 0x01};

static unsigned
u16(const unsigned char *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

static PyObject *
bind(PyObject *module, PyObject *args)
{
    PyObject *q, *e, *c;
    if (!PyArg_ParseTuple(args, "OOO", &q, &e, &c))
        return NULL;
    Py_XSETREF(Query, Py_NewRef(q));
    Py_XSETREF(Edns, Py_NewRef(e));
    Py_XSETREF(ECSOption, Py_NewRef(c));
    Py_RETURN_NONE;
}

static PyObject *
scan(PyObject *module, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "scan() takes bytes");
        return NULL;
    }
    if (Query == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "scan() before bind()");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(arg);
    const Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (n < 17)
        Py_RETURN_NONE;
    unsigned qid = u16(d), flags = u16(d + 2);
    unsigned qdcount = u16(d + 4), ancount = u16(d + 6), nscount = u16(d + 8), arcount = u16(d + 10);
    if (qdcount != 1 || ancount || nscount || arcount > 1 || (flags & 0xF800))
        Py_RETURN_NONE; /* QR or an opcode */
    Py_ssize_t pos = 12;
    for (;;) {
        unsigned length = d[pos];
        if (length == 0)
            break;
        if (length > 63)
            Py_RETURN_NONE;
        pos += length + 1;
        if (pos >= n || pos > 266) /* 255 bytes of name after the header */
            Py_RETURN_NONE;
    }
    const Py_ssize_t end = pos + 5; /* after the root label, QTYPE and QCLASS */
    if (end > n || pos - 11 > 255)
        Py_RETURN_NONE;
    unsigned qtype = u16(d + pos + 1), qclass = u16(d + pos + 3);
    PyObject *edns = Py_None;
    if (arcount == 0) {
        if (end != n)
            Py_RETURN_NONE;
        Py_INCREF(Py_None);
    } else {
        if (end + 11 > n || d[end] != 0 || d[end + 1] != 0 || d[end + 2] != 41)
            Py_RETURN_NONE;
        unsigned payload = u16(d + end + 3);
        uint32_t ttl = ((uint32_t)u16(d + end + 5) << 16) | u16(d + end + 7);
        Py_ssize_t rdlen = u16(d + end + 9);
        if ((ttl & 0xFF0000) || end + 11 + rdlen != n) /* EDNS version > 0, or odd lengths */
            Py_RETURN_NONE;
        PyObject *ecs = Py_None;
        Py_INCREF(Py_None);
        if (rdlen) {
            const unsigned char *o = d + end + 11;
            if (rdlen < 8)
                goto not_common;
            unsigned code = u16(o), optlen = u16(o + 2), family = u16(o + 4), source = o[6], scope = o[7];
            unsigned nbytes = (source + 7) >> 3;
            if (code != 8 || optlen != rdlen - 4 || optlen != 4 + nbytes || scope)
                goto not_common;
            unsigned width = family == 1 ? 4 : family == 2 ? 16 : 0;
            if (!width || source > width * 8)
                goto not_common;
            const unsigned char *address = o + 8;
            if ((source & 7) && (address[nbytes - 1] & NO_TRAILING_BITS[source & 7]))
                goto not_common;
            unsigned char full[16] = {0};
            memcpy(full, address, nbytes);
            Py_DECREF(ecs);
            ecs = PyObject_CallFunction(ECSOption, "IIiy#", family, source, 0, (const char *)full, (Py_ssize_t)width);
            if (ecs == NULL)
                return NULL;
        }
        edns = PyObject_CallFunction(Edns, "IiON", payload < 512 ? 512 : payload, 0, (ttl & 0x8000) ? Py_True : Py_False, ecs);
        if (edns == NULL)
            return NULL;
        goto build;
    not_common:
        Py_DECREF(ecs);
        Py_RETURN_NONE;
    }
build:
    return PyObject_CallFunction(Query, "IIy#IINn", qid, flags, (const char *)d + 12, pos + 1 - 12, qtype, qclass, edns, end);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(Query, Edns, ECSOption): the classes scan() builds"},
    {"scan", scan, METH_O, "scan(data) -> Query, or None when the query is not of the common shape"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", "The common shape of a DNS query, read in C.", -1, methods};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
