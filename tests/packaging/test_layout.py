"""struct kevent layouts: the Python layer packs and unpacks events with a
``struct.Struct`` derived from the layout the C compiler chose, never a
hard-coded one.  The installed module gives this platform's layout; the
other platforms' layouts are declared here (cffi's ABI mode lays them out
as their compilers would on this 64-bit host) and each derived format is
checked against cffi's own field access, in both directions."""
from __future__ import annotations

import struct

import pytest
from cffi import FFI

from kqueue_py import ffi, lib
from kqueue_py._core import Buffer, row_walker
from kqueue_py.raw import KEVENT_FIELDS, kevent_struct

# The six common fields; each layout below adds what its platform has.
LAYOUTS = {
    # macOS, the Linux backend: 32 bytes.
    "macos": "uintptr_t ident; int16_t filter; uint16_t flags; uint32_t fflags;"
             " intptr_t data; void *udata;",
    # FreeBSD 12+: data is int64_t and ext[4] follows udata: 64 bytes.
    "freebsd": "uintptr_t ident; short filter; unsigned short flags; unsigned int fflags;"
               " int64_t data; void *udata; uint64_t ext[4];",
    # NetBSD 10: 32-bit filter and flags, ext[4]: 72 bytes.
    "netbsd": "uintptr_t ident; uint32_t filter; uint32_t flags; uint32_t fflags;"
              " int64_t data; void *udata; uint64_t ext[4];",
    # An ILP32 layout spelled with fixed widths (pointers are host-sized
    # here): 4-byte ident and udata, data 8-byte aligned after a gap.
    "ilp32-like": "uint32_t ident; int16_t filter; uint16_t flags; uint32_t fflags;"
                  " uint32_t _gap; int64_t data; uint32_t udata; uint32_t _tail;",
}

SAMPLE = {"ident": 7, "filter": -1, "flags": 0x11, "fflags": 0x4000_0000, "data": -42, "udata": 0xBEEF}


def layout_ffi(body: str) -> FFI:
    f = FFI()
    f.cdef(f"struct kevent {{ {body} }};")
    return f


def udata_is_pointer(f: FFI) -> bool:
    return dict(f.typeof("struct kevent").fields)["udata"].type.kind == "pointer"


def field_value(f: FFI, ev, name: str) -> int:
    value = getattr(ev, name)
    return int(f.cast("uintptr_t", value)) if name == "udata" and udata_is_pointer(f) else value


@pytest.mark.parametrize("platform", sorted(LAYOUTS))
def test_derived_format_matches_the_compiler_layout(platform):
    f = layout_ffi(LAYOUTS[platform])
    packer = kevent_struct(ffi=f)
    assert packer.size == f.sizeof("struct kevent")
    sample = dict(SAMPLE, filter=(2**32 - 1 if platform == "netbsd" else -1))
    row = tuple(sample[name] for name in KEVENT_FIELDS)

    # Python -> C: what struct packs, cffi's field access reads back.
    buf = bytearray(2 * packer.size)
    packer.pack_into(buf, packer.size, *row)
    ev = f.from_buffer("struct kevent[]", buf)[1]
    assert tuple(field_value(f, ev, name) for name in KEVENT_FIELDS) == row

    # C -> Python: what cffi writes, iter_unpack reads back, event by event.
    arr = f.new("struct kevent[]", 3)
    for i in range(3):
        for name in KEVENT_FIELDS:
            value = sample[name] + (i if name in ("ident", "data", "fflags") else 0)
            setattr(arr[i], name, f.cast("void *", value) if name == "udata" and
                    udata_is_pointer(f) else value)
    rows = list(packer.iter_unpack(f.buffer(arr)))
    assert [r[0] for r in rows] == [7, 8, 9] and [r[4] for r in rows] == [-42, -41, -40]
    assert all(r[5] == 0xBEEF for r in rows)


def test_subset_of_fields_skips_the_others():
    f = layout_ffi(LAYOUTS["freebsd"])
    head = kevent_struct(("ident", "filter"), ffi=f)
    assert head.size == 64
    arr = f.new("struct kevent[]", 2)
    arr[1].ident, arr[1].filter = 12, -2
    assert head.unpack_from(f.buffer(arr), 64) == (12, -2)
    assert kevent_struct(("ident", "data", "udata"), ffi=f).format in ("=Q8xqQ32x", b"=Q8xqQ32x")


def test_row_walker_reads_every_event_as_iter_unpack_does():
    """The per-interpreter event walker (typed pointers on PyPy, iter_unpack
    itself on CPython) gives what iter_unpack gives, for the full struct and
    for a subset of its fields, for the first n events only, and nothing
    for none -- unsigned 64-bit fields included at their extremes (PyPy
    reads them signed and fixes them up)."""
    buf = Buffer(6)
    arr = buf.events
    top = 2**(8 * ffi.sizeof("uintptr_t")) - 1
    for i in range(5):
        arr[i].ident, arr[i].filter, arr[i].data = 100 + i, -1 - i, -7 * i
        arr[i].flags, arr[i].fflags = 0x8000 + i, 0xFFFF_FFF0 + i
        arr[i].udata = ffi.cast("void *", 0xF00 + i)
    arr[5].ident, arr[5].udata, arr[5].data = top, ffi.cast("void *", top), -2**63
    arr[5].filter, arr[5].fflags = -32768, 2**32 - 1
    for fields in (KEVENT_FIELDS, ("ident", "filter", "data", "udata")):
        fmt = kevent_struct(fields)
        walk = row_walker(fields)
        expect = list(fmt.iter_unpack(buf.view))
        assert list(walk(buf, 6)) == expect
        assert expect[5][0] == top and expect[5][-1] == top
        assert [r[0] for r in walk(buf, 3)] == [100, 101, 102]
        assert list(walk(buf, 0)) == []


def test_fields_out_of_memory_order_are_refused():
    with pytest.raises(ValueError, match="memory order"):
        kevent_struct(("filter", "ident"))
    with pytest.raises(KeyError):
        kevent_struct(("ident", "no_such_field"))


def test_installed_module_layout_round_trips():
    """The compiled module's own struct kevent, through the real kevent()."""
    packer = kevent_struct()
    assert packer.size == ffi.sizeof("struct kevent")
    kq = lib.kqueue()
    assert kq >= 0
    try:
        change = bytearray(packer.size)
        packer.pack_into(change, 0, 5, lib.EVFILT_USER, lib.EV_ADD | lib.EV_ONESHOT,
                         lib.NOTE_TRIGGER | lib.NOTE_FFCOPY | 3, 0, 2**63 + 1)
        out = ffi.new("struct kevent[]", 4)
        n = lib.kqueue_py_kevent(kq, ffi.from_buffer("struct kevent[]", change), 1, out, 4, 0)
        assert n == 1
        ident, filt, flags, fflags, data, udata = packer.unpack_from(ffi.buffer(out))
        assert (ident, filt, udata) == (5, lib.EVFILT_USER, 2**63 + 1)
        assert (ident, filt, flags, data) == (out[0].ident, out[0].filter, out[0].flags, out[0].data)
        assert fflags == 3
    finally:
        lib.kqueue_close(kq)


def test_unsupported_field_type_is_refused():
    f = layout_ffi("uintptr_t ident; short filter; unsigned short flags; unsigned int fflags;"
                   " char data[3]; void *udata;")
    with pytest.raises(TypeError, match="data"):
        kevent_struct(ffi=f)


def test_format_is_native_size_standard():
    # '=': no implicit alignment: every gap is explicit padding.
    assert kevent_struct().format in ("=QhHIqQ", b"=QhHIqQ") or ffi.sizeof("struct kevent") != 32
    assert struct.calcsize(kevent_struct().format) == ffi.sizeof("struct kevent")
