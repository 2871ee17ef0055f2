"""What the compiled core calls in ``_validate.pyx``, as C functions."""

cdef int event_code(object event) noexcept
cdef object check_event(object name, int code, object data)
