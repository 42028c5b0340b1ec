/* test_death.h: expect_death for tests of user errors: runs fn(arg) in a child
 * process and checks that it exits with status 1 (mc_die) and that its stderr
 * contains the expected message. The test defines `tmpdir` (a directory it
 * made with mkdtemp) before including this. */
#ifndef MOEC_TEST_DEATH_H
#define MOEC_TEST_DEATH_H
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

static void expect_death(void (*fn)(void *), void *arg, const char *want) {
  char errpath[256];
  snprintf(errpath, sizeof errpath, "%s/stderr.txt", tmpdir);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(errpath, "w", stderr)) _exit(99);
    fn(arg);
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  char *err = mc_read_file(errpath, NULL);
  CHECK(err && strstr(err, want));
  if (!err || !strstr(err, want))
    fprintf(stderr, "  expected a message with '%s', got: %s\n", want, err ? err : "(none)");
  free(err);
}
#endif
