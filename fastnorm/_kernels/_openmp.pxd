# The one place fastnorm touches the OpenMP runtime. Every call has a fallback, so a compiler
# without OpenMP still builds a working (single-threaded) extension.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fn_openmp_enabled(void) { return 1; }
    static int fn_team_size(void) { return omp_get_num_threads(); }
    static int fn_team_rank(void) { return omp_get_thread_num(); }
    /* orphaned: binds to the parallel region of the caller (every thread must reach it) */
    static void fn_team_barrier(void) {
        #pragma omp barrier
    }
    #else
    static int fn_openmp_enabled(void) { return 0; }
    static int fn_team_size(void) { return 1; }
    static int fn_team_rank(void) { return 0; }
    static void fn_team_barrier(void) { }
    #endif
    """
    int fn_openmp_enabled() nogil
    int fn_team_size() noexcept nogil
    int fn_team_rank() noexcept nogil
    void fn_team_barrier() noexcept nogil
