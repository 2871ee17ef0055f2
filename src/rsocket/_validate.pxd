"""What the compiled core calls in ``_validate.pyx``, as C functions."""

cdef int event_code(object event) except -1
cdef object check_event(object name, int code, object data)
