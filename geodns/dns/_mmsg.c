/* Batched UDP I/O for the data plane: recvmmsg(2) and sendmmsg(2).
 *
 * One system call moves up to BATCH datagrams each way, which is where a
 * Python DNS server spends most of its time otherwise (one recvfrom and one
 * sendto per query). Deliberately small: no DNS logic here, only bytes in and
 * bytes out; addresses stay opaque sockaddr bytes that go back to sendmmsg
 * unchanged, so no address is formatted unless the slow path needs it.
 *
 *   recv(fd, max=64) -> list[tuple[bytes, bytes]]   (datagram, sockaddr); [] when none wait
 *   send(fd, list[tuple[bytes, bytes]]) -> int       datagrams the kernel took (others dropped, as UDP may)
 *
 * Single-threaded use (one event loop per worker): the receive buffers are
 * static and the GIL is held throughout, since the calls never block
 * (MSG_DONTWAIT).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#define BATCH 64
/* Larger than any query we answer: EDNS payloads above 4096 are clamped, and
 * a query that does not fit is truncated by the kernel (MSG_TRUNC), then
 * answered or rejected by the parser like any malformed message. */
#define BUFSIZE 4096

static char bufs[BATCH][BUFSIZE];
static struct sockaddr_storage addrs[BATCH];
static struct iovec iovs[BATCH];
static struct mmsghdr msgs[BATCH];

static PyObject *
mmsg_recv(PyObject *self, PyObject *args)
{
    int fd, max = BATCH;
    if (!PyArg_ParseTuple(args, "i|i", &fd, &max))
        return NULL;
    if (max < 1 || max > BATCH)
        max = BATCH;
    for (int i = 0; i < max; i++) {
        iovs[i].iov_base = bufs[i];
        iovs[i].iov_len = BUFSIZE;
        memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
    }
    int n = recvmmsg(fd, msgs, (unsigned)max, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        unsigned len = msgs[i].msg_len;
        if (len > BUFSIZE)
            len = BUFSIZE;
        PyObject *item = Py_BuildValue("(y#y#)", bufs[i], (Py_ssize_t)len,
                                       (const char *)&addrs[i], (Py_ssize_t)msgs[i].msg_hdr.msg_namelen);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *
mmsg_send(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iO", &fd, &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "send() wants a list of (bytes, sockaddr) pairs");
    if (fast == NULL)
        return NULL;
    Py_ssize_t total = PySequence_Fast_GET_SIZE(fast);
    Py_ssize_t done = 0, sent = 0;
    struct iovec siov[BATCH];
    struct mmsghdr smsg[BATCH];
    while (done < total) {
        int k = 0;
        for (; k < BATCH && done + k < total; k++) {
            PyObject *item = PySequence_Fast_GET_ITEM(fast, done + k);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
                !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
                Py_DECREF(fast);
                PyErr_SetString(PyExc_TypeError, "send() wants (bytes, sockaddr bytes) pairs");
                return NULL;
            }
            PyObject *data = PyTuple_GET_ITEM(item, 0), *addr = PyTuple_GET_ITEM(item, 1);
            siov[k].iov_base = PyBytes_AS_STRING(data);
            siov[k].iov_len = (size_t)PyBytes_GET_SIZE(data);
            memset(&smsg[k].msg_hdr, 0, sizeof(smsg[k].msg_hdr));
            smsg[k].msg_hdr.msg_iov = &siov[k];
            smsg[k].msg_hdr.msg_iovlen = 1;
            smsg[k].msg_hdr.msg_name = PyBytes_AS_STRING(addr);
            smsg[k].msg_hdr.msg_namelen = (socklen_t)PyBytes_GET_SIZE(addr);
        }
        int n = sendmmsg(fd, smsg, (unsigned)k, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* EAGAIN (send buffer full) or a bad client address: skip one
             * datagram and go on, as a dropped UDP answer would be. */
            done += 1;
            continue;
        }
        done += n;
        sent += n;
    }
    Py_DECREF(fast);
    return PyLong_FromSsize_t(sent);
}

static PyMethodDef methods[] = {
    {"recv", mmsg_recv, METH_VARARGS, "recv(fd, max=64) -> list of (datagram, sockaddr): one recvmmsg(2), non-blocking"},
    {"send", mmsg_send, METH_VARARGS, "send(fd, [(datagram, sockaddr), ...]) -> count: sendmmsg(2) in batches of 64"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mmsg", "recvmmsg/sendmmsg for the UDP data plane", -1, methods,
};

PyMODINIT_FUNC
PyInit__mmsg(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL)
        PyModule_AddIntConstant(m, "BATCH", BATCH);
    return m;
}
