# Records straight from libxml2 nodes, without an lxml proxy per field.
#
# The document has already been parsed by the hardened parser (no entities, no
# DTD, bounded size); this only reads the tree it built. The result is exactly
# what arbridge_intacct.response.record_of returns: text for a leaf, a dict
# for an element with element children, a list for a repeated name.

from cpython.dict cimport PyDict_SetDefault, PyDict_Size
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strlen
from lxml.includes cimport tree
from lxml.includes.etreepublic cimport _Element, import_lxml__etree

import_lxml__etree()


cdef inline str _utf8(const char* text):
    return PyUnicode_DecodeUTF8(text, strlen(text), NULL)


cdef enum:
    SLOTS = 64


cdef class _Names:
    """Python names of libxml2 element names, for one call (libxml2 interns names per
    document, so a pointer stands for its name while the document lives).

    Records of one page have their fields in the same order: slot ``i`` remembers the
    name pointer of field ``i`` and its str, so the usual lookup is one comparison.
    """

    cdef const void* pointers[SLOTS]
    cdef list strings
    cdef dict others

    def __cinit__(self):
        self.others = {}
        self.strings = [None] * SLOTS

    cdef str get(self, tree.xmlNode* node, int slot):
        cdef const void* key = <const void*>node.name
        if slot < SLOTS and self.pointers[slot] == key:
            return <str>self.strings[slot]
        found = self.others.get(<size_t>key)
        if found is None:
            found = _utf8(<const char*>node.name)
            self.others[<size_t>key] = found
        if slot < SLOTS:
            self.pointers[slot] = key
            self.strings[slot] = found
        return <str>found


cdef object _value(tree.xmlNode* node, _Names names):
    cdef tree.xmlNode* part = node.children
    if part is NULL:
        return ""
    if part.next is NULL and part.type == tree.XML_TEXT_NODE:
        return _utf8(<const char*>part.content)
    while part is not NULL:
        if part.type == tree.XML_ELEMENT_NODE:
            return _record(node, names)
        part = part.next
    pieces = []
    part = node.children
    while part is not NULL:
        if part.type == tree.XML_TEXT_NODE or part.type == tree.XML_CDATA_SECTION_NODE:
            pieces.append(_utf8(<const char*>part.content))
        part = part.next
    return "".join(pieces)


cdef dict _record(tree.xmlNode* node, _Names names):
    cdef dict out = {}
    cdef tree.xmlNode* child = node.children
    cdef int slot = 0
    cdef PyObject* existing
    cdef Py_ssize_t size
    while child is not NULL:
        if child.type == tree.XML_ELEMENT_NODE:
            name = names.get(child, slot)
            slot += 1
            value = _value(child, names)
            size = PyDict_Size(out)
            existing = <PyObject*>PyDict_SetDefault(out, name, value)
            if PyDict_Size(out) == size:
                # A repeated name: the values become a list, in document order.
                if type(<object>existing) is list:
                    (<list><object>existing).append(value)
                else:
                    out[name] = [<object>existing, value]
        child = child.next
    return out


def record(_Element element not None):
    """One record element as a dict (what ``record_of`` returns)."""
    return _record(element._c_node, _Names())


def read_records(_Element data not None, bint keep_last):
    """The records under ``data`` as dicts, in order.

    While a document is still being parsed, the last element child may be
    incomplete: ``keep_last`` leaves it out. The caller removes the records it
    got from the tree (``del data[:len(records)]``, which lxml does in C and
    which frees them), so memory stays bounded by one chunk of input.
    """
    cdef tree.xmlNode* node
    cdef tree.xmlNode* stop = NULL
    cdef _Names names = _Names()
    cdef list out = []
    if keep_last:
        node = data._c_node.last
        while node is not NULL and node.type != tree.XML_ELEMENT_NODE:
            node = node.prev
        if node is NULL:
            return out
        stop = node
    node = data._c_node.children
    while node is not NULL and node is not stop:
        if node.type == tree.XML_ELEMENT_NODE:
            out.append(_record(node, names))
        node = node.next
    return out
