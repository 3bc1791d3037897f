/* Run by tools/tests/preload.rs (and perf) under mpiexec: a 64-byte ping-pong
 * between the first and last rank, then ten all-to-alls of 256 KiB per
 * pair whose every element is checked. Prints one JSON line on rank 0. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size; MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
    char name[MPI_MAX_PROCESSOR_NAME]; int len; MPI_Get_processor_name(name, &len);
    char buf[64] = {0};
    int iters = 1000; double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) { MPI_Send(buf, 64, MPI_CHAR, size - 1, 0, MPI_COMM_WORLD); MPI_Recv(buf, 64, MPI_CHAR, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE); }
        else if (rank == size - 1) { MPI_Recv(buf, 64, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE); MPI_Send(buf, 64, MPI_CHAR, 0, 0, MPI_COMM_WORLD); }
    }
    double rtt = (MPI_Wtime() - t0) / iters * 1e6;
    int n = 65536; int *s = malloc(sizeof(int) * n * size), *r = malloc(sizeof(int) * n * size);
    for (int d = 0; d < size; d++) for (int k = 0; k < n; k++) s[d * n + k] = rank * 1000003 + d * 7919 + k;
    MPI_Barrier(MPI_COMM_WORLD); double t1 = MPI_Wtime();
    for (int rep = 0; rep < 10; rep++) MPI_Alltoall(s, n, MPI_INT, r, n, MPI_INT, MPI_COMM_WORLD);
    double a2a = (MPI_Wtime() - t1) / 10 * 1e3;
    int bad = 0;
    for (int src = 0; src < size; src++) for (int k = 0; k < n; k++) if (r[src * n + k] != src * 1000003 + rank * 7919 + k) bad++;
    int allbad; MPI_Allreduce(&bad, &allbad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("{\"ranks\": %d, \"pingpong_rtt_us\": %.2f, \"alltoall_ms\": %.3f, \"alltoall_bytes_per_rank\": %d, \"bad\": %d}\n", size, rtt, a2a, n * 4 * size, allbad);
    MPI_Finalize();
    return allbad != 0;
}
