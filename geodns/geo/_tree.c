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
 *   Tree.place(value) -> the fields of its Location, or None (see below)
 *   Tree.verify() -> None, or ValueError: every record the tree points to decodes
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

/* Record `bit` (0 left, 1 right) of node `node`: another node, "no data" (node_count), or data. */
static inline uint32_t
record_of(const Tree *t, uint64_t node, int bit)
{
    const unsigned char *p = (const unsigned char *)t->buf.buf + node * ((uint64_t)t->record_size / 4);
    if (t->record_size == 24) {
        p += bit * 3;
        return ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
    }
    if (t->record_size == 28) {
        if (bit)
            return ((uint32_t)(p[3] & 0x0F) << 24) | ((uint32_t)p[4] << 16) | ((uint32_t)p[5] << 8) | p[6];
        return ((uint32_t)(p[3] & 0xF0) << 20) | ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
    }
    p += bit * 4;
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t
walk(const Tree *t, uint64_t node, const unsigned char *ip, int bits, int *depth_out)
{
    int depth = 0;
    while (depth < bits && node < t->node_count) {
        node = record_of(t, node, (ip[depth >> 3] >> (7 - (depth & 7))) & 1);
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
 *
 * Why a decoder of our own (bench/geo_decode.py, bench/RESULTS.md, 2026-12-04):
 * it runs only where `place` gives up, which for a GeoIP2 City file (the bundle,
 * the full DB-IP city file) is no record at all, but for DB-IP's flat schema is
 * every record, once per new place. There it decodes in 2.2 us where maxminddb's
 * decoder over the same buffer takes 17.5 us (its C decoder, libmaxminddb, reads
 * only a file it maps itself: a second mapping, and it crashes on some corrupt
 * files), and answer() over the miss storm costs 8.7 us a query against 14.7.
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

/* A pointer's target, for the pointer whose control byte is at `*pos`; `*pos` moves past it. */
static int
pointer_at(const Section *s, Py_ssize_t *pos, Py_ssize_t *target)
{
    unsigned char ctrl = s->data[(*pos)++];
    int size = (ctrl >> 3) & 0x3;
    Py_ssize_t n = size + 1;
    if (need(s, *pos, n) < 0)
        return -1;
    unsigned long long base = ctrl & 0x7;
    unsigned long long t;
    const unsigned char *p = s->data + *pos;
    if (size == 0)
        t = (base << 8) | p[0];
    else if (size == 1)
        t = ((base << 16) | be(p, 2)) + 2048;
    else if (size == 2)
        t = ((base << 24) | be(p, 3)) + 526336;
    else
        t = be(p, 4);
    *pos += n;
    if (t >= (unsigned long long)s->size) {
        PyErr_SetString(PyExc_ValueError, "pointer past the data section");
        return -1;
    }
    *target = (Py_ssize_t)t;
    return 0;
}

/* The type and size of the (non-pointer) value at `*pos`; `*pos` moves to its payload. */
static int
head_at(const Section *s, Py_ssize_t *pos, int *type_out, Py_ssize_t *size_out)
{
    if (need(s, *pos, 1) < 0)
        return -1;
    unsigned char ctrl = s->data[(*pos)++];
    int type = ctrl >> 5;
    if (type == 0) { /* extended */
        if (need(s, *pos, 1) < 0)
            return -1;
        type = 7 + s->data[(*pos)++];
    }
    Py_ssize_t size = ctrl & 0x1F;
    if (size >= 29) {
        Py_ssize_t extra = size - 28;
        if (need(s, *pos, extra) < 0)
            return -1;
        unsigned long long v = be(s->data + *pos, extra);
        *pos += extra;
        size = (Py_ssize_t)(extra == 1 ? 29 + v : extra == 2 ? 285 + v : 65821 + v);
    }
    *type_out = type;
    *size_out = size;
    return 0;
}

static int
is_pointer(const Section *s, Py_ssize_t pos)
{
    return need(s, pos, 1) == 0 && (s->data[pos] >> 5) == 1;
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
    if (is_pointer(s, *pos)) { /* decode there, continue after the pointer here */
        Py_ssize_t there;
        if (pointer_at(s, pos, &there) < 0)
            return NULL;
        return decode_at(s, &there, depth + 1);
    }
    int type;
    Py_ssize_t size;
    if (head_at(s, pos, &type, &size) < 0)
        return NULL;
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

/* The data section and the position a value from find() points to. */
static int
data_pointer(Tree *self, PyObject *arg, Section *s, Py_ssize_t *pos)
{
    unsigned long long value = PyLong_AsUnsignedLongLong(arg);
    if (value == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    const unsigned long long node_bytes = (unsigned long long)self->record_size / 4;
    const unsigned long long tree_size = self->node_count * node_bytes;
    if (value <= self->node_count || tree_size + 16 > (unsigned long long)self->buf.len) {
        PyErr_SetString(PyExc_ValueError, "not a data pointer of this tree");
        return -1;
    }
    s->data = (const unsigned char *)self->buf.buf + tree_size + 16;
    s->size = (Py_ssize_t)(self->buf.len - tree_size - 16);
    *pos = (Py_ssize_t)(value - self->node_count - 16);
    if (*pos < 0 || *pos >= s->size) {
        PyErr_SetString(PyExc_ValueError, "data pointer past the data section");
        return -1;
    }
    return 0;
}

/* ---- A place without the record: the fields a Location is made of ----
 *
 * `record` builds every dict of a city record (~3 us), and location_from_record
 * then reads seven fields out of them (~5 us); a cache-miss storm does this for
 * every new place. `place` walks the record in place and returns those fields:
 *
 *   (latitude, longitude, continent code, country ISO code, first subdivision's
 *    ISO code, its English name, the city's English name)
 *
 * raw (numbers as stored, strings, or None when absent), for
 * geodns.geo.database to finish exactly as location_from_record does. It returns
 * None, meaning "decode the record and use location_from_record", for anything
 * that is not the plain GeoIP2 City shape: a flat (DB-IP) schema, no or an empty
 * `country` (registered_country would apply), a field of an unexpected type, a
 * key seen twice. So for any record `record` decodes, it never decides
 * differently from the general path; tests/geo/test_tree.py checks it over
 * every record of the test databases. (A corrupt record may still give fields
 * where `record` refuses it: only the parts read are checked.)
 */
#define UNUSUAL 1 /* not the plain shape: the caller falls back */

static int skip_at(const Section *s, Py_ssize_t *pos, int depth);

/* Where the value at `pos` really is (a pointer's target, else `pos`). */
static int
deref(const Section *s, Py_ssize_t pos, Py_ssize_t *at)
{
    if (need(s, pos, 1) < 0)
        return -1;
    if (is_pointer(s, pos))
        return pointer_at(s, &pos, at);
    *at = pos;
    return 0;
}

static int
skip_at(const Section *s, Py_ssize_t *pos, int depth)
{
    if (depth > MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "record nested too deeply");
        return -1;
    }
    if (need(s, *pos, 1) < 0)
        return -1;
    if (is_pointer(s, *pos)) {
        Py_ssize_t ignored;
        return pointer_at(s, pos, &ignored);
    }
    int type;
    Py_ssize_t size;
    if (head_at(s, pos, &type, &size) < 0)
        return -1;
    switch (type) {
    case 2: case 4: case 5: case 6: case 8: case 9: case 10:
        break;
    case 3:
        size = 8;
        break;
    case 15:
        size = 4;
        break;
    case 14:
        size = 0;
        break;
    case 7:
    case 11: {
        Py_ssize_t items = type == 7 ? 2 * size : size;
        if (items > s->size) {
            PyErr_SetString(PyExc_ValueError, "container longer than the data section");
            return -1;
        }
        for (Py_ssize_t i = 0; i < items; i++)
            if (skip_at(s, pos, depth + 1) < 0)
                return -1;
        return 0;
    }
    default:
        PyErr_Format(PyExc_ValueError, "unknown data type %d", type);
        return -1;
    }
    if (need(s, *pos, size) < 0)
        return -1;
    *pos += size;
    return 0;
}

/* The value at `pos` must be a container of `want` type (7 map, 11 array): its size, and
 * `*items` at its first item. 0, UNUSUAL (another type), or -1 (error). */
static int
container_at(const Section *s, Py_ssize_t pos, int want, Py_ssize_t *items, Py_ssize_t *size)
{
    Py_ssize_t at;
    int type;
    if (deref(s, pos, &at) < 0 || head_at(s, &at, &type, size) < 0)
        return -1;
    if (type != want)
        return UNUSUAL;
    *items = at;
    return 0;
}

/* The string at `pos` (following a pointer) as bytes in the mapping, or UNUSUAL. */
static int
string_at(const Section *s, Py_ssize_t pos, const char **text, Py_ssize_t *len)
{
    Py_ssize_t at;
    int type;
    if (deref(s, pos, &at) < 0 || head_at(s, &at, &type, len) < 0)
        return -1;
    if (type != 2)
        return UNUSUAL;
    if (need(s, at, *len) < 0)
        return -1;
    *text = (const char *)s->data + at;
    return 0;
}

static int
key_is(const char *text, Py_ssize_t len, const char *want)
{
    return (size_t)len == strlen(want) && memcmp(text, want, len) == 0;
}

/* In the map at `pos`, the position of the value of each key in `keys` (-1: absent).
 * UNUSUAL when the value at `pos` is not a map, a key is not a string, or a wanted
 * key appears twice. */
static int
lookup_keys(const Section *s, Py_ssize_t pos, const char *const *keys, int nkeys, Py_ssize_t *found, int depth)
{
    Py_ssize_t at, size;
    int r = container_at(s, pos, 7, &at, &size);
    if (r != 0)
        return r;
    for (int k = 0; k < nkeys; k++)
        found[k] = -1;
    if (size > s->size) {
        PyErr_SetString(PyExc_ValueError, "map longer than the data section");
        return -1;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        const char *text;
        Py_ssize_t len;
        if ((r = string_at(s, at, &text, &len)) != 0)
            return r;
        if (skip_at(s, &at, depth + 1) < 0)
            return -1;
        for (int k = 0; k < nkeys; k++) {
            if (key_is(text, len, keys[k])) {
                if (found[k] >= 0)
                    return UNUSUAL;
                found[k] = at;
            }
        }
        if (skip_at(s, &at, depth + 1) < 0)
            return -1;
    }
    return 0;
}

/* A string field, or None when absent; UNUSUAL when it is there but not a string. */
static int
optional_string(const Section *s, Py_ssize_t pos, PyObject **out)
{
    if (pos < 0) {
        *out = Py_NewRef(Py_None);
        return 0;
    }
    const char *text;
    Py_ssize_t len;
    int r = string_at(s, pos, &text, &len);
    if (r != 0)
        return r;
    *out = PyUnicode_DecodeUTF8(text, len, "strict");
    return *out == NULL ? -1 : 0;
}

/* names.en of the map at `pos` (absent map or names: None); UNUSUAL on other types. */
static int
english_name(const Section *s, Py_ssize_t pos, PyObject **out, int depth)
{
    static const char *const names_key[] = {"names"};
    static const char *const en_key[] = {"en"};
    Py_ssize_t names, en;
    *out = NULL;
    if (pos < 0)
        return optional_string(s, -1, out);
    int r = lookup_keys(s, pos, names_key, 1, &names, depth + 1);
    if (r != 0)
        return r;
    if (names < 0)
        return optional_string(s, -1, out);
    if ((r = lookup_keys(s, names, en_key, 1, &en, depth + 2)) != 0)
        return r;
    return optional_string(s, en, out);
}

/* A coordinate as stored (double or float), None when absent; UNUSUAL for other types. */
static int
coordinate(const Section *s, Py_ssize_t pos, PyObject **out)
{
    if (pos < 0) {
        *out = Py_NewRef(Py_None);
        return 0;
    }
    Py_ssize_t at, size;
    int type;
    if (deref(s, pos, &at) < 0 || head_at(s, &at, &type, &size) < 0)
        return -1;
    if (type != 3 && type != 15)
        return UNUSUAL;
    *out = decode_at(s, &pos, 1);
    return *out == NULL ? -1 : 0;
}

static PyObject *
Tree_place(Tree *self, PyObject *arg)
{
    Section s;
    Py_ssize_t pos;
    if (data_pointer(self, arg, &s, &pos) < 0)
        return NULL;
    enum { COUNTRY, CONTINENT, SUBDIVISIONS, LOCATION, CITY, FLAT, NKEYS };
    static const char *const top_keys[] = {"country", "continent", "subdivisions", "location", "city", "country_code"};
    static const char *const iso_key[] = {"iso_code"};
    static const char *const code_key[] = {"code"};
    static const char *const coordinate_keys[] = {"latitude", "longitude"};
    Py_ssize_t top[NKEYS], iso, code, coords[2] = {-1, -1}, sub_code = -1, first_sub = -1;
    PyObject *f[7] = {NULL};
    int r = lookup_keys(&s, pos, top_keys, NKEYS, top, 0);
    if (r == 0 && (top[FLAT] >= 0 || top[COUNTRY] < 0))
        r = UNUSUAL; /* the flat schema, or registered_country would apply */
    if (r == 0) {
        Py_ssize_t items, size;
        r = container_at(&s, top[COUNTRY], 7, &items, &size);
        if (r == 0 && size == 0)
            r = UNUSUAL;
    }
    if (r == 0)
        r = lookup_keys(&s, top[COUNTRY], iso_key, 1, &iso, 1);
    if (r == 0)
        r = optional_string(&s, iso, &f[3]);
    if (r == 0 && top[CONTINENT] >= 0 && (r = lookup_keys(&s, top[CONTINENT], code_key, 1, &code, 1)) == 0)
        r = optional_string(&s, code, &f[2]);
    else if (r == 0)
        f[2] = Py_NewRef(Py_None);
    if (r == 0 && top[SUBDIVISIONS] >= 0) {
        Py_ssize_t items, size;
        r = container_at(&s, top[SUBDIVISIONS], 11, &items, &size);
        if (r == 0 && size > 0)
            first_sub = items;
    }
    if (r == 0 && first_sub >= 0 && (r = lookup_keys(&s, first_sub, iso_key, 1, &sub_code, 1)) == 0)
        r = english_name(&s, first_sub, &f[5], 1);
    if (r == 0)
        r = optional_string(&s, sub_code, &f[4]);
    if (r == 0 && f[5] == NULL)
        f[5] = Py_NewRef(Py_None);
    if (r == 0 && top[LOCATION] >= 0)
        r = lookup_keys(&s, top[LOCATION], coordinate_keys, 2, coords, 1);
    if (r == 0)
        r = coordinate(&s, coords[0], &f[0]);
    if (r == 0)
        r = coordinate(&s, coords[1], &f[1]);
    if (r == 0)
        r = english_name(&s, top[CITY], &f[6], 1);
    if (r != 0) {
        for (int i = 0; i < 7; i++)
            Py_XDECREF(f[i]);
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(NNNNNNN)", f[0], f[1], f[2], f[3], f[4], f[5], f[6]);
}

/* ---- Checking the whole file once, at open ----
 *
 * `verify` walks every node and checks every record a node points to, as
 * `record` would decode it (types, sizes, bounds, UTF-8, string map keys,
 * nesting), without building anything: a corrupt file is refused when it is
 * opened, not discovered one client at a time. A value checked once (a record,
 * or the shared map a pointer leads to) is remembered in a bitmap over the data
 * section and not checked again, so the cost is one pass over the tree and one
 * over the data: about 0.1 s for the 135 MB DB-IP city file.
 */
static int check_at(const Section *s, Py_ssize_t *pos, int depth, unsigned char *seen);

static int
seen_bit(const unsigned char *seen, Py_ssize_t pos)
{
    return (seen[pos >> 3] >> (pos & 7)) & 1;
}

/* Strict UTF-8, as Python's decoder takes it: no overlongs, no surrogates, nothing past U+10FFFF. */
static int
utf8_ok(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else
            return 0;
        if (n - i < len || p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (int k = 2; k < len; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

static int
corrupt(const char *what, Py_ssize_t pos)
{
    PyErr_Format(PyExc_ValueError, "%s at data offset %zd", what, pos);
    return -1;
}

/* The value at `*pos` (a map key when `key`): check it, and move `*pos` past it. */
static int
check_value(const Section *s, Py_ssize_t *pos, int depth, unsigned char *seen, int key)
{
    if (depth > MAX_DEPTH)
        return corrupt("record nested too deeply", *pos);
    if (need(s, *pos, 1) < 0)
        return -1;
    if (is_pointer(s, *pos)) {
        Py_ssize_t there;
        if (pointer_at(s, pos, &there) < 0)
            return -1;
        if (key) { /* a key must be a string, wherever it is */
            Py_ssize_t at = there, size;
            int type;
            if (head_at(s, &at, &type, &size) < 0)
                return -1;
            if (type != 2)
                return corrupt("map key is not a string", there);
        }
        if (seen_bit(seen, there))
            return 0;
        if (check_at(s, &there, depth + 1, seen) < 0)
            return -1;
        return 0;
    }
    if (key) {
        Py_ssize_t at = *pos, size;
        int type;
        if (head_at(s, &at, &type, &size) < 0)
            return -1;
        if (type != 2)
            return corrupt("map key is not a string", *pos);
    }
    return check_at(s, pos, depth, seen);
}

/* The (non-pointer, or pointer-target) value at `*pos`, as decode_at would decode it. */
static int
check_at(const Section *s, Py_ssize_t *pos, int depth, unsigned char *seen)
{
    const Py_ssize_t start = *pos;
    if (depth > MAX_DEPTH)
        return corrupt("record nested too deeply", start);
    if (need(s, *pos, 1) < 0)
        return -1;
    if (is_pointer(s, *pos)) { /* a pointer to a pointer: decode_at follows it, so do we */
        Py_ssize_t there;
        if (pointer_at(s, pos, &there) < 0)
            return -1;
        return seen_bit(seen, there) ? 0 : check_at(s, &there, depth + 1, seen);
    }
    int type;
    Py_ssize_t size;
    if (head_at(s, pos, &type, &size) < 0)
        return -1;
    switch (type) {
    case 2: /* string */
        if (need(s, *pos, size) < 0)
            return -1;
        if (!utf8_ok(s->data + *pos, size))
            return corrupt("string is not UTF-8", start);
        break;
    case 4: /* bytes: any size the section holds (checked below) */
        break;
    case 3: /* double */
        if (size != 8)
            return corrupt("double of the wrong size", start);
        break;
    case 15: /* float */
        if (size != 4)
            return corrupt("float of the wrong size", start);
        break;
    case 5: case 6: case 9: case 10: /* unsigned ints: 2, 4, 8, 16 bytes at most */
        if (size > (type == 5 ? 2 : type == 6 ? 4 : type == 9 ? 8 : 16))
            return corrupt("integer too long", start);
        break;
    case 8: /* int32 */
        if (size > 4)
            return corrupt("int32 too long", start);
        break;
    case 14: /* boolean: the value is the size */
        if (size > 1)
            return corrupt("boolean larger than 1", start);
        size = 0;
        break;
    case 7: /* map */
    case 11: /* array */
        if ((type == 7 ? 2 * size : size) > s->size)
            return corrupt("container longer than the data section", start);
        for (Py_ssize_t i = 0; i < size; i++) {
            if (type == 7 && check_value(s, pos, depth + 1, seen, 1) < 0)
                return -1;
            if (check_value(s, pos, depth + 1, seen, 0) < 0)
                return -1;
        }
        size = 0;
        break;
    default:
        PyErr_Format(PyExc_ValueError, "unknown data type %d at data offset %zd", type, start);
        return -1;
    }
    if (need(s, *pos, size) < 0)
        return -1;
    *pos += size;
    seen[start >> 3] |= (unsigned char)(1 << (start & 7));
    return 0;
}

static PyObject *
Tree_verify(Tree *self, PyObject *Py_UNUSED(ignored))
{
    const unsigned char *tree = self->buf.buf;
    const uint64_t node_bytes = (uint64_t)self->record_size / 4;
    const uint64_t tree_size = self->node_count * node_bytes;
    if (tree_size + 16 > (uint64_t)self->buf.len) {
        PyErr_SetString(PyExc_ValueError, "no data section after the search tree");
        return NULL;
    }
    for (int i = 0; i < 16; i++)
        if (tree[tree_size + i] != 0) {
            PyErr_SetString(PyExc_ValueError, "the 16 bytes after the search tree are not zero");
            return NULL;
        }
    Section s = {tree + tree_size + 16, (Py_ssize_t)(self->buf.len - tree_size - 16)};
    unsigned char *seen = PyMem_Calloc((size_t)s.size / 8 + 1, 1);
    if (seen == NULL)
        return PyErr_NoMemory();
    int failed = 0;
    uint64_t last = 0; /* neighbouring networks mostly share a record: skip it without the bitmap */
    /* The walk over the nodes runs without the GIL (a thread of the control plane may check
     * a new file while the event loop goes on); checking a record takes it back, since the
     * checks raise as they go. The buffer stays put: our caller holds this Tree. */
    Py_BEGIN_ALLOW_THREADS
    for (uint64_t node = 0; node < self->node_count && !failed; node++) {
        for (int bit = 0; bit < 2; bit++) {
            const uint64_t value = record_of(self, node, bit);
            if (value <= self->node_count || value == last)
                continue; /* another node, no data, or the record just checked */
            last = value;
            if (value < self->node_count + 16 || value - self->node_count - 16 >= (uint64_t)s.size) {
                Py_BLOCK_THREADS
                PyErr_Format(PyExc_ValueError, "node %llu points past the data section", (unsigned long long)node);
                Py_UNBLOCK_THREADS
                failed = 1;
                break;
            }
            Py_ssize_t pos = (Py_ssize_t)(value - self->node_count - 16);
            if (!seen_bit(seen, pos)) {
                Py_BLOCK_THREADS
                failed = check_at(&s, &pos, 0, seen) < 0;
                Py_UNBLOCK_THREADS
                if (failed)
                    break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(seen);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Tree_record(Tree *self, PyObject *arg)
{
    Section s;
    Py_ssize_t pos;
    if (data_pointer(self, arg, &s, &pos) < 0)
        return NULL;
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
    {"verify", (PyCFunction)Tree_verify, METH_NOARGS, "verify() -> None, or ValueError naming the first thing in the file that lookups could not decode"},
    {"record", (PyCFunction)Tree_record, METH_O, "record(value) -> the decoded record a value from find() points to"},
    {"place", (PyCFunction)Tree_place, METH_O, "place(value) -> (lat, lon, continent, country, subdivision code, its name, city) or None"},
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
