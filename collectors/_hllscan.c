/*
 * collectors._hllscan: the per-address work of the unique-client count, in C.
 *
 * The log scan is one regular expression per chunk (in Python), then, for every
 * address it found, a normalisation, a keyed hash and a register update. In
 * Python that last part costs a dictionary lookup or a BLAKE2b call per address,
 * about three times what the expression costs; here it is a few hundred
 * nanoseconds of arithmetic. This module does exactly what collectors/hll.py
 * does address by address, and tests hold the two to the same results:
 *
 *   packed_address(token)  -> 4 or 16 bytes, as hll.packed_address
 *   hash                   -> BLAKE2b, keyed, 8-byte digest, as hll.KeyedHasher
 *   update                 -> index << 8 | rank, as hll.update_of_hash
 *
 * Interface: one Scanner per sketch key, holding the key's BLAKE2b state and a
 * cache; nothing else is kept, here or anywhere.
 *   Scanner(key, slots=2**18)
 *   .update_of(token) -> int        the update one token causes, -1 if not an address
 *   .apply(registers, tokens) -> int
 *       apply every token's update to unpacked registers (a bytearray of 2**14);
 *       returns how many tokens were addresses.
 *   .scan_combined(registers, lines, prefix, suffix) -> int
 *       the same for the address field of every line of a chunk of combined-format
 *       lines stamped in one 10-minute span (requests.py's bulk path), without
 *       making a Python object per line and without holding the GIL; returns the
 *       number of lines, or -1 at the first line of another shape.
 *
 * The cache maps a token's SipHash (under a key random per process and never
 * written, as Python's hash()) to its update, so that an address met again costs
 * one probe instead of a BLAKE2b call. It lives inside the Scanner, out of
 * Python's reach: whatever a caller passes, every register index comes from this
 * file's own arithmetic. A Scanner serves one call at a time (a second, from
 * another thread while the first runs without the GIL, raises RuntimeError).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#define P 14
#define M (1 << P)
#define Q (64 - P)
#define RANK_MASK ((UINT64_C(1) << Q) - 1)
#define DIGEST_BYTES 8
#define MAX_KEY 64
#define MAX_TEXT 63 /* longer than any address spelling inet_pton accepts (45) */

/* ---- BLAKE2b (RFC 7693), only what a keyed hash of one short message needs ---- */

static const uint64_t IV[8] = {
    UINT64_C(0x6a09e667f3bcc908), UINT64_C(0xbb67ae8584caa73b), UINT64_C(0x3c6ef372fe94f82b),
    UINT64_C(0xa54ff53a5f1d36f1), UINT64_C(0x510e527fade682d1), UINT64_C(0x9b05688c2b3e6c1f),
    UINT64_C(0x1f83d9abfb41bd6b), UINT64_C(0x5be0cd19137e2179),
};

static const uint8_t SIGMA[10][16] = { /* rounds 10 and 11 use rows 0 and 1 again */
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
};

static inline uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#define G(a, b, c, d, x, y)          \
    do {                             \
        a = a + b + (x);             \
        d = rotr64(d ^ a, 32);       \
        c = c + d;                   \
        b = rotr64(b ^ c, 24);       \
        a = a + b + (y);             \
        d = rotr64(d ^ a, 16);       \
        c = c + d;                   \
        b = rotr64(b ^ c, 63);       \
    } while (0)

static void compress(uint64_t h[8], const uint8_t block[128], uint64_t counter, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = IV[i];
    }
    v[12] ^= counter; /* messages here are far below 2**64 bytes: the high word stays 0 */
    if (last) v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = SIGMA[r % 10];
        G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
        G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
        G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
        G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
        G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
        G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
        G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
        G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The chaining value after the key block: shared by every address of one call. */
static void keyed_state(uint64_t h[8], const uint8_t *key, Py_ssize_t key_len) {
    uint8_t block[128] = {0};
    memcpy(h, IV, sizeof IV);
    h[0] ^= UINT64_C(0x01010000) ^ ((uint64_t)key_len << 8) ^ DIGEST_BYTES;
    memcpy(block, key, (size_t)key_len);
    compress(h, block, 128, 0);
}

/* The 64-bit hash of one packed address, read big-endian from the digest as hll.py does. */
static uint64_t keyed_hash(const uint64_t state[8], const uint8_t *msg, size_t len) {
    uint64_t h[8];
    uint8_t block[128] = {0};
    memcpy(h, state, sizeof h);
    memcpy(block, msg, len);
    compress(h, block, 128 + len, 1);
    return __builtin_bswap64(h[0]); /* the digest is h[0] little-endian; hll.py reads it big-endian */
}

static inline uint32_t update_of_hash(uint64_t h) {
    uint64_t low = h & RANK_MASK;
    unsigned bits = low ? 64 - (unsigned)__builtin_clzll(low) : 0;
    return (uint32_t)((h >> Q) << 8 | (Q + 1 - bits));
}

/* ---- hll.packed_address, byte for byte ---- */

static int inet4(const char *text, size_t len, uint8_t out[16]) {
    char buf[MAX_TEXT + 1];
    if (len > MAX_TEXT || memchr(text, 0, len)) return 0;
    memcpy(buf, text, len);
    buf[len] = 0;
    return inet_pton(AF_INET, buf, out) == 1 ? 4 : 0;
}

static int inet6(const char *text, size_t len, uint8_t out[16]) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char buf[MAX_TEXT + 1];
    if (len > MAX_TEXT || memchr(text, 0, len)) return 0;
    memcpy(buf, text, len);
    buf[len] = 0;
    if (inet_pton(AF_INET6, buf, out) != 1) return 0;
    if (memcmp(out, mapped, sizeof mapped) == 0) {
        memmove(out, out + 12, 4);
        return 4;
    }
    return 16;
}

/* The characters str.strip() removes that a byte can stand for (other bytes decode to U+FFFD). */
static inline int is_space(unsigned char c) { return (c >= 9 && c <= 13) || (c >= 28 && c <= 32); }

/* Length of the packed form written to out (4 or 16), or 0 when the token is not an address. */
static int packed_address(const char *text, size_t len, uint8_t out[16]) {
    if (!memchr(text, ':', len) && !memchr(text, '%', len)) {
        int n = inet4(text, len, out);
        if (n) return n;
    }
    while (len && is_space((unsigned char)text[0])) text++, len--;
    while (len && is_space((unsigned char)text[len - 1])) len--;
    if (len && text[0] == '[') {
        const char *end = memchr(text, ']', len);
        if (!end) return 0;
        len = (size_t)(end - text) - 1;
        text++;
    } else {
        const char *colon = memchr(text, ':', len);
        if (colon && !memchr(colon + 1, ':', len - (size_t)(colon - text) - 1)) len = (size_t)(colon - text);
    }
    const char *zone = memchr(text, '%', len);
    if (zone) len = (size_t)(zone - text);
    if (!memchr(text, ':', len)) return inet4(text, len, out);
    return inet6(text, len, out);
}

/* ---- one token into the registers, through the caller's cache ---- */

/* ---- the cache's tags: SipHash-1-3 (as CPython's hash() of bytes) under a key random per process ---- */

static uint64_t tag_k0, tag_k1; /* set once at import from getrandom(), never written anywhere */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define HALF_ROUND(a, b, c, d, s, t) \
    a += b;                          \
    c += d;                          \
    b = ROTL(b, s) ^ a;              \
    d = ROTL(d, t) ^ c;              \
    a = ROTL(a, 32);
#define SIP_ROUND(v0, v1, v2, v3)            \
    HALF_ROUND(v0, v1, v2, v3, 13, 16);      \
    HALF_ROUND(v2, v1, v0, v3, 17, 21);

static uint64_t token_tag(const char *token, size_t len) {
    const uint8_t *in = (const uint8_t *)token;
    uint64_t b = (uint64_t)len << 56;
    uint64_t v0 = tag_k0 ^ UINT64_C(0x736f6d6570736575), v1 = tag_k1 ^ UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = tag_k0 ^ UINT64_C(0x6c7967656e657261), v3 = tag_k1 ^ UINT64_C(0x7465646279746573);
    for (; len >= 8; in += 8, len -= 8) {
        uint64_t m = load64(in);
        v3 ^= m;
        SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    for (size_t i = 0; i < len; i++) b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    SIP_ROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    return (v0 ^ v1) ^ (v2 ^ v3);
}

/* One slot of the cache, one word, so that a slot is never half written: the tag's
 * bits above the index bits, then the update + 1 in the low 22 bits (0: empty). */
#define VALUE_BITS 22
#define VALUE_MASK ((UINT64_C(1) << VALUE_BITS) - 1)
#define NOT_ADDRESS VALUE_MASK /* no valid update + 1 has all 22 bits set: ranks stop at Q + 1 */

typedef struct {
    uint64_t state[8]; /* BLAKE2b after the key block */
    uint64_t *table;
    size_t mask;
    unsigned index_bits;
} cache_t;

/* Apply one token; 1 if it was an address. Needs no Python object: callable without the GIL. */
static int add_token(cache_t *c, uint8_t *registers, const char *token, size_t len, uint64_t tag) {
    uint64_t *slot = &c->table[tag & c->mask];
    uint64_t check = (tag >> c->index_bits) << VALUE_BITS;
    uint64_t word = *slot;
    uint32_t value;
    if ((word & VALUE_MASK) && (word & ~VALUE_MASK) == (check & ~VALUE_MASK)) {
        value = (uint32_t)(word & VALUE_MASK);
    } else {
        uint8_t packed[16];
        int n = packed_address(token, len, packed);
        value = n ? update_of_hash(keyed_hash(c->state, packed, (size_t)n)) + 1 : (uint32_t)NOT_ADDRESS;
        *slot = (check & ~VALUE_MASK) | value;
    }
    if (value == NOT_ADDRESS) return 0;
    value -= 1;
    uint32_t index = (value >> 8) & (M - 1);
    uint8_t rank = (uint8_t)(value & 0xff);
    if (registers[index] < rank) registers[index] = rank;
    return 1;
}

/* ---- combined-format lines of one known 10-minute stamp ---- */

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The address field of one line (start to end, without the newline) if the line reads
 * `ADDR ...[PREFIX d:[0-5]d SUFFIX] "..." [1-5]dd` followed by a space, CR or its end;
 * else NULL. The same as requests.py's bulk expression on such a line, never looser. */
static const char *combined_address(const char *line, const char *end, const Py_buffer *prefix,
                                    const Py_buffer *suffix, size_t *len) {
    const char *space = memchr(line, ' ', (size_t)(end - line));
    if (!space || space == line) return NULL;
    const char *p = memchr(space + 1, '[', (size_t)(end - space - 1));
    if (!p) return NULL;
    p++;
    size_t stamp = (size_t)prefix->len + 4 + (size_t)suffix->len;
    if ((size_t)(end - p) < stamp + 3) return NULL;
    if (memcmp(p, prefix->buf, (size_t)prefix->len)) return NULL;
    p += prefix->len;
    if (!is_digit(p[0]) || p[1] != ':' || p[2] < '0' || p[2] > '5' || !is_digit(p[3])) return NULL;
    p += 4;
    if (memcmp(p, suffix->buf, (size_t)suffix->len)) return NULL;
    p += suffix->len;
    if (p[0] != ']' || p[1] != ' ' || p[2] != '"') return NULL;
    p += 3;
    p = memchr(p, '"', (size_t)(end - p));
    if (!p || end - p < 5) return NULL;
    if (p[1] != ' ' || p[2] < '1' || p[2] > '5' || !is_digit(p[3]) || !is_digit(p[4])) return NULL;
    if (end - p > 5 && p[5] != ' ' && p[5] != '\r') return NULL;
    *len = (size_t)(space - line);
    return line;
}

/* ---- the Python interface ---- */

typedef struct {
    PyObject_HEAD
    cache_t cache;
    int busy;
} Scanner;

static int Scanner_init(Scanner *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "slots", NULL};
    Py_buffer key;
    Py_ssize_t slots = (Py_ssize_t)1 << 18;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner in use");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|n:Scanner", kwlist, &key, &slots)) return -1;
    int ok = key.len >= 16 && key.len <= MAX_KEY;
    if (ok) keyed_state(self->cache.state, key.buf, key.len);
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "sketch key must be 16 to 64 bytes");
        return -1;
    }
    if (slots < 1 || slots > ((Py_ssize_t)1 << 24) || (slots & (slots - 1))) {
        PyErr_SetString(PyExc_ValueError, "slots must be a power of two up to 2**24");
        return -1;
    }
    PyMem_Free(self->cache.table);
    self->cache.table = PyMem_Calloc((size_t)slots, sizeof(uint64_t));
    if (!self->cache.table) {
        PyErr_NoMemory();
        return -1;
    }
    self->cache.mask = (size_t)slots - 1;
    self->cache.index_bits = (unsigned)__builtin_ctzll((unsigned long long)slots);
    return 0;
}

static void Scanner_dealloc(Scanner *self) {
    PyMem_Free(self->cache.table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int claim(Scanner *self) {
    if (!self->cache.table) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner not initialised");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner already in use by another thread");
        return -1;
    }
    self->busy = 1;
    return 0;
}

static int parse_registers(Py_buffer *registers) {
    if (registers->len != M) {
        PyErr_SetString(PyExc_ValueError, "registers must be 2**14 bytes");
        return -1;
    }
    return 0;
}

static PyObject *Scanner_update_of(Scanner *self, PyObject *args) {
    Py_buffer token;
    uint8_t packed[16];
    if (!self->cache.table) return PyErr_Format(PyExc_RuntimeError, "Scanner not initialised");
    if (!PyArg_ParseTuple(args, "y*:update_of", &token)) return NULL;
    int n = packed_address(token.buf, (size_t)token.len, packed);
    PyBuffer_Release(&token);
    return PyLong_FromLong(n ? (long)update_of_hash(keyed_hash(self->cache.state, packed, (size_t)n)) : -1L);
}

static PyObject *Scanner_apply(Scanner *self, PyObject *args) {
    Py_buffer registers;
    PyObject *tokens, *iterator = NULL, *item;
    Py_ssize_t applied = 0;
    if (!PyArg_ParseTuple(args, "w*O:apply", &registers, &tokens)) return NULL;
    if (parse_registers(&registers) == 0 && claim(self) == 0) {
        iterator = PyObject_GetIter(tokens);
        while (iterator && (item = PyIter_Next(iterator))) {
            if (!PyBytes_Check(item)) {
                Py_DECREF(item);
                PyErr_SetString(PyExc_TypeError, "tokens must be bytes");
                break;
            }
            const char *token = PyBytes_AS_STRING(item);
            size_t len = (size_t)PyBytes_GET_SIZE(item);
            applied += add_token(&self->cache, registers.buf, token, len, token_tag(token, len));
            Py_DECREF(item);
        }
        Py_XDECREF(iterator);
        self->busy = 0;
    }
    PyBuffer_Release(&registers);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(applied);
}

static PyObject *Scanner_scan_combined(Scanner *self, PyObject *args) {
    Py_buffer registers, prefix, suffix;
    PyObject *data;
    Py_ssize_t lines = 0;
    /* The lines must be an immutable bytes object: nothing can change them while the GIL is released. */
    if (!PyArg_ParseTuple(args, "w*Sy*y*:scan_combined", &registers, &data, &prefix, &suffix)) return NULL;
    if (parse_registers(&registers) == 0 && claim(self) == 0) {
        cache_t *cache = &self->cache;
        uint8_t *regs = registers.buf;
        const char *p = PyBytes_AS_STRING(data), *end = p + PyBytes_GET_SIZE(data);
        Py_BEGIN_ALLOW_THREADS
        /* Lines go in batches: the cache slots of a batch are fetched from memory
         * together, since a probe of the table is mostly a cache miss. */
        enum { BATCH = 16 };
        const char *tokens[BATCH];
        size_t lens[BATCH];
        uint64_t tags[BATCH];
        while (p < end && lines >= 0) {
            int n = 0;
            while (n < BATCH && p < end) {
                const char *eol = memchr(p, '\n', (size_t)(end - p));
                const char *token = eol ? combined_address(p, eol, &prefix, &suffix, &lens[n]) : NULL;
                if (!token) {
                    lines = -1;
                    break;
                }
                tokens[n] = token;
                tags[n] = token_tag(token, lens[n]);
                __builtin_prefetch(&cache->table[tags[n] & cache->mask]);
                n++;
                p = eol + 1;
            }
            for (int i = 0; i < n; i++) add_token(cache, regs, tokens[i], lens[i], tags[i]);
            if (lines >= 0) lines += n;
        }
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
    PyBuffer_Release(&registers);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&suffix);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromSsize_t(lines);
}

static PyMethodDef Scanner_methods[] = {
    {"update_of", (PyCFunction)Scanner_update_of, METH_VARARGS,
     "update_of(token) -> register update (index << 8 | rank), or -1 if the token is not an address."},
    {"apply", (PyCFunction)Scanner_apply, METH_VARARGS,
     "apply(registers, tokens) -> number of tokens that were addresses."},
    {"scan_combined", (PyCFunction)Scanner_scan_combined, METH_VARARGS,
     "scan_combined(registers, lines, prefix, suffix) -> lines applied, or -1 at the first other line."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "collectors._hllscan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scanner(key, slots=2**18): keyed HyperLogLog updates for many addresses at once.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hllscan", "Keyed HyperLogLog updates for many addresses at once.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hllscan(void) {
    uint64_t key[2];
    if (getrandom(key, sizeof key, 0) != (ssize_t)sizeof key) {
        PyErr_SetString(PyExc_ImportError, "no random key for the cache tags");
        return NULL;
    }
    tag_k0 = key[0];
    tag_k1 = key[1];
    if (PyType_Ready(&ScannerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
