/* The common shape of a DNS query, read in C, and its answer patched in C.
 *
 * `geodns.dns.wire.parse_query` reads the shape nearly every resolver sends
 * (one question, no answer or authority records, nothing or one OPT record
 * holding at most one well-formed ECS option and one COOKIE option of a valid
 * length, no trailing bytes) in one
 * pass, and hands anything else to the full parser, which decides and names
 * every error. This is that one pass without the interpreter: it costs about
 * a third as much, and a cache-miss storm parses every query it gets.
 *
 *   bind(Query, Edns, ECSOption)   the classes to build (geodns.dns.wire's)
 *   scan(data: bytes) -> Query | None
 *   patch(body: bytes, query: Query, scope: int | None, udp: bool, cookie: bytes | None = None) -> bytes
 *
 * None means "not the common shape": the caller runs the full parser, so this
 * never raises for bad input. The rules are exactly the Python fast path's in
 * wire.py (`scan_common`); tests/dns/test_hotpath.py checks the three
 * parsers agree on valid, mutated and random packets.
 *
 * `patch` is wire.patch_python's byte assembly (ID, RD/CD, the question as
 * sent, our OPT with the ECS echo and the COOKIE option, truncation to the
 * question with TC) in one
 * allocation; tests/dns/test_hotpath.py compares the two byte for byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *Query, *Edns, *ECSOption;

/* The longest name on the wire, root label included (RFC 1035 3.1; wire.MAX_NAME). A longer
 * question is not the common shape: the full parser answers it FORMERR. */
#define MAX_NAME 255

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
        if (pos >= n || pos - 11 > MAX_NAME) /* the root label at pos makes the name pos - 11 bytes */
            Py_RETURN_NONE;
    }
    const Py_ssize_t end = pos + 5; /* after the root label, QTYPE and QCLASS */
    if (end > n || pos - 11 > MAX_NAME)
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
        /* Options: at most one well-formed ECS and one COOKIE of a valid length, in either order. */
        PyObject *ecs = Py_None, *cookie = Py_None;
        Py_INCREF(Py_None);
        Py_INCREF(Py_None);
        Py_ssize_t pos = end + 11;
        while (pos < n) {
            if (pos + 4 > n)
                goto not_common;
            const unsigned char *o = d + pos;
            unsigned code = u16(o), optlen = u16(o + 2);
            pos += 4;
            if (pos + (Py_ssize_t)optlen > n)
                goto not_common;
            if (code == 8 && ecs == Py_None) {
                if (optlen < 4)
                    goto not_common;
                unsigned family = u16(o + 4), source = o[6], scope = o[7];
                unsigned nbytes = (source + 7) >> 3;
                if (optlen != 4 + nbytes || scope)
                    goto not_common;
                unsigned width = family == 1 ? 4 : family == 2 ? 16 : 0;
                if (!width || source > width * 8)
                    goto not_common;
                const unsigned char *address = o + 8;
                if ((source & 7) && (address[nbytes - 1] & NO_TRAILING_BITS[source & 7]))
                    goto not_common;
                unsigned char full[16] = {0};
                memcpy(full, address, nbytes);
                PyObject *made = PyObject_CallFunction(ECSOption, "IIiy#", family, source, 0, (const char *)full, (Py_ssize_t)width);
                if (made == NULL) {
                    Py_DECREF(ecs);
                    Py_DECREF(cookie);
                    return NULL;
                }
                Py_SETREF(ecs, made);
            } else if (code == 10 && cookie == Py_None && (optlen == 8 || (optlen >= 16 && optlen <= 40))) {
                PyObject *made = PyBytes_FromStringAndSize((const char *)o + 4, optlen);
                if (made == NULL) {
                    Py_DECREF(ecs);
                    Py_DECREF(cookie);
                    return NULL;
                }
                Py_SETREF(cookie, made);
            } else {
                goto not_common;
            }
            pos += optlen;
        }
        edns = PyObject_CallFunction(Edns, "IiONN", payload < 512 ? 512 : payload, 0, (ttl & 0x8000) ? Py_True : Py_False, ecs, cookie);
        if (edns == NULL)
            return NULL;
        goto build;
    not_common:
        Py_DECREF(ecs);
        Py_DECREF(cookie);
        Py_RETURN_NONE;
    }
build:
    return PyObject_CallFunction(Query, "IIy#IINn", qid, flags, (const char *)d + 12, pos + 1 - 12, qtype, qclass, edns, end);
}

#define OUR_PAYLOAD 1232
#define MAX_UDP 4096
#define MAX_TCP 65535

static PyObject *s_id, *s_flags, *s_qname, *s_question_end, *s_edns, *s_payload, *s_do, *s_ecs, *s_family, *s_source, *s_address;

static int
long_attr(PyObject *obj, PyObject *name, long *out)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *
patch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "patch(body, query, scope, udp, cookie=None)");
        return NULL;
    }
    PyObject *body = args[0], *query = args[1], *scope_obj = args[2];
    PyObject *cookie = nargs == 5 ? args[4] : Py_None;
    if (cookie != Py_None && (!PyBytes_Check(cookie) || PyBytes_GET_SIZE(cookie) > 40)) {
        PyErr_SetString(PyExc_TypeError, "cookie is not bytes of at most 40");
        return NULL;
    }
    int udp = PyObject_IsTrue(args[3]);
    if (udp < 0)
        return NULL;
    const unsigned char *b;
    Py_ssize_t blen;
    if (PyBytes_Check(body)) {
        b = (const unsigned char *)PyBytes_AS_STRING(body);
        blen = PyBytes_GET_SIZE(body);
    } else if (PyByteArray_Check(body)) { /* dnslib's pack() */
        b = (const unsigned char *)PyByteArray_AS_STRING(body);
        blen = PyByteArray_GET_SIZE(body);
    } else {
        PyErr_SetString(PyExc_TypeError, "body is not bytes");
        return NULL;
    }
    if (blen < 12) {
        PyErr_SetString(PyExc_ValueError, "body is not a DNS message");
        return NULL;
    }
    long qid, qflags, qend, scope = 0;
    if (long_attr(query, s_id, &qid) < 0 || long_attr(query, s_flags, &qflags) < 0 || long_attr(query, s_question_end, &qend) < 0)
        return NULL;
    if (scope_obj != Py_None) {
        scope = PyLong_AsLong(scope_obj);
        if (scope == -1 && PyErr_Occurred())
            return NULL;
    }
    if (qend < 16 || qend > blen) {
        PyErr_SetString(PyExc_ValueError, "question_end outside the body");
        return NULL;
    }
    PyObject *qname = PyObject_GetAttr(query, s_qname);
    if (qname == NULL)
        return NULL;
    if (!PyBytes_Check(qname)) {
        Py_DECREF(qname);
        PyErr_SetString(PyExc_TypeError, "qname is not bytes");
        return NULL;
    }
    PyObject *edns = PyObject_GetAttr(query, s_edns);
    if (edns == NULL) {
        Py_DECREF(qname);
        return NULL;
    }
    /* Our OPT record: root, type 41, our payload, extended flags (DO), then the ECS echo,
     * then the COOKIE option. */
    unsigned char opt[11 + 8 + 16 + 4 + 40];
    Py_ssize_t optlen = 0;
    long limit = 512;
    unsigned arcount = ((unsigned)b[10] << 8) | b[11];
    PyObject *result = NULL, *ecs = NULL, *address = NULL;
    if (edns != Py_None) {
        long payload, family = 0, source = 0;
        if (long_attr(edns, s_payload, &payload) < 0)
            goto done;
        int do_bit = 0;
        PyObject *d = PyObject_GetAttr(edns, s_do);
        if (d == NULL || (do_bit = PyObject_IsTrue(d)) < 0) {
            Py_XDECREF(d);
            goto done;
        }
        Py_DECREF(d);
        ecs = PyObject_GetAttr(edns, s_ecs);
        if (ecs == NULL)
            goto done;
        Py_ssize_t nbytes = 0;
        if (ecs != Py_None) {
            if (long_attr(ecs, s_family, &family) < 0 || long_attr(ecs, s_source, &source) < 0)
                goto done;
            address = PyObject_GetAttr(ecs, s_address);
            if (address == NULL)
                goto done;
            nbytes = (source + 7) >> 3;
            if (!PyBytes_Check(address) || source < 0 || nbytes > PyBytes_GET_SIZE(address) || nbytes > 16) {
                PyErr_SetString(PyExc_ValueError, "ECS address shorter than its source prefix");
                goto done;
            }
        }
        opt[0] = 0;
        opt[1] = 0; opt[2] = 41;
        opt[3] = OUR_PAYLOAD >> 8; opt[4] = OUR_PAYLOAD & 0xFF;
        opt[5] = 0; opt[6] = 0; opt[7] = do_bit ? 0x80 : 0; opt[8] = 0;
        if (ecs == Py_None) {
            opt[9] = 0; opt[10] = 0;
            optlen = 11;
        } else {
            Py_ssize_t rdlen = 8 + nbytes;
            opt[9] = (unsigned char)(rdlen >> 8); opt[10] = (unsigned char)rdlen;
            opt[11] = 0; opt[12] = 8;
            opt[13] = (unsigned char)((4 + nbytes) >> 8); opt[14] = (unsigned char)(4 + nbytes);
            opt[15] = (unsigned char)(family >> 8); opt[16] = (unsigned char)family;
            opt[17] = (unsigned char)source; opt[18] = (unsigned char)scope;
            memcpy(opt + 19, PyBytes_AS_STRING(address), nbytes);
            optlen = 19 + nbytes;
        }
        if (cookie != Py_None) {
            Py_ssize_t clen = PyBytes_GET_SIZE(cookie);
            opt[optlen] = 0; opt[optlen + 1] = 10;
            opt[optlen + 2] = 0; opt[optlen + 3] = (unsigned char)clen;
            memcpy(opt + optlen + 4, PyBytes_AS_STRING(cookie), clen);
            optlen += 4 + clen;
            Py_ssize_t rdlen = optlen - 11;
            opt[9] = (unsigned char)(rdlen >> 8); opt[10] = (unsigned char)rdlen;
        }
        limit = payload < MAX_UDP ? payload : MAX_UDP;
        arcount += 1;
    }
    if (!udp)
        limit = MAX_TCP;
    unsigned flags = ((((unsigned)b[2] << 8) | b[3]) | ((unsigned)qflags & 0x0110)) & 0xFFFF;
    const Py_ssize_t nlen = PyBytes_GET_SIZE(qname);
    const unsigned char *name = (const unsigned char *)PyBytes_AS_STRING(qname);
    if (blen + optlen > limit) {
        /* Too big for the client's UDP size (or TCP's 65,535): the header and question with TC, and our OPT. */
        result = PyBytes_FromStringAndSize(NULL, 12 + nlen + 4 + optlen);
        if (result == NULL)
            goto done;
        unsigned char *o = (unsigned char *)PyBytes_AS_STRING(result);
        flags |= 0x0200;
        o[0] = (unsigned char)(qid >> 8); o[1] = (unsigned char)qid;
        o[2] = (unsigned char)(flags >> 8); o[3] = (unsigned char)flags;
        o[4] = 0; o[5] = 1; o[6] = 0; o[7] = 0; o[8] = 0; o[9] = 0;
        o[10] = 0; o[11] = optlen ? 1 : 0;
        memcpy(o + 12, name, nlen);
        memcpy(o + 12 + nlen, b + qend - 4, 4);
        memcpy(o + 16 + nlen, opt, optlen);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, 12 + nlen + (blen - (qend - 4)) + optlen);
    if (result == NULL)
        goto done;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(result);
    o[0] = (unsigned char)(qid >> 8); o[1] = (unsigned char)qid;
    o[2] = (unsigned char)(flags >> 8); o[3] = (unsigned char)flags;
    memcpy(o + 4, b + 4, 6);
    o[10] = (unsigned char)(arcount >> 8); o[11] = (unsigned char)arcount;
    memcpy(o + 12, name, nlen);
    memcpy(o + 12 + nlen, b + qend - 4, blen - (qend - 4));
    memcpy(o + 12 + nlen + blen - (qend - 4), opt, optlen);
done:
    Py_XDECREF(address);
    Py_XDECREF(ecs);
    Py_DECREF(edns);
    Py_DECREF(qname);
    return result;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(Query, Edns, ECSOption): the classes scan() builds"},
    {"scan", scan, METH_O, "scan(data) -> Query, or None when the query is not of the common shape"},
    {"patch", (PyCFunction)(void (*)(void))patch, METH_FASTCALL, "patch(body, query, scope, udp, cookie=None) -> the answer to this query"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", "The common shape of a DNS query, read in C.", -1, methods};

PyMODINIT_FUNC
PyInit__scan(void)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_id, "id"); INTERN(s_flags, "flags"); INTERN(s_qname, "qname");
    INTERN(s_question_end, "question_end"); INTERN(s_edns, "edns"); INTERN(s_payload, "payload");
    INTERN(s_do, "do"); INTERN(s_ecs, "ecs"); INTERN(s_family, "family"); INTERN(s_source, "source");
    INTERN(s_address, "address");
#undef INTERN
    return PyModule_Create(&module);
}
