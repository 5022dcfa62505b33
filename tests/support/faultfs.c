/* An LD_PRELOAD shim for tests: real I/O errors on chosen files, switched on and off by a trigger file.
 *
 * While the file named by $FAULTFS_TRIGGER exists, write(2), pwrite(2) and fsync/fdatasync(2) on any file
 * whose path starts with $FAULTFS_PATH (the database, so also its -wal and -shm) fail with EIO, as a
 * failing disk does; everything else passes through to libc. Built by tests/support/io_faults.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int failing(int fd) {
    const char *trigger = getenv("FAULTFS_TRIGGER");
    const char *prefix = getenv("FAULTFS_PATH");
    if (trigger == NULL || prefix == NULL || access(trigger, F_OK) != 0) {
        return 0;
    }
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) {
        return 0;
    }
    path[n] = '\0';
    return strncmp(path, prefix, strlen(prefix)) == 0;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *buf, size_t count) {
    if (failing(fd)) { errno = EIO; return -1; }
    return NEXT(write)(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    if (failing(fd)) { errno = EIO; return -1; }
    return NEXT(pwrite)(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    if (failing(fd)) { errno = EIO; return -1; }
    return NEXT(pwrite64)(fd, buf, count, offset);
}

int fsync(int fd) {
    if (failing(fd)) { errno = EIO; return -1; }
    return NEXT(fsync)(fd);
}

int fdatasync(int fd) {
    if (failing(fd)) { errno = EIO; return -1; }
    return NEXT(fdatasync)(fd);
}
