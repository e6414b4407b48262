# Records straight from libxml2 nodes, without an lxml proxy per field.
#
# The document has already been parsed by the hardened parser (no entities, no
# DTD, bounded size); this only reads the tree it built. The result is exactly
# what arbridge_intacct.response.record_of returns: text for a leaf, a dict
# for an element with element children, a list for a repeated name.

from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport strlen
from lxml.includes cimport tree
from lxml.includes.etreepublic cimport _Element, import_lxml__etree

import_lxml__etree()


cdef inline str _utf8(const char* text):
    return PyUnicode_DecodeUTF8(text, strlen(text), NULL)


cdef str _name(tree.xmlNode* node, dict names):
    # libxml2 interns names per document: one decode per name and call.
    cdef size_t key = <size_t>node.name
    found = names.get(key)
    if found is None:
        found = _utf8(<const char*>node.name)
        names[key] = found
    return <str>found


cdef object _value(tree.xmlNode* node, dict names):
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


cdef dict _record(tree.xmlNode* node, dict names):
    cdef dict out = {}
    cdef tree.xmlNode* child = node.children
    while child is not NULL:
        if child.type == tree.XML_ELEMENT_NODE:
            name = _name(child, names)
            value = _value(child, names)
            existing = out.get(name)
            if existing is None:
                out[name] = value
            elif type(existing) is list:
                (<list>existing).append(value)
            else:
                out[name] = [existing, value]
        child = child.next
    return out


def record(_Element element not None):
    """One record element as a dict (what ``record_of`` returns)."""
    return _record(element._c_node, {})


def read_records(_Element data not None, bint keep_last):
    """The records under ``data`` as dicts, in order.

    While a document is still being parsed, the last element child may be
    incomplete: ``keep_last`` leaves it out. The caller removes the records it
    got from the tree (``del data[:len(records)]``, which lxml does in C and
    which frees them), so memory stays bounded by one chunk of input.
    """
    cdef tree.xmlNode* node
    cdef tree.xmlNode* stop = NULL
    cdef dict names = {}
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
