# Output buffers that are kept for reuse.
#
# glibc serves a block of 32 MiB or more by mmap and unmaps it on free, so an output that size
# comes fresh from the OS on every call: every page faults in and is zeroed, which costs several
# times the normalization itself (measured, layer norm (8192, 1024) float32, two threads:
# 5.5 ms allocating, 1.6 ms into a reused out=). Smaller blocks fare little better: past its
# (adaptive) mmap threshold glibc takes them from the heap and gives the heap's top back to the
# OS once enough is free there, so in many allocation histories an output of a few hundred KiB
# faults in fresh pages on every call too (layer norm over (64, 56, 56) float32: dweight and
# dbias, 784 KiB each, 360 page faults a backward call). Blocks handed out here go back into a
# small cache when the last array viewing them dies, and the next output of the same size takes
# its pages warm. Outputs from MID_MIN_BYTES get page-rounded blocks; from the large threshold
# (32 MiB) whole 2 MiB units, advised as huge pages. The cache is bounded (set_buffer_cache);
# blocks that do not fit are unmapped.
#
# Every entry point runs with the GIL held (__dealloc__ included), which serializes the cache.

import numpy as np

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS
    void *MAP_FAILED

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifdef MADV_HUGEPAGE
    #define FN_MADV_HUGEPAGE MADV_HUGEPAGE
    #else
    #define FN_MADV_HUGEPAGE (-1)
    #endif
    """
    int FN_MADV_HUGEPAGE

DEF SLOTS = 16
DEF ALIGN = 2097152          # large blocks are whole 2 MiB units (one huge page each)
DEF PAGE = 4096              # smaller ones whole pages
DEF MID_MIN_BYTES = 262144

cdef void *_ptr[SLOTS]
cdef size_t _len[SLOTS]
cdef unsigned long _age[SLOTS]
cdef unsigned long _clock = 0
cdef size_t _held = 0
cdef size_t _limit = 256 << 20
cdef size_t _min_bytes = 32 << 20
cdef size_t _mid_bytes = MID_MIN_BYTES
cdef Py_ssize_t _i
for _i in range(SLOTS):
    _ptr[_i] = NULL
    _len[_i] = 0


cdef void _evict(size_t need):
    """Unmap the oldest cached blocks until need more bytes fit under the limit."""
    global _held
    cdef Py_ssize_t i, old
    while _held + need > _limit:
        old = -1
        for i in range(SLOTS):
            if _ptr[i] != NULL and (old < 0 or _age[i] < _age[old]):
                old = i
        if old < 0:
            return
        munmap(_ptr[old], _len[old])
        _held -= _len[old]
        _ptr[old] = NULL


cdef Py_ssize_t _slot():
    """A free slot: an empty one, else the oldest block's, unmapped (a new block is worth more
    than the oldest: with every slot held by blocks of sizes no longer asked for, each new
    size used to be unmapped when freed and came fresh from the OS on every call)."""
    global _held
    cdef Py_ssize_t i, old = -1
    for i in range(SLOTS):
        if _ptr[i] == NULL:
            return i
        if old < 0 or _age[i] < _age[old]:
            old = i
    munmap(_ptr[old], _len[old])
    _held -= _len[old]
    _ptr[old] = NULL
    return old


cdef class Block:
    """Owner of one mapping; exposes it through the buffer protocol, and hands it back to the
    cache when the last view of it is gone."""
    cdef void *ptr
    cdef size_t nbytes
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]
    cdef readonly bint fresh    # pages never written since they came from the OS

    def __getbuffer__(self, Py_buffer *buf, int flags):
        buf.buf = self.ptr
        buf.obj = self
        buf.len = <Py_ssize_t>self.nbytes
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        self.shape[0] = <Py_ssize_t>self.nbytes
        self.strides[0] = 1
        buf.shape = self.shape
        buf.strides = self.strides
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __dealloc__(self):
        global _held, _clock
        cdef Py_ssize_t i
        if self.ptr == NULL:
            return
        if self.nbytes <= _limit:
            _evict(self.nbytes)
            if _held + self.nbytes <= _limit:
                i = _slot()
                _clock += 1
                _ptr[i] = self.ptr
                _len[i] = self.nbytes
                _age[i] = _clock
                _held += self.nbytes
                self.ptr = NULL
                return
        munmap(self.ptr, self.nbytes)
        self.ptr = NULL


cdef Block _take(size_t nbytes, size_t align):
    """A block of at least nbytes (rounded up to align): a cached one of the same rounded size,
    else a new mapping."""
    global _held
    cdef size_t n = (nbytes + align - 1) // align * align
    cdef Py_ssize_t i
    cdef void *p
    cdef Block b = Block.__new__(Block)
    for i in range(SLOTS):
        if _ptr[i] != NULL and _len[i] == n:
            b.ptr = _ptr[i]
            b.nbytes = n
            b.fresh = False
            _ptr[i] = NULL
            _held -= n
            return b
    p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        # the cache may be what stands in the way
        _evict(_limit)
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            raise MemoryError(f"cannot allocate {nbytes} bytes")
    if FN_MADV_HUGEPAGE >= 0 and align == ALIGN:
        madvise(p, n, FN_MADV_HUGEPAGE)
    b.ptr = p
    b.nbytes = n
    b.fresh = True
    return b


def empty(shape, dtype):
    """np.empty(shape, dtype); outputs of at least the mid threshold come from reusable
    blocks (C-contiguous, page aligned; 2 MiB aligned from the large threshold on)."""
    return _empty(shape, dtype, min(_mid_bytes, _min_bytes), True)


# A kernel's temporary of this size or more (the layer-norm backward's float64 partials of
# dweight and dbias: megabytes for rows of a few thousand values) also comes from the blocks:
# glibc hands such an allocation back to the OS when it is freed, often enough that every
# call faulted its pages in again (float32 (8192, 4096) backward: 480 page faults a call).
DEF SCRATCH_MIN_BYTES = 262144


def scratch(shape, dtype):
    """np.empty(shape, dtype) for a temporary that dies with the call: from the reusable
    blocks from SCRATCH_MIN_BYTES on (or from the output threshold, if that is lower)."""
    return _empty(shape, dtype, min(<size_t>SCRATCH_MIN_BYTES, _min_bytes), False)


cdef object _empty(shape, dtype, size_t min_bytes, bint page_below):
    dt = np.dtype(dtype)
    cdef Py_ssize_t count = 1, s
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    for s in shape:
        count *= s
    cdef size_t nbytes = <size_t>count * <size_t>dt.itemsize
    if nbytes < min_bytes or _limit < nbytes:
        return np.empty(shape, dtype=dt)
    cdef size_t align = PAGE if page_below and nbytes < _min_bytes else ALIGN
    return np.frombuffer(_take(nbytes, align), dtype=dt, count=count).reshape(shape)


def is_fresh(a):
    """True when a views a block whose pages have not been written since the OS gave them
    (their first write faults each page in through the cache)."""
    cdef int depth = 0
    while a is not None and depth < 8:
        if isinstance(a, Block):
            return (<Block>a).fresh
        a = getattr(a, "base", None) if not isinstance(a, memoryview) else a.obj
        depth += 1
    return True


def configure(limit=None, min_bytes=None, mid_bytes=None):
    """Set the cache's limit and thresholds (bytes: outputs in whole 2 MiB units from
    min_bytes, in pages from mid_bytes); returns the previous (limit, min_bytes, mid_bytes).
    A limit of 0 turns the cache off and unmaps what it holds."""
    global _limit, _min_bytes, _mid_bytes
    prev = (_limit, _min_bytes, _mid_bytes)
    if mid_bytes is not None:
        _mid_bytes = <size_t>mid_bytes
    if limit is not None:
        _limit = <size_t>limit
        _evict(0)
    if min_bytes is not None:
        _min_bytes = <size_t>min_bytes
    return prev


def held():
    """Bytes the cache holds now (blocks no array views)."""
    return _held
