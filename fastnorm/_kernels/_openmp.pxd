# The one place fastnorm touches the OpenMP runtime. Every call has a fallback, so a compiler
# without OpenMP still builds a working (single-threaded) extension.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fn_openmp_enabled(void) { return 1; }
    static int fn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fn_openmp_enabled(void) { return 0; }
    static int fn_omp_max_threads(void) { return 1; }
    #endif
    """
    int fn_openmp_enabled() nogil
    int fn_omp_max_threads() nogil
