/* fuzz_common.h: what the runtime fuzz targets share: mc_die longjmps back to the
 * target (a clean error is a pass), and an input as a file path without the disk
 * (a memfd under /proc/self/fd, a regular file to mc_read_file). */
#ifndef MOEC_FUZZ_COMMON_H
#define MOEC_FUZZ_COMMON_H
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"

static jmp_buf fuzz_jmp;

static void fuzz_die(const char *msg) {
  (void)msg;
  longjmp(fuzz_jmp, 1);
}

/* The bytes as a file: its path in `path`; returns the fd to close, -1 on failure. */
static int fuzz_file(const uint8_t *data, size_t size, char *path, size_t n) {
  int fd = memfd_create("fuzz", 0);
  if (fd < 0) return -1;
  size_t off = 0;
  while (off < size) {
    ssize_t w = write(fd, data + off, size - off);
    if (w <= 0) {
      close(fd);
      return -1;
    }
    off += (size_t)w;
  }
  snprintf(path, n, "/proc/self/fd/%d", fd);
  return fd;
}
#endif
