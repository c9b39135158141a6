# The one place fastnorm touches the OpenMP runtime. Every call has a fallback, so a compiler
# without OpenMP still builds a working (single-threaded) extension.
cdef extern from *:
    """
    #ifdef _OPENMP
    static int fn_openmp_enabled(void) { return 1; }
    #else
    static int fn_openmp_enabled(void) { return 0; }
    #endif
    """
    int fn_openmp_enabled() nogil
